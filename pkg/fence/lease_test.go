package fence

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/internal/scheme"
)

// fakeClock is a manual clock; After channels fire when Advance passes them.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []waiter
	added   chan struct{}
}

type waiter struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Unix(1000, 0), added: make(chan struct{}, 100)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	c.waiters = append(c.waiters, waiter{c.now.Add(d), ch})
	c.added <- struct{}{}
	return ch
}

// Advance moves time on and fires the timers it passes.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if !w.at.After(c.now) {
			w.ch <- c.now
		} else {
			kept = append(kept, w)
		}
	}
	c.waiters = kept
}

// waitTimer blocks until someone called After (the goroutine under test is
// parked on its timer).
func (c *fakeClock) waitTimer(t *testing.T) {
	t.Helper()
	select {
	case <-c.added:
	case <-time.After(30 * time.Second):
		t.Fatal("no timer was set within 30s")
	}
}

var vol = &storagev1.ECVolume{ObjectMeta: metav1.ObjectMeta{Name: "vol-a", UID: "uid-a"}}

func newHolder(c client.Client, clk Clock, id string) *Holder {
	return &Holder{Client: c, Namespace: "ns", Volume: vol, Identity: id, Duration: 10 * time.Second, Margin: 2 * time.Second,
		RenewEvery: 2 * time.Second, Clock: clk}
}

func getLease(t *testing.T, c client.Client) *coordinationv1.Lease {
	t.Helper()
	l := &coordinationv1.Lease{}
	if err := c.Get(context.Background(), client.ObjectKey{Namespace: "ns", Name: LeaseName(vol.Name)}, l); err != nil {
		t.Fatal(err)
	}
	return l
}

func TestAcquireCreatesTheLeaseAtEpochOne(t *testing.T) {
	c := newClient()
	h := newHolder(c, newFakeClock(), "a")
	if err := h.Acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	if h.Epoch() != 1 || h.Check() != nil {
		t.Fatalf("epoch %d, check %v; want 1, nil", h.Epoch(), h.Check())
	}
	l := getLease(t, c)
	if e, _ := Epoch(l); e != 1 || *l.Spec.HolderIdentity != "a" || *l.Spec.LeaseDurationSeconds != 10 {
		t.Fatalf("lease %+v", l)
	}
	if len(l.OwnerReferences) != 1 || l.OwnerReferences[0].UID != "uid-a" || l.OwnerReferences[0].Kind != "ECVolume" {
		t.Fatalf("owner references %+v", l.OwnerReferences)
	}
}

// The holder stops trusting its Lease Duration−Margin after it sent its last
// renewal; another acquirer takes it only a full Duration after it last saw
// the Lease change. So there is a Margin-long gap in which nobody serves.
func TestHolderStopsBeforeAnotherCanAcquire(t *testing.T) {
	c := newClient()
	clkA, clkB := newFakeClock(), newFakeClock()
	a := newHolder(c, clkA, "a")
	if err := a.Acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b := newHolder(c, clkB, "b")
	acquired := make(chan error, 1)
	go func() { acquired <- b.Acquire(ctx) }()
	clkB.waitTimer(t) // b saw a's Lease and waits

	// a renews twice while b watches: b's wait starts over each time.
	runDone := make(chan error, 1)
	go func() { runDone <- a.Run(ctx) }()
	for i := 0; i < 2; i++ {
		clkA.waitTimer(t)
		rv := getLease(t, c).ResourceVersion
		clkA.Advance(2 * time.Second)
		waitFor(t, func() bool { return getLease(t, c).ResourceVersion != rv })
		clkB.Advance(2 * time.Second)
		clkB.waitTimer(t)
	}
	// a pauses (SIGSTOP): no more renewals. Its own clock runs on.
	clkA.waitTimer(t)
	if err := a.Check(); err != nil {
		t.Fatalf("a right after a renewal: %v", err)
	}
	// b saw the last renewal at its clock T; it must not take over before T+10s.
	for i := 0; i < 4; i++ { // 8s
		clkB.Advance(2 * time.Second)
		clkB.waitTimer(t)
	}
	select {
	case err := <-acquired:
		t.Fatalf("b acquired %v after 8s of a 10s Lease", err)
	default:
	}
	// a: the last renewal was sent at its clock's last tick; 8s (Duration
	// less Margin) later it refuses I/O, before b could have taken over.
	clkA.mu.Lock()
	clkA.now = clkA.now.Add(8 * time.Second)
	clkA.mu.Unlock()
	if err := a.Check(); !errors.Is(err, ErrLost) {
		t.Fatalf("a 8s after its last renewal: %v, want ErrLost", err)
	}
	clkB.Advance(2 * time.Second)
	select {
	case err := <-acquired:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("b did not acquire 10s after a's last renewal")
	}
	if b.Epoch() != 2 || b.Check() != nil {
		t.Fatalf("b: epoch %d check %v; want 2, nil", b.Epoch(), b.Check())
	}
	l := getLease(t, c)
	if *l.Spec.HolderIdentity != "b" || *l.Spec.LeaseTransitions != 1 {
		t.Fatalf("lease after takeover: holder %s transitions %d", *l.Spec.HolderIdentity, *l.Spec.LeaseTransitions)
	}
	// a resumes: its renewal finds b's Lease and it stays lost.
	if err := a.renew(context.Background()); !errors.Is(err, ErrLost) {
		t.Fatalf("a's renewal after the takeover: %v, want ErrLost", err)
	}
	if err := a.Check(); !errors.Is(err, ErrLost) {
		t.Fatalf("a after the takeover: %v", err)
	}
}

