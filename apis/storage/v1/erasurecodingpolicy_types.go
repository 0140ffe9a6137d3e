package v1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ECAlgorithm is the erasure code of a policy.
// +kubebuilder:validation:Enum=ReedSolomon;LRC
type ECAlgorithm string

const (
	// AlgorithmReedSolomon is systematic Reed-Solomon: any parityShards losses are decodable.
	AlgorithmReedSolomon ECAlgorithm = "ReedSolomon"
	// AlgorithmLRC is a locally repairable code; its layout is pinned in package geometry.
	AlgorithmLRC ECAlgorithm = "LRC"
)

// JournalConfig configures the replicated write journal in front of the stripes.
type JournalConfig struct {
	// JournalSizeBytes is the journal's hard size bound per volume.
	// +kubebuilder:default=10737418240
	// +kubebuilder:validation:Minimum=0
	// +optional
	JournalSizeBytes *int64 `json:"journalSizeBytes,omitempty"`
	// ReplicationFactor is the number of journal replicas, on distinct nodes.
	// +kubebuilder:default=3
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=255
	// +optional
	ReplicationFactor *int32 `json:"replicationFactor,omitempty"`
	// DestageThresholdPercent: the journal is destaged into stripes when this full.
	// +kubebuilder:default=80
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	// +optional
	DestageThresholdPercent *int32 `json:"destageThresholdPercent,omitempty"`
	// DestageInterval: the journal is destaged at least this often.
	// +kubebuilder:default="30s"
	// +optional
	DestageInterval string `json:"destageInterval,omitempty"`
}

// ErasureCodingPolicySpec says how cold data is protected (schema section 2.2).
// +kubebuilder:validation:XValidation:rule="!has(self.dataShards) || !has(self.parityShards) || self.dataShards + self.parityShards <= 255",message="spec.dataShards + spec.parityShards must not exceed 255 (shard indices are u8)"
// +kubebuilder:validation:XValidation:rule="!has(self.minHealthyShards) || !has(self.dataShards) || !has(self.parityShards) || (self.minHealthyShards >= self.dataShards && self.minHealthyShards <= self.dataShards + self.parityShards)",message="spec.minHealthyShards must lie in [spec.dataShards, spec.dataShards + spec.parityShards]",fieldPath=".minHealthyShards"
// +kubebuilder:validation:XValidation:rule="!has(self.algorithm) || !has(self.dataShards) || !has(self.parityShards) || self.algorithm != 'LRC' || (self.parityShards >= 2 && self.dataShards % (self.parityShards / 2) == 0)",message="spec.algorithm LRC needs spec.parityShards >= 2 and spec.dataShards divisible by the number of local groups (parityShards / 2, rounded down)"
type ErasureCodingPolicySpec struct {
	// DataShards (k) per stripe.
	// +kubebuilder:default=4
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=255
	// +optional
	DataShards *int32 `json:"dataShards,omitempty"`
	// ParityShards (m) per stripe.
	// +kubebuilder:default=2
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=255
	// +optional
	ParityShards *int32 `json:"parityShards,omitempty"`
	// StripeSizeBytes is the data bytes per stripe: 64 KiB to 64 MiB, a multiple of 4096.
	// +kubebuilder:default=1048576
	// +kubebuilder:validation:Minimum=65536
	// +kubebuilder:validation:Maximum=67108864
	// +kubebuilder:validation:XValidation:rule="self % 4096 == 0",message="spec.stripeSizeBytes must be a multiple of 4096"
	// +optional
	StripeSizeBytes *int64 `json:"stripeSizeBytes,omitempty"`
	// Algorithm is the erasure code. Defaults to ReedSolomon (a declared decision: the schema gives none).
	// +kubebuilder:default=ReedSolomon
	// +optional
	Algorithm ECAlgorithm `json:"algorithm,omitempty"`
	// JournalConfig configures the write journal; absent means no journal settings were given.
	// +optional
	JournalConfig *JournalConfig `json:"journalConfig,omitempty"`
	// MinHealthyShards: a new stripe is written only when at least this many shards can be
	// placed on healthy pools. Defaults to dataShards (by the admission webhook).
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=255
	// +optional
	MinHealthyShards *int32 `json:"minHealthyShards,omitempty"`
	// ScrubbingEnabled turns periodic verification of every shard on.
	// +kubebuilder:default=false
	// +optional
	ScrubbingEnabled *bool `json:"scrubbingEnabled,omitempty"`
	// ScrubInterval is how often every stripe is scrubbed.
	// +kubebuilder:default="7d"
	// +optional
	ScrubInterval string `json:"scrubInterval,omitempty"`
}

