// Package v1alpha1 describes the MayastorVolume (openebs.io/v1alpha1) of the
// data-model schema's section 3.2, as CoucheStor consumes it. Mayastor owns the
// status; CoucheStor writes only spec.numReplicas and spec.topology. (Mayastor
// 2.x keeps volumes behind its REST API; the tiering code reaches volumes
// through an interface so that a REST backend can replace this kind.)
//
// +kubebuilder:object:generate=true
// +groupName=openebs.io
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	GroupVersion  = schema.GroupVersion{Group: "openebs.io", Version: "v1alpha1"}
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}
	AddToScheme   = SchemeBuilder.AddToScheme
)

// LabelledTopology selects pools by their topology labels.
type LabelledTopology struct {
	// +optional
	Inclusion map[string]string `json:"inclusion,omitempty"`
	// +optional
	Exclusion map[string]string `json:"exclusion,omitempty"`
}

// PoolTopology is the pool part of a volume topology.
type PoolTopology struct {
	// +optional
	Labelled *LabelledTopology `json:"labelled,omitempty"`
}

// VolumeTopology constrains where replicas are placed.
type VolumeTopology struct {
	// +optional
	Pool *PoolTopology `json:"pool,omitempty"`
}

// MayastorVolumeSpec is the desired volume.
type MayastorVolumeSpec struct {
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=0
	// +optional
	NumReplicas int32 `json:"numReplicas,omitempty"`
	// Size in bytes.
	// +kubebuilder:validation:Minimum=0
	Size int64 `json:"size"`
	// +optional
	Topology *VolumeTopology `json:"topology,omitempty"`
}

// ObjectState is the state of a volume, replica or nexus.
type ObjectState string

const (
	StateUnknown  ObjectState = "Unknown"
	StateOnline   ObjectState = "Online"
	StateDegraded ObjectState = "Degraded"
	StateFaulted  ObjectState = "Faulted"
)

// ReplicaStatus is one replica of the volume.
type ReplicaStatus struct {
	UUID string `json:"uuid"`
	Pool string `json:"pool"`
	Node string `json:"node"`
	// +optional
	State ObjectState `json:"state,omitempty"`
	// +optional
	Synced bool `json:"synced,omitempty"`
}

// NexusStatus is the volume's target; present while the volume is published.
type NexusStatus struct {
	// +optional
	UUID string `json:"uuid,omitempty"`
	// +optional
	Node string `json:"node,omitempty"`
	// +optional
	State ObjectState `json:"state,omitempty"`
}

// MayastorVolumeStatus is what Mayastor reports about the volume.
type MayastorVolumeStatus struct {
	// +optional
	State ObjectState `json:"state,omitempty"`
	// +optional
	Replicas []ReplicaStatus `json:"replicas,omitempty"`
	// +optional
	Nexus *NexusStatus `json:"nexus,omitempty"`
}

// MayastorVolume is a replicated Mayastor volume.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=msv
// +kubebuilder:printcolumn:name="Replicas",type=integer,JSONPath=`.spec.numReplicas`
// +kubebuilder:printcolumn:name="Size",type=integer,JSONPath=`.spec.size`
// +kubebuilder:printcolumn:name="State",type=string,JSONPath=`.status.state`
type MayastorVolume struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec MayastorVolumeSpec `json:"spec"`
	// +optional
	Status MayastorVolumeStatus `json:"status,omitempty"`
}

// MayastorVolumeList is a list of MayastorVolume.
// +kubebuilder:object:root=true
type MayastorVolumeList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []MayastorVolume `json:"items"`
}

func init() {
	SchemeBuilder.Register(&MayastorVolume{}, &MayastorVolumeList{})
}
