package migration

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	mayastorv1alpha1 "github.com/billyronks/couchestor/apis/mayastor/v1alpha1"
	mayastorv1beta2 "github.com/billyronks/couchestor/apis/mayastor/v1beta2"
	"github.com/billyronks/couchestor/tests/mayastorsim/replicasim"
	"github.com/billyronks/couchestor/tests/testenv"
)

func allOn(v mayastorv1alpha1.MayastorVolume, tier string) bool {
	for _, r := range v.Status.Replicas {
		if !strings.HasSuffix(r.Pool, "-"+tier) || r.State != mayastorv1alpha1.StateOnline || !r.Synced {
			return false
		}
	}
	return len(v.Status.Replicas) == int(v.Spec.NumReplicas)
}

func nodesOf(v mayastorv1alpha1.MayastorVolume) map[string]bool {
	out := map[string]bool{}
	for _, r := range v.Status.Replicas {
		out[r.Node] = true
	}
	return out
}

// checkMoved asserts a finished successful move of vol to tier.
func (f *fixture) checkMoved(e *Engine, vol, tier string) {
	f.t.Helper()
	res := f.waitResult(e, "p", vol)
	if !res.Success() {
		f.t.Fatalf("migration of %s failed: %s", vol, res.Error)
	}
	v := f.getVolume(vol)
	if !allOn(v, tier) {
		f.t.Fatalf("%s: replicas %v, want all healthy on %s pools", vol, v.Status.Replicas, tier)
	}
	if got := len(nodesOf(v)); got != len(v.Status.Replicas) {
		f.t.Fatalf("%s: %d replicas on %d nodes", vol, len(v.Status.Replicas), got)
	}
	if inc := v.Spec.Topology.Pool.Labelled.Inclusion; inc["tier"] != tier {
		f.t.Fatalf("%s: final topology inclusion %v, want tier=%s", vol, inc, tier)
	}
	pv := f.getPV(vol)
	if _, ok := pv.Annotations[AnnotationMigration]; ok {
		f.t.Fatalf("%s: intent annotation left after the migration", vol)
	}
	last, err := time.Parse(time.RFC3339, pv.Annotations[AnnotationLastMigration])
	if err != nil || time.Since(last) > time.Minute || time.Until(last) > time.Second {
		f.t.Fatalf("%s: cooldown annotation %q (err %v), want now in RFC 3339", vol, pv.Annotations[AnnotationLastMigration], err)
	}
}

