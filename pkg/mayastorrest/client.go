package mayastorrest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// Defaults of Config.
const (
	DefaultTimeout      = 10 * time.Second
	DefaultPageSize     = 500
	DefaultMaxBodyBytes = 64 << 20
)

// Config of a Client.
type Config struct {
	// URL of the REST service, e.g. http://mayastor-api-rest.mayastor.svc:8081
	// (without /v0).
	URL string
	// TokenFile, if set, holds a bearer token; it is read on every request so
	// a rotated token is picked up, and it is never logged.
	TokenFile string
	// CAFile, if set, is a PEM bundle that verifies an https server.
	CAFile string
	// Timeout of one request (default 10s).
	Timeout time.Duration
	// PageSize is max_entries of GET /v0/volumes (default 500).
	PageSize int
	// MaxBodyBytes bounds one answer's body (default 64 MiB).
	MaxBodyBytes int64
}

// Client of Mayastor's REST API. Safe for concurrent use.
type Client struct {
	base     *url.URL
	cfg      Config
	http     *http.Client
	requests atomic.Int64

	cordonMu    sync.Mutex
	cordonKnown bool
	cordon      bool
}

var requestsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "couchestor_mayastor_rest_requests_total",
	Help: "Requests to Mayastor's REST API by call and answer (HTTP status code, or \"error\" without an answer).",
}, []string{"call", "code"})

func init() { metrics.Registry.MustRegister(requestsTotal) }

