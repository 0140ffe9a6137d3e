package v1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// StoragePolicySpec says which volumes are tiered, by which IOPS watermarks,
// onto which pools (schema section 2.1).
// +kubebuilder:validation:XValidation:rule="!has(self.highWatermarkIOPS) || !has(self.warmWatermarkIOPS) || self.highWatermarkIOPS > self.warmWatermarkIOPS",message="spec.highWatermarkIOPS must be greater than spec.warmWatermarkIOPS",fieldPath=".highWatermarkIOPS"
// +kubebuilder:validation:XValidation:rule="!has(self.warmWatermarkIOPS) || !has(self.lowWatermarkIOPS) || self.warmWatermarkIOPS > self.lowWatermarkIOPS",message="spec.warmWatermarkIOPS must be greater than spec.lowWatermarkIOPS",fieldPath=".warmWatermarkIOPS"
type StoragePolicySpec struct {
	// HighWatermarkIOPS: a volume at or above this many IOPS over the sampling window is hot.
	// +kubebuilder:default=5000
	// +kubebuilder:validation:Minimum=0
	// +optional
	HighWatermarkIOPS *int64 `json:"highWatermarkIOPS,omitempty"`

	// WarmWatermarkIOPS: with a warm tier, a volume at or above this (and below high) is warm.
	// +kubebuilder:default=2000
	// +kubebuilder:validation:Minimum=0
	// +optional
	WarmWatermarkIOPS *int64 `json:"warmWatermarkIOPS,omitempty"`

	// LowWatermarkIOPS: a volume at or below this many IOPS is cold.
	// +kubebuilder:default=500
	// +kubebuilder:validation:Minimum=0
	// +optional
	LowWatermarkIOPS *int64 `json:"lowWatermarkIOPS,omitempty"`

	// SamplingWindow is the window IOPS are averaged over (Go duration syntax plus days, e.g. "1h", "7d").
	// +kubebuilder:default="1h"
	// +optional
	SamplingWindow string `json:"samplingWindow,omitempty"`

	// CooldownPeriod is the minimum time between two migration attempts of one volume.
	// +kubebuilder:default="24h"
	// +optional
	CooldownPeriod string `json:"cooldownPeriod,omitempty"`

	// StorageClassName selects the PersistentVolumes this policy watches.
	// +kubebuilder:default="mayastor"
	// +optional
	StorageClassName string `json:"storageClassName,omitempty"`

	// HotPoolSelector selects the DiskPools of the hot tier by their topology labels. Absent: no hot tier.
	// +optional
	HotPoolSelector *metav1.LabelSelector `json:"hotPoolSelector,omitempty"`

	// WarmPoolSelector selects the DiskPools of the warm tier. Absent: no warm tier.
	// +optional
	WarmPoolSelector *metav1.LabelSelector `json:"warmPoolSelector,omitempty"`

	// ColdPoolSelector selects the DiskPools of the cold tier. Absent: no cold tier.
	// +optional
	ColdPoolSelector *metav1.LabelSelector `json:"coldPoolSelector,omitempty"`

	// VolumeSelector narrows the watched volumes by their PersistentVolumeClaim's labels. Absent: every volume of the storage class.
	// +optional
	VolumeSelector *metav1.LabelSelector `json:"volumeSelector,omitempty"`

	// MaxConcurrentMigrations bounds the migrations this policy runs at once.
	// +kubebuilder:default=2
	// +kubebuilder:validation:Minimum=1
	// +optional
	MaxConcurrentMigrations *int32 `json:"maxConcurrentMigrations,omitempty"`

	// MigrationTimeout bounds one replica move; past it the move is rolled back.
	// +kubebuilder:default="30m"
	// +optional
	MigrationTimeout string `json:"migrationTimeout,omitempty"`

	// Enabled: false stops all evaluation and migration for this policy (phase Disabled).
	// +kubebuilder:default=true
	// +optional
	Enabled *bool `json:"enabled,omitempty"`

	// DryRun records what would move in the migration history and moves nothing.
	// +kubebuilder:default=false
	// +optional
	DryRun *bool `json:"dryRun,omitempty"`

	// ECPolicyRef names the ErasureCodingPolicy for cold volumes that qualify for erasure coding.
	// The ErasureCodingPolicy must exist before this policy is applied.
	// +optional
	ECPolicyRef string `json:"ecPolicyRef,omitempty"`

	// ECMinVolumeSizeBytes: cold volumes at least this large qualify for erasure coding.
	// +kubebuilder:default=10737418240
	// +kubebuilder:validation:Minimum=0
	// +optional
	ECMinVolumeSizeBytes *int64 `json:"ecMinVolumeSizeBytes,omitempty"`
}