// ErasureCodingPolicyPhase is the phase of an ErasureCodingPolicy.
// +kubebuilder:validation:Enum=Pending;Ready;Invalid;Active
type ErasureCodingPolicyPhase string

const (
	ECPolicyPending ErasureCodingPolicyPhase = "Pending"
	ECPolicyReady   ErasureCodingPolicyPhase = "Ready"
	ECPolicyInvalid ErasureCodingPolicyPhase = "Invalid"
	ECPolicyActive  ErasureCodingPolicyPhase = "Active"
)

// Condition types of an ErasureCodingPolicy and of an ECVolume. The schema
// gives conditions only to StoragePolicy (type, status, lastTransitionTime,
// reason, message: metav1.Condition's fields, which add observedGeneration);
// issue 22 extends both kinds with the same shape and these two types.
const (
	// ConditionReady: the policy can take new stripes (phase Ready or
	// Active); the volume can be written and read under its policy.
	ConditionReady = "Ready"
	// ConditionDegraded: some stripes are Degraded, Rebuilding or Failed.
	ConditionDegraded = "Degraded"
)

// ErasureCodingPolicyStatus is observed state, schema section 2.2, plus
// conditions (a declared extension, see ConditionReady).
type ErasureCodingPolicyStatus struct {
	// +optional
	Phase ErasureCodingPolicyPhase `json:"phase,omitempty"`
	// +optional
	ActiveVolumes int32 `json:"activeVolumes,omitempty"`
	// +kubebuilder:validation:Minimum=0
	// +optional
	TotalStripes int64 `json:"totalStripes,omitempty"`
	// +kubebuilder:validation:Minimum=0
	// +optional
	HealthyStripes int64 `json:"healthyStripes,omitempty"`
	// +kubebuilder:validation:Minimum=0
	// +optional
	DegradedStripes int64 `json:"degradedStripes,omitempty"`
	// +kubebuilder:validation:Minimum=0
	// +optional
	RebuildingStripes int64 `json:"rebuildingStripes,omitempty"`
	// StorageEfficiency is dataShards / (dataShards + parityShards), e.g. 0.667 for 4+2.
	// +optional
	StorageEfficiency float64 `json:"storageEfficiency,omitempty"`
	// +optional
	LastValidationTime *metav1.Time `json:"lastValidationTime,omitempty"`
	// +optional
	Message string `json:"message,omitempty"`
	// Conditions are Ready and Degraded, each with the generation it describes.
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// ErasureCodingPolicy says how cold data is erasure coded.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=ecp,categories=couchestor
// +kubebuilder:printcolumn:name="Data",type=integer,JSONPath=`.spec.dataShards`
// +kubebuilder:printcolumn:name="Parity",type=integer,JSONPath=`.spec.parityShards`
// +kubebuilder:printcolumn:name="Algorithm",type=string,JSONPath=`.spec.algorithm`
// +kubebuilder:printcolumn:name="Stripe",type=integer,JSONPath=`.spec.stripeSizeBytes`,description="Stripe size in bytes"
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Efficiency",type=number,JSONPath=`.status.storageEfficiency`
// +kubebuilder:printcolumn:name="Stripes",type=integer,JSONPath=`.status.totalStripes`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ErasureCodingPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +kubebuilder:default={}
	// +optional
	Spec ErasureCodingPolicySpec `json:"spec,omitempty"`
	// +optional
	Status ErasureCodingPolicyStatus `json:"status,omitempty"`
}

// ErasureCodingPolicyList is a list of ErasureCodingPolicy.
// +kubebuilder:object:root=true
type ErasureCodingPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ErasureCodingPolicy `json:"items"`
}

func init() {
	SchemeBuilder.Register(&ErasureCodingPolicy{}, &ErasureCodingPolicyList{})
}
