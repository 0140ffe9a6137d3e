// Package tiering is the integration suite of tiering part 1: a real
// kube-apiserver and etcd (envtest), the Mayastor simulator as its own
// process, and a real Prometheus scraping it every second, with the
// StoragePolicy controller running in a controller-runtime manager.
//
// It needs KUBEBUILDER_ASSETS (hack/envtest.sh) and COUCHESTOR_PROMETHEUS
// (hack/prometheus.sh); `make test` sets both.
package tiering

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/controllers"
	"github.com/billyronks/couchestor/internal/scheme"
	"github.com/billyronks/couchestor/pkg/iops"
	"github.com/billyronks/couchestor/pkg/migration"
	"github.com/billyronks/couchestor/pkg/tiering"
	"github.com/billyronks/couchestor/tests/mayastorsim/sim"
	"github.com/billyronks/couchestor/tests/testenv"
)

func init() { ctrl.SetLogger(logr.Discard()) }

const (
	scrapeInterval = time.Second
	evalInterval   = time.Second
	waitLong       = 3 * time.Minute
)

// prometheus is a real Prometheus server process that can be stopped and
// started again on the same port and data directory.
type prometheus struct {
	t      *testing.T
	bin    string
	dir    string
	addr   string
	cmd    *exec.Cmd
	output *strings.Builder
}

func startPrometheus(t *testing.T, target string) *prometheus {
	t.Helper()
	bin := os.Getenv("COUCHESTOR_PROMETHEUS")
	if bin == "" {
		t.Skip("COUCHESTOR_PROMETHEUS is not set: run through `make test` (or export COUCHESTOR_PROMETHEUS=$(hack/prometheus.sh))")
	}
	dir := t.TempDir()
	cfg := fmt.Sprintf(`global:
  scrape_interval: %s
  evaluation_interval: %s
scrape_configs:
  - job_name: mayastor-io-engine
    static_configs:
      - targets: [%q]
`, scrapeInterval, scrapeInterval, target)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &prometheus{t: t, bin: bin, dir: dir, addr: testenv.Addr(testenv.FreePort(t))}
	p.Start()
	t.Cleanup(p.Stop)
	return p
}

func (p *prometheus) URL() string { return "http://" + p.addr }

// Start runs the process and waits until it is ready.
func (p *prometheus) Start() {
	p.t.Helper()
	p.output = &strings.Builder{}
	p.cmd = exec.Command(p.bin,
		"--config.file="+filepath.Join(p.dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(p.dir, "data"),
		"--web.listen-address="+p.addr,
		"--storage.tsdb.retention.time=1h",
	)
	p.cmd.Stdout, p.cmd.Stderr = p.output, p.output
	if err := p.cmd.Start(); err != nil {
		p.t.Fatalf("start prometheus: %v", err)
	}
	if err := testenv.WaitHTTP200(p.URL()+"/-/ready", time.Minute); err != nil {
		p.t.Fatalf("prometheus not ready: %v\n%s", err, p.output.String())
	}
}

// Stop terminates the process (idempotent).
func (p *prometheus) Stop() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
	p.cmd = nil
}

// recordingEngine stands in for the migration engine of tiering part 2: it
// records the moves it is handed.
type recordingEngine struct {
	mu    sync.Mutex
	moves []tiering.Decision
}

func (e *recordingEngine) StartMigrations(_ context.Context, _ *storagev1.StoragePolicy, moves []tiering.Decision) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.moves = append(e.moves, moves...)
}

func (e *recordingEngine) find(volume string, to tiering.Tier) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, m := range e.moves {
		if m.Volume == volume && m.To == to {
			return true
		}
	}
	return false
}

func (e *recordingEngine) toTier(to tiering.Tier) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, m := range e.moves {
		if m.To == to {
			out = append(out, m.Describe())
		}
	}
	return out
}