// A holder that renews late (paused past Duration−Margin) does not become
// valid again even when nobody took over: losing is final.
func TestLateRenewalDoesNotRestoreValidity(t *testing.T) {
	c := newClient()
	clk := newFakeClock()
	a := newHolder(c, clk, "a")
	if err := a.Acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	clk.Advance(9 * time.Second)
	if err := a.renew(context.Background()); !errors.Is(err, ErrLost) {
		t.Fatalf("renew 9s after the last one (8s allowed): %v, want ErrLost", err)
	}
	if err := a.Check(); err == nil || !strings.Contains(err.Error(), "last renewed 9s ago") {
		t.Fatalf("check: %v", err)
	}
}

func TestRenewTakenOverByAnother(t *testing.T) {
	c := newClient()
	clk := newFakeClock()
	a := newHolder(c, clk, "a")
	if err := a.Acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	l := getLease(t, c)
	l.Spec.HolderIdentity = ptr.To("b")
	SetEpoch(l, 2)
	if err := c.Update(context.Background(), l); err != nil {
		t.Fatal(err)
	}
	err := a.renew(context.Background())
	if !errors.Is(err, ErrLost) || !strings.Contains(err.Error(), `held by "b" with epoch 2`) {
		t.Fatalf("renew: %v", err)
	}
	// A label change by someone else is not a takeover.
	b := newHolder(c, clk, "b2")
	c2 := newClient()
	b.Client = c2
	if err := b.Acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	l = getLease(t, c2)
	l.Labels["x"] = "y"
	if err := c2.Update(context.Background(), l); err != nil {
		t.Fatal(err)
	}
	if err := b.renew(context.Background()); err != nil {
		t.Fatalf("renew after a foreign label change: %v", err)
	}
}

func TestReleasedLeaseIsTakenAtOnceWithTheNextEpoch(t *testing.T) {
	c := newClient()
	a := newHolder(c, newFakeClock(), "a")
	if err := a.Acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := a.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := a.Check(); !errors.Is(err, ErrLost) {
		t.Fatalf("a after release: %v", err)
	}
	b := newHolder(c, newFakeClock(), "b")
	if err := b.Acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	if b.Epoch() != 2 {
		t.Fatalf("epoch %d, want 2", b.Epoch())
	}
}

func TestBadEpochAnnotationIsAnError(t *testing.T) {
	c := newClient()
	l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: LeaseName(vol.Name), Namespace: "ns",
		Annotations: map[string]string{AnnotationEpoch: "seven"}}}
	if err := c.Create(context.Background(), l); err != nil {
		t.Fatal(err)
	}
	err := newHolder(c, newFakeClock(), "a").Acquire(context.Background())
	if err == nil || !strings.Contains(err.Error(), `annotation storage.billyronks.io/writer-epoch="seven"`) {
		t.Fatalf("acquire: %v", err)
	}
}

func TestLeaseName(t *testing.T) {
	if got := LeaseName("v1"); got != "ecvolume-v1" {
		t.Fatal(got)
	}
	long := strings.Repeat("a", 250)
	if got := LeaseName(long); len(got) > 253 || !strings.HasPrefix(got, "ecvolume-h-") {
		t.Fatal(got)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 30s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// newClient is a fake API server holding vol (the holder reads it).
func newClient() client.Client {
	return fake.NewClientBuilder().WithScheme(scheme.New()).WithObjects(vol.DeepCopy()).Build()
}
