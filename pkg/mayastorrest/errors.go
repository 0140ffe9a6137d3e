package mayastorrest

import (
	"errors"
	"fmt"
	"net/http"
)

// APIError is an answer of the REST API outside 2xx. Kind, Message and Details
// come from the body (RestJsonError) when it has one; Kind is "" otherwise
// (for example a route the server does not have) and Message then holds the
// start of the raw body.
type APIError struct {
	Call    string // method and path, e.g. "PUT /v0/volumes/<id>/replica_count/3"
	Status  int
	Kind    string
	Message string
	Details string
}

func (e *APIError) Error() string {
	s := fmt.Sprintf("mayastor rest %s: %d %s", e.Call, e.Status, http.StatusText(e.Status))
	if e.Kind != "" {
		s += " (" + e.Kind + ")"
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	if e.Details != "" {
		s += ": " + e.Details
	}
	return s
}

// TransportError is a call that got no complete HTTP answer: connection
// refused or dropped, timeout, TLS failure, or a body that could not be read
// in full.
type TransportError struct {
	Call string
	Err  error
}

func (e *TransportError) Error() string { return fmt.Sprintf("mayastor rest %s: %v", e.Call, e.Err) }
func (e *TransportError) Unwrap() error { return e.Err }

// DecodeError is a 2xx answer whose body is not what the API promises:
// garbage, oversized, or missing a required field. It is never read as a
// zero value.
type DecodeError struct {
	Call string
	Err  error
}

func (e *DecodeError) Error() string {
	return fmt.Sprintf("mayastor rest %s: bad answer: %v", e.Call, e.Err)
}
func (e *DecodeError) Unwrap() error { return e.Err }

func apiError(err error) (*APIError, bool) {
	var a *APIError
	ok := errors.As(err, &a)
	return a, ok
}

// IsNotFound: the server says the resource does not exist (kind NotFound in
// Mayastor's error body). A bare 404 without that body is a route the server
// does not have, not a missing resource, and is not NotFound.
func IsNotFound(err error) bool {
	a, ok := apiError(err)
	return ok && a.Kind == "NotFound"
}

// IsFailedPrecondition: 412, or kind FailedPrecondition (replica count already
// reached, changed by more than one, increase while not Online). Retry later.
func IsFailedPrecondition(err error) bool {
	a, ok := apiError(err)
	return ok && (a.Kind == "FailedPrecondition" || (a.Kind == "" && a.Status == http.StatusPreconditionFailed))
}

// IsConflict: 409 or kind Conflict, InUse or Deleting.
func IsConflict(err error) bool {
	a, ok := apiError(err)
	if !ok {
		return false
	}
	switch a.Kind {
	case "Conflict", "InUse", "Deleting":
		return true
	}
	return a.Status == http.StatusConflict
}

// IsUnavailable: the control plane could not be reached or said it cannot
// serve now (502, 503, 504, kinds Unavailable, Aborted, Timeout,
// DeadlineExceeded), or the call got no complete answer (TransportError).
// Such a call may be retried; nothing about the resource is known.
func IsUnavailable(err error) bool {
	var t *TransportError
	if errors.As(err, &t) {
		return true
	}
	a, ok := apiError(err)
	if !ok {
		return false
	}
	switch a.Kind {
	case "Unavailable", "Aborted", "Timeout", "DeadlineExceeded":
		return true
	}
	switch a.Status {
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

// IsAlreadyExists: 422 or kind AlreadyExists (e.g. a pool label already set to
// the same value).
func IsAlreadyExists(err error) bool {
	a, ok := apiError(err)
	return ok && (a.Kind == "AlreadyExists" || (a.Kind == "" && a.Status == http.StatusUnprocessableEntity))
}