// unknownAsZeroMeter is the Rust CoucheStor CE's bug, on purpose: every
// unknown measurement becomes a known 0. It is used only when
// COUCHESTOR_TEST_UNKNOWN_AS_ZERO=1, to show that the outage test catches it.
type unknownAsZeroMeter struct{ controllers.IOPSMeter }

func (m unknownAsZeroMeter) Measure(ctx context.Context, w time.Duration, vols []iops.Volume) iops.Report {
	r := m.IOPSMeter.Measure(ctx, w, vols)
	for k, ms := range r.Measurements {
		if !ms.Known {
			r.Measurements[k] = iops.Measurement{IOPS: 0, Known: true}
		}
	}
	return r // Err and the condition stay honest; only the decisions see zeros
}

// operator is the StoragePolicy controller in its own manager.
type operator struct {
	cancel context.CancelFunc
	done   chan error
}

func startOperator(t *testing.T, env *testenv.Env, promURL string, engine controllers.MigrationStarter, globalDryRun bool) *operator {
	t.Helper()
	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{
		Scheme:                 scheme.New(),
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		LeaderElection:         false,
	})
	if err != nil {
		t.Fatal(err)
	}
	src, err := iops.NewPrometheusSource(iops.PrometheusConfig{Address: promURL, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var meter controllers.IOPSMeter = &iops.Meter{Querier: src, Cache: iops.NewMetricsCache(500*time.Millisecond, nil), ScrapeInterval: scrapeInterval}
	if os.Getenv("COUCHESTOR_TEST_UNKNOWN_AS_ZERO") == "1" {
		t.Log("COUCHESTOR_TEST_UNKNOWN_AS_ZERO=1: running with the unknown-as-zero bug on purpose")
		meter = unknownAsZeroMeter{meter}
	}
	r := &controllers.StoragePolicyReconciler{
		Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Recorder: mgr.GetEventRecorder("couchestor-storagepolicy"),
		Meter: meter, Engine: engine, MayastorNamespace: "mayastor",
		Backend:            &migration.MayastorVolumeBackend{Client: mgr.GetClient(), Namespace: "mayastor"},
		Optional:           crdWatches,
		EvaluationInterval: evalInterval, ScrapeInterval: scrapeInterval, GlobalDryRun: globalDryRun,
		SkipNameValidation: true,
	}
	if engine == nil {
		r.Engine = nil // keep the interface nil, not a typed nil
	}
	if err := r.SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	o := &operator{cancel: cancel, done: make(chan error, 1)}
	go func() { o.done <- mgr.Start(ctx) }()
	t.Cleanup(o.Stop)
	return o
}

// crdWatches are the MayastorVolume and DiskPool watches of the crd backend.
var crdWatches = []controllers.OptionalWatch{
	{Group: "openebs.io", Kind: "MayastorVolume", Versions: []string{"v1alpha1"}, Namespace: "mayastor"},
	{Group: "openebs.io", Kind: "DiskPool", Versions: []string{"v1beta3", "v1beta2"}, Namespace: "mayastor"},
}

func (o *operator) Stop() {
	if o.cancel == nil {
		return
	}
	o.cancel()
	<-o.done
	o.cancel = nil
}

// world is one suite setup: control plane, simulator, Prometheus.
type world struct {
	env  *testenv.Env
	sim  *sim.Process
	prom *prometheus
}

func newWorld(t *testing.T, sc *sim.Scenario) *world {
	t.Helper()
	testenv.RequireAssets(t)
	if os.Getenv("COUCHESTOR_PROMETHEUS") == "" {
		t.Skip("COUCHESTOR_PROMETHEUS is not set: run through `make test` (or export COUCHESTOR_PROMETHEUS=$(hack/prometheus.sh))")
	}
	env := testenv.Start(t)
	kc := env.WriteKubeconfig(t, t.TempDir())
	sp := sim.Start(t, kc, testenv.Addr(testenv.FreePort(t)), sc)
	return &world{env: env, sim: sp, prom: startPrometheus(t, sp.Addr)}
}

func pools() []sim.PoolSpec {
	return []sim.PoolSpec{
		{Name: "hot-n1", Node: "n1", Labels: map[string]string{"tier": "hot", "media": "nvme"}, CapacityBytes: 1 << 40},
		{Name: "warm-n1", Node: "n1", Labels: map[string]string{"tier": "warm", "media": "ssd"}, CapacityBytes: 1 << 40},
		{Name: "cold-n1", Node: "n1", Labels: map[string]string{"tier": "cold", "media": "hdd"}, CapacityBytes: 1 << 40},
		{Name: "cold-n2", Node: "n2", Labels: map[string]string{"tier": "cold", "media": "hdd"}, CapacityBytes: 1 << 40},
	}
}

func volume(name string, iops float64, replicas ...string) sim.VolumeSpec {
	return sim.VolumeSpec{Name: name, UUID: "uuid-" + name, SizeBytes: 1 << 30, Replicas: replicas, Published: true, IOPS: iops,
		PVC: sim.PVCSpec{Namespace: "apps", Name: "claim-" + name, Labels: map[string]string{"tiering": "on"}}}
}

func newPolicy(name, cooldown string, dryRun bool) *storagev1.StoragePolicy {
	i := func(v int64) *int64 { return &v }
	return &storagev1.StoragePolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: storagev1.StoragePolicySpec{
			HighWatermarkIOPS: i(5000), WarmWatermarkIOPS: i(2000), LowWatermarkIOPS: i(500),
			SamplingWindow: "20s", CooldownPeriod: cooldown, StorageClassName: "mayastor",
			HotPoolSelector:  &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "hot"}},
			WarmPoolSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "warm"}},
			ColdPoolSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "cold"}},
			VolumeSelector:   &metav1.LabelSelector{MatchLabels: map[string]string{"tiering": "on"}},
			DryRun:           &dryRun,
		},
	}
}

