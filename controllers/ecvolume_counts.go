package controllers

import (
	"time"

	"sigs.k8s.io/controller-runtime/pkg/source"

	"github.com/billyronks/couchestor/pkg/stripeindex"
)

// volumeStripeCounts is the ECVolume controller's view of the per-volume
// stripe counts that the shared stripe index keeps, maintained from the
// ECStripe informer's events: a volume's status then costs a map lookup per
// reconcile instead of a List of all its stripes per ECStripe event (which
// made a destage of n stripes cost O(n²) reads of the API server).
//
// It turns every change of a volume's counts into a reconcile request of that
// volume, told by the index after the change is counted (so the reconcile
// never reads counts older than the event that woke it), due window after the
// first change and deduplicated by the work queue: the stripe events of one
// volume within a window cost one reconcile and at most one status write.
// Nothing here lists stripes or reaches a shard server; orphan collection has
// its own controller (volumeOrphanCollector) that no ECStripe event wakes.
type volumeStripeCounts struct {
	index    *stripeindex.StripeIndex
	requests pendingRequests
}

func newVolumeStripeCounts(x *stripeindex.StripeIndex, window time.Duration) *volumeStripeCounts {
	c := &volumeStripeCounts{index: x, requests: pendingRequests{window: window}}
	x.OnVolumeChange(c.requests.add)
	return c
}

// synced reports whether the counts cover every stripe that existed when the
// informer started; counts before that are partial.
func (c *volumeStripeCounts) synced() bool { return c.index.Synced() }

func (c *volumeStripeCounts) counts(volume string) stripeindex.VolumeCounts {
	return c.index.VolumeCounts(volume)
}

// source enqueues a volume whenever its counts change.
func (c *volumeStripeCounts) source() source.Source { return c.requests.source() }
