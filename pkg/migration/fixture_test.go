package migration

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mayastorv1alpha1 "github.com/billyronks/couchestor/apis/mayastor/v1alpha1"
	mayastorv1beta2 "github.com/billyronks/couchestor/apis/mayastor/v1beta2"
	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/tests/mayastorsim/replicasim"
	"github.com/billyronks/couchestor/tests/testenv"
)

const gib = int64(1) << 30

// fixture is one test's world: a namespace of DiskPools and MayastorVolumes,
// the replica simulator over it, PVs, a StoragePolicy, and samplers.
type fixture struct {
	t   *testing.T
	c   client.Client
	ns  string
	sim *replicasim.Simulator
	rec *recorder

	simOnce     sync.Once
	mu          sync.Mutex
	startHealth map[string]int // volume -> healthy replicas at start
	dips        []string       // observed healthy counts below the start
}

func newFixture(t *testing.T, simOpts replicasim.Options) *fixture {
	t.Helper()
	// One control plane per test: testenv.Start stops it at the end of t.
	env := testenv.Start(t)
	f := &fixture{t: t, c: env.Client, ns: "mayastor", rec: &recorder{}, startHealth: map[string]int{}}
	if err := f.c.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: f.ns}}); err != nil {
		t.Fatal(err)
	}
	simOpts.Observe = f.observe
	if simOpts.Interval == 0 {
		simOpts.Interval = 20 * time.Millisecond
	}
	f.sim = replicasim.New(f.c, f.ns, simOpts)
	return f
}

// startSim starts the simulator once, after the test created its volumes
// (their replicas are the test's, not the simulator's choice).
func (f *fixture) startSim() {
	f.simOnce.Do(func() {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { _ = f.sim.Run(ctx); close(done) }()
		f.t.Cleanup(func() { cancel(); <-done })
	})
}

// observe sees every volume status the simulator writes: the healthy replica
// count must never drop below the volume's count at the start.
func (f *fixture) observe(v mayastorv1alpha1.MayastorVolume) {
	n := 0
	for _, r := range v.Status.Replicas {
		if r.State == mayastorv1alpha1.StateOnline && r.Synced {
			n++
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if start, ok := f.startHealth[v.Name]; ok && n < start {
		f.dips = append(f.dips, fmt.Sprintf("%s: %d healthy replicas < %d at start (%v)", v.Name, n, start, v.Status.Replicas))
	}
}

// expectNoDips fails when a volume had fewer healthy replicas than at start.
// faulted names volumes whose pool the test faulted on purpose.
func (f *fixture) expectNoDips() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.dips) > 0 {
		f.t.Fatalf("healthy replica count dipped below its start %d times, first: %s", len(f.dips), f.dips[0])
	}
}

func (f *fixture) pool(name, node, tier string, capacity int64) {
	f.t.Helper()
	ctx := context.Background()
	dp := &mayastorv1beta2.DiskPool{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: f.ns},
		Spec:       mayastorv1beta2.DiskPoolSpec{Node: node, Disks: []string{"/dev/sim-" + name}, Topology: &mayastorv1beta2.PoolTopology{Labelled: map[string]string{"tier": tier}}},
	}
	if err := f.c.Create(ctx, dp); err != nil {
		f.t.Fatal(err)
	}
	dp.Status = mayastorv1beta2.DiskPoolStatus{CRState: mayastorv1beta2.CRStateCreated, PoolStatus: mayastorv1beta2.PoolOnline, Capacity: capacity, Available: capacity}
	if err := f.c.Status().Update(ctx, dp); err != nil {
		f.t.Fatal(err)
	}
}

// cluster creates nodes n1..nN each with a hot and a cold pool.
func (f *fixture) cluster(nodes int) {
	for i := 1; i <= nodes; i++ {
		n := fmt.Sprintf("n%d", i)
		f.pool(n+"-hot", n, "hot", 100*gib)
		f.pool(n+"-cold", n, "cold", 100*gib)
	}
}