func getPolicy(t *testing.T, c client.Client, name string) *storagev1.StoragePolicy {
	t.Helper()
	p := &storagev1.StoragePolicy{}
	if err := c.Get(context.Background(), client.ObjectKey{Name: name}, p); err != nil {
		t.Fatalf("get policy: %v", err)
	}
	return p
}

// eventually polls cond until it holds or timeout passes, then fails with its last explanation.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		ok, why := cond()
		if ok {
			return
		}
		last = why
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s; last: %s", timeout, what, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func condition(p *storagev1.StoragePolicy, typ string) *metav1.Condition {
	return meta.FindStatusCondition(p.Status.Conditions, typ)
}

// waitEvaluations waits until the policy has been evaluated n more times
// (lastReconcileTime advanced n times; status stamps are whole seconds).
func waitEvaluations(t *testing.T, c client.Client, name string, n int) {
	t.Helper()
	seen := 0
	var last time.Time
	if p := getPolicy(t, c, name); p.Status.LastReconcileTime != nil {
		last = p.Status.LastReconcileTime.Time
	}
	eventually(t, waitLong, fmt.Sprintf("%d evaluations", n), func() (bool, string) {
		p := getPolicy(t, c, name)
		if lr := p.Status.LastReconcileTime; lr != nil && lr.Time.After(last) {
			last = lr.Time
			seen++
		}
		return seen >= n, fmt.Sprintf("%d evaluations seen", seen)
	})
}

func dryRunEntries(p *storagev1.StoragePolicy, volume string) []storagev1.MigrationHistoryEntry {
	var out []storagev1.MigrationHistoryEntry
	for _, e := range p.Status.MigrationHistory {
		if e.DryRun && e.VolumeName == volume {
			out = append(out, e)
		}
	}
	return out
}

func getPV(t *testing.T, w *world, name string) *corev1.PersistentVolume {
	t.Helper()
	pv := &corev1.PersistentVolume{}
	if err := w.env.Client.Get(context.Background(), client.ObjectKey{Name: name}, pv); err != nil {
		t.Fatal(err)
	}
	return pv
}
