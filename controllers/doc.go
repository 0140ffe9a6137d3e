// Package controllers holds one reconciler per CoucheStor kind. Reconcilers
// orchestrate only: decisions live in pure packages under pkg/, rules in
// apis/storage/v1, and status is computed in each kind's *_status.go.
package controllers

// The manager itself: leader election and Events.
// +kubebuilder:rbac:groups=coordination.k8s.io,namespace=couchestor-system,resources=leases,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
