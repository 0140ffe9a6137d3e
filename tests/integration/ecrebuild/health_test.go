package ecrebuild

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	mayastorv1beta2 "github.com/billyronks/couchestor/apis/mayastor/v1beta2"
	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/controllers"
	"github.com/billyronks/couchestor/pkg/ecstate"
	"github.com/billyronks/couchestor/tests/testenv"
)

const mayastorNS = "mayastor"

// fakeClock is the injected clock of the down-out delay.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func createDiskPool(t *testing.T, c client.Client, name, node string, status mayastorv1beta2.PoolStatus) {
	t.Helper()
	dp := &mayastorv1beta2.DiskPool{
		ObjectMeta: metav1.ObjectMeta{Namespace: mayastorNS, Name: name},
		Spec:       mayastorv1beta2.DiskPoolSpec{Node: node, Disks: []string{"/dev/sdb"}},
	}
	if err := c.Create(context.Background(), dp); err != nil {
		t.Fatal(err)
	}
	setPoolStatus(t, c, name, status)
}

func setPoolStatus(t *testing.T, c client.Client, name string, status mayastorv1beta2.PoolStatus) {
	t.Helper()
	var dp mayastorv1beta2.DiskPool
	if err := c.Get(context.Background(), client.ObjectKey{Namespace: mayastorNS, Name: name}, &dp); err != nil {
		t.Fatal(err)
	}
	dp.Status = mayastorv1beta2.DiskPoolStatus{CRState: mayastorv1beta2.CRStateCreated, PoolStatus: status, Capacity: 1 << 30, Available: 1 << 30}
	if err := c.Status().Update(context.Background(), &dp); err != nil {
		t.Fatal(err)
	}
}

func getStripe(t *testing.T, c client.Client, name string) *storagev1.ECStripe {
	t.Helper()
	var s storagev1.ECStripe
	if err := c.Get(context.Background(), client.ObjectKey{Name: name}, &s); err != nil {
		t.Fatal(err)
	}
	return &s
}

func shardState(s *storagev1.ECStripe, i int) (storagev1.ShardState, string) {
	for _, h := range s.Status.ShardHealth {
		if int(h.ShardIndex) == i {
			return h.State, h.Error
		}
	}
	return "", ""
}

func gauge(t *testing.T, name string) float64 {
	t.Helper()
	mfs, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			var sum float64
			for _, m := range mf.GetMetric() {
				if m.GetGauge() != nil {
					sum += m.GetGauge().GetValue()
				}
				if m.GetCounter() != nil {
					sum += m.GetCounter().GetValue()
				}
			}
			return sum
		}
	}
	return 0
}

