// Package retry is the one back-off of retried calls (shard-server requests,
// journal calls): exponential, with jitter so that the clients of a server
// that failed do not all retry in the same instant, and bounded by the
// caller's context. It is k8s.io/apimachinery's wait.Backoff with the
// project's settings.
package retry

import (
	"context"
	"math"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

const (
	// Factor multiplies the wait after every retry.
	Factor = 2.0
	// Jitter adds up to this fraction of each wait, at random.
	Jitter = 0.5
)

// Backoff returns the back-off starting at base: base·2^n before retry n+1,
// plus up to 50 % jitter; capped at max when max > 0.
func Backoff(base, max time.Duration) wait.Backoff {
	return wait.Backoff{Duration: base, Factor: Factor, Jitter: Jitter, Steps: math.MaxInt32, Cap: max}
}

// Wait sleeps for b's next step, or returns ctx's error when it ends first.
func Wait(ctx context.Context, b *wait.Backoff) error {
	t := time.NewTimer(b.Step())
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