// setPoolStatus sets a DiskPool's pool_status.
func (f *fixture) setPoolStatus(name string, st mayastorv1beta2.PoolStatus) {
	f.t.Helper()
	f.eventually(10*time.Second, "set pool "+name+" "+string(st), func() bool {
		var dp mayastorv1beta2.DiskPool
		if err := f.c.Get(context.Background(), types.NamespacedName{Namespace: f.ns, Name: name}, &dp); err != nil {
			return false
		}
		dp.Status.PoolStatus = st
		return f.c.Status().Update(context.Background(), &dp) == nil
	})
}

// volume creates a MayastorVolume with healthy replicas on pools, its
// topology preferring tier, and its PV.
func (f *fixture) volume(name string, size int64, tier string, pools ...string) {
	f.t.Helper()
	ctx := context.Background()
	msv := &mayastorv1alpha1.MayastorVolume{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: f.ns},
		Spec: mayastorv1alpha1.MayastorVolumeSpec{NumReplicas: int32(len(pools)), Size: size, Topology: &mayastorv1alpha1.VolumeTopology{
			Pool: &mayastorv1alpha1.PoolTopology{Labelled: &mayastorv1alpha1.LabelledTopology{Inclusion: map[string]string{"tier": tier}}}}},
	}
	if err := f.c.Create(ctx, msv); err != nil {
		f.t.Fatal(err)
	}
	for i, p := range pools {
		var dp mayastorv1beta2.DiskPool
		if err := f.c.Get(ctx, types.NamespacedName{Namespace: f.ns, Name: p}, &dp); err != nil {
			f.t.Fatal(err)
		}
		msv.Status.Replicas = append(msv.Status.Replicas, mayastorv1alpha1.ReplicaStatus{UUID: fmt.Sprintf("%s-orig-%d", name, i), Pool: p, Node: dp.Spec.Node, State: mayastorv1alpha1.StateOnline, Synced: true})
	}
	msv.Status.State = mayastorv1alpha1.StateOnline
	if err := f.c.Status().Update(ctx, msv); err != nil {
		f.t.Fatal(err)
	}
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: "pv-" + name},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: *resource.NewQuantity(size, resource.BinarySI)},
			AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimDelete,
			StorageClassName:              "mayastor",
			PersistentVolumeSource:        corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: "io.openebs.csi-mayastor", VolumeHandle: name}},
		},
	}
	if err := f.c.Create(ctx, pv); err != nil {
		f.t.Fatal(err)
	}
	f.mu.Lock()
	f.startHealth[name] = len(pools)
	f.mu.Unlock()
}

func (f *fixture) getVolume(name string) mayastorv1alpha1.MayastorVolume {
	f.t.Helper()
	var v mayastorv1alpha1.MayastorVolume
	if err := f.c.Get(context.Background(), types.NamespacedName{Namespace: f.ns, Name: name}, &v); err != nil {
		f.t.Fatal(err)
	}
	return v
}

func (f *fixture) getPV(name string) corev1.PersistentVolume {
	f.t.Helper()
	var pv corev1.PersistentVolume
	if err := f.c.Get(context.Background(), types.NamespacedName{Name: "pv-" + name}, &pv); err != nil {
		f.t.Fatal(err)
	}
	return pv
}

// replicaPools lists "pool" of each replica, sorted.
func replicaPools(v mayastorv1alpha1.MayastorVolume) []string {
	var out []string
	for _, r := range v.Status.Replicas {
		out = append(out, r.Pool)
	}
	sort.Strings(out)
	return out
}