func TestHeatUpCoolDownAndThreeNodes(t *testing.T) {
	f := newFixture(t, replicasim.Options{Seed: 1, SyncBytesPerSecond: 8 * gib})
	f.cluster(3)
	f.policy("p")
	f.volume("a", 2*gib, "cold", "n1-cold", "n2-cold")
	f.volume("b", 2*gib, "cold", "n1-cold", "n2-cold", "n3-cold")
	e := f.engine(Options{})
	before := testutil.ToFloat64(migrationsTotal.WithLabelValues("success", "cold", "hot"))

	// Heat-up of a 2-replica volume.
	if err := e.Migrate(context.Background(), req("p", "a", "cold", "hot")); err != nil {
		t.Fatal(err)
	}
	if err := e.Migrate(context.Background(), req("p", "a", "cold", "hot")); !errors.Is(err, ErrAlreadyActive) {
		t.Fatalf("second Migrate of a running volume: %v, want ErrAlreadyActive", err)
	}
	f.checkMoved(e.Engine, "a", "hot")
	st := f.fold(e.Engine, "p")

	// Cool-down of the same volume.
	if err := e.Migrate(context.Background(), req("p", "a", "hot", "cold")); err != nil {
		t.Fatal(err)
	}
	f.checkMoved(e.Engine, "a", "cold")

	// A 3-replica volume on 3 nodes: every move is node-local (nX-cold -> nX-hot).
	if err := e.Migrate(context.Background(), req("p", "b", "cold", "hot")); err != nil {
		t.Fatal(err)
	}
	f.checkMoved(e.Engine, "b", "hot")
	if got := len(nodesOf(f.getVolume("b"))); got != 3 {
		t.Fatalf("b spans %d nodes, want 3", got)
	}
	// Already there: skipped with a reason, not counted.
	var skip *SkipError
	if err := e.Migrate(context.Background(), req("p", "b", "cold", "hot")); !errors.As(err, &skip) {
		t.Fatalf("Migrate of a volume already on the tier: %v, want *SkipError", err)
	}
	st = f.fold(e.Engine, "p")
	if st.TotalMigrations != 3 || st.FailedMigrations != 0 || len(st.MigrationHistory) != 3 || st.ActiveMigrations != 0 {
		t.Fatalf("status total %d failed %d history %d active %d, want 3 0 3 0", st.TotalMigrations, st.FailedMigrations, len(st.MigrationHistory), st.ActiveMigrations)
	}
	if h := st.MigrationHistory[0]; h.VolumeName != "pv-b" || h.FromTier != "cold" || h.ToTier != "hot" || !h.Success || h.Duration == "" || h.TriggerIOPS != 6000 {
		t.Fatalf("newest history entry %+v", h)
	}
	if len(e.PendingResults("p")) != 0 || f.getPV("a").Annotations[AnnotationResults] != "" {
		t.Fatal("acknowledged results still pending")
	}
	if got := testutil.ToFloat64(migrationsTotal.WithLabelValues("success", "cold", "hot")) - before; got != 2 {
		t.Fatalf("couchestor_migrations_total{success,cold,hot} grew by %v, want 2", got)
	}
	if f.rec.count(ReasonStarted) != 2*3 || f.rec.count(ReasonCompleted) != 2*3 { // on the PV and the policy
		t.Fatalf("events: %v", f.rec.events)
	}
	f.expectNoDips()
}

func TestConcurrencyLimits(t *testing.T) {
	f := newFixture(t, replicasim.Options{Seed: 2, SyncBytesPerSecond: 4 * gib})
	f.cluster(4)
	f.policy("p")
	f.policy("q")
	var vols []string
	for _, n := range []string{"p1", "p2", "p3", "p4", "q1", "q2", "q3"} {
		f.volume(n, 1*gib, "cold", "n1-cold", "n2-cold")
		vols = append(vols, n)
	}
	var mu sync.Mutex
	running := map[string]int{}
	maxPer, maxAll, total := map[string]int{}, 0, 0
	policyOf := func(pv string) string { return pv[len("pv-") : len("pv-")+1] }
	hook := func(pv string, p Point) {
		mu.Lock()
		defer mu.Unlock()
		switch p {
		case PointStarted:
			running[policyOf(pv)]++
			total++
		case PointFinished:
			running[policyOf(pv)]--
			total--
		}
		for k, v := range running {
			maxPer[k] = max(maxPer[k], v)
		}
		maxAll = max(maxAll, total)
	}
	e := f.engine(Options{GlobalMaxConcurrent: 3, StepHook: hook})
	done := map[string]bool{}
	refused := 0
	f.eventually(3*time.Minute, "every volume migrated", func() bool {
		for _, v := range vols {
			if done[v] {
				continue
			}
			r := req(v[:1], v, "cold", "hot")
			err := e.Migrate(context.Background(), r)
			switch {
			case err == nil, errors.Is(err, ErrAlreadyActive):
			case errors.Is(err, ErrAtCapacity):
				refused++
			default:
				var skip *SkipError
				if errors.As(err, &skip) && allOn(f.getVolume(v), "hot") {
					done[v] = true
					continue
				}
				t.Fatalf("Migrate %s: %v", v, err)
			}
			if n := len(e.Tasks()); n > 3 {
				t.Fatalf("%d tasks active, global limit 3", n)
			}
			if e.ActiveCount("p") > 2 || e.ActiveCount("q") > 2 {
				t.Fatalf("active p=%d q=%d, limit 2 per policy", e.ActiveCount("p"), e.ActiveCount("q"))
			}
		}
		return len(done) == len(vols)
	})
	mu.Lock()
	defer mu.Unlock()
	if maxPer["p"] > 2 || maxPer["q"] > 2 || maxAll > 3 {
		t.Fatalf("limits exceeded: max per policy %v, max overall %d (limits 2 and 3)", maxPer, maxAll)
	}
	if refused == 0 || maxAll < 3 {
		t.Fatalf("the limits were never reached (refused %d, max %d): the test did not exercise them", refused, maxAll)
	}
	st := f.fold(e.Engine, "p")
	if st.TotalMigrations != 4 {
		t.Fatalf("policy p totalMigrations %d, want 4", st.TotalMigrations)
	}
	f.expectNoDips()
}

