// Package v1beta2 describes Mayastor 2.x's DiskPool (openebs.io/v1beta2) as
// CoucheStor consumes it. The kind belongs to Mayastor: CoucheStor only reads
// it. Its CRD (config/crd/external) is installed by tests and the demo only.
// The shape is real Mayastor's, not the data-model schema's simplified one:
// the DiskPool is namespaced (Mayastor's namespace), its topology labels live
// in spec.topology.labelled, and its status uses cr_state and pool_status.
//
// +kubebuilder:object:generate=true
// +groupName=openebs.io
package v1beta2

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	GroupVersion  = schema.GroupVersion{Group: "openebs.io", Version: "v1beta2"}
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}
	AddToScheme   = SchemeBuilder.AddToScheme
)

// PoolTopology carries the labels that Mayastor's volume topology matches.
type PoolTopology struct {
	// +optional
	Labelled map[string]string `json:"labelled,omitempty"`
}

// DiskPoolSpec is the desired pool.
type DiskPoolSpec struct {
	// Node is the io-engine node that owns the pool.
	Node string `json:"node"`
	// Disks are the block devices of the pool.
	Disks []string `json:"disks"`
	// +optional
	Topology *PoolTopology `json:"topology,omitempty"`
}

// CRState is the state of the DiskPool resource.
type CRState string

const (
	CRStateCreating    CRState = "Creating"
	CRStateCreated     CRState = "Created"
	CRStateTerminating CRState = "Terminating"
)

// PoolStatus is the state of the pool in the data plane.
type PoolStatus string

const (
	PoolUnknown  PoolStatus = "Unknown"
	PoolOnline   PoolStatus = "Online"
	PoolDegraded PoolStatus = "Degraded"
	PoolFaulted  PoolStatus = "Faulted"
)

// DiskPoolStatus is what Mayastor reports about the pool.
type DiskPoolStatus struct {
	// +optional
	CRState CRState `json:"cr_state,omitempty"`
	// +optional
	PoolStatus PoolStatus `json:"pool_status,omitempty"`
	// +optional
	Capacity int64 `json:"capacity,omitempty"`
	// +optional
	Used int64 `json:"used,omitempty"`
	// +optional
	Available int64 `json:"available,omitempty"`
}

// DiskPool is Mayastor's storage pool on one node.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=dsp
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.spec.node`
// +kubebuilder:printcolumn:name="State",type=string,JSONPath=`.status.pool_status`
// +kubebuilder:printcolumn:name="Capacity",type=integer,JSONPath=`.status.capacity`
// +kubebuilder:printcolumn:name="Used",type=integer,JSONPath=`.status.used`
// +kubebuilder:printcolumn:name="Available",type=integer,JSONPath=`.status.available`
type DiskPool struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec DiskPoolSpec `json:"spec"`
	// +optional
	Status DiskPoolStatus `json:"status,omitempty"`
}

// DiskPoolList is a list of DiskPool.
// +kubebuilder:object:root=true
type DiskPoolList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []DiskPool `json:"items"`
}

func init() {
	SchemeBuilder.Register(&DiskPool{}, &DiskPoolList{})
}
