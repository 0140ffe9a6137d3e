package tiering

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
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

// A Prometheus restart leaves a gap in every series. Right after scraping
// resumes, rate() over the window reads well below the truth (a 5600-IOPS
// volume read ~4400 in the independent run and was demoted). The volume just
// above the high watermark must not move: its IOPS are unknown until a whole
// window has been scraped again without a gap, then known and hot again.
//
// Fails on the sample-count coverage rule (75 % of the samples are enough,
// while the rate under-reads by the missing quarter).
func TestPrometheusRestartMovesNothingUntilAFullWindow(t *testing.T) {
	w := newWorld(t, &sim.Scenario{Pools: pools(), Volumes: []sim.VolumeSpec{
		volume("pv-hot", 5600, "hot-n1"),
		volume("pv-warm", 2300, "warm-n1"),
	}})
	c := w.env.Client
	engine := &recordingEngine{}
	startOperator(t, w.env, w.prom.URL(), engine, false)
	pol := newPolicy("restart", "1s", false)
	pol.Annotations = map[string]string{tiering.AnnotationHysteresis: "0"} // the coverage rule alone must hold
	if err := c.Create(context.Background(), pol); err != nil {
		t.Fatal(err)
	}
	eventually(t, waitLong, "all volumes measured", func() (bool, string) {
		m := condition(getPolicy(t, c, "restart"), "MetricsAvailable")
		return m != nil && m.Status == metav1.ConditionTrue, fmt.Sprintf("%+v", m)
	})

	w.prom.Stop()
	stopped := time.Now()
	// The outage is part of the scenario: longer than the 20 s window.
	eventually(t, waitLong, "a 30 s outage", func() (bool, string) {
		return time.Since(stopped) > 30*time.Second, "outage still short"
	})
	w.prom.Start()

	sawCoverage := false
	eventually(t, waitLong, "IOPS unknown for insufficient coverage after the restart", func() (bool, string) {
		m := condition(getPolicy(t, c, "restart"), "MetricsAvailable")
		sawCoverage = m != nil && m.Status == metav1.ConditionFalse && strings.Contains(m.Message, "cover")
		return sawCoverage, fmt.Sprintf("%+v", m)
	})
	eventually(t, waitLong, "all volumes measured again after a full window", func() (bool, string) {
		m := condition(getPolicy(t, c, "restart"), "MetricsAvailable")
		return m != nil && m.Status == metav1.ConditionTrue, fmt.Sprintf("%+v", m)
	})
	waitEvaluations(t, c, "restart", 5)
	if got := append(engine.toTier(tiering.Warm), engine.toTier(tiering.Cold)...); len(got) > 0 {
		t.Fatalf("the Prometheus restart moved volumes: %v", got)
	}
}

