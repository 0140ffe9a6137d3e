// Package v1alpha1 holds storage.billyronks.io/v1alpha1 kinds of the
// storage group that are not in the data model (database-schema.md) and are
// still being built: ECPlacementGroup, the placement groups of the
// at-scale erasure-coding layout (README, "At scale: placement groups and a
// per-server stripe index"). The schema's own kinds stay in ../v1.
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
