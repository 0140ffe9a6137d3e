// Package v1beta3 describes the DiskPool of OpenEBS 4.3+ (openebs.io/v1beta3)
// as CoucheStor consumes it. Mayastor owns the kind; CoucheStor only reads it.
// Its CRD (config/crd/external/v1beta3) is installed by tests and the demo
// only, in place of the v1beta2 one, to play a cluster that serves v1beta3.
// v1beta3 keeps v1beta2's spec.node, spec.disks, spec.topology.labelled and
// status cr_state, pool_status, capacity, used, available, and adds optional
// encryption and cluster-size settings; fields CoucheStor does not read are
// kept opaque.
//
// +kubebuilder:object:generate=true
// +groupName=openebs.io
package v1beta3

import (
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"

	"github.com/billyronks/couchestor/apis/mayastor/v1beta2"
)

var (
	GroupVersion  = schema.GroupVersion{Group: "openebs.io", Version: "v1beta3"}
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}
	AddToScheme   = SchemeBuilder.AddToScheme
)

// PoolTopology carries the labels that Mayastor copies to the control plane's
// pool at creation.
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
	// EncryptionConfig of the pool (opaque to CoucheStor).
	// +optional
	// +kubebuilder:pruning:PreserveUnknownFields
	// +kubebuilder:validation:Schemaless
	// +kubebuilder:validation:Type=object
	EncryptionConfig *apiextensionsv1.JSON `json:"encryptionConfig,omitempty"`
	// ClusterSize of the pool's blobstore in bytes.
	// +optional
	ClusterSize *int64 `json:"cluster_size,omitempty"`
}

// DiskPoolStatus is what Mayastor reports about the pool.
type DiskPoolStatus struct {
	// +optional
	CRState v1beta2.CRState `json:"cr_state,omitempty"`
	// +optional
	PoolStatus v1beta2.PoolStatus `json:"pool_status,omitempty"`
	// +optional
	Capacity int64 `json:"capacity,omitempty"`
	// +optional
	Used int64 `json:"used,omitempty"`
	// +optional
	Available int64 `json:"available,omitempty"`
	// Encrypted reports an encrypted pool.
	// +optional
	Encrypted *bool `json:"encrypted,omitempty"`
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
