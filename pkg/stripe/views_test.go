package stripe

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

// A view past its TTL is served at once while one refresh runs in the
// background; a refresh that hangs or fails leaves the last view serving
// (issue 17 item 4: the API server off the read path).
func TestViewServesLastKnownWhileRefreshHangsOrFails(t *testing.T) {
	var now atomic.Int64
	clock := func() time.Time { return time.Unix(0, now.Load()) }
	var calls atomic.Int32
	release := make(chan struct{})
	mode := atomic.Int32{} // 0 answer, 1 hang until release then fail
	fetch := func(ctx context.Context) (int, error) {
		n := calls.Add(1)
		if mode.Load() == 1 {
			<-release
			return 0, errors.New("API server unreachable")
		}
		return int(n), nil
	}
	var v view[int]
	errs := make(chan error, 4)
	onErr := func(err error) { errs <- err }
	got, err := v.get(context.Background(), clock, time.Second, fetch, onErr)
	if err != nil || got != 1 {
		t.Fatalf("first lookup: %d, %v; want 1", got, err)
	}
	mode.Store(1)
	now.Add(int64(2 * time.Second))
	done := make(chan int)
	go func() {
		for i := 0; i < 100; i++ { // many reads while the refresh hangs
			g, err := v.get(context.Background(), clock, time.Second, fetch, onErr)
			if err != nil {
				t.Error(err)
			}
			if i == 99 {
				done <- g
			}
		}
	}()
	select {
	case g := <-done:
		if g != 1 {
			t.Fatalf("while refreshing: view %d, want the last known 1", g)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("reads waited for a hanging refresh")
	}
	for wait := time.Now().Add(60 * time.Second); calls.Load() < 2; time.Sleep(time.Millisecond) {
		if time.Now().After(wait) {
			t.Fatal("no background refresh started after the TTL")
		}
	}
	if c := calls.Load(); c != 2 {
		t.Fatalf("%d fetches, want 2 (one background refresh at a time)", c)
	}
	close(release)
	select {
	case <-errs:
	case <-time.After(60 * time.Second):
		t.Fatal("the failed refresh was never reported")
	}
	if g, err := v.get(context.Background(), clock, time.Second, fetch, onErr); err != nil || g != 1 {
		t.Fatalf("after a failed refresh: %d, %v; want the last known 1", g, err)
	}
	mode.Store(0)
	now.Add(int64(2 * time.Second))
	_, _ = v.get(context.Background(), clock, time.Second, fetch, onErr) // starts a refresh that answers
	deadline := time.Now().Add(60 * time.Second)
	for {
		g, _ := v.get(context.Background(), clock, time.Second, fetch, onErr)
		if g > 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a successful refresh never replaced the view")
		}
		time.Sleep(time.Millisecond)
	}
}