// New validates cfg and returns a client.
func New(cfg Config) (*Client, error) {
	if cfg.URL == "" {
		return nil, errors.New("mayastor rest: URL is empty")
	}
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("mayastor rest: URL %q: %w", cfg.URL, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("mayastor rest: URL %q: scheme must be http or https", cfg.URL)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("mayastor rest: URL %q: no host", cfg.URL)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("mayastor rest: URL %q: must not have a query or fragment", cfg.URL)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	u.RawPath = ""
	if cfg.Timeout < 0 || cfg.PageSize < 0 || cfg.MaxBodyBytes < 0 {
		return nil, fmt.Errorf("mayastor rest: timeout %v, page size %d and max body bytes %d must not be negative", cfg.Timeout, cfg.PageSize, cfg.MaxBodyBytes)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.PageSize == 0 {
		cfg.PageSize = DefaultPageSize
	}
	if cfg.MaxBodyBytes == 0 {
		cfg.MaxBodyBytes = DefaultMaxBodyBytes
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("mayastor rest: CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("mayastor rest: CA file %s: no PEM certificate in it", cfg.CAFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	if cfg.TokenFile != "" {
		if _, err := readToken(cfg.TokenFile); err != nil {
			return nil, err
		}
	}
	return &Client{base: u, cfg: cfg, http: &http.Client{Transport: tr, Timeout: cfg.Timeout}}, nil
}

// Requests is the number of HTTP requests made so far.
func (c *Client) Requests() int64 { return c.requests.Load() }

func readToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("mayastor rest: token file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("mayastor rest: token file %s is empty", path)
	}
	return tok, nil
}

// seg escapes one path segment ('/' included, so label keys like
// openebs.io/tier stay one segment).
func seg(s string) string { return url.PathEscape(s) }

// call is one request: op names it in the metric, path is the escaped path
// under the base URL (starting with /v0).
type call struct {
	op     string
	method string
	path   string
	query  url.Values
	body   any
}

func (r call) name() string { return r.method + " " + r.path }

// do sends the request and returns the body of a 2xx answer, read in full and
// bounded by MaxBodyBytes.
func (c *Client) do(ctx context.Context, r call) ([]byte, error) {
	u := *c.base
	raw := c.base.Path + r.path
	u.Path, _ = url.PathUnescape(raw)
	u.RawPath = raw
	if r.query != nil {
		u.RawQuery = r.query.Encode()
	}
	var body io.Reader
	if r.body != nil {
		b, err := json.Marshal(r.body)
		if err != nil {
			return nil, fmt.Errorf("mayastor rest %s: encode body: %w", r.name(), err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, r.method, u.String(), body)
	if err != nil {
		return nil, fmt.Errorf("mayastor rest %s: %w", r.name(), err)
	}
	req.Header.Set("Accept", "application/json")
	if r.body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.cfg.TokenFile != "" {
		tok, err := readToken(c.cfg.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("mayastor rest %s: %w", r.name(), err)
		}
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	c.requests.Add(1)
	resp, err := c.http.Do(req)
	if err != nil {
		requestsTotal.WithLabelValues(r.op, "error").Inc()
		return nil, &TransportError{Call: r.name(), Err: stripURL(err)}
	}
	defer resp.Body.Close()
	requestsTotal.WithLabelValues(r.op, strconv.Itoa(resp.StatusCode)).Inc()
	b, err := io.ReadAll(io.LimitReader(resp.Body, c.cfg.MaxBodyBytes+1))
	if err != nil {
		return nil, &TransportError{Call: r.name(), Err: fmt.Errorf("read body (status %d): %w", resp.StatusCode, err)}
	}
	if int64(len(b)) > c.cfg.MaxBodyBytes {
		if resp.StatusCode/100 == 2 {
			return nil, &DecodeError{Call: r.name(), Err: fmt.Errorf("body exceeds %d bytes", c.cfg.MaxBodyBytes)}
		}
		b = b[:c.cfg.MaxBodyBytes]
	}
	if resp.StatusCode/100 != 2 {
		return nil, newAPIError(r.name(), resp.StatusCode, b)
	}
	return b, nil
}

// stripURL keeps the error of a failed request without repeating the URL
// (the call is named already).
func stripURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func newAPIError(name string, status int, b []byte) *APIError {
	e := &APIError{Call: name, Status: status}
	var body RestJsonError
	if json.Unmarshal(b, &body) == nil && body.Kind != "" {
		e.Kind, e.Message, e.Details = body.Kind, body.Message, body.Details
		return e
	}
	msg := strings.TrimSpace(string(b))
	if len(msg) > 200 {
		msg = msg[:200] + "…"
	}
	e.Message = msg
	return e
}

// get decodes a 2xx body into out after validate (which checks the required
// fields) accepts it.
func (c *Client) decode(r call, b []byte, out any, validate func([]byte) error) error {
	if err := json.Unmarshal(b, out); err != nil {
		return &DecodeError{Call: r.name(), Err: err}
	}
	if validate != nil {
		if err := validate(b); err != nil {
			return &DecodeError{Call: r.name(), Err: err}
		}
	}
	return nil
}

func (c *Client) volume(ctx context.Context, r call) (Volume, error) {
	b, err := c.do(ctx, r)
	if err != nil {
		return Volume{}, err
	}
	var v Volume
	if err := c.decode(r, b, &v, validateVolume); err != nil {
		return Volume{}, err
	}
	return v, nil
}

func (c *Client) pool(ctx context.Context, r call) (Pool, error) {
	b, err := c.do(ctx, r)
	if err != nil {
		return Pool{}, err
	}
	var p Pool
	if err := c.decode(r, b, &p, validatePool); err != nil {
		return Pool{}, err
	}
	return p, nil
}

// ListVolumes reads every volume, PageSize per request (max_entries), following
// next_token through starting_token until the server sends none.
func (c *Client) ListVolumes(ctx context.Context) ([]Volume, error) {
	var all []Volume
	var token *int64
	for {
		q := url.Values{"max_entries": {strconv.Itoa(c.cfg.PageSize)}}
		if token != nil {
			q.Set("starting_token", strconv.FormatInt(*token, 10))
		}
		r := call{op: "ListVolumes", method: http.MethodGet, path: "/v0/volumes", query: q}
		b, err := c.do(ctx, r)
		if err != nil {
			return nil, err
		}
		var page Volumes
		if err := c.decode(r, b, &page, validateVolumes); err != nil {
			return nil, err
		}
		all = append(all, page.Entries...)
		if page.NextToken == nil {
			return all, nil
		}
		if len(page.Entries) == 0 || (token != nil && *page.NextToken <= *token) || *page.NextToken < 0 {
			return nil, &DecodeError{Call: r.name() + "?" + q.Encode(), Err: fmt.Errorf("next_token %d does not advance the listing (starting_token %s, %d entries)", *page.NextToken, fmtToken(token), len(page.Entries))}
		}
		token = page.NextToken
	}
}

func fmtToken(t *int64) string {
	if t == nil {
		return "none"
	}
	return strconv.FormatInt(*t, 10)
}

// GetVolume reads one volume.
func (c *Client) GetVolume(ctx context.Context, id string) (Volume, error) {
	if id == "" {
		return Volume{}, errors.New("mayastor rest GetVolume: volume id is empty")
	}
	return c.volume(ctx, call{op: "GetVolume", method: http.MethodGet, path: "/v0/volumes/" + seg(id)})
}

// SetReplicaCount asks for n replicas (PUT /v0/volumes/{id}/replica_count/{n}).
// The server allows a change by one, and an increase only while the volume is
// Online (412 FailedPrecondition otherwise: see IsFailedPrecondition).
func (c *Client) SetReplicaCount(ctx context.Context, id string, n int) (Volume, error) {
	if id == "" {
		return Volume{}, errors.New("mayastor rest SetReplicaCount: volume id is empty")
	}
	if n < 1 || n > 255 {
		return Volume{}, fmt.Errorf("mayastor rest SetReplicaCount: replica count %d of volume %s is outside 1..255", n, id)
	}
	return c.volume(ctx, call{op: "SetReplicaCount", method: http.MethodPut, path: "/v0/volumes/" + seg(id) + "/replica_count/" + strconv.Itoa(n)})
}

// ListPools reads every pool.
func (c *Client) ListPools(ctx context.Context) ([]Pool, error) {
	r := call{op: "ListPools", method: http.MethodGet, path: "/v0/pools"}
	b, err := c.do(ctx, r)
	if err != nil {
		return nil, err
	}
	var ps []Pool
	if err := c.decode(r, b, &ps, validatePools); err != nil {
		return nil, err
	}
	return ps, nil
}

// ListNodes reads every io-engine node.
func (c *Client) ListNodes(ctx context.Context) ([]Node, error) {
	r := call{op: "ListNodes", method: http.MethodGet, path: "/v0/nodes"}
	b, err := c.do(ctx, r)
	if err != nil {
		return nil, err
	}
	var ns []Node
	if err := c.decode(r, b, &ns, validateNodes); err != nil {
		return nil, err
	}
	return ns, nil
}

// PutPoolLabel sets a label on a pool (PUT /v0/pools/{id}/label/{key}={value}
// ?overwrite=…, v2.7.1+). Without overwrite an existing key with another value
// is refused by the server.
func (c *Client) PutPoolLabel(ctx context.Context, pool, key, value string, overwrite bool) (Pool, error) {
	if pool == "" || key == "" {
		return Pool{}, fmt.Errorf("mayastor rest PutPoolLabel: pool %q and key %q must not be empty", pool, key)
	}
	if strings.Contains(key, "=") {
		return Pool{}, fmt.Errorf("mayastor rest PutPoolLabel: label key %q must not contain '='", key)
	}
	return c.pool(ctx, call{op: "PutPoolLabel", method: http.MethodPut,
		path:  "/v0/pools/" + seg(pool) + "/label/" + seg(key) + "=" + seg(value),
		query: url.Values{"overwrite": {strconv.FormatBool(overwrite)}}})
}

// DeletePoolLabel removes a label from a pool (DELETE /v0/pools/{id}/label/{key}).
func (c *Client) DeletePoolLabel(ctx context.Context, pool, key string) (Pool, error) {
	if pool == "" || key == "" {
		return Pool{}, fmt.Errorf("mayastor rest DeletePoolLabel: pool %q and key %q must not be empty", pool, key)
	}
	return c.pool(ctx, call{op: "DeletePoolLabel", method: http.MethodDelete, path: "/v0/pools/" + seg(pool) + "/label/" + seg(key)})
}

// cordonReplicas is the body of the pool cordon calls: only new replicas are
// affected (snapshots, restores and import are left as they are).
var cordonReplicas = PoolCordon{Replicas: true}

// CordonPool stops the scheduler from placing new replicas on the pool (PUT
// /v0/pools/{id}/cordon with {"replicas": true, …false}, OpenEBS 4.4+). A pool
// already cordoned for replicas (422 AlreadyExists) is success.
func (c *Client) CordonPool(ctx context.Context, pool string) error {
	return c.cordonCall(ctx, "CordonPool", http.MethodPut, pool)
}

// UncordonPool lifts CordonPool (DELETE /v0/pools/{id}/cordon with the same
// body). A pool not cordoned for replicas (AlreadyExists) is success.
func (c *Client) UncordonPool(ctx context.Context, pool string) error {
	return c.cordonCall(ctx, "UncordonPool", http.MethodDelete, pool)
}

func (c *Client) cordonCall(ctx context.Context, op, method, pool string) error {
	if pool == "" {
		return fmt.Errorf("mayastor rest %s: pool id is empty", op)
	}
	_, err := c.pool(ctx, call{op: op, method: method, path: "/v0/pools/" + seg(pool) + "/cordon", body: cordonReplicas})
	if a, ok := apiError(err); ok && a.Kind == "AlreadyExists" {
		return nil
	}
	return err
}

// SupportsPoolCordon says whether the server has pool cordon, probing once and
// caching a definite answer. The probe is DELETE /v0/pools/{id}/cordon (an
// uncordon) on a random pool id that does not exist, so it changes nothing:
//   - a server with the route routes it to the pool service, which answers
//     NotFound for the pool in Mayastor's error body: supported;
//   - a server without it (before OpenEBS 4.4) has no such route, and its web
//     framework answers 404 or 405 with no Mayastor error body: not supported.
//
// Any other answer (5xx, no answer) is an error and is not cached.
func (c *Client) SupportsPoolCordon(ctx context.Context) (bool, error) {
	c.cordonMu.Lock()
	defer c.cordonMu.Unlock()
	if c.cordonKnown {
		return c.cordon, nil
	}
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	id := "couchestor-cordon-probe-" + hex.EncodeToString(rnd[:])
	r := call{op: "SupportsPoolCordon", method: http.MethodDelete, path: "/v0/pools/" + seg(id) + "/cordon", body: cordonReplicas}
	_, err := c.do(ctx, r)
	a, isAPI := apiError(err)
	switch {
	case err == nil:
		c.cordon = true
	case isAPI && a.Kind != "":
		if a.Kind != "NotFound" && a.Kind != "AlreadyExists" {
			return false, fmt.Errorf("pool cordon probe: unexpected answer: %w", err)
		}
		c.cordon = true
	case isAPI && (a.Status == http.StatusNotFound || a.Status == http.StatusMethodNotAllowed):
		c.cordon = false
	default:
		return false, fmt.Errorf("pool cordon probe: %w", err)
	}
	c.cordonKnown = true
	return c.cordon, nil
}
