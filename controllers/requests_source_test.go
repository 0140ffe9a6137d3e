package controllers

import (
	"context"
	"testing"
	"time"

	"k8s.io/client-go/util/workqueue"
	testingclock "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
)

// Names told within one window become one request, due a window after the
// first; without a window each is enqueued at once.
func TestPendingRequestsCoalesceWithinTheWindow(t *testing.T) {
	for _, tc := range []struct {
		name   string
		window time.Duration
	}{{"no window", 0}, {"one second", time.Second}} {
		t.Run(tc.name, func(t *testing.T) {
			clk := testingclock.NewFakeClock(time.Unix(1_000_000, 0))
			q := workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[reconcile.Request](),
				workqueue.TypedRateLimitingQueueConfig[reconcile.Request]{Clock: clk})
			defer q.ShutDown()
			p := &pendingRequests{window: tc.window}
			p.add("early") // before the source starts: kept, enqueued at start
			if err := p.source().Start(context.Background(), q); err != nil {
				t.Fatal(err)
			}
			if q.Len() != 1 {
				t.Fatalf("queue holds %d requests after start; want the one told before it", q.Len())
			}
			for i := 0; i < 100; i++ {
				p.add("v")
			}
			want := 2
			if tc.window > 0 {
				if q.Len() != 1 {
					t.Fatalf("queue holds %d requests before the window ended; want only the early one", q.Len())
				}
				clk.Step(tc.window)
			}
			deadline := time.Now().Add(30 * time.Second)
			for q.Len() < want && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if q.Len() != want {
				t.Fatalf("queue holds %d requests after 100 changes of one volume; want %d (the early one and one for v)", q.Len(), want)
			}
		})
	}
}
