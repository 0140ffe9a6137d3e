// Package ecvolumecounts checks, against a real API server (envtest), that an
// ECVolume's status counts (status.stripes, status.bytesWritten and the
// per-state counts of its Degraded condition) come out exact from the
// ECVolume controller's informer-fed per-volume counters: after a random
// sequence of ECStripe creates, status changes, metadata-only updates, range
// growths and deletes, across informer resyncs and across a restart of the
// controller (counters rebuilt from the cache's initial list), each compared
// with a full List of the volume's ECStripes. It also checks that a burst of
// stripe events of one volume costs a few reconciles and status writes, not
// one per event, and that events changing no count write nothing.
package ecvolumecounts

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/controllers"
	"github.com/billyronks/couchestor/tests/testenv"
)

const (
	policy = "ec-4-2"
	span   = 2048 // LBAs of a 1 MiB stripe
	window = time.Second
	resync = 2 * time.Second
)

var volumes = []string{"vol-a", "vol-b"}

func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s: %s", what, why)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// statusWrites counts the ECVolume status writes of the controller, per volume.
type statusWrites struct {
	client.Client
	mu sync.Mutex
	n  map[string]int
}

func (c *statusWrites) Status() client.SubResourceWriter {
	return countingStatus{c.Client.Status(), c}
}

func (c *statusWrites) count(v string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[v]
}

type countingStatus struct {
	client.SubResourceWriter
	c *statusWrites
}

func (s countingStatus) Update(ctx context.Context, obj client.Object, opts ...client.SubResourceUpdateOption) error {
	if _, ok := obj.(*storagev1.ECVolume); ok {
		s.c.mu.Lock()
		s.c.n[obj.GetName()]++
		s.c.mu.Unlock()
	}
	return s.SubResourceWriter.Update(ctx, obj, opts...)
}

func (s countingStatus) Patch(ctx context.Context, obj client.Object, patch client.Patch, opts ...client.SubResourcePatchOption) error {
	if _, ok := obj.(*storagev1.ECVolume); ok {
		s.c.mu.Lock()
		s.c.n[obj.GetName()]++
		s.c.mu.Unlock()
	}
	return s.SubResourceWriter.Patch(ctx, obj, patch, opts...)
}

// reconciles is controller-runtime's count of the ECVolume status
// controller's reconciles (all results), process-wide.
func reconciles(t *testing.T) int {
	t.Helper()
	fams, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0.0
	for _, f := range fams {
		if f.GetName() != "controller_runtime_reconcile_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "controller" && l.GetValue() == "ecvolume" {
					n += m.GetCounter().GetValue()
				}
			}
		}
	}
	return int(n)
}

// operator is one run of the ECVolume controller in a manager of its own.
type operator struct {
	writes  *statusWrites
	resyncs atomic.Int64 // ECStripe updates with an unchanged resourceVersion
	stop    func()
}

var skipNameValidation = true