// A Faulted DiskPool makes its shard Missing (stripe Degraded) only after the
// down-out delay; a pool back Online within the delay changes nothing; the
// policy's counts follow. Time is the injected clock's.
func TestPoolFaultBecomesMissingOnlyAfterDownOutDelay(t *testing.T) {
	env := testenv.Start(t)
	c := env.Client
	ctx := testCtx(t)
	ensureNamespace(t, c, mayastorNS)

	clk := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	const delay = 10 * time.Minute
	tracker := ecstate.NewDownOutTracker(delay, clk.Now)
	startManager(t, env, func(mgr ctrl.Manager) error {
		if err := (&controllers.ErasureCodingPolicyReconciler{
			Client: mgr.GetClient(), ValidationInterval: time.Hour, MinStatusInterval: 10 * time.Millisecond,
		}).SetupWithManager(mgr); err != nil {
			return err
		}
		return (&controllers.ECStripeReconciler{
			Client:   mgr.GetClient(),
			Recorder: mgr.GetEventRecorder("couchestor-ecstripe"),
			Pools: &controllers.PoolMonitor{
				Client: mgr.GetClient(), MayastorNamespace: mayastorNS, Tracker: tracker, Interval: 100 * time.Millisecond,
			},
			Now: clk.Now,
		}).SetupWithManager(mgr)
	})

	var pools, nodes []string
	for i := range 6 {
		pools, nodes = append(pools, fmt.Sprintf("pool-%d", i)), append(nodes, fmt.Sprintf("node-%d", i))
		createDiskPool(t, c, pools[i], nodes[i], mayastorv1beta2.PoolOnline)
	}
	if err := c.Create(ctx, policy("rs42", 4, 2)); err != nil {
		t.Fatal(err)
	}
	createStripe(t, c, newStripe("vol-0", "vol", "rs42", 0, 0, 2048, 4, pools, nodes), storagev1.StripeHealthy)

	// Record every status the API server ever holds for the stripe.
	var seenMu sync.Mutex
	var seen []storagev1.ECStripeStatus
	wc, err := client.NewWithWatch(env.Config, client.Options{Scheme: env.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	w, err := wc.Watch(ctx, &storagev1.ECStripeList{}, client.MatchingFields{"metadata.name": "vol-0"})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	go func() {
		for ev := range w.ResultChan() {
			if s, ok := ev.Object.(*storagev1.ECStripe); ok && ev.Type != watch.Error {
				seenMu.Lock()
				seen = append(seen, *s.Status.DeepCopy())
				seenMu.Unlock()
			}
		}
	}()

	eventually(t, 30*time.Second, "controller records 6 healthy shards", func() error {
		s := getStripe(t, c, "vol-0")
		if s.Status.State != storagev1.StripeHealthy || s.Status.HealthyShards != 6 || len(s.Status.ShardHealth) != 6 {
			return fmt.Errorf("status %+v", s.Status)
		}
		return nil
	})

	// pool-1 faults: within the delay the shard keeps its state, with a note.
	setPoolStatus(t, c, "pool-1", mayastorv1beta2.PoolFaulted)
	eventually(t, 30*time.Second, "suspect noted on shard 1", func() error {
		st, msg := shardState(getStripe(t, c, "vol-0"), 1)
		if st != storagev1.ShardHealthy || !strings.Contains(msg, "counted Missing at") {
			return fmt.Errorf("shard 1 %s %q", st, msg)
		}
		return nil
	})
	clk.Advance(delay - time.Second)
	// pool-2 faults and returns within its own delay.
	setPoolStatus(t, c, "pool-2", mayastorv1beta2.PoolFaulted)
	eventually(t, 30*time.Second, "pool-2 suspect", func() error {
		if v, _ := tracker.Verdict("pool-2"); v.State != ecstate.PoolSuspect {
			return fmt.Errorf("pool-2 %+v", v)
		}
		return nil
	})
	if s := getStripe(t, c, "vol-0"); s.Status.State != storagev1.StripeHealthy {
		t.Fatalf("within the delay the stripe must stay Healthy: %+v", s.Status)
	}

	// The delay passes for pool-1: Missing, Degraded, Event, policy counts.
	clk.Advance(2 * time.Second)
	eventually(t, 30*time.Second, "shard 1 Missing, stripe Degraded", func() error {
		s := getStripe(t, c, "vol-0")
		st, msg := shardState(s, 1)
		if s.Status.State != storagev1.StripeDegraded || st != storagev1.ShardMissing || s.Status.HealthyShards != 5 ||
			s.Status.HealthyDataShards != 3 || s.Status.HealthyParityShards != 2 || !strings.Contains(msg, "past the down-out delay") {
			return fmt.Errorf("status %+v", s.Status)
		}
		return nil
	})
	eventually(t, 30*time.Second, "policy counts the degraded stripe", func() error {
		var p storagev1.ErasureCodingPolicy
		if err := c.Get(ctx, client.ObjectKey{Name: "rs42"}, &p); err != nil {
			return err
		}
		if p.Status.DegradedStripes != 1 || p.Status.HealthyStripes != 0 || p.Status.TotalStripes != 1 {
			return fmt.Errorf("policy status %+v", p.Status)
		}
		return nil
	})
	// pool-2 comes back before its delay ends.
	setPoolStatus(t, c, "pool-2", mayastorv1beta2.PoolOnline)
	eventually(t, 30*time.Second, "pool-2 up", func() error {
		if v, _ := tracker.Verdict("pool-2"); v.State != ecstate.PoolUp {
			return fmt.Errorf("pool-2 %+v", v)
		}
		return nil
	})
	clk.Advance(delay)
	// pool-1 returns too (no shard reader configured: the pool's word is the
	// evidence), so the stripe heals.
	setPoolStatus(t, c, "pool-1", mayastorv1beta2.PoolOnline)
	eventually(t, 30*time.Second, "healed", func() error {
		s := getStripe(t, c, "vol-0")
		if s.Status.State != storagev1.StripeHealthy || s.Status.HealthyShards != 6 {
			return fmt.Errorf("status %+v", s.Status)
		}
		return nil
	})
	seenMu.Lock()
	defer seenMu.Unlock()
	for _, st := range seen {
		for _, h := range st.ShardHealth {
			if h.ShardIndex == 2 && h.State != storagev1.ShardHealthy {
				t.Fatalf("shard 2's pool came back within the delay, yet the shard was recorded %s: %+v", h.State, st)
			}
		}
	}
	if !seenDegraded(seen) {
		t.Fatal("the watch never saw the Degraded state the test waited for")
	}
	if n := countEvents(t, c, "vol-0", "StripeDegraded"); n != 1 {
		t.Fatalf("want exactly 1 StripeDegraded Event, got %d", n)
	}
}

func seenDegraded(seen []storagev1.ECStripeStatus) bool {
	for _, s := range seen {
		if s.State == storagev1.StripeDegraded {
			return true
		}
	}
	return false
}

func countEvents(t *testing.T, c client.Client, regarding, reason string) int {
	t.Helper()
	var list eventsv1.EventList
	if err := c.List(context.Background(), &list); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range list.Items {
		if e.Regarding.Name == regarding && e.Reason == reason {
			n++
		}
	}
	return n
}

// Two stripes that raced past admission with overlapping LBAs (here: no
// webhook at all) are both reported, with an Event and the metric, and
// neither is deleted.
func TestOverlappingStripesAreReportedNeverDeleted(t *testing.T) {
	env := testenv.Start(t)
	c := env.Client
	ensureNamespace(t, c, mayastorNS)
	startManager(t, env, func(mgr ctrl.Manager) error {
		return (&controllers.ECStripeReconciler{
			Client:   mgr.GetClient(),
			Recorder: mgr.GetEventRecorder("couchestor-ecstripe"),
			Pools: &controllers.PoolMonitor{
				Client: mgr.GetClient(), MayastorNamespace: mayastorNS,
				Tracker: ecstate.NewDownOutTracker(time.Minute, nil), Interval: time.Second,
			},
		}).SetupWithManager(mgr)
	})
	var pools, nodes []string
	for i := range 3 {
		pools, nodes = append(pools, fmt.Sprintf("pool-%d", i)), append(nodes, fmt.Sprintf("node-%d", i))
		createDiskPool(t, c, pools[i], nodes[i], mayastorv1beta2.PoolOnline)
	}
	if err := c.Create(context.Background(), policy("rs21", 2, 1)); err != nil {
		t.Fatal(err)
	}
	before := gauge(t, "couchestor_ecstripe_overlaps_detected_total")
	createStripe(t, c, newStripe("a", "vol", "rs21", 0, 0, 2048, 2, pools, nodes), storagev1.StripeHealthy)
	createStripe(t, c, newStripe("b", "vol", "rs21", 1, 1024, 3072, 2, pools, nodes), storagev1.StripeHealthy)
	createStripe(t, c, newStripe("c", "vol", "rs21", 2, 3072, 4096, 2, pools, nodes), storagev1.StripeHealthy) // adjacent: fine
	createStripe(t, c, newStripe("d", "other", "rs21", 0, 0, 2048, 2, pools, nodes), storagev1.StripeHealthy)  // other volume: fine

	eventually(t, 30*time.Second, "collision Events on a and b", func() error {
		for _, n := range []string{"a", "b"} {
			if countEvents(t, c, n, "StripeCollision") == 0 {
				return fmt.Errorf("no StripeCollision Event for %s", n)
			}
		}
		return nil
	})
	for _, n := range []string{"c", "d"} {
		if k := countEvents(t, c, n, "StripeCollision"); k != 0 {
			t.Fatalf("stripe %s collides with nothing but got %d Events", n, k)
		}
	}
	if got := gauge(t, "couchestor_ecstripe_overlaps"); got != 2 {
		t.Fatalf("couchestor_ecstripe_overlaps = %v, want 2", got)
	}
	if got := gauge(t, "couchestor_ecstripe_overlaps_detected_total") - before; got != 2 {
		t.Fatalf("overlaps detected += %v, want 2", got)
	}
	for _, n := range []string{"a", "b", "c", "d"} {
		getStripe(t, c, n) // fails the test if deleted
	}
}
