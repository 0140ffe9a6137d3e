package tiering

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/controllers"
	"github.com/billyronks/couchestor/internal/scheme"
	"github.com/billyronks/couchestor/pkg/iops"
	"github.com/billyronks/couchestor/pkg/mayastorrest"
	"github.com/billyronks/couchestor/pkg/migration"
	"github.com/billyronks/couchestor/tests/mayastorsim/restsim"
	"github.com/billyronks/couchestor/tests/mayastorsim/sim"
	"github.com/billyronks/couchestor/tests/testenv"
)

// The REST backend's moves against the REST double of Mayastor 2.x's control
// plane (tests/mayastorsim --api=rest) as its own process, on an API server
// with DiskPool and no MayastorVolume kind. The double places and removes
// replicas by Mayastor's rules, not the engine's: the engine can only steer
// and verify.

// placementLease is the Lease of the RESTBackend's PlacementLock
// (MayastorOptions.Build: namespace = the lock namespace, here "default").
const placementLease = "couchestor-mayastor-placement"

type restWorld struct {
	*world
	api *mayastorrest.Client
	kc  string
}

func newRESTWorld(t *testing.T, sc *sim.Scenario, simArgs ...string) *restWorld {
	t.Helper()
	testenv.RequireAssets(t)
	if os.Getenv("COUCHESTOR_PROMETHEUS") == "" {
		t.Skip("COUCHESTOR_PROMETHEUS is not set: run through `make test` (or export COUCHESTOR_PROMETHEUS=$(hack/prometheus.sh))")
	}
	env := testenv.Start(t, testenv.MayastorV2("v1beta2"))
	kc := env.WriteKubeconfig(t, t.TempDir())
	sp := sim.StartWithArgs(t, kc, testenv.Addr(testenv.FreePort(t)), sc, append([]string{"--api=rest"}, simArgs...)...)
	api, err := mayastorrest.New(mayastorrest.Config{URL: sp.REST})
	if err != nil {
		t.Fatal(err)
	}
	return &restWorld{world: &world{env: env, sim: sp, prom: startPrometheus(t, sp.Addr)}, api: api, kc: kc}
}

// restPools: two cold pools (the volumes' replicas), two hot, one warm, each
// on its own node. Volumes are published on node "app", which has no pool.
func restPools() []sim.PoolSpec {
	p := func(name, node, tier string) sim.PoolSpec {
		return sim.PoolSpec{Name: name, Node: node, Labels: map[string]string{"tier": tier}, CapacityBytes: 1 << 40}
	}
	return []sim.PoolSpec{p("cold-n1", "n1", "cold"), p("cold-n2", "n2", "cold"), p("hot-n3", "n3", "hot"), p("hot-n4", "n4", "hot"), p("warm-n5", "n5", "warm")}
}

// restVolume is a volume as Mayastor's CSI driver makes it: PV pvc-<uuid>,
// topology requiring the pool label key "tier" (poolHasTopologyKey: tier).
func restVolume(i int, iops float64, replicas ...string) sim.VolumeSpec {
	u := fmt.Sprintf("00000000-0000-4000-8000-%012d", i)
	return sim.VolumeSpec{Name: "pvc-" + u, UUID: u, SizeBytes: 1 << 30, Replicas: replicas, Published: true, IOPS: iops,
		PoolInclusion: map[string]string{"tier": ""}, TargetNode: "app",
		PVC: sim.PVCSpec{Namespace: "apps", Name: fmt.Sprintf("claim-%d", i), Labels: map[string]string{"tiering": "on"}}}
}

