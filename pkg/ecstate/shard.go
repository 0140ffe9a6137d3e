package ecstate

import (
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
)

// FindingKind is what a read or scrub of one shard found.
type FindingKind string

const (
	// FindingNone: the shard was not read this time.
	FindingNone FindingKind = ""
	// FindingVerified: the shard was read and its bytes match the recorded checksum.
	FindingVerified FindingKind = "Verified"
	// FindingCorrupt: the shard was read and its bytes (or its header) do not
	// match what the ECStripe records.
	FindingCorrupt FindingKind = "Corrupt"
	// FindingNotFound: the shard server answered, and holds no such shard at
	// the recorded location.
	FindingNotFound FindingKind = "NotFound"
	// FindingUnreachable: the read failed in transit (timeouts, refused
	// connections). It says nothing about the shard; the pool's verdict decides.
	FindingUnreachable FindingKind = "Unreachable"
)

// DetailRebuilt is the Detail of the Verified finding a rebuild reports for
// each shard it wrote: the stripe's shards changed (lastModifiedTime).
const DetailRebuilt = "rebuilt"

// Finding is the result of reading one shard at its current location.
type Finding struct {
	Kind FindingKind
	At   time.Time
	// Detail is the error or mismatch, for status and Events.
	Detail string
}

// ShardEvidence is everything known about one shard of a stripe.
type ShardEvidence struct {
	Index int
	// Pool is the verdict on the pool in shardLocations.
	Pool PoolVerdict
	// Finding is a read of the shard made since the previous decision.
	Finding Finding
	// Rebuilding is true while a rebuild is writing a replacement of the shard.
	Rebuilding bool
	// Prev is the shard's health as last recorded (nil: never recorded).
	Prev *storagev1.ShardHealth
	// PoolIsEvidence is true when no reader can verify shards (no shard-server
	// client configured): a Missing shard whose pool is Up again is then
	// Healthy on the pool's word. Otherwise a Missing shard stays Missing
	// until a read verifies it.
	PoolIsEvidence bool
}

// ShardHealthOf decides the health of one shard. Precedence: a rebuild in
// flight; a read's evidence; a recorded corruption (sticky until a read
// verifies the shard or a rebuild replaces it); the pool verdict (Out →
// Missing; Suspect → unchanged; Up → Healthy, except that a Missing shard
// needs a verifying read unless PoolIsEvidence).
func ShardHealthOf(e ShardEvidence) storagev1.ShardHealth {
	h := storagev1.ShardHealth{ShardIndex: int32(e.Index), State: storagev1.ShardHealthy}
	if e.Prev != nil {
		h.LastVerified = e.Prev.LastVerified
	}
	prevState := storagev1.ShardHealthy
	if e.Prev != nil && e.Prev.State != "" {
		prevState = e.Prev.State
	}
	switch {
	case e.Rebuilding:
		h.State = storagev1.ShardRebuilding
		h.Error = "a rebuild is writing a replacement of this shard"
	case e.Finding.Kind == FindingCorrupt:
		h.State = storagev1.ShardCorrupted
		h.Error = "checksum mismatch: " + e.Finding.Detail
	case e.Finding.Kind == FindingNotFound:
		h.State = storagev1.ShardMissing
		h.Error = "shard server holds no such shard: " + e.Finding.Detail
	case e.Finding.Kind == FindingVerified && e.Pool.State != PoolOut:
		h.State = storagev1.ShardHealthy
		t := metav1.NewTime(e.Finding.At)
		h.LastVerified = &t
	case prevState == storagev1.ShardCorrupted:
		h.State = storagev1.ShardCorrupted
		h.Error = e.Prev.Error
	case prevState == storagev1.ShardRebuilding:
		// The rebuild stopped without verifying a replacement: the shard at
		// the recorded location is what needed rebuilding in the first place.
		h.State = storagev1.ShardMissing
		h.Error = "rebuild of this shard did not complete"
	case e.Pool.State == PoolOut:
		h.State = storagev1.ShardMissing
		h.Error = fmt.Sprintf("pool down since %s (%s), past the down-out delay", e.Pool.DownSince.UTC().Format(time.RFC3339), e.Pool.Reason)
	case e.Pool.State == PoolSuspect:
		// A restart or rolling upgrade must not cost a rebuild: keep what we had.
		h.State = prevState
		h.Error = fmt.Sprintf("pool down since %s (%s); counted Missing at %s unless it returns", e.Pool.DownSince.UTC().Format(time.RFC3339), e.Pool.Reason, e.Pool.OutAt.UTC().Format(time.RFC3339))
	case prevState == storagev1.ShardMissing && !e.PoolIsEvidence:
		h.State = storagev1.ShardMissing
		h.Error = "pool is up again; the shard stays Missing until a read verifies it"
		if e.Finding.Kind == FindingUnreachable {
			h.Error = "pool is up but the shard could not be read: " + e.Finding.Detail
		}
	default:
		h.State = storagev1.ShardHealthy
	}
	return h
}
