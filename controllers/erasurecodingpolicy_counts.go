package controllers

import (
	"sync"

	"sigs.k8s.io/controller-runtime/pkg/source"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/stripeindex"
)

// StripeCounts is the roll-up of one policy's stripes.
type StripeCounts = stripeindex.PolicyCounts

// StripeCounter is the ErasureCodingPolicy controller's view of the
// per-policy stripe counts that the shared stripe index keeps
// (stripeindex.StripeIndex.Counts: per state, and the volumes), maintained
// from the ECStripe informer's events. The policy roll-up then costs a map
// lookup instead of a List of every stripe per reconcile (100,000 stripes
// per cluster is the design target), and the stripes are counted once, for
// the controllers and the webhooks alike.
//
// It also turns every change of a policy's counts into a reconcile request of
// that policy (Source), deduplicated by the work queue, so the policy status
// follows its stripes without a per-stripe watch of its own.
type StripeCounter struct {
	mu       sync.Mutex
	index    *stripeindex.StripeIndex
	requests pendingRequests
	onChange func(policy string, state storagev1.ECStripeState, delta int64)
}

// NewStripeCounter returns a counter not yet attached. onChange (may be nil)
// hears every per-state delta, e.g. to keep a gauge.
func NewStripeCounter(onChange func(policy string, state storagev1.ECStripeState, delta int64)) *StripeCounter {
	return &StripeCounter{onChange: onChange}
}

// Attach reads the counts of x and listens to their changes. Call it before
// the informer feeding x starts.
func (c *StripeCounter) Attach(x *stripeindex.StripeIndex) {
	c.mu.Lock()
	c.index = x
	c.mu.Unlock()
	x.OnPolicyChange(c.changed)
}

// Synced reports whether the counts cover every stripe that existed when the
// informer started; counts before that are partial.
func (c *StripeCounter) Synced() bool {
	c.mu.Lock()
	x := c.index
	c.mu.Unlock()
	return x != nil && x.Synced()
}

func (c *StripeCounter) changed(policy string, state storagev1.ECStripeState, delta int64) {
	if c.onChange != nil {
		c.onChange(policy, state, delta)
	}
	c.requests.add(policy)
}

// Counts returns the roll-up of policy.
func (c *StripeCounter) Counts(policy string) StripeCounts {
	c.mu.Lock()
	x := c.index
	c.mu.Unlock()
	if x == nil {
		return StripeCounts{ByState: map[storagev1.ECStripeState]int64{}}
	}
	return x.Counts(policy)
}

// Source enqueues a policy whenever its counts change.
func (c *StripeCounter) Source() source.Source { return c.requests.source() }
