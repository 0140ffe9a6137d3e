// Package v1 holds CoucheStor's own API, storage.billyronks.io/v1:
// StoragePolicy, ErasureCodingPolicy and ECStripe, exactly as section 2 of the
// data-model schema describes them, plus the pure validation and defaulting
// functions that the webhooks, the controllers and the CRD's CEL rules share.
//
// Declared decisions where the schema is silent:
//   - algorithm defaults to ReedSolomon.
//   - Numeric and boolean spec fields with a default are pointers, so that an
//     explicit zero/false from a Go client is sent and judged, not dropped and
//     silently replaced by the default.
//   - Durations are strings parsed by one parser (ParseDuration: Go syntax plus
//     days); neither CEL nor OpenAPI's format validates them.
//
// +kubebuilder:object:generate=true
// +groupName=storage.billyronks.io
package v1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is the group and version of every kind in this package.
	GroupVersion = schema.GroupVersion{Group: "storage.billyronks.io", Version: "v1"}

	// SchemeBuilder registers this package's kinds with a runtime.Scheme.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}

	// AddToScheme adds this package's kinds to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)
