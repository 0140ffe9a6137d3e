package v1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ECVolume is a declared extension of the data-model schema (issue 7): the
// volume that ECStripe.spec.volumeRef names. Its bytes are laid out from LBA 0
// in stripes of the policy's stripeSizeBytes (package geometry); each written
// stripe is one ECStripe. Deleting an ECVolume (through its finalizer) is the
// only way its stripes and their shard space go away (schema 7.3).

// ECVolumeFinalizer keeps an ECVolume until its stripes are deleted and their
// shard space is freed.
const ECVolumeFinalizer = "storage.billyronks.io/ecvolume-stripes"

// ECVolumeSpec is the desired volume.
// +kubebuilder:validation:XValidation:rule="self.policyRef == oldSelf.policyRef",message="spec.policyRef is immutable: existing stripes are encoded under the original policy"
// +kubebuilder:validation:XValidation:rule="self.sizeBytes >= oldSelf.sizeBytes",message="spec.sizeBytes may only grow: shrinking would orphan written stripes"
// +kubebuilder:validation:XValidation:rule="(has(self.stripeLayout) ? self.stripeLayout : 'ECStripes') == (has(oldSelf.stripeLayout) ? oldSelf.stripeLayout : 'ECStripes')",message="spec.stripeLayout is immutable: a volume's stripes stay in the layout they were written in (moving an existing volume needs a migration, not built)"
type ECVolumeSpec struct {
	// SizeBytes is the volume's size: a positive multiple of 512 (the LBA size).
	// +kubebuilder:validation:Minimum=512
	// +kubebuilder:validation:XValidation:rule="self % 512 == 0",message="spec.sizeBytes must be a multiple of 512 (the LBA size)"
	SizeBytes int64 `json:"sizeBytes"`
	// PolicyRef names the ErasureCodingPolicy every stripe of the volume is written under.
	// +kubebuilder:validation:MinLength=1
	PolicyRef string `json:"policyRef"`
	// StripeLayout is where the volume's per-stripe records live, fixed at
	// creation. ECStripes (the default, and every volume created before the
	// field): one ECStripe object per stripe, written on the write path.
	// PlacementGroups: each stripe's shards on its placement group's members
	// (ECPlacementGroup), its record in their stripe indexes, no API write
	// on the write path (README, "At scale", point 2).
	// +kubebuilder:validation:Enum=ECStripes;PlacementGroups
	// +optional
	StripeLayout StripeLayout `json:"stripeLayout,omitempty"`
}

// StripeLayout is an ECVolume's spec.stripeLayout.
type StripeLayout string

const (
	// LayoutECStripes: one ECStripe object per stripe (the default).
	LayoutECStripes StripeLayout = "ECStripes"
	// LayoutPlacementGroups: stripes placed by placement group, their
	// records with the shards.
	LayoutPlacementGroups StripeLayout = "PlacementGroups"
)

// Layout is spec.stripeLayout with its default.
func (s ECVolumeSpec) Layout() StripeLayout {
	if s.StripeLayout == "" {
		return LayoutECStripes
	}
	return s.StripeLayout
}

// ECVolumePhase is the lifecycle phase of an ECVolume.
// +kubebuilder:validation:Enum=Pending;Ready;Deleting;Error
type ECVolumePhase string

const (
	// ECVolumePending: the policy is missing or not yet usable.
	ECVolumePending ECVolumePhase = "Pending"
	// ECVolumeReady: stripes can be written and read.
	ECVolumeReady ECVolumePhase = "Ready"
	// ECVolumeDeleting: the finalizer is deleting stripes and freeing shard space.
	ECVolumeDeleting ECVolumePhase = "Deleting"
	// ECVolumeError: the volume cannot be used as it is: its
	// ErasureCodingPolicy is Invalid (spec.policyRef is immutable, so the
	// policy must be fixed). The Ready condition says why.
	ECVolumeError ECVolumePhase = "Error"
)

// Annotations the export (`couchestor ec-volume serve`) records on an
// ECVolume: where its journal replicas live. The ECVolume finalizer deletes
// the journals on every pool named in either.
const (
	// ECVolumeAnnotationJournalPools lists, comma-separated in replica order,
	// the pools whose shard servers hold the volume's journal replicas.
	ECVolumeAnnotationJournalPools = "storage.billyronks.io/journal-pools"
	// ECVolumeAnnotationJournalPoolsRetired lists pools that held a replica
	// before it was replaced; their replicas are garbage once the volume goes.
	ECVolumeAnnotationJournalPoolsRetired = "storage.billyronks.io/journal-pools-retired"
)

// ECVolumeConditionReady is the condition type saying whether the volume is
// usable; ConditionDegraded says whether some of its stripes are not Healthy.
const ECVolumeConditionReady = ConditionReady

// ECVolumeStatus is observed state.
type ECVolumeStatus struct {
	// +optional
	Phase ECVolumePhase `json:"phase,omitempty"`
	// Stripes is the number of ECStripe objects of the volume.
	// +kubebuilder:validation:Minimum=0
	// +optional
	Stripes int64 `json:"stripes,omitempty"`
	// BytesWritten is the number of volume bytes held by those stripes.
	// +kubebuilder:validation:Minimum=0
	// +optional
	BytesWritten int64 `json:"bytesWritten,omitempty"`
	// ObservedGeneration is the metadata.generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// ECVolume is an erasure-coded volume whose bytes live in ECStripes.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=ecv,categories=couchestor
// +kubebuilder:printcolumn:name="Size",type=integer,JSONPath=`.spec.sizeBytes`
// +kubebuilder:printcolumn:name="Policy",type=string,JSONPath=`.spec.policyRef`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Stripes",type=integer,JSONPath=`.status.stripes`
// +kubebuilder:printcolumn:name="Written",type=integer,JSONPath=`.status.bytesWritten`,description="Bytes held by stripes"
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ECVolume struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec ECVolumeSpec `json:"spec"`
	// +optional
	Status ECVolumeStatus `json:"status,omitempty"`
}

// ECVolumeList is a list of ECVolume.
// +kubebuilder:object:root=true
type ECVolumeList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ECVolume `json:"items"`
}

func init() {
	SchemeBuilder.Register(&ECVolume{}, &ECVolumeList{})
}
