package blockcopy

import (
	"context"
	"time"

	"golang.org/x/time/rate"
)

// Clock is the time a copy measures and waits on; tests inject one whose
// Sleep advances it, so a bandwidth limit is checked without sleeping.
type Clock interface {
	Now() time.Time
	// Sleep waits d, or until ctx ends (returning its error).
	Sleep(ctx context.Context, d time.Duration) error
}

// RealClock is the wall clock.
type RealClock struct{}

func (RealClock) Now() time.Time { return time.Now() }

func (RealClock) Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// throttle is a token bucket of bytes per second on a Clock; nil limits
// nothing. Its burst is one extent, so a pass never runs ahead of the limit
// by more than one extent.
type throttle struct {
	lim   *rate.Limiter
	clock Clock
}

func newThrottle(bytesPerSecond, extentSize int64, clock Clock) *throttle {
	if bytesPerSecond <= 0 {
		return nil
	}
	return &throttle{lim: rate.NewLimiter(rate.Limit(bytesPerSecond), int(extentSize)), clock: clock}
}

// wait takes n bytes' worth of tokens (n is at most one extent), sleeping on
// the clock until they are there.
func (t *throttle) wait(ctx context.Context, n int64) error {
	if t == nil {
		return ctx.Err()
	}
	now := t.clock.Now()
	r := t.lim.ReserveN(now, int(n))
	if d := r.DelayFrom(now); d > 0 {
		if err := t.clock.Sleep(ctx, d); err != nil {
			r.CancelAt(t.clock.Now())
			return err
		}
	}
	return nil
}
