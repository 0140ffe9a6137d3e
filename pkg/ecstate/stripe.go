package ecstate

import (
	"sort"
	"time"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
)

// Decodable says whether a stripe's data survives losing the listed shards
// (erasure.Codec satisfies it).
type Decodable interface {
	Decodable(lost []int) bool
}

// StripeInput is what the stripe state is decided from.
type StripeInput struct {
	// Prev is the recorded state.
	Prev storagev1.ECStripeState
	// Shards are the decided shard healths, one per shard of the stripe.
	Shards []storagev1.ShardHealth
	// DataShards is k: shard indices below it are data shards.
	DataShards int
	// Codec says which loss patterns are decodable.
	Codec Decodable
	// RebuildActive is true while a rebuild of the stripe is in flight.
	RebuildActive bool
	// Adopt is true when the writer's window on a stripe in Writing (or
	// without status) has passed (WriterOwns): the controller decides it.
	Adopt bool
}

// DefaultWritingGrace is how long a stripe may stay in Writing, or without
// status, before the ECStripe controller takes it from its writer. A writer
// holds a stripe for one or two API calls after its shards are durable.
const DefaultWritingGrace = time.Minute

// WriterOwns reports whether a stripe in state belongs to its writer at now,
// and until when. A stripe in Writing (since: status.lastModifiedTime, set
// when the writer entered it) or without status (since: its creation) is the
// writer's for grace; after that the writer is taken to have failed between
// making its shards durable and writing the stripe's status, and the
// controller adopts the stripe. Other states are never the writer's.
func WriterOwns(state storagev1.ECStripeState, since time.Time, grace time.Duration, now time.Time) (bool, time.Time) {
	if state != "" && state != storagev1.StripeWriting {
		return false, time.Time{}
	}
	until := since.Add(grace)
	return now.Before(until), until
}

// Transition names a change of stripe state that deserves an Event.
type Transition string

const (
	TransitionNone      Transition = ""
	TransitionDegraded  Transition = "Degraded"  // Healthy → Degraded
	TransitionFailed    Transition = "Failed"    // → Failed: data not decodable now
	TransitionRecovered Transition = "Recovered" // Failed → decodable again
	TransitionRebuilt   Transition = "Rebuilt"   // Rebuilding → Healthy
	TransitionHealed    Transition = "Healed"    // Degraded → Healthy without a rebuild (shards came back)
)

// Decision is the decided stripe state and its counts.
type Decision struct {
	// Owned is false for stripes whose writer owns the state (empty or
	// Writing): the controller must not change their state.
	Owned bool
	State storagev1.ECStripeState
	// HealthyShards, HealthyDataShards and HealthyParityShards count Healthy shards.
	HealthyShards, HealthyDataShards, HealthyParityShards int32
	// Lost are the shard indices that are not Healthy, sorted.
	Lost []int
	// Repairable are the lost shards a rebuild should replace (Missing or
	// Corrupted; not those already Rebuilding), sorted.
	Repairable []int
	// NeedsRebuild is true when the stripe is decodable and has repairable shards.
	NeedsRebuild bool
	Transition   Transition
}

// EvaluateStripe decides the lifecycle state of a stripe (schema 7.2).
func EvaluateStripe(in StripeInput) Decision {
	d := Decision{State: in.Prev}
	for _, s := range in.Shards {
		if s.State == storagev1.ShardHealthy {
			d.HealthyShards++
			if int(s.ShardIndex) < in.DataShards {
				d.HealthyDataShards++
			} else {
				d.HealthyParityShards++
			}
			continue
		}
		d.Lost = append(d.Lost, int(s.ShardIndex))
		if s.State == storagev1.ShardMissing || s.State == storagev1.ShardCorrupted {
			d.Repairable = append(d.Repairable, int(s.ShardIndex))
		}
	}
	sort.Ints(d.Lost)
	sort.Ints(d.Repairable)
	writing := in.Prev == "" || in.Prev == storagev1.StripeWriting
	if writing && !in.Adopt {
		return d
	}
	d.Owned = true
	decodable := len(d.Lost) == 0 || (in.Codec != nil && in.Codec.Decodable(d.Lost))
	switch {
	case len(d.Lost) == 0:
		d.State = storagev1.StripeHealthy
	case !decodable:
		d.State = storagev1.StripeFailed
	case in.RebuildActive:
		d.State = storagev1.StripeRebuilding
	default:
		d.State = storagev1.StripeDegraded
	}
	d.NeedsRebuild = decodable && len(d.Repairable) > 0 && !in.RebuildActive
	switch {
	case d.State == in.Prev:
	case d.State == storagev1.StripeFailed:
		d.Transition = TransitionFailed
	case in.Prev == storagev1.StripeFailed:
		d.Transition = TransitionRecovered
	case in.Prev == storagev1.StripeRebuilding && d.State == storagev1.StripeHealthy:
		d.Transition = TransitionRebuilt
	case in.Prev == storagev1.StripeDegraded && d.State == storagev1.StripeHealthy:
		d.Transition = TransitionHealed
	case (in.Prev == storagev1.StripeHealthy || writing) && d.State == storagev1.StripeDegraded:
		d.Transition = TransitionDegraded
	}
	return d
}

// ScrubDue reports whether a stripe last verified at last (zero: never) is
// due for a scrub at now, and when it will be due otherwise.
func ScrubDue(last time.Time, interval time.Duration, now time.Time) (bool, time.Time) {
	if last.IsZero() || interval <= 0 {
		return true, now
	}
	next := last.Add(interval)
	return !now.Before(next), next
}
