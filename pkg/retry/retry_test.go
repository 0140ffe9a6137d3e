package retry

import (
	"context"
	"testing"
	"time"
)

// Waits double from base, each with up to 50 % jitter, and stop growing at
// the cap; two clients starting together do not wait in lockstep.
func TestBackoffDoublesWithJitterUpToTheCap(t *testing.T) {
	const base, limit = 100 * time.Millisecond, 2 * time.Second
	a, b := Backoff(base, limit), Backoff(base, limit)
	differ := false
	for n := 0; n < 10; n++ {
		lo := min(base<<n, limit)
		da, db := a.Step(), b.Step()
		for _, d := range []time.Duration{da, db} {
			if d < lo || d > lo+lo/2 {
				t.Fatalf("retry %d: wait %v outside [%v, %v]", n+1, d, lo, lo+lo/2)
			}
		}
		differ = differ || da != db
	}
	if !differ {
		t.Fatal("two back-offs waited exactly alike for 10 retries: no jitter")
	}
}

func TestWaitEndsWithTheContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	b := Backoff(time.Hour, 0)
	if err := Wait(ctx, &b); err != context.Canceled {
		t.Fatalf("Wait on an ended context: %v, want context.Canceled", err)
	}
}