func startOperator(t *testing.T, env *testenv.Env) *operator {
	t.Helper()
	syncPeriod := resync
	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{Scheme: env.Scheme,
		// ECStripes resync every 2 s (every stripe replayed as an update);
		// ECVolumes keep the default, so no resync of theirs wakes the volume.
		Cache:      cache.Options{ByObject: map[client.Object]cache.ByObject{&storagev1.ECStripe{}: {SyncPeriod: &syncPeriod}}},
		Controller: config.Controller{SkipNameValidation: &skipNameValidation},
		Metrics:    metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0"})
	if err != nil {
		t.Fatal(err)
	}
	op := &operator{writes: &statusWrites{Client: mgr.GetClient(), n: map[string]int{}}}
	if err := (&controllers.ECVolumeReconciler{Client: op.writes, Recorder: mgr.GetEventRecorder("test"),
		MayastorNamespace: "mayastor", StripeEventWindow: window}).SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	inf, err := mgr.GetCache().GetInformer(context.Background(), &storagev1.ECStripe{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{UpdateFunc: func(o, n any) {
		if o.(client.Object).GetResourceVersion() == n.(client.Object).GetResourceVersion() {
			op.resyncs.Add(1)
		}
	}}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	var once sync.Once
	op.stop = func() { once.Do(func() { stopManager(t, cancel, done) }) }
	t.Cleanup(op.stop)
	return op
}

func stopManager(t *testing.T, cancel func(), done chan error) {
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("manager: %v", err)
		}
	case <-time.After(time.Minute):
		t.Error("manager did not stop within a minute")
	}
}

func stripeObject(vol string, id int64) *storagev1.ECStripe {
	locs := make([]storagev1.ShardLocation, 6)
	for j := range locs {
		locs[j] = storagev1.ShardLocation{ShardIndex: int32(j), IsDataShard: j < 4, PoolName: fmt.Sprintf("pool-%d", j),
			NodeName: fmt.Sprintf("node-%d", j), Offset: id * 262144, SizeBytes: 262144}
	}
	return &storagev1.ECStripe{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-%06d", vol, id)},
		Spec: storagev1.ECStripeSpec{VolumeRef: vol, StripeID: id, PolicyRef: policy,
			LbaRange: storagev1.LbaRange{StartLba: id * span, EndLba: (id + 1) * span}, ShardLocations: locs, Generation: 1},
	}
}

// want is what a volume's status must say, from a full List of its stripes.
type want struct {
	stripes, bytes               int64
	degraded, rebuilding, failed int64
}

func (w want) counts() string {
	return fmt.Sprintf("%d Degraded, %d Rebuilding, %d Failed of %d stripes", w.degraded, w.rebuilding, w.failed, w.stripes)
}

func listed(t *testing.T, env *testenv.Env, vol string) want {
	t.Helper()
	var l storagev1.ECStripeList
	if err := env.Client.List(context.Background(), &l); err != nil {
		t.Fatal(err)
	}
	var w want
	for _, es := range l.Items {
		if es.Spec.VolumeRef != vol {
			continue
		}
		w.stripes++
		w.bytes += (es.Spec.LbaRange.EndLba - es.Spec.LbaRange.StartLba) * 512
		switch es.Status.State {
		case storagev1.StripeDegraded:
			w.degraded++
		case storagev1.StripeRebuilding:
			w.rebuilding++
		case storagev1.StripeFailed:
			w.failed++
		}
	}
	return w
}

// exact reports whether vol's status says what a full List says.
func exact(t *testing.T, env *testenv.Env, vol string) (bool, string) {
	w := listed(t, env, vol)
	var v storagev1.ECVolume
	if err := env.Client.Get(context.Background(), client.ObjectKey{Name: vol}, &v); err != nil {
		return false, err.Error()
	}
	deg := meta.FindStatusCondition(v.Status.Conditions, storagev1.ConditionDegraded)
	if v.Status.Stripes != w.stripes || v.Status.BytesWritten != w.bytes || deg == nil || !strings.HasPrefix(deg.Message, w.counts()) {
		return false, fmt.Sprintf("%s: status stripes %d, bytesWritten %d, Degraded %+v; a full List says %d stripes, %d bytes, %q",
			vol, v.Status.Stripes, v.Status.BytesWritten, deg, w.stripes, w.bytes, w.counts())
	}
	return true, ""
}

func allExact(t *testing.T, env *testenv.Env) func() (bool, string) {
	return func() (bool, string) {
		for _, v := range volumes {
			if ok, why := exact(t, env, v); !ok {
				return false, why
			}
		}
		return true, ""
	}
}

// randomOps applies n random ECStripe changes to the volumes' stripes.
func randomOps(t *testing.T, env *testenv.Env, rng *rand.Rand, nextID map[string]int64, n int) {
	t.Helper()
	ctx := context.Background()
	c := env.Client
	states := []storagev1.ECStripeState{storagev1.StripeHealthy, storagev1.StripeDegraded, storagev1.StripeRebuilding,
		storagev1.StripeFailed, storagev1.StripeWriting}
	for i := 0; i < n; i++ {
		vol := volumes[rng.IntN(len(volumes))]
		var l storagev1.ECStripeList
		if err := c.List(ctx, &l); err != nil {
			t.Fatal(err)
		}
		var mine []storagev1.ECStripe
		for _, es := range l.Items {
			if es.Spec.VolumeRef == vol {
				mine = append(mine, es)
			}
		}
		op := rng.IntN(10)
		if len(mine) == 0 {
			op = 0
		}
		switch {
		case op < 4: // create, with a state most of the time
			es := stripeObject(vol, nextID[vol])
			nextID[vol]++
			if err := c.Create(ctx, es); err != nil {
				t.Fatalf("create %s: %v", es.Name, err)
			}
			if rng.IntN(4) > 0 {
				es.Status.State = states[rng.IntN(len(states))]
				if err := c.Status().Update(ctx, es); err != nil {
					t.Fatalf("status of %s: %v", es.Name, err)
				}
			}
		case op < 6: // state change
			es := &mine[rng.IntN(len(mine))]
			es.Status.State = states[rng.IntN(len(states))]
			if err := c.Status().Update(ctx, es); err != nil {
				t.Fatalf("status of %s: %v", es.Name, err)
			}
		case op < 7: // metadata only
			es := &mine[rng.IntN(len(mine))]
			if es.Labels == nil {
				es.Labels = map[string]string{}
			}
			es.Labels["touched"] = fmt.Sprint(i)
			if err := c.Update(ctx, es); err != nil {
				t.Fatalf("label %s: %v", es.Name, err)
			}
		case op < 8: // the range grows (a grown volume's last stripe)
			es := &mine[rng.IntN(len(mine))]
			es.Spec.LbaRange.EndLba += 512
			if err := c.Update(ctx, es); err != nil {
				t.Fatalf("grow %s: %v", es.Name, err)
			}
		default:
			es := &mine[rng.IntN(len(mine))]
			if err := c.Delete(ctx, es); err != nil {
				t.Fatalf("delete %s: %v", es.Name, err)
			}
		}
	}
}

func TestECVolumeCountsExactAcrossResyncsAndRestart(t *testing.T) {
	env := testenv.Start(t)
	ctx := context.Background()
	if err := env.Client.Create(ctx, &storagev1.ErasureCodingPolicy{ObjectMeta: metav1.ObjectMeta{Name: policy},
		Spec: storagev1.ErasureCodingPolicySpec{DataShards: ptr.To[int32](4), ParityShards: ptr.To[int32](2), ScrubbingEnabled: ptr.To(false)}}); err != nil {
		t.Fatal(err)
	}
	for _, v := range volumes {
		if err := env.Client.Create(ctx, &storagev1.ECVolume{ObjectMeta: metav1.ObjectMeta{Name: v},
			Spec: storagev1.ECVolumeSpec{SizeBytes: 1 << 30, PolicyRef: policy}}); err != nil {
			t.Fatal(err)
		}
	}
	rng := rand.New(rand.NewPCG(20, 6))
	nextID := map[string]int64{}
	// Stripes that exist before the controller starts come from its initial list.
	randomOps(t, env, rng, nextID, 40)

	op := startOperator(t, env)
	eventually(t, "the counts of the initial list are exact", allExact(t, env))
	randomOps(t, env, rng, nextID, 200)
	eventually(t, "the counts after 200 random changes are exact", allExact(t, env))

	// Resyncs replay every stripe as an update: the counts stay exact and
	// nothing is written.
	before := map[string]int{}
	for _, v := range volumes {
		before[v] = op.writes.count(v)
	}
	r0 := op.resyncs.Load()
	var n int64
	for _, v := range volumes {
		n += listed(t, env, v).stripes
	}
	eventually(t, "two resyncs of every stripe were delivered", func() (bool, string) {
		got := op.resyncs.Load() - r0
		return got >= 2*n, fmt.Sprintf("%d resync updates of %d stripes", got, n)
	})
	if ok, why := allExact(t, env)(); !ok {
		t.Fatalf("after resyncs: %s", why)
	}
	for _, v := range volumes {
		if got := op.writes.count(v); got != before[v] {
			t.Fatalf("%s: %d status writes during resyncs that changed no count; want none", v, got-before[v])
		}
	}

	// Metadata-only updates change no count: no reconcile, so no status write.
	r1 := reconciles(t)
	var l storagev1.ECStripeList
	if err := env.Client.List(ctx, &l); err != nil {
		t.Fatal(err)
	}
	touched := 0
	for i := range l.Items {
		if l.Items[i].Spec.VolumeRef != volumes[0] || touched == 20 {
			continue
		}
		l.Items[i].Annotations = map[string]string{"example.com/touched": "yes"}
		if err := env.Client.Update(ctx, &l.Items[i]); err != nil {
			t.Fatal(err)
		}
		touched++
	}
	// Wait for the cache to see the last annotation, plus one window.
	last := l.Items[0].Name
	for i := range l.Items {
		if l.Items[i].Annotations["example.com/touched"] == "yes" {
			last = l.Items[i].Name
		}
	}
	eventually(t, "the annotations reached the cache", func() (bool, string) {
		var es storagev1.ECStripe
		err := op.writes.Get(ctx, client.ObjectKey{Name: last}, &es)
		return err == nil && es.Annotations["example.com/touched"] == "yes", fmt.Sprint(err)
	})
	// A wrongly told volume would be reconciled one window later; a full
	// resync round (2 s) is longer than the window (1 s).
	r3 := op.resyncs.Load()
	eventually(t, "one more resync round after the annotations", func() (bool, string) {
		got := op.resyncs.Load() - r3
		return got >= n, fmt.Sprintf("%d resync updates of %d stripes", got, n)
	})
	if got := reconciles(t) - r1; got != 0 {
		t.Fatalf("%d reconciles of the ECVolume controller after %d metadata-only stripe updates; want none", got, touched)
	}
	if got := op.writes.count(volumes[0]); got != before[volumes[0]] {
		t.Fatalf("%d status writes after %d metadata-only stripe updates; want none", got-before[volumes[0]], touched)
	}

	// A burst of creates of one volume: a few reconciles and status writes,
	// bounded by the burst's length in windows, not one per event.
	const burst = 150
	w0, r2 := op.writes.count(volumes[1]), reconciles(t)
	start := time.Now()
	var wg sync.WaitGroup
	ids := make(chan int64, burst)
	for i := 0; i < burst; i++ {
		ids <- nextID[volumes[1]]
		nextID[volumes[1]]++
	}
	close(ids)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range ids {
				es := stripeObject(volumes[1], id)
				if err := env.Client.Create(ctx, es); err != nil {
					t.Errorf("create %s: %v", es.Name, err)
					return
				}
				es.Status.State = storagev1.StripeHealthy
				if err := env.Client.Status().Update(ctx, es); err != nil {
					t.Errorf("status of %s: %v", es.Name, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	eventually(t, "the counts after the burst are exact", allExact(t, env))
	writes, recs := op.writes.count(volumes[1])-w0, reconciles(t)-r2
	// Each window's reconcile may write once (its own status write does not
	// wake the volume); a write that lost a conflict with a cache behind the
	// last write is retried one window later. Two windows of slack.
	windows := int(elapsed/window) + 2
	t.Logf("burst of %d creates + %d status updates in %v: %d reconciles, %d status writes (bound %d windows)", burst, burst, elapsed.Round(time.Millisecond), recs, writes, windows)
	if writes > windows || recs > 2*windows {
		t.Fatalf("%d stripe events in %v cost %d reconciles and %d status writes; want at most %d writes and %d reconciles (one per %v window)",
			2*burst, elapsed, recs, writes, windows, 2*windows, window)
	}

	// Restart: changes made while no controller runs are counted from the
	// new cache's initial list.
	op.stop()
	randomOps(t, env, rng, nextID, 60)
	startOperator(t, env)
	eventually(t, "the counts after a restart are exact", allExact(t, env))
	randomOps(t, env, rng, nextID, 60)
	eventually(t, "the counts after the restart and more changes are exact", allExact(t, env))
}