// StoragePolicyPhase is the lifecycle phase of a StoragePolicy (schema 7.1).
// +kubebuilder:validation:Enum=Pending;Active;Disabled;Error
type StoragePolicyPhase string

const (
	StoragePolicyPending  StoragePolicyPhase = "Pending"
	StoragePolicyActive   StoragePolicyPhase = "Active"
	StoragePolicyDisabled StoragePolicyPhase = "Disabled"
	StoragePolicyError    StoragePolicyPhase = "Error"
)

// MaxMigrationHistory is the number of newest history entries kept (schema 7.3).
const MaxMigrationHistory = 50

// MigrationHistoryEntry records one migration attempt, or one dry-run decision.
type MigrationHistoryEntry struct {
	VolumeName string      `json:"volumeName"`
	Timestamp  metav1.Time `json:"timestamp"`
	FromTier   string      `json:"fromTier"`
	ToTier     string      `json:"toTier"`
	// TriggerIOPS is the measured IOPS that caused the decision.
	TriggerIOPS float64 `json:"triggerIOPS"`
	// Duration of the attempt, Go duration syntax.
	// +optional
	Duration string `json:"duration,omitempty"`
	Success  bool   `json:"success"`
	// +optional
	Error string `json:"error,omitempty"`
	// DryRun marks a decision recorded in dry-run mode: nothing was moved, and
	// it counts in neither totalMigrations nor failedMigrations (a declared
	// extension of the schema).
	// +optional
	DryRun bool `json:"dryRun,omitempty"`
}

// StoragePolicyStatus is observed state, schema section 2.1.
type StoragePolicyStatus struct {
	// +optional
	Phase StoragePolicyPhase `json:"phase,omitempty"`
	// +optional
	WatchedVolumes int32 `json:"watchedVolumes"`
	// +optional
	HotVolumes int32 `json:"hotVolumes"`
	// +optional
	WarmVolumes int32 `json:"warmVolumes"`
	// +optional
	ColdVolumes int32 `json:"coldVolumes"`
	// +optional
	ActiveMigrations int32 `json:"activeMigrations"`
	// TotalMigrations counts finished migration attempts; it never decreases.
	// +kubebuilder:validation:Minimum=0
	// +optional
	TotalMigrations int64 `json:"totalMigrations"`
	// FailedMigrations counts failed migration attempts; it never decreases.
	// +kubebuilder:validation:Minimum=0
	// +optional
	FailedMigrations int64 `json:"failedMigrations"`
	// +optional
	LastReconcileTime *metav1.Time `json:"lastReconcileTime,omitempty"`
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// MigrationHistory holds the newest entries first, at most 50.
	// +kubebuilder:validation:MaxItems=50
	// +optional
	MigrationHistory []MigrationHistoryEntry `json:"migrationHistory,omitempty"`
}

// StoragePolicy moves volumes between hot, warm and cold DiskPools by their measured IOPS.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=sp;spolicy,categories=couchestor
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Hot",type=integer,JSONPath=`.status.hotVolumes`
// +kubebuilder:printcolumn:name="Warm",type=integer,JSONPath=`.status.warmVolumes`
// +kubebuilder:printcolumn:name="Cold",type=integer,JSONPath=`.status.coldVolumes`
// +kubebuilder:printcolumn:name="Active",type=integer,JSONPath=`.status.activeMigrations`,description="Migrations in progress"
// +kubebuilder:printcolumn:name="Total",type=integer,JSONPath=`.status.totalMigrations`,description="Migrations finished"
// +kubebuilder:printcolumn:name="Watched",type=integer,JSONPath=`.status.watchedVolumes`,priority=1
// +kubebuilder:printcolumn:name="Failed",type=integer,JSONPath=`.status.failedMigrations`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type StoragePolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +kubebuilder:default={}
	// +optional
	Spec StoragePolicySpec `json:"spec,omitempty"`
	// +optional
	Status StoragePolicyStatus `json:"status,omitempty"`
}

// StoragePolicyList is a list of StoragePolicy.
// +kubebuilder:object:root=true
type StoragePolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []StoragePolicy `json:"items"`
}

func init() {
	SchemeBuilder.Register(&StoragePolicy{}, &StoragePolicyList{})
}