// startRESTOperator runs the StoragePolicy controller and the migration
// engine in a manager, over the REST backend exactly as main.go builds it.
func startRESTOperator(t *testing.T, w *restWorld, lever string) {
	t.Helper()
	mgr, err := ctrl.NewManager(w.env.Config, ctrl.Options{
		Scheme: scheme.New(), Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0",
	})
	if err != nil {
		t.Fatal(err)
	}
	opts := controllers.MayastorOptions{Backend: controllers.BackendREST, APIURL: w.sim.REST, Timeout: 5 * time.Second,
		PageSize: 500, Lever: lever, LockDuration: 10 * time.Second, KindPoll: time.Second}
	backend, optional, err := opts.Build(mgr.GetClient(), "mayastor", "default", "test-operator", ctrl.Log)
	if err != nil {
		t.Fatal(err)
	}
	src, err := iops.NewPrometheusSource(iops.PrometheusConfig{Address: w.prom.URL(), Timeout: 5 * time.Second, ScrapeInterval: scrapeInterval})
	if err != nil {
		t.Fatal(err)
	}
	events := make(chan event.GenericEvent, 64)
	engine, err := migration.NewEngine(migration.Options{
		Client: mgr.GetClient(), Backend: backend, PollInterval: 200 * time.Millisecond,
		Recorder: mgr.GetEventRecorderFor("couchestor-migration"), //nolint:staticcheck // the engine takes a record.EventRecorder
		Notify: func(policy string) {
			select {
			case events <- event.GenericEvent{Object: &storagev1.StoragePolicy{ObjectMeta: metav1.ObjectMeta{Name: policy}}}:
			default:
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := mgr.Add(engine); err != nil {
		t.Fatal(err)
	}
	r := &controllers.StoragePolicyReconciler{
		Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Recorder: mgr.GetEventRecorder("couchestor-storagepolicy"),
		Meter:  &iops.Meter{Querier: src, Cache: iops.NewMetricsCache(500*time.Millisecond, nil), ScrapeInterval: scrapeInterval},
		Engine: &migration.PolicyStarter{Engine: engine}, Migrations: engine, MigrationEvents: events,
		MayastorNamespace: "mayastor", EvaluationInterval: evalInterval, ScrapeInterval: scrapeInterval,
		Backend: backend, Optional: optional, OptionalPoll: time.Second, SkipNameValidation: true,
	}
	if err := r.SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// restReplicas are a REST volume's replicas as "pool(synced)" sorted, and
// num_replicas.
func (w *restWorld) restReplicas(t *testing.T, uuid string) (pools []string, synced int, num int) {
	t.Helper()
	v, err := w.api.GetVolume(context.Background(), uuid)
	if err != nil {
		t.Fatalf("GET volume %s: %v", uuid, err)
	}
	for id, r := range v.State.ReplicaTopology {
		pools = append(pools, ptr.Deref(r.Pool, "?"))
		if mayastorrest.ReplicaSynced(v, id) {
			synced++
		}
	}
	sort.Strings(pools)
	return pools, synced, int(v.Spec.NumReplicas)
}

// leverClear: every pool carries its tier label and no cordon, and the
// placement Lease records no lever.
func (w *restWorld) leverClear(t *testing.T) (bool, string) {
	t.Helper()
	ps, err := w.api.ListPools(context.Background())
	if err != nil {
		return false, err.Error()
	}
	for _, p := range ps {
		if _, ok := p.Labels()["tier"]; !ok || p.Cordoned() {
			return false, fmt.Sprintf("pool %s: labels %v, cordoned %v", p.ID, p.Labels(), p.Cordoned())
		}
	}
	var l coordinationv1.Lease
	err = w.env.Client.Get(context.Background(), client.ObjectKey{Namespace: "default", Name: placementLease}, &l)
	if err == nil && l.Annotations[migration.AnnotationSteer] != "" {
		return false, "lever recorded on the Lease: " + l.Annotations[migration.AnnotationSteer]
	}
	return true, ""
}

func pvEvents(t *testing.T, c client.Client, pv, reason string) []string {
	t.Helper()
	var evs corev1.EventList
	if err := c.List(context.Background(), &evs); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range evs.Items {
		if e.InvolvedObject.Kind == "PersistentVolume" && e.InvolvedObject.Name == pv && e.Reason == reason {
			out = append(out, e.Message)
		}
	}
	return out
}

// A hot volume on two cold pools moves to the hot pools with either lever;
// afterwards no pool is left steered and the Lease holds no lever record.
func TestRESTMoveToHot(t *testing.T) {
	for _, c := range []struct {
		lever   string
		simArgs []string
	}{
		{migration.LeverLabel, nil},
		{migration.LeverCordon, []string{"--pool-cordon"}},
	} {
		t.Run(c.lever, func(t *testing.T) {
			vol := restVolume(1, 6000, "cold-n1", "cold-n2")
			w := newRESTWorld(t, &sim.Scenario{Pools: restPools(), Volumes: []sim.VolumeSpec{vol}}, c.simArgs...)
			startRESTOperator(t, w, c.lever)
			if err := w.env.Client.Create(context.Background(), newPolicy("rest-"+c.lever, "1h", false)); err != nil {
				t.Fatal(err)
			}
			eventually(t, waitLong, "both replicas on the hot pools, synced, and the move recorded", func() (bool, string) {
				pools, synced, num := w.restReplicas(t, vol.UUID)
				p := getPolicy(t, w.env.Client, "rest-"+c.lever)
				m := movesOf(p, vol.Name)
				ok := strings.Join(pools, ",") == "hot-n3,hot-n4" && synced == 2 && num == 2 && len(m) == 1 && m[0].Success && m[0].ToTier == "hot"
				return ok, fmt.Sprintf("pools %v synced %d num %d history %+v", pools, synced, num, p.Status.MigrationHistory)
			})
			if ok, why := w.leverClear(t); !ok {
				t.Fatalf("the lever was not released: %s", why)
			}
		})
	}
}

// With a scheduler that ignores steering (--steer-miss-probability=1), the
// new replica lands on the warm pool: the engine says so, undoes it, and the
// migration ends failed with that reason; the volume keeps its two cold
// replicas, synced.
func TestRESTSteerMissIsUndone(t *testing.T) {
	vol := restVolume(2, 6000, "cold-n1", "cold-n2")
	w := newRESTWorld(t, &sim.Scenario{Pools: restPools(), Volumes: []sim.VolumeSpec{vol}}, "--steer-miss-probability=1")
	startRESTOperator(t, w, migration.LeverLabel)
	if err := w.env.Client.Create(context.Background(), newPolicy("rest-miss", "1h", false)); err != nil {
		t.Fatal(err)
	}
	var failed storagev1.MigrationHistoryEntry
	eventually(t, waitLong, "a failed move in the history", func() (bool, string) {
		p := getPolicy(t, w.env.Client, "rest-miss")
		for _, m := range movesOf(p, vol.Name) {
			if !m.Success {
				failed = m
				return true, ""
			}
		}
		return false, fmt.Sprintf("history %+v", p.Status.MigrationHistory)
	})
	if !strings.Contains(failed.Error, "placed the new replica on pool") || !strings.Contains(failed.Error, "outside tier hot") {
		t.Fatalf("failure %q does not say the new replica landed outside tier hot", failed.Error)
	}
	// The scheduler ignoring steering may also have picked a hot pool for an
	// earlier replica: what must hold is that the misplaced one was undone
	// and no replica lost.
	eventually(t, waitLong, "the misplaced replica removed, two synced replicas left", func() (bool, string) {
		pools, synced, num := w.restReplicas(t, vol.UUID)
		annotated := getPV(t, w.world, vol.Name).Annotations["storage.billyronks.io/migration"] != ""
		onTiers := true
		for _, p := range pools {
			onTiers = onTiers && (strings.HasPrefix(p, "cold-") || strings.HasPrefix(p, "hot-"))
		}
		return len(pools) == 2 && onTiers && synced == 2 && num == 2 && !annotated,
			fmt.Sprintf("pools %v synced %d num %d annotated %v", pools, synced, num, annotated)
	})
	if ok, why := w.leverClear(t); !ok {
		t.Fatalf("the lever was not released: %s", why)
	}
}

// A volume whose off-tier replica is local to its nexus cannot move: Mayastor
// removes remote replicas first, so the scale-down would drop the new hot
// replica. The move is refused before anything changes, with the reason in a
// MigrationSkipped Event on the PV (before, only in the operator's log), and
// the volume is not touched.
func TestRESTNexusLocalReplicaIsRefusedWithAReason(t *testing.T) {
	local := restVolume(3, 6000, "cold-n1", "cold-n2")
	local.TargetNode = "" // the nexus on n1, beside the cold-n1 replica
	w := newRESTWorld(t, &sim.Scenario{Pools: restPools(), Volumes: []sim.VolumeSpec{local}})
	startRESTOperator(t, w, migration.LeverLabel)
	pol := newPolicy("rest-skip", "1h", false)
	if err := w.env.Client.Create(context.Background(), pol); err != nil {
		t.Fatal(err)
	}
	eventually(t, waitLong, "a MigrationSkipped Event naming the nexus-local replica", func() (bool, string) {
		for _, m := range pvEvents(t, w.env.Client, local.Name, "MigrationSkipped") {
			if strings.Contains(m, "local to the volume's target on node n1") {
				return true, ""
			}
		}
		return false, fmt.Sprintf("events %v", pvEvents(t, w.env.Client, local.Name, "MigrationSkipped"))
	})
	waitEvaluations(t, w.env.Client, "rest-skip", 3)
	if pools, _, num := w.restReplicas(t, local.UUID); strings.Join(pools, ",") != "cold-n1,cold-n2" || num != 2 {
		t.Errorf("%s was touched: pools %v num %d", local.Name, pools, num)
	}
	if h := getPolicy(t, w.env.Client, "rest-skip").Status.MigrationHistory; len(h) != 0 {
		t.Errorf("history %+v: nothing may have moved", h)
	}
}

// REST answering 503, then dropping connections: no move starts, and
// MayastorAvailable=False names the call.
func TestRESTFaultsStartNoMove(t *testing.T) {
	vol := restVolume(6, 6000, "cold-n1", "cold-n2")
	w := newRESTWorld(t, &sim.Scenario{Pools: restPools(), Volumes: []sim.VolumeSpec{vol}}, "--fail-5xx-probability=1")
	startRESTOperator(t, w, migration.LeverLabel)
	if err := w.env.Client.Create(context.Background(), newPolicy("rest-faults", "1h", false)); err != nil {
		t.Fatal(err)
	}
	check := func(what, want string) {
		t.Helper()
		eventually(t, waitLong, "MayastorAvailable=False naming the call ("+what+")", func() (bool, string) {
			c := condition(getPolicy(t, w.env.Client, "rest-faults"), "MayastorAvailable")
			return c != nil && c.Status == metav1.ConditionFalse && strings.Contains(c.Message, "/v0/") && strings.Contains(c.Message, want),
				fmt.Sprintf("%+v", c)
		})
		waitEvaluations(t, w.env.Client, "rest-faults", 3)
		if a := getPV(t, w.world, vol.Name).Annotations["storage.billyronks.io/migration"]; a != "" {
			t.Fatalf("%s: a migration started: %s", what, a)
		}
		if h := getPolicy(t, w.env.Client, "rest-faults").Status.MigrationHistory; len(h) != 0 {
			t.Fatalf("%s: history %+v", what, h)
		}
	}
	check("503", "503")
	zero, one := 0.0, 1.0
	if err := w.sim.Client.RESTKnobs(restsim.Knobs{Fail5xxProbability: &zero, DropProbability: &one}); err != nil {
		t.Fatal(err)
	}
	check("dropped connections", "EOF")
	if err := w.sim.Client.RESTKnobs(restsim.Knobs{DropProbability: &zero}); err != nil {
		t.Fatal(err)
	}
	if pools, _, num := w.restReplicas(t, vol.UUID); strings.Join(pools, ",") != "cold-n1,cold-n2" || num != 2 {
		t.Errorf("the volume was touched: pools %v num %d", pools, num)
	}
}

// startOperatorProcess runs the operator binary (default REST backend) against
// w, with extra flags appended; the returned command is SIGKILLed when the
// test ends if still running.
func startOperatorProcess(t *testing.T, w *restWorld, name string, extra ...string) *exec.Cmd {
	t.Helper()
	probe, metrics := testenv.Addr(testenv.FreePort(t)), testenv.Addr(testenv.FreePort(t))
	port := fmt.Sprint(testenv.FreePort(t))
	logPath := filepath.Join(t.TempDir(), name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	args := []string{
		"--kubeconfig", w.kc, "--metrics-bind-address", metrics, "--health-probe-bind-address", probe,
		"--leader-election-namespace", "default", "--webhook-namespace", "default", "--mayastor-namespace", "mayastor",
		"--leader-elect-lease-duration", "6s", "--leader-elect-renew-deadline", "4s", "--leader-elect-retry-period", "1s",
		"--webhook-cert-mode", "self-signed", "--webhook-port", port, "--webhook-local-url", "https://localhost:" + port,
		"--webhook-cert-dir", t.TempDir(), "--prometheus-url", w.prom.URL(), "--prometheus-scrape-interval", "1s",
		"--evaluation-interval", "2s", "--metrics-cache-ttl", "1s", "--zap-encoder", "console",
		"--mayastor-api-url", w.sim.REST, "--mayastor-placement-lever", migration.LeverLabel,
		"--mayastor-placement-lock-duration", "5s"}
	cmd := exec.Command(testenv.OperatorBinary(t), append(args, extra...)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_, _ = cmd.Process.Wait()
		f.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			lines := strings.Split(string(b), "\n")
			t.Logf("--- %s log (last 40 lines) ---\n%s", name, strings.Join(lines[max(0, len(lines)-40):], "\n"))
		}
	})
	if err := testenv.WaitHTTP200("http://"+probe+"/readyz", 2*time.Minute); err != nil {
		t.Fatalf("%s never became ready: %v", name, err)
	}
	return cmd
}

// An operator SIGKILLed while it holds the placement lever (the label
// withheld from warm-n5, before its PUT replica_count and its release; each
// REST call made slow by --rest-latency to widen that window) leaves the
// lever recorded on the Lease. The next operator releases it: warm-n5 gets
// its label back, the Lease's record is cleared, and the volume keeps (or
// regains) two synced replicas.
func TestRESTLeverLeftByKilledOperatorIsReleased(t *testing.T) {
	vol := restVolume(7, 6000, "cold-n1", "cold-n2")
	w := newRESTWorld(t, &sim.Scenario{Pools: restPools(), Volumes: []sim.VolumeSpec{vol}}, "--rest-latency=3s")
	first := startOperatorProcess(t, w, "operator-1")
	if err := w.env.Client.Create(context.Background(), newPolicy("rest-kill", "1h", false)); err != nil {
		t.Fatal(err)
	}
	withheld := func() (bool, string) {
		ps, err := w.api.ListPools(context.Background())
		if err != nil {
			return false, err.Error()
		}
		for _, p := range ps {
			if p.ID == "warm-n5" {
				_, ok := p.Labels()["tier"]
				return !ok, fmt.Sprintf("warm-n5 labels %v", p.Labels())
			}
		}
		return false, "no pool warm-n5"
	}
	// Each read takes the 3 s latency, so the read that first sees the label
	// gone was answered within 3 s of its removal; the operator's release is
	// 6 s after it (PUT replica_count, then PUT label, each 3 s), and a
	// killed client's request in its latency is dropped by the server.
	eventually(t, waitLong, "the lever taken (warm-n5 without its tier label)", withheld)
	if err := first.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_, _ = first.Process.Wait()
	zero := "0s"
	if err := w.sim.Client.RESTKnobs(restsim.Knobs{Latency: &zero}); err != nil {
		t.Fatal(err)
	}
	if ok, why := withheld(); !ok {
		t.Fatalf("the lever was released before the kill took effect (%s): the window was missed", why)
	}
	var l coordinationv1.Lease
	if err := w.env.Client.Get(context.Background(), client.ObjectKey{Namespace: "default", Name: placementLease}, &l); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(l.Annotations[migration.AnnotationSteer], "warm-n5") {
		t.Fatalf("the killed operator's lever is not recorded on the Lease: %v", l.Annotations)
	}
	startOperatorProcess(t, w, "operator-2")
	eventually(t, waitLong, "the next operator released the lever", func() (bool, string) { return w.leverClear(t) })
	eventually(t, waitLong, "the volume with two synced replicas and no migration in flight", func() (bool, string) {
		pools, synced, num := w.restReplicas(t, vol.UUID)
		annotated := getPV(t, w.world, vol.Name).Annotations["storage.billyronks.io/migration"] != ""
		return synced == 2 && num == 2 && len(pools) == 2 && !annotated, fmt.Sprintf("pools %v synced %d num %d annotated %v", pools, synced, num, annotated)
	})
}

// --preservation-mode (main.go -> migration.Options.PreservationMode): a move
// only adds replicas on the new tier and never removes the old ones. The
// operator binary with the flag moves a hot volume on two cold pools: it ends
// with four synced replicas, the two cold ones still there beside two on the
// hot pools, and the move recorded as a success; evaluations after it remove
// nothing. Without the flag the same scenario ends on hot-n3,hot-n4 only
// (TestRESTMoveToHot), so a flag that is not wired through fails here.
func TestRESTPreservationModeKeepsTheOldReplicas(t *testing.T) {
	vol := restVolume(8, 6000, "cold-n1", "cold-n2")
	w := newRESTWorld(t, &sim.Scenario{Pools: restPools(), Volumes: []sim.VolumeSpec{vol}})
	startOperatorProcess(t, w, "operator", "--preservation-mode")
	if err := w.env.Client.Create(context.Background(), newPolicy("rest-preserve", "1h", false)); err != nil {
		t.Fatal(err)
	}
	const want = "cold-n1,cold-n2,hot-n3,hot-n4"
	eventually(t, waitLong, "the move recorded, no migration in flight", func() (bool, string) {
		p := getPolicy(t, w.env.Client, "rest-preserve")
		m := movesOf(p, vol.Name)
		annotated := getPV(t, w.world, vol.Name).Annotations["storage.billyronks.io/migration"] != ""
		return len(m) == 1 && !annotated, fmt.Sprintf("history %+v annotated %v", p.Status.MigrationHistory, annotated)
	})
	if m := movesOf(getPolicy(t, w.env.Client, "rest-preserve"), vol.Name)[0]; !m.Success || m.ToTier != "hot" {
		t.Fatalf("the move to hot did not succeed: %+v", m)
	}
	check := func(when string) {
		t.Helper()
		if pools, synced, num := w.restReplicas(t, vol.UUID); strings.Join(pools, ",") != want || synced != 4 || num != 4 {
			t.Fatalf("%s: pools %v synced %d num_replicas %d; want %s, all 4 synced (the old replicas kept)", when, pools, synced, num, want)
		}
	}
	check("after the move")
	waitEvaluations(t, w.env.Client, "rest-preserve", 3)
	check("three evaluations later")
	if ok, why := w.leverClear(t); !ok {
		t.Fatalf("the lever was not released: %s", why)
	}
}
