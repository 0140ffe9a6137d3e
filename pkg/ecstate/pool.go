package ecstate

import (
	"sync"
	"time"
)

// PoolState is the verdict on a pool that holds shards.
type PoolState string

const (
	// PoolUp: the pool answers; its shards are what reads and scrubs say.
	PoolUp PoolState = "Up"
	// PoolSuspect: the pool is down, but for less than the down-out delay.
	// Its shards keep their previous state.
	PoolSuspect PoolState = "Suspect"
	// PoolOut: the pool has been down for the down-out delay or longer; its
	// shards are Missing.
	PoolOut PoolState = "Out"
)

// PoolVerdict is what the tracker says about one pool.
type PoolVerdict struct {
	State PoolState
	// Reason says why the pool is down ("" when Up).
	Reason string
	// DownSince is when the pool was first seen down in its current outage
	// (zero when Up).
	DownSince time.Time
	// OutAt is when a Suspect pool becomes Out (zero when Up).
	OutAt time.Time
}

// DownOutTracker remembers since when each pool has been down and turns that
// into verdicts with a down-out delay. It is safe for concurrent use.
type DownOutTracker struct {
	delay time.Duration
	now   func() time.Time

	mu    sync.Mutex
	pools map[string]PoolVerdict
}

// NewDownOutTracker returns a tracker with the given down-out delay (>= 0)
// and clock (nil: time.Now).
func NewDownOutTracker(delay time.Duration, now func() time.Time) *DownOutTracker {
	if now == nil {
		now = time.Now
	}
	if delay < 0 {
		delay = 0
	}
	return &DownOutTracker{delay: delay, now: now, pools: map[string]PoolVerdict{}}
}

// Delay is the down-out delay.
func (t *DownOutTracker) Delay() time.Duration { return t.delay }

// Observe records whether pool is up now (reason says why not) and returns
// the verdict and whether its State changed from the previous observation.
// The first observation of a pool counts as a change.
func (t *DownOutTracker) Observe(pool string, up bool, reason string) (PoolVerdict, bool) {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	prev, seen := t.pools[pool]
	var v PoolVerdict
	switch {
	case up:
		v = PoolVerdict{State: PoolUp}
	case seen && prev.State != PoolUp:
		v = PoolVerdict{DownSince: prev.DownSince, OutAt: prev.OutAt, Reason: reason}
	default:
		v = PoolVerdict{DownSince: now, OutAt: now.Add(t.delay), Reason: reason}
	}
	if !up {
		v.State = PoolSuspect
		if !now.Before(v.OutAt) {
			v.State = PoolOut
		}
	}
	t.pools[pool] = v
	return v, !seen || prev.State != v.State
}

// Verdict returns the last verdict on pool, advanced to the current time (a
// Suspect pool whose delay has passed is Out), and false if the pool was
// never observed.
func (t *DownOutTracker) Verdict(pool string) (PoolVerdict, bool) {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	v, ok := t.pools[pool]
	if ok && v.State == PoolSuspect && !now.Before(v.OutAt) {
		v.State = PoolOut
		t.pools[pool] = v
	}
	return v, ok
}

// Forget drops a pool (e.g. its DiskPool was deleted and no stripe uses it).
func (t *DownOutTracker) Forget(pool string) {
	t.mu.Lock()
	delete(t.pools, pool)
	t.mu.Unlock()
}

// Pools returns the pools observed so far.
func (t *DownOutTracker) Pools() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]string, 0, len(t.pools))
	for p := range t.pools {
		out = append(out, p)
	}
	return out
}
