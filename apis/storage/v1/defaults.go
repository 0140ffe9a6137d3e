package v1

import (
	"sort"

	"k8s.io/utils/ptr"
)

// Schema defaults (database-schema.md section 2). The CRD carries the same
// values as +kubebuilder:default markers; the Default* functions apply them in
// Go too, so that defaulting does not depend on the CRD (controllers, tests and
// the defaulting webhook see fully defaulted objects).
const (
	DefaultHighWatermarkIOPS       int64  = 5000
	DefaultWarmWatermarkIOPS       int64  = 2000
	DefaultLowWatermarkIOPS        int64  = 500
	DefaultSamplingWindow          string = "1h"
	DefaultCooldownPeriod          string = "24h"
	DefaultStorageClassName        string = "mayastor"
	DefaultMaxConcurrentMigrations int32  = 2
	DefaultMigrationTimeout        string = "30m"
	DefaultEnabled                        = true
	DefaultDryRun                         = false
	DefaultECMinVolumeSizeBytes    int64  = 10737418240

	DefaultDataShards       int32       = 4
	DefaultParityShards     int32       = 2
	DefaultStripeSizeBytes  int64       = 1048576
	DefaultAlgorithm        ECAlgorithm = AlgorithmReedSolomon
	DefaultScrubbingEnabled             = false
	DefaultScrubInterval    string      = "7d"

	DefaultJournalSizeBytes        int64  = 10737418240
	DefaultJournalReplication      int32  = 3
	DefaultDestageThresholdPercent int32  = 80
	DefaultDestageInterval         string = "30s"
)

// DefaultStoragePolicy fills every unset field of p's spec with its schema default.
func DefaultStoragePolicy(p *StoragePolicy) { DefaultStoragePolicySpec(&p.Spec) }

// DefaultStoragePolicySpec fills every unset field of spec with its schema
// default. Selectors and ecPolicyRef have no default: absent means absent.
func DefaultStoragePolicySpec(spec *StoragePolicySpec) {
	setInt64(&spec.HighWatermarkIOPS, DefaultHighWatermarkIOPS)
	setInt64(&spec.WarmWatermarkIOPS, DefaultWarmWatermarkIOPS)
	setInt64(&spec.LowWatermarkIOPS, DefaultLowWatermarkIOPS)
	setString(&spec.SamplingWindow, DefaultSamplingWindow)
	setString(&spec.CooldownPeriod, DefaultCooldownPeriod)
	setString(&spec.StorageClassName, DefaultStorageClassName)
	if spec.MaxConcurrentMigrations == nil {
		spec.MaxConcurrentMigrations = ptr.To(DefaultMaxConcurrentMigrations)
	}
	setString(&spec.MigrationTimeout, DefaultMigrationTimeout)
	setBool(&spec.Enabled, DefaultEnabled)
	setBool(&spec.DryRun, DefaultDryRun)
	setInt64(&spec.ECMinVolumeSizeBytes, DefaultECMinVolumeSizeBytes)
}

// DefaultErasureCodingPolicy fills every unset field of p's spec with its default.
func DefaultErasureCodingPolicy(p *ErasureCodingPolicy) { DefaultErasureCodingPolicySpec(&p.Spec) }

// DefaultErasureCodingPolicySpec fills every unset field of spec with its
// default; minHealthyShards defaults to dataShards (after dataShards itself is
// defaulted). A present journalConfig gets its own defaults; an absent one
// stays absent.
func DefaultErasureCodingPolicySpec(spec *ErasureCodingPolicySpec) {
	if spec.DataShards == nil {
		spec.DataShards = ptr.To(DefaultDataShards)
	}
	if spec.ParityShards == nil {
		spec.ParityShards = ptr.To(DefaultParityShards)
	}
	setInt64(&spec.StripeSizeBytes, DefaultStripeSizeBytes)
	if spec.Algorithm == "" {
		spec.Algorithm = DefaultAlgorithm
	}
	if spec.MinHealthyShards == nil {
		spec.MinHealthyShards = ptr.To(*spec.DataShards)
	}
	setBool(&spec.ScrubbingEnabled, DefaultScrubbingEnabled)
	setString(&spec.ScrubInterval, DefaultScrubInterval)
	if j := spec.JournalConfig; j != nil {
		setInt64(&j.JournalSizeBytes, DefaultJournalSizeBytes)
		if j.ReplicationFactor == nil {
			j.ReplicationFactor = ptr.To(DefaultJournalReplication)
		}
		if j.DestageThresholdPercent == nil {
			j.DestageThresholdPercent = ptr.To(DefaultDestageThresholdPercent)
		}
		setString(&j.DestageInterval, DefaultDestageInterval)
	}
}

// DefaultECStripe puts shardLocations in shardIndex order. The list is a map
// keyed by shardIndex, so the order carries no meaning for the API; a
// canonical order makes a valid stripe's shardLocations[i] the shard with
// index i for every reader.
func DefaultECStripe(s *ECStripe) {
	sort.SliceStable(s.Spec.ShardLocations, func(i, j int) bool {
		return s.Spec.ShardLocations[i].ShardIndex < s.Spec.ShardLocations[j].ShardIndex
	})
}

func setInt64(p **int64, v int64) {
	if *p == nil {
		*p = ptr.To(v)
	}
}

func setBool(p **bool, v bool) {
	if *p == nil {
		*p = ptr.To(v)
	}
}

func setString(p *string, v string) {
	if *p == "" {
		*p = v
	}
}
