package tiering

import (
	"context"
	"fmt"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/tiering"
	"github.com/billyronks/couchestor/tests/mayastorsim/sim"
)

// A volume whose IOPS rise is decided hot; one that cools is decided cold.
// Status counts volumes by where their replicas are.
func TestHeatingVolumeIsDecidedHotAndCoolingVolumeCold(t *testing.T) {
	w := newWorld(t, &sim.Scenario{Pools: pools(), Volumes: []sim.VolumeSpec{
		volume("pv-heat", 1000, "warm-n1"),           // dead band: stays warm for now
		volume("pv-cool", 8000, "hot-n1", "cold-n2"), // mixed, tie -> counted cold; hot IOPS
		volume("pv-hot", 9000, "hot-n1"),
		volume("pv-idle", 0, "cold-n1"),
	}})
	c := w.env.Client
	engine := &recordingEngine{}
	startOperator(t, w.env, w.prom.URL(), engine, false)
	if err := c.Create(context.Background(), newPolicy("tiers", "1h", false)); err != nil {
		t.Fatal(err)
	}

	eventually(t, waitLong, "all volumes measured, policy Active", func() (bool, string) {
		p := getPolicy(t, c, "tiers")
		m := condition(p, "MetricsAvailable")
		return p.Status.Phase == storagev1.StoragePolicyActive && m != nil && m.Status == metav1.ConditionTrue, fmt.Sprintf("phase %s, %+v", p.Status.Phase, m)
	})
	p := getPolicy(t, c, "tiers")
	if p.Status.WatchedVolumes != 4 || p.Status.HotVolumes != 1 || p.Status.WarmVolumes != 1 || p.Status.ColdVolumes != 2 {
		t.Errorf("counts watched/hot/warm/cold = %d/%d/%d/%d, want 4/1/1/2", p.Status.WatchedVolumes, p.Status.HotVolumes, p.Status.WarmVolumes, p.Status.ColdVolumes)
	}
	if r := condition(p, "Ready"); r == nil || r.Status != metav1.ConditionTrue || r.ObservedGeneration != p.Generation {
		t.Errorf("Ready = %+v", r)
	}
	// The mixed volume (1 hot + 1 cold: tie goes to the slower tier) with hot IOPS is decided hot.
	eventually(t, waitLong, "pv-cool (mixed, hot IOPS) decided cold → hot", func() (bool, string) {
		return engine.find("pv-cool", tiering.Hot), "not yet"
	})
	if engine.find("pv-heat", tiering.Hot) {
		t.Fatal("pv-heat decided hot at 1000 IOPS (dead band)")
	}

	if err := w.sim.Client.SetIOPS("pv-heat", 6000); err != nil {
		t.Fatal(err)
	}
	eventually(t, waitLong, "pv-heat decided warm → hot", func() (bool, string) {
		return engine.find("pv-heat", tiering.Hot), "not yet"
	})
	if err := w.sim.Client.SetIOPS("pv-hot", 0); err != nil {
		t.Fatal(err)
	}
	eventually(t, waitLong, "pv-hot decided hot → cold", func() (bool, string) {
		return engine.find("pv-hot", tiering.Cold), "not yet"
	})
	if got := engine.toTier(tiering.Cold); len(got) != 1 {
		t.Errorf("cold decisions %v, want only pv-hot", got)
	}
	if p := getPolicy(t, c, "tiers"); p.Status.TotalMigrations != 0 || len(p.Status.MigrationHistory) != 0 {
		t.Errorf("part 1 recorded migrations it did not run: total %d, history %v", p.Status.TotalMigrations, p.Status.MigrationHistory)
	}
}

// Prometheus stops while volumes are hot and warm and out of cooldown: none
// is decided cold (unknown is never zero), MetricsAvailable turns False, and
// everything recovers when Prometheus is back.
//
// COUCHESTOR_TEST_UNKNOWN_AS_ZERO=1 runs the operator with the unknown-as-zero
// bug on purpose; this test must then fail.
func TestPrometheusOutageDemotesNothing(t *testing.T) {
	w := newWorld(t, &sim.Scenario{Pools: pools(), Volumes: []sim.VolumeSpec{
		volume("pv-hot", 8000, "hot-n1"),
		volume("pv-warm", 3000, "warm-n1"),
	}})
	c := w.env.Client
	engine := &recordingEngine{}
	startOperator(t, w.env, w.prom.URL(), engine, false)
	if err := c.Create(context.Background(), newPolicy("outage", "1s", false)); err != nil {
		t.Fatal(err)
	}
	eventually(t, waitLong, "metrics available", func() (bool, string) {
		m := condition(getPolicy(t, c, "outage"), "MetricsAvailable")
		return m != nil && m.Status == metav1.ConditionTrue, fmt.Sprintf("%+v", m)
	})

	w.prom.Stop()
	eventually(t, waitLong, "MetricsAvailable=False (PrometheusUnavailable)", func() (bool, string) {
		m := condition(getPolicy(t, c, "outage"), "MetricsAvailable")
		return m != nil && m.Status == metav1.ConditionFalse && m.Reason == "PrometheusUnavailable", fmt.Sprintf("%+v", m)
	})
	waitEvaluations(t, c, "outage", 5)
	p := getPolicy(t, c, "outage")
	if r := condition(p, "Ready"); r == nil || r.Status != metav1.ConditionFalse || r.Reason != "MetricsUnavailable" {
		t.Errorf("Ready during outage = %+v", r)
	}
	if got := engine.toTier(tiering.Cold); len(got) > 0 {
		t.Fatalf("Prometheus outage demoted volumes: %v", got)
	}
	if p.Status.HotVolumes != 1 || p.Status.WarmVolumes != 1 {
		t.Errorf("counts by location must not depend on metrics: hot %d warm %d", p.Status.HotVolumes, p.Status.WarmVolumes)
	}

	w.prom.Start()
	eventually(t, waitLong, "MetricsAvailable=True again", func() (bool, string) {
		m := condition(getPolicy(t, c, "outage"), "MetricsAvailable")
		return m != nil && m.Status == metav1.ConditionTrue, fmt.Sprintf("%+v", m)
	})
	if got := engine.toTier(tiering.Cold); len(got) > 0 {
		t.Fatalf("volumes demoted around the outage: %v", got)
	}
}