// checkIntact asserts vol's replicas are the originals, healthy, with the
// original numReplicas and topology.
func (f *fixture) checkIntact(vol string, pools ...string) {
	f.t.Helper()
	v := f.getVolume(vol)
	var ids []string
	for _, r := range v.Status.Replicas {
		ids = append(ids, r.UUID)
		if r.State != mayastorv1alpha1.StateOnline || !r.Synced {
			f.t.Fatalf("%s: replica %+v not healthy", vol, r)
		}
	}
	for i := range pools {
		if !slices.Contains(ids, vol+"-orig-"+string(rune('0'+i))) {
			f.t.Fatalf("%s: original replica %d gone: %v", vol, i, v.Status.Replicas)
		}
	}
	if len(ids) != len(pools) || int(v.Spec.NumReplicas) != len(pools) {
		f.t.Fatalf("%s: %d replicas, numReplicas %d, want %d", vol, len(ids), v.Spec.NumReplicas, len(pools))
	}
	if inc := v.Spec.Topology.Pool.Labelled.Inclusion; inc["tier"] != "cold" || len(inc) != 1 {
		f.t.Fatalf("%s: topology %v not restored to tier=cold", vol, inc)
	}
}

func TestTimeoutRollsBack(t *testing.T) {
	f := newFixture(t, replicasim.Options{Seed: 3, SyncBytesPerSecond: 8 * gib})
	f.cluster(3)
	f.policy("p")
	f.volume("a", 1*gib, "cold", "n1-cold", "n2-cold")
	f.sim.HoldSync("a", true)
	e := f.engine(Options{})
	r := req("p", "a", "cold", "hot")
	r.Timeout = 1500 * time.Millisecond
	if err := e.Migrate(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	res := f.waitResult(e.Engine, "p", "a")
	if res.Outcome != Aborted || !strings.Contains(res.Error, "timed out") {
		t.Fatalf("result %+v, want aborted by timeout", res)
	}
	f.eventually(10*time.Second, "added replica removed", func() bool { return len(f.getVolume("a").Status.Replicas) == 2 })
	f.checkIntact("a", "n1-cold", "n2-cold")
	pv := f.getPV("a")
	if pv.Annotations[AnnotationLastMigration] == "" || pv.Annotations[AnnotationMigrationFailures] != "1" {
		t.Fatalf("PV annotations after a failure: %v", pv.Annotations)
	}
	st := f.fold(e.Engine, "p")
	if st.TotalMigrations != 1 || st.FailedMigrations != 1 || st.MigrationHistory[0].Success || st.MigrationHistory[0].Error == "" {
		t.Fatalf("status after abort: %+v", st)
	}
	if f.rec.count(ReasonAborted) == 0 {
		t.Fatalf("no %s event: %v", ReasonAborted, f.rec.events)
	}
	f.expectNoDips()
}

func TestTargetPoolFaultedMidSync(t *testing.T) {
	f := newFixture(t, replicasim.Options{Seed: 4, SyncBytesPerSecond: gib / 2})
	f.cluster(3)
	f.policy("p")
	f.volume("a", 2*gib, "cold", "n1-cold", "n2-cold")
	var faulted string
	hook := func(pv string, p Point) {
		if p != PointSyncing || faulted != "" {
			return
		}
		for _, r := range f.getVolume("a").Status.Replicas {
			if !strings.Contains(r.UUID, "-orig-") {
				faulted = r.Pool
			}
		}
		f.setPoolStatus(faulted, mayastorv1beta2.PoolFaulted)
	}
	e := f.engine(Options{StepHook: hook})
	if err := e.Migrate(context.Background(), req("p", "a", "cold", "hot")); err != nil {
		t.Fatal(err)
	}
	res := f.waitResult(e.Engine, "p", "a")
	if faulted == "" || res.Outcome != Aborted || !strings.Contains(res.Error, "faulted") {
		t.Fatalf("faulted pool %q, result %+v: want an abort naming the fault", faulted, res)
	}
	f.eventually(10*time.Second, "faulted replica removed", func() bool { return len(f.getVolume("a").Status.Replicas) == 2 })
	f.checkIntact("a", "n1-cold", "n2-cold")
	f.expectNoDips()
}

func TestWrongReplicaRemovedIsNoticedAndRecovered(t *testing.T) {
	f := newFixture(t, replicasim.Options{Seed: 5, SyncBytesPerSecond: 8 * gib})
	f.cluster(3)
	f.policy("p")
	f.volume("a", 1*gib, "cold", "n1-cold", "n2-cold")
	f.sim.RemoveWrongReplica("a", 1)
	e := f.engine(Options{})
	if err := e.Migrate(context.Background(), req("p", "a", "cold", "hot")); err != nil {
		t.Fatal(err)
	}
	f.checkMoved(e.Engine, "a", "hot")
	if f.rec.count(ReasonWrongReplicaRemoved) == 0 {
		t.Fatalf("the wrong removal went unnoticed: events %v", f.rec.events)
	}
	f.expectNoDips()
}

// TestCrashAtEachStep stops the engine (its context, as a crash would) at
// each step and lets a fresh engine resume from the PV annotations.
func TestCrashAtEachStep(t *testing.T) {
	testenv.RequireAssets(t)
	for _, point := range []Point{PointScaledUp, PointSyncing, PointScaledDown} {
		t.Run(string(point), func(t *testing.T) {
			f := newFixture(t, replicasim.Options{Seed: 6, SyncBytesPerSecond: gib})
			f.cluster(3)
			f.policy("p")
			f.volume("done", 1*gib, "cold", "n3-cold")
			f.volume("a", 1*gib, "cold", "n1-cold", "n2-cold")
			e1 := f.engine(Options{})
			// A finished migration folded into status before the crash.
			if err := e1.Migrate(context.Background(), req("p", "done", "cold", "hot")); err != nil {
				t.Fatal(err)
			}
			f.checkMoved(e1.Engine, "done", "hot")
			f.fold(e1.Engine, "p")
			e1.stop()

			var once sync.Once
			crashed := make(chan struct{})
			var e2 *runningEngine
			e2 = f.engine(Options{StepHook: func(pv string, p Point) {
				if pv == "pv-a" && p == point {
					once.Do(func() { e2.cancel(); close(crashed) })
				}
			}})
			if err := e2.Migrate(context.Background(), req("p", "a", "cold", "hot")); err != nil {
				t.Fatal(err)
			}
			<-crashed
			<-e2.done
			if f.getPV("a").Annotations[AnnotationMigration] == "" {
				t.Fatal("no intent on the PV after the crash")
			}
			e3 := f.engine(Options{})
			f.checkMoved(e3.Engine, "a", "hot")
			st := f.fold(e3.Engine, "p")
			if st.TotalMigrations != 2 || st.FailedMigrations != 0 || len(st.MigrationHistory) != 2 {
				t.Fatalf("after resume: total %d failed %d history %d, want 2 0 2", st.TotalMigrations, st.FailedMigrations, len(st.MigrationHistory))
			}
			f.expectNoDips()
		})
	}
}

// TestCrashPastDeadlineRollsBack: a crash during the sync, resumed after the
// move's deadline, is rolled back by the resuming engine.
func TestCrashPastDeadlineRollsBack(t *testing.T) {
	f := newFixture(t, replicasim.Options{Seed: 7, SyncBytesPerSecond: gib})
	f.cluster(3)
	f.policy("p")
	f.volume("a", 1*gib, "cold", "n1-cold", "n2-cold")
	f.sim.HoldSync("a", true)
	crashed := make(chan struct{})
	var once sync.Once
	var e1 *runningEngine
	e1 = f.engine(Options{StepHook: func(pv string, p Point) {
		if p == PointSyncing {
			once.Do(func() { e1.cancel(); close(crashed) })
		}
	}})
	r := req("p", "a", "cold", "hot")
	r.Timeout = time.Second
	if err := e1.Migrate(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	<-crashed
	<-e1.done
	var in Intent
	f.eventually(5*time.Second, "move deadline passed", func() bool {
		raw := f.getPV("a").Annotations[AnnotationMigration]
		return raw != "" && jsonUnmarshal(raw, &in) == nil && in.Move != nil && time.Since(in.Move.StartedAt) > 1500*time.Millisecond
	})
	e2 := f.engine(Options{})
	res := f.waitResult(e2.Engine, "p", "a")
	if res.Outcome != Aborted {
		t.Fatalf("result %+v, want aborted", res)
	}
	f.eventually(10*time.Second, "added replica removed", func() bool { return len(f.getVolume("a").Status.Replicas) == 2 })
	f.checkIntact("a", "n1-cold", "n2-cold")
	f.expectNoDips()
}

// A move that completes and the next decision in the same instant: the
// decision was made on a cache that had not yet seen the completion (no
// last-migration annotation), so only the engine's check against the PV it
// writes can stop it. The cooldown holds; after it the move starts.
func TestCooldownIsCheckedAgainstTheFreshPV(t *testing.T) {
	f := newFixture(t, replicasim.Options{Seed: 1, SyncBytesPerSecond: 8 * gib})
	f.cluster(2)
	f.policy("p")
	f.volume("a", 2*gib, "cold", "n1-cold", "n2-cold")
	e := f.engine(Options{})
	r := req("p", "a", "cold", "hot")
	r.Cooldown = time.Hour
	if err := e.Migrate(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	f.checkMoved(e.Engine, "a", "hot")
	f.fold(e.Engine, "p")
	last := f.getPV("a").Annotations[AnnotationLastMigration]
	if last == "" {
		t.Fatal("no last-migration annotation after the move")
	}

	back := req("p", "a", "hot", "cold")
	back.Cooldown = time.Hour
	var skip *SkipError
	if err := e.Migrate(context.Background(), back); !errors.As(err, &skip) || !strings.Contains(skip.Reason, "cooldown") {
		t.Fatalf("Migrate right after completion with a 1h cooldown: %v, want a *SkipError naming the cooldown", err)
	}
	if pv := f.getPV("a"); pv.Annotations[AnnotationMigration] != "" {
		t.Fatalf("an intent was written in cooldown: %s", pv.Annotations[AnnotationMigration])
	}
	if n := e.ActiveCount("p"); n != 0 {
		t.Fatalf("%d migrations active after a refused start", n)
	}
	// An unreadable cooldown annotation blocks too (it cannot prove the cooldown over).
	pv := f.getPV("a")
	pv.Annotations[AnnotationMigrationFailures] = "many"
	if err := f.c.Update(context.Background(), &pv); err != nil {
		t.Fatal(err)
	}
	back.Cooldown = time.Nanosecond
	if err := e.Migrate(context.Background(), back); !errors.As(err, &skip) || !strings.Contains(skip.Reason, AnnotationMigrationFailures) {
		t.Fatalf("Migrate with an unreadable failure count: %v, want a *SkipError naming %s", err, AnnotationMigrationFailures)
	}
	pv = f.getPV("a")
	delete(pv.Annotations, AnnotationMigrationFailures)
	if err := f.c.Update(context.Background(), &pv); err != nil {
		t.Fatal(err)
	}
	// A cooldown that is over lets the move start.
	if err := e.Migrate(context.Background(), back); err != nil {
		t.Fatalf("Migrate after the cooldown: %v", err)
	}
	f.checkMoved(e.Engine, "a", "cold")
}
