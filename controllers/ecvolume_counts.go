package controllers

import (
	"context"
	"sync"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
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
// never reads counts older than the event that woke it), and deduplicated by
// the work queue.
type volumeStripeCounts struct {
	mu    sync.Mutex
	index *stripeindex.StripeIndex
	queue workqueue.TypedRateLimitingInterface[reconcile.Request]
	dirty map[string]struct{} // changed before the source started
}

func newVolumeStripeCounts(x *stripeindex.StripeIndex) *volumeStripeCounts {
	c := &volumeStripeCounts{index: x, dirty: map[string]struct{}{}}
	x.OnVolumeChange(c.changed)
	return c
}

func (c *volumeStripeCounts) changed(volume string) {
	c.mu.Lock()
	q := c.queue
	if q == nil {
		c.dirty[volume] = struct{}{}
	}
	c.mu.Unlock()
	if q != nil {
		q.Add(reconcile.Request{NamespacedName: types.NamespacedName{Name: volume}})
	}
}

// synced reports whether the counts cover every stripe that existed when the
// informer started; counts before that are partial.
func (c *volumeStripeCounts) synced() bool { return c.index.Synced() }

func (c *volumeStripeCounts) counts(volume string) stripeindex.VolumeCounts {
	return c.index.VolumeCounts(volume)
}

// source enqueues a volume whenever its counts change.
func (c *volumeStripeCounts) source() source.Source {
	return source.Func(func(ctx context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) error {
		c.mu.Lock()
		c.queue = q
		dirty := c.dirty
		c.dirty = nil
		c.mu.Unlock()
		for v := range dirty {
			q.Add(reconcile.Request{NamespacedName: types.NamespacedName{Name: v}})
		}
		return nil
	})
}