// startOperatorWithEngine runs the StoragePolicy controller with the real
// migration engine over the simulator's MayastorVolumes.
func startOperatorWithEngine(t *testing.T, env *testenv.Env, promURL string) {
	t.Helper()
	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{
		Scheme: scheme.New(), Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0",
	})
	if err != nil {
		t.Fatal(err)
	}
	src, err := iops.NewPrometheusSource(iops.PrometheusConfig{Address: promURL, Timeout: 5 * time.Second, ScrapeInterval: scrapeInterval})
	if err != nil {
		t.Fatal(err)
	}
	events := make(chan event.GenericEvent, 64)
	engine, err := migration.NewEngine(migration.Options{
		Client:       mgr.GetClient(),
		Backend:      &migration.MayastorVolumeBackend{Client: mgr.GetClient(), Namespace: "mayastor"},
		PollInterval: 200 * time.Millisecond,
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
		Backend:  &migration.MayastorVolumeBackend{Client: mgr.GetClient(), Namespace: "mayastor"},
		Optional: crdWatches, SkipNameValidation: true,
	}
	if err := r.SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

func movesOf(p *storagev1.StoragePolicy, volume string) []storagev1.MigrationHistoryEntry {
	var out []storagev1.MigrationHistoryEntry
	for _, e := range p.Status.MigrationHistory {
		if !e.DryRun && e.VolumeName == volume {
			out = append(out, e)
		}
	}
	return out
}

// A volume flapping around the high watermark (4900 ↔ 5100 IOPS, each phase a
// whole window) moves once, to hot, and stays there (hysteresis: demoted only
// below 4500). A volume that cools right after arriving on hot starts its next
// move no sooner than one cooldown after the first one ended. Real migrations:
// the simulator plays Mayastor's replica behaviour.
func TestFlappingVolumeMovesOnceAndCooldownHolds(t *testing.T) {
	testenv.RequireAssets(t)
	env := testenv.Start(t)
	kc := env.WriteKubeconfig(t, t.TempDir())
	ps := []sim.PoolSpec{
		{Name: "warm-n1", Node: "n1", Labels: map[string]string{"tier": "warm"}, CapacityBytes: 1 << 40},
		{Name: "hot-n2", Node: "n2", Labels: map[string]string{"tier": "hot"}, CapacityBytes: 1 << 40},
		{Name: "hot-n3", Node: "n3", Labels: map[string]string{"tier": "hot"}, CapacityBytes: 1 << 40},
		{Name: "cold-n4", Node: "n4", Labels: map[string]string{"tier": "cold"}, CapacityBytes: 1 << 40},
		{Name: "cold-n5", Node: "n5", Labels: map[string]string{"tier": "cold"}, CapacityBytes: 1 << 40},
	}
	sp := sim.StartWithArgs(t, kc, testenv.Addr(testenv.FreePort(t)), &sim.Scenario{Pools: ps, Volumes: []sim.VolumeSpec{
		volume("pv-flap", 5100, "warm-n1"),
		volume("pv-cool", 6000, "warm-n1"),
	}}, "--replica-behaviour")
	w := &world{env: env, sim: sp, prom: startPrometheus(t, sp.Addr)}
	c := env.Client
	startOperatorWithEngine(t, env, w.prom.URL())
	const cooldown = 30 * time.Second
	if err := c.Create(context.Background(), newPolicy("trust", "30s", false)); err != nil {
		t.Fatal(err)
	}

	// Item 4: counters that are 0 are present in the stored object.
	eventually(t, waitLong, "status written", func() (bool, string) {
		u := &unstructured.Unstructured{}
		u.SetGroupVersionKind(schema.GroupVersionKind{Group: storagev1.GroupVersion.Group, Version: storagev1.GroupVersion.Version, Kind: "StoragePolicy"})
		if err := c.Get(context.Background(), client.ObjectKey{Name: "trust"}, u); err != nil {
			return false, err.Error()
		}
		st, _ := u.Object["status"].(map[string]any)
		if st == nil || st["lastReconcileTime"] == nil {
			return false, "no status yet"
		}
		for _, k := range []string{"watchedVolumes", "hotVolumes", "warmVolumes", "coldVolumes", "activeMigrations", "totalMigrations", "failedMigrations"} {
			if _, ok := st[k]; !ok {
				b, _ := json.Marshal(st)
				t.Fatalf("status.%s absent (a 0 must be written): %s", k, b)
			}
		}
		return true, ""
	})

	eventually(t, waitLong, "pv-flap and pv-cool moved to hot", func() (bool, string) {
		p := getPolicy(t, c, "trust")
		return len(movesOf(p, "pv-flap")) == 1 && len(movesOf(p, "pv-cool")) == 1 && p.Status.ActiveMigrations == 0,
			fmt.Sprintf("history %+v", p.Status.MigrationHistory)
	})
	if err := sp.Client.SetIOPS("pv-cool", 0); err != nil {
		t.Fatal(err)
	}
	for i, x := range []float64{4900, 5100, 4900, 5100, 4900} {
		if err := sp.Client.SetIOPS("pv-flap", x); err != nil {
			t.Fatal(err)
		}
		waitEvaluations(t, c, "trust", 25) // a whole 20 s window at this rate, and more
		t.Logf("phase %d (%v IOPS) done", i, x)
	}
	p := getPolicy(t, c, "trust")
	if m := movesOf(p, "pv-flap"); len(m) != 1 || m[0].ToTier != "hot" || !m[0].Success {
		t.Fatalf("flapping volume: moves %+v, want exactly one, to hot", m)
	}
	eventually(t, waitLong, "pv-cool moved hot → cold", func() (bool, string) {
		p := getPolicy(t, c, "trust")
		return len(movesOf(p, "pv-cool")) == 2 && p.Status.ActiveMigrations == 0, fmt.Sprintf("history %+v", movesOf(p, "pv-cool"))
	})
	m := movesOf(getPolicy(t, c, "trust"), "pv-cool") // newest first
	first, second := m[1], m[0]
	d, err := time.ParseDuration(first.Duration)
	if err != nil {
		t.Fatal(err)
	}
	// Timestamps are start times truncated to the second: allow 2 s of rounding.
	if gap := second.Timestamp.Sub(first.Timestamp.Add(d)); gap < cooldown-2*time.Second {
		t.Fatalf("second move of pv-cool started %s after the first ended; cooldown is %s: %+v", gap, cooldown, m)
	}
	if second.FromTier != "hot" || second.ToTier != "cold" || !second.Success {
		t.Fatalf("second move %+v, want hot → cold", second)
	}
}
