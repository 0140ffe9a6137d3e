// Package v1alpha1 holds the Helm-managed data-plane API,
// storage.billyronks.io/v1alpha1 DataPlane: one object describes the shard
// servers of one namespace (which nodes, which cold DiskPool each serves,
// where its bytes live), their Service and the monitoring objects around
// them. The operator's helm-operator-plugins reconciler renders the chart in
// helm-charts/couchestor-dataplane from it (internal/helmhybrid translates
// the typed spec into chart values), so this package owns the schema and the
// chart owns the objects.
//
// Declared decisions:
//   - The kind is namespaced: a Helm release lives in its object's namespace.
//   - One StatefulSet per shard server (not a DaemonSet): each shard server
//     serves exactly one cold DiskPool, so each needs its own single-replica
//     volume pinned to that pool, and a StatefulSet's volumeClaimTemplate is
//     the Kubernetes way to give one pod one volume that survives it.
//   - The status is the Helm reconciler's own (conditions Initialized,
//     Deployed, ReleaseFailed, Irreconcilable and the deployed release), typed
//     here so the CRD has a real schema instead of preserved unknown fields.
//
// +kubebuilder:object:generate=true
// +groupName=storage.billyronks.io
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is the group and version of every kind in this package.
	GroupVersion = schema.GroupVersion{Group: "storage.billyronks.io", Version: "v1alpha1"}

	// SchemeBuilder registers this package's kinds with a runtime.Scheme.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}

	// AddToScheme adds this package's kinds to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)