func (f *fixture) eventually(timeout time.Duration, what string, cond func() bool) {
	f.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			f.t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// runningEngine is an Engine with its Start goroutine.
type runningEngine struct {
	*Engine
	cancel context.CancelFunc
	done   chan struct{}
}

// stop cancels the engine (a crash, as far as the PVs can tell) and waits for it.
func (r *runningEngine) stop() {
	r.cancel()
	<-r.done
}

func (f *fixture) engine(o Options) *runningEngine {
	f.t.Helper()
	f.startSim()
	o.Client = f.c
	o.Backend = &MayastorVolumeBackend{Client: f.c, Namespace: f.ns}
	if o.Recorder == nil {
		o.Recorder = f.rec
	}
	if o.PollInterval == 0 {
		o.PollInterval = 20 * time.Millisecond
	}
	o.Log = testr.New(f.t)
	e, err := NewEngine(o)
	if err != nil {
		f.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &runningEngine{Engine: e, cancel: cancel, done: make(chan struct{})}
	go func() {
		if err := e.Start(ctx); err != nil {
			f.t.Errorf("engine: %v", err)
		}
		close(r.done)
	}()
	f.t.Cleanup(func() { cancel(); <-r.done })
	f.eventually(10*time.Second, "engine running", e.Running)
	return r
}

func req(policy, vol, from, to string) Request {
	return Request{Policy: policy, MaxConcurrent: 2, PVName: "pv-" + vol, VolumeID: vol, FromTier: from, ToTier: to,
		TargetPools: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": to}}, TriggerIOPS: 6000, Timeout: 30 * time.Second}
}

// waitResult waits until the engine holds a result for vol and returns it.
func (f *fixture) waitResult(e *Engine, policy, vol string) Result {
	f.t.Helper()
	var got Result
	f.eventually(60*time.Second, "migration result of "+vol, func() bool {
		for _, r := range e.PendingResults(policy) {
			if r.VolumeID == vol {
				got = r
				return true
			}
		}
		return false
	})
	return got
}

// policy creates a StoragePolicy whose status the test folds results into,
// as the StoragePolicy controller does.
func (f *fixture) policy(name string) {
	f.t.Helper()
	sp := &storagev1.StoragePolicy{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if err := f.c.Create(context.Background(), sp); err != nil {
		f.t.Fatal(err)
	}
}

// fold writes e's pending results of policy into its status, then acknowledges them.
func (f *fixture) fold(e *Engine, name string) storagev1.StoragePolicyStatus {
	f.t.Helper()
	ctx := context.Background()
	var sp storagev1.StoragePolicy
	if err := f.c.Get(ctx, types.NamespacedName{Name: name}, &sp); err != nil {
		f.t.Fatal(err)
	}
	rs := e.PendingResults(name)
	sp.Status = FoldResults(sp.Status, rs, e.ActiveCount(name))
	if err := f.c.Status().Update(ctx, &sp); err != nil {
		f.t.Fatal(err)
	}
	if err := e.Acknowledge(ctx, rs); err != nil {
		f.t.Fatal(err)
	}
	return sp.Status
}

// recorder collects Events.
type recorder struct {
	mu     sync.Mutex
	events []string // "Kind/name Reason: message"
}

func (r *recorder) Event(obj runtime.Object, typ, reason, msg string) {
	name := ""
	if o, ok := obj.(client.Object); ok {
		name = o.GetName()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, fmt.Sprintf("%T/%s %s %s: %s", obj, name, typ, reason, msg))
}
func (r *recorder) Eventf(obj runtime.Object, typ, reason, format string, args ...any) {
	r.Event(obj, typ, reason, fmt.Sprintf(format, args...))
}
func (r *recorder) AnnotatedEventf(obj runtime.Object, _ map[string]string, typ, reason, format string, args ...any) {
	r.Eventf(obj, typ, reason, format, args...)
}

func (r *recorder) count(reason string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, e := range r.events {
		if slices.Contains([]string{reason}, fieldReason(e)) {
			n++
		}
	}
	return n
}

func fieldReason(e string) string {
	var obj, typ, reason string
	fmt.Sscanf(e, "%s %s %s", &obj, &typ, &reason)
	if len(reason) > 0 && reason[len(reason)-1] == ':' {
		reason = reason[:len(reason)-1]
	}
	return reason
}

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }
