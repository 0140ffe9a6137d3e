package v1

import (
	"strconv"

	"github.com/zeebo/xxh3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ECStripeVolumeLabel labels every ECStripe with its volume (a hash for names
// longer than a label value may be: ECStripeVolumeLabelValue). It is for
// people (kubectl get ecs -l); programs select a volume's stripes by the
// field ECStripeVolumeRefField, which cannot drift from spec.volumeRef. The
// webhook keeps the label immutable once set (ValidateECStripeUpdate).
const ECStripeVolumeLabel = "storage.billyronks.io/volume"

// ECStripeAnnotationRebuildIntent on an ECStripe records a rebuild in
// progress (pkg/rebuild's Intent, JSON). Its new shards are unreferenced
// until the rebuild records them, so orphan collection keeps the shards of
// such a stripe however old they are.
const ECStripeAnnotationRebuildIntent = "storage.billyronks.io/rebuild"

// ECStripeVolumeRefField selects the ECStripes of one volume: a field
// selector the API server answers (the CRD declares it a selectableField)
// and the name of the field index on spec.volumeRef in caches, so
// client.MatchingFields{ECStripeVolumeRefField: volume} works on both.
const ECStripeVolumeRefField = "spec.volumeRef"

// ECStripeVolumeLabelValue is the ECStripeVolumeLabel value of a volume.
func ECStripeVolumeLabelValue(volume string) string {
	if len(volume) <= 63 {
		return volume
	}
	return "h-" + strconv.FormatUint(xxh3.HashString(volume), 16)
}

// ShardLocation says where one shard of a stripe lives.
type ShardLocation struct {
	// ShardIndex is in [0, k+m); indices below k are data shards.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=254
	ShardIndex int32 `json:"shardIndex"`
	// IsDataShard is true exactly for shardIndex < dataShards.
	IsDataShard bool `json:"isDataShard"`
	// PoolName is the DiskPool holding the shard.
	PoolName string `json:"poolName"`
	// NodeName is the node of that pool.
	NodeName string `json:"nodeName"`
	// Offset of the shard inside its pool's shard store, in bytes.
	// +kubebuilder:validation:Minimum=0
	Offset int64 `json:"offset"`
	// SizeBytes of the shard (ceil(stripeSizeBytes / k), zero-padded).
	// +kubebuilder:validation:Minimum=0
	SizeBytes int64 `json:"sizeBytes"`
	// Checksum of the shard's bytes.
	// +optional
	Checksum string `json:"checksum,omitempty"`
}

// LbaRange is a half-open range of 512-byte blocks: [startLba, endLba).
// +kubebuilder:validation:XValidation:rule="self.startLba < self.endLba",message="spec.lbaRange.startLba must be less than spec.lbaRange.endLba (endLba is exclusive; a stripe is never empty)"
type LbaRange struct {
	// +kubebuilder:validation:Minimum=0
	StartLba int64 `json:"startLba"`
	// EndLba is exclusive.
	// +kubebuilder:validation:Minimum=0
	EndLba int64 `json:"endLba"`
}

// ECStripeSpec records one erasure-coded stripe (schema section 2.3).
type ECStripeSpec struct {
	// VolumeRef names the volume the stripe belongs to. Immutable: the
	// stripe's shards hold that volume's bytes.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="spec.volumeRef is immutable: the stripe's shards hold that volume's data"
	VolumeRef string `json:"volumeRef"`
	// StripeID is unique within the volume and monotonically increasing.
	// Immutable: it fixes the stripe's place in the volume.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="spec.stripeId is immutable: it fixes the stripe's place in the volume"
	StripeID int64 `json:"stripeId"`
	// PolicyRef names the ErasureCodingPolicy the stripe was written under.
	// Immutable: the shards were encoded under it.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="spec.policyRef is immutable: the stripe's shards were encoded under that policy"
	PolicyRef string `json:"policyRef"`
	// ShardLocations has exactly dataShards + parityShards entries, one per shardIndex.
	// +listType=map
	// +listMapKey=shardIndex
	// +kubebuilder:validation:MaxItems=255
	ShardLocations []ShardLocation `json:"shardLocations"`
	// LbaRange is the volume range the stripe holds. startLba is immutable;
	// endLba may only grow (a volume that grew extends its last, partial
	// stripe the next time it is written).
	// +kubebuilder:validation:XValidation:rule="self.startLba == oldSelf.startLba",message="spec.lbaRange.startLba is immutable: it fixes the stripe's place in the volume",fieldPath=".startLba"
	// +kubebuilder:validation:XValidation:rule="self.endLba >= oldSelf.endLba",message="spec.lbaRange.endLba may only grow (a grown volume extends its last stripe): shrinking would drop written data",fieldPath=".endLba"
	LbaRange LbaRange `json:"lbaRange"`
	// Checksum of the stripe, derived from the shard checksums.
	// +optional
	Checksum string `json:"checksum,omitempty"`
	// Generation is bumped on every copy-on-write update of the stripe's shards.
	// +kubebuilder:validation:Minimum=0
	// +optional
	Generation int64 `json:"generation,omitempty"`
}

// ECStripeState is the lifecycle state of a stripe (schema 7.2).
// +kubebuilder:validation:Enum=Healthy;Degraded;Rebuilding;Failed;Writing
type ECStripeState string

const (
	StripeWriting    ECStripeState = "Writing"
	StripeHealthy    ECStripeState = "Healthy"
	StripeDegraded   ECStripeState = "Degraded"
	StripeRebuilding ECStripeState = "Rebuilding"
	StripeFailed     ECStripeState = "Failed"
)

// ShardState is the health of one shard.
// +kubebuilder:validation:Enum=Healthy;Missing;Corrupted;Rebuilding
type ShardState string

const (
	ShardHealthy    ShardState = "Healthy"
	ShardMissing    ShardState = "Missing"
	ShardCorrupted  ShardState = "Corrupted"
	ShardRebuilding ShardState = "Rebuilding"
)

// ShardHealth is the observed health of one shard.
type ShardHealth struct {
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=254
	ShardIndex int32      `json:"shardIndex"`
	State      ShardState `json:"state"`
	// +optional
	LastVerified *metav1.Time `json:"lastVerified,omitempty"`
	// +optional
	Error string `json:"error,omitempty"`
}

// ECStripeStatus is observed state, schema section 2.3.
type ECStripeStatus struct {
	// +optional
	State ECStripeState `json:"state,omitempty"`
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=255
	// +optional
	HealthyShards int32 `json:"healthyShards,omitempty"`
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=255
	// +optional
	HealthyDataShards int32 `json:"healthyDataShards,omitempty"`
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=255
	// +optional
	HealthyParityShards int32 `json:"healthyParityShards,omitempty"`
	// +optional
	LastVerificationTime *metav1.Time `json:"lastVerificationTime,omitempty"`
	// +optional
	LastModifiedTime *metav1.Time `json:"lastModifiedTime,omitempty"`
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	// +optional
	RebuildProgress *int32 `json:"rebuildProgress,omitempty"`
	// +listType=map
	// +listMapKey=shardIndex
	// +kubebuilder:validation:MaxItems=255
	// +optional
	ShardHealth []ShardHealth `json:"shardHealth,omitempty"`
}

// ECStripe records one erasure-coded stripe: its LBA range and where each shard lives.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=ecs,categories=couchestor
// +kubebuilder:selectablefield:JSONPath=`.spec.volumeRef`
// +kubebuilder:printcolumn:name="Volume",type=string,JSONPath=`.spec.volumeRef`
// +kubebuilder:printcolumn:name="Stripe",type=integer,JSONPath=`.spec.stripeId`
// +kubebuilder:printcolumn:name="State",type=string,JSONPath=`.status.state`
// +kubebuilder:printcolumn:name="Healthy",type=integer,JSONPath=`.status.healthyShards`,description="Healthy shards"
// +kubebuilder:printcolumn:name="Start LBA",type=integer,JSONPath=`.spec.lbaRange.startLba`
// +kubebuilder:printcolumn:name="End LBA",type=integer,JSONPath=`.spec.lbaRange.endLba`,description="Exclusive"
// +kubebuilder:printcolumn:name="Policy",type=string,JSONPath=`.spec.policyRef`,priority=1
// +kubebuilder:printcolumn:name="Generation",type=integer,JSONPath=`.spec.generation`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ECStripe struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec ECStripeSpec `json:"spec"`
	// +optional
	Status ECStripeStatus `json:"status,omitempty"`
}

// ECStripeList is a list of ECStripe.
// +kubebuilder:object:root=true
type ECStripeList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ECStripe `json:"items"`
}

func init() {
	SchemeBuilder.Register(&ECStripe{}, &ECStripeList{})
}
