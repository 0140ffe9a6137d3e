package migration

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
)

// Two moves in one operator share its identity, so the Lease cannot tell
// them apart: without the in-process token the second took "its own" lock
// from the first (and released the first's recorded lever). Seen in make
// demo as a Conflict recording the lever.
func TestPlacementLockExcludesMovesOfOneProcess(t *testing.T) {
	s := runtime.NewScheme()
	if err := coordinationv1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	c := fake.NewClientBuilder().WithScheme(s).Build()
	l := &PlacementLock{Client: c, Namespace: "ns", Name: "lock", Identity: "op-1", Duration: time.Minute, Poll: 10 * time.Millisecond}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	none := func(context.Context, *SteerRecord) error {
		t.Error("a lever was released while its move held the lock")
		return nil
	}

	first, err := l.Acquire(ctx, none)
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Record(ctx, &SteerRecord{Volume: "v1"}); err != nil {
		t.Fatal(err)
	}
	var secondHeld atomic.Bool
	got := make(chan error, 1)
	go func() {
		h, err := l.Acquire(ctx, none)
		if err == nil {
			secondHeld.Store(true)
			err = h.Release(ctx)
		}
		got <- err
	}()
	// The second must still be waiting after many of its polls.
	for i := 0; i < 50; i++ {
		if secondHeld.Load() {
			t.Fatal("a second move of the same process acquired the lock while the first held it")
		}
		time.Sleep(10 * time.Millisecond)
	}
	var lease coordinationv1.Lease
	if err := c.Get(ctx, client.ObjectKey{Namespace: "ns", Name: "lock"}, &lease); err != nil {
		t.Fatal(err)
	}
	if lease.Annotations[AnnotationSteer] == "" {
		t.Fatal("the first move's lever record is gone while it holds the lock")
	}
	if err := first.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatalf("second move after the first released: %v", err)
	}

	// Leave keeps the Lease and its record; the next Acquire here releases it.
	h, err := l.Acquire(ctx, none)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Record(ctx, &SteerRecord{Volume: "v2"}); err != nil {
		t.Fatal(err)
	}
	h.Leave()
	var released atomic.Bool
	h2, err := l.Acquire(ctx, func(_ context.Context, r *SteerRecord) error {
		if r.Volume == "v2" {
			released.Store(true)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !released.Load() {
		t.Fatal("the lever left by Leave was not released by the next Acquire")
	}
	if err := h2.Release(ctx); err != nil {
		t.Fatal(err)
	}
}