// Dry run records "would move" once per volume per cooldownPeriod, touches
// nothing else, and keeps the counters out of it.
func TestDryRunRecordsOncePerCooldown(t *testing.T) {
	w := newWorld(t, &sim.Scenario{Pools: pools(), Volumes: []sim.VolumeSpec{
		volume("pv-heat", 6000, "warm-n1"),
		volume("pv-hot", 9000, "hot-n1"),
	}})
	c := w.env.Client
	startOperator(t, w.env, w.prom.URL(), nil, false)
	const cooldown = 8 * time.Second
	if err := c.Create(context.Background(), newPolicy("dry", "8s", true)); err != nil {
		t.Fatal(err)
	}
	eventually(t, waitLong, "two dry-run entries for pv-heat", func() (bool, string) {
		return len(dryRunEntries(getPolicy(t, c, "dry"), "pv-heat")) >= 2, "fewer"
	})
	p := getPolicy(t, c, "dry")
	es := dryRunEntries(p, "pv-heat")
	// Newest first; consecutive entries at least one cooldown apart.
	for i := 0; i+1 < len(es); i++ {
		if gap := es[i].Timestamp.Sub(es[i+1].Timestamp.Time); gap < cooldown {
			t.Errorf("dry-run entries %s apart, cooldown is %s: %v", gap, cooldown, es)
		}
	}
	e := es[0]
	if e.FromTier != "warm" || e.ToTier != "hot" || e.TriggerIOPS < 5000 || e.Success {
		t.Errorf("entry %+v, want warm → hot at >= 5000 IOPS, not a success", e)
	}
	if len(dryRunEntries(p, "pv-hot")) != 0 {
		t.Error("a volume already on its tier was recorded")
	}
	if p.Status.TotalMigrations != 0 || p.Status.FailedMigrations != 0 {
		t.Errorf("dry run counted as migrations: total %d failed %d", p.Status.TotalMigrations, p.Status.FailedMigrations)
	}
	if a := getPV(t, w, "pv-heat").Annotations[tiering.AnnotationLastMigration]; a != "" {
		t.Errorf("dry run wrote the cooldown annotation %q", a)
	}
}

// Counters and history written by others (the migration engine) survive every
// status write and an operator restart; dry-run entries are not duplicated by
// the restarted operator.
func TestCountersAndHistorySurviveOperatorRestart(t *testing.T) {
	w := newWorld(t, &sim.Scenario{Pools: pools(), Volumes: []sim.VolumeSpec{volume("pv-heat", 6000, "warm-n1")}})
	c := w.env.Client
	ctx := context.Background()
	pol := newPolicy("keep", "1h", true)
	if err := c.Create(ctx, pol); err != nil {
		t.Fatal(err)
	}
	old := metav1.NewTime(time.Now().Add(-2 * time.Hour).Truncate(time.Second))
	pol.Status = storagev1.StoragePolicyStatus{
		TotalMigrations: 7, FailedMigrations: 2,
		MigrationHistory: []storagev1.MigrationHistoryEntry{
			{VolumeName: "pv-old", Timestamp: old, FromTier: "hot", ToTier: "cold", TriggerIOPS: 3, Duration: "4m0s", Success: true},
			{VolumeName: "pv-old", Timestamp: old, FromTier: "hot", ToTier: "cold", TriggerIOPS: 3, Duration: "30m0s", Success: false, Error: "timeout"},
		},
	}
	if err := c.Status().Update(ctx, pol); err != nil {
		t.Fatal(err)
	}
	check := func(stage string) *storagev1.StoragePolicy {
		t.Helper()
		p := getPolicy(t, c, "keep")
		if p.Status.TotalMigrations != 7 || p.Status.FailedMigrations != 2 {
			t.Fatalf("%s: counters %d/%d, want 7/2", stage, p.Status.TotalMigrations, p.Status.FailedMigrations)
		}
		n := 0
		for _, e := range p.Status.MigrationHistory {
			if e.VolumeName == "pv-old" {
				n++
			}
		}
		if n != 2 {
			t.Fatalf("%s: engine history entries %d, want 2: %+v", stage, n, p.Status.MigrationHistory)
		}
		return p
	}

	op := startOperator(t, w.env, w.prom.URL(), nil, false)
	eventually(t, waitLong, "the dry-run entry", func() (bool, string) {
		return len(dryRunEntries(getPolicy(t, c, "keep"), "pv-heat")) == 1, "none"
	})
	waitEvaluations(t, c, "keep", 3)
	check("after evaluations")
	op.Stop()

	startOperator(t, w.env, w.prom.URL(), nil, false)
	waitEvaluations(t, c, "keep", 5)
	p := check("after restart")
	if n := len(dryRunEntries(p, "pv-heat")); n != 1 {
		t.Fatalf("restarted operator recorded the dry-run decision again: %d entries", n)
	}
	if p.Status.MigrationHistory[0].VolumeName != "pv-heat" {
		t.Errorf("history not newest first: %+v", p.Status.MigrationHistory)
	}
}
