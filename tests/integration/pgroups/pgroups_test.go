// Package pgroups tests the placement-group controller against a real
// kube-apiserver (envtest): groups created with distinct-node members, a
// lost pool suspected within the down-out delay and replaced after it with
// every other slot kept, and a joining pool reported, never moved onto.
package pgroups

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	mayastorv1beta2 "github.com/billyronks/couchestor/apis/mayastor/v1beta2"
	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	storagev1alpha1 "github.com/billyronks/couchestor/apis/storage/v1alpha1"
	"github.com/billyronks/couchestor/controllers"
	"github.com/billyronks/couchestor/internal/scheme"
	"github.com/billyronks/couchestor/pkg/ecstate"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/tests/testenv"
)

const (
	mayastorNS = "mayastor"
	groups     = 16
	downOut    = 10 * time.Minute
	// wait bounds every condition (a loaded 2-core machine).
	wait = 2 * time.Minute
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type world struct {
	t   *testing.T
	ctx context.Context
	c   client.Client
}

func (w *world) addPool(i int) {
	w.t.Helper()
	pool, node := fmt.Sprintf("pool-%d", i), fmt.Sprintf("node-%d", i)
	dp := &mayastorv1beta2.DiskPool{ObjectMeta: metav1.ObjectMeta{Namespace: mayastorNS, Name: pool},
		Spec: mayastorv1beta2.DiskPoolSpec{Node: node, Disks: []string{"/dev/sdb"}}}
	if err := w.c.Create(w.ctx, dp); err != nil {
		w.t.Fatal(err)
	}
	w.setPool(pool, mayastorv1beta2.PoolOnline)
	reg := &registry.Registrar{Client: w.c, Namespace: registry.DefaultNamespace, Pool: pool, Node: node,
		Address: fmt.Sprintf("10.0.0.%d:8443", i+1), LeaseDuration: time.Hour}
	if err := reg.Register(w.ctx); err != nil {
		w.t.Fatal(err)
	}
}

func (w *world) setPool(pool string, st mayastorv1beta2.PoolStatus) {
	w.t.Helper()
	var dp mayastorv1beta2.DiskPool
	if err := w.c.Get(w.ctx, client.ObjectKey{Namespace: mayastorNS, Name: pool}, &dp); err != nil {
		w.t.Fatal(err)
	}
	dp.Status = mayastorv1beta2.DiskPoolStatus{CRState: mayastorv1beta2.CRStateCreated, PoolStatus: st, Capacity: 1 << 40, Available: 1 << 40}
	if err := w.c.Status().Update(w.ctx, &dp); err != nil {
		w.t.Fatal(err)
	}
}

func (w *world) groups() []storagev1alpha1.ECPlacementGroup {
	w.t.Helper()
	var l storagev1alpha1.ECPlacementGroupList
	if err := w.c.List(w.ctx, &l); err != nil {
		w.t.Fatal(err)
	}
	return l.Items
}

// until polls cond until it holds or the bound passes.
func (w *world) until(what string, cond func([]storagev1alpha1.ECPlacementGroup) bool) []storagev1alpha1.ECPlacementGroup {
	w.t.Helper()
	deadline := time.Now().Add(wait)
	for {
		gs := w.groups()
		if cond(gs) {
			return gs
		}
		if time.Now().After(deadline) {
			for _, g := range gs {
				w.t.Logf("%s epoch %d members %+v backfills %+v conditions %+v", g.Name, g.Status.Epoch, g.Status.Members, g.Status.Backfills, g.Status.Conditions)
			}
			w.t.Fatalf("timed out after %v waiting for %s", wait, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func holds(g storagev1alpha1.ECPlacementGroup, pool string) bool {
	for _, m := range g.Status.Members {
		if m.Pool == pool {
			return true
		}
	}
	return false
}

func cond(g storagev1alpha1.ECPlacementGroup, typ string) metav1.Condition {
	if c := meta.FindStatusCondition(g.Status.Conditions, typ); c != nil {
		return *c
	}
	return metav1.Condition{}
}

func TestPlacementGroupsFollowTheirPools(t *testing.T) {
	env := testenv.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	w := &world{t: t, ctx: ctx, c: env.Client}
	for _, ns := range []string{registry.DefaultNamespace, mayastorNS} {
		if err := env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 8; i++ {
		w.addPool(i)
	}
	if err := env.Client.Create(ctx, &storagev1.ErasureCodingPolicy{ObjectMeta: metav1.ObjectMeta{Name: "cold"}}); err != nil {
		t.Fatal(err)
	}

	clk := &clock{t: time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)}
	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{Scheme: scheme.New(), Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0"})
	if err != nil {
		t.Fatal(err)
	}
	lookup := &registry.Lookup{Client: mgr.GetClient(), Namespace: registry.DefaultNamespace}
	monitor := &controllers.PoolMonitor{Client: mgr.GetClient(), MayastorNamespace: mayastorNS, Servers: lookup,
		Tracker: ecstate.NewDownOutTracker(downOut, clk.Now), Interval: 200 * time.Millisecond}
	if err := mgr.Add(monitor); err != nil {
		t.Fatal(err)
	}
	if err := (&controllers.PlacementGroupReconciler{Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("test"),
		MayastorNamespace: mayastorNS, Servers: lookup, Pools: monitor, GroupCount: groups, Resync: time.Second, Now: clk.Now,
	}).SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	// 1. Every group: 6 members (4+2 by default) on 6 distinct nodes, all Up.
	gs := w.until("16 ready groups", func(gs []storagev1alpha1.ECPlacementGroup) bool {
		if len(gs) != groups {
			return false
		}
		for _, g := range gs {
			if cond(g, "Ready").Status != metav1.ConditionTrue || len(g.Status.Members) != 6 {
				return false
			}
		}
		return true
	})
	before := map[string]storagev1alpha1.ECPlacementGroup{}
	for _, g := range gs {
		nodes := map[string]bool{}
		for _, m := range g.Status.Members {
			nodes[m.Node] = true
		}
		if len(nodes) != 6 || g.Status.Epoch != 1 || g.Spec.Width != 6 || g.Spec.GroupCount != groups || g.Status.SharedNodes {
			t.Fatalf("group %s: %+v %+v", g.Name, g.Spec, g.Status)
		}
		if len(g.OwnerReferences) != 1 || g.OwnerReferences[0].Name != "cold" {
			t.Fatalf("group %s owner %+v", g.Name, g.OwnerReferences)
		}
		before[g.Name] = g
	}
	lost := gs[0].Status.Members[2].Pool

	// 2. The pool goes down: within the down-out delay its groups only
	// suspect it; nobody's members change.
	w.setPool(lost, mayastorv1beta2.PoolFaulted)
	w.until("groups holding "+lost+" suspect it", func(gs []storagev1alpha1.ECPlacementGroup) bool {
		for _, g := range gs {
			if holds(g, lost) && cond(g, "Ready").Reason != "MembersSuspect" {
				return false
			}
		}
		return true
	})
	for _, g := range w.groups() {
		b := before[g.Name]
		for i := range g.Status.Members {
			if g.Status.Members[i].Pool != b.Status.Members[i].Pool || g.Status.Epoch != 1 {
				t.Fatalf("group %s changed within the down-out delay: %+v", g.Name, g.Status)
			}
		}
	}

	// 3. Past the delay: exactly its slot is replaced in each of its groups,
	// epoch 2, the new member Backfilling with a backfill entry; the other
	// groups are untouched.
	clk.Add(downOut + time.Second)
	gs = w.until(lost+" replaced everywhere", func(gs []storagev1alpha1.ECPlacementGroup) bool {
		for _, g := range gs {
			if holds(g, lost) {
				return false
			}
		}
		return true
	})
	replaced := 0
	for _, g := range gs {
		b := before[g.Name]
		if !holds(b, lost) {
			if g.Status.Epoch != 1 || len(g.Status.Backfills) != 0 {
				t.Errorf("group %s did not hold %s but changed: %+v", g.Name, lost, g.Status)
			}
			continue
		}
		replaced++
		nodes := map[string]bool{}
		for i, m := range g.Status.Members {
			nodes[m.Node] = true
			was := b.Status.Members[i]
			if was.Pool == lost {
				if m.State != storagev1alpha1.MemberBackfilling || len(g.Status.Backfills) != 1 || g.Status.Backfills[0].From != lost ||
					g.Status.Backfills[0].To != m.Pool || g.Status.Backfills[0].Slot != m.Slot {
					t.Errorf("group %s slot %d: %+v, backfills %+v", g.Name, i, m, g.Status.Backfills)
				}
				continue
			}
			if m.Pool != was.Pool || m.State != storagev1alpha1.MemberUp {
				t.Errorf("group %s slot %d moved or changed: %+v, was %+v", g.Name, i, m, was)
			}
		}
		if len(nodes) != 6 || g.Status.Epoch != 2 || cond(g, "Ready").Reason != "Backfilling" {
			t.Errorf("group %s: epoch %d nodes %d ready %+v", g.Name, g.Status.Epoch, len(nodes), cond(g, "Ready"))
		}
	}
	if replaced == 0 {
		t.Fatal("no group held the lost pool")
	}
	t.Logf("pool %s: replaced in %d of %d groups", lost, replaced, groups)

	// 4. A new pool joins: groups where it ranks among the ideal members say
	// so (Balanced=False) and keep their members.
	w.addPool(8)
	w.until("pool-8 reported as a better member somewhere", func(gs []storagev1alpha1.ECPlacementGroup) bool {
		for _, g := range gs {
			if c := cond(g, "Balanced"); c.Status == metav1.ConditionFalse && c.Reason == "BetterPoolAvailable" {
				return true
			}
		}
		return false
	})
	for _, g := range w.groups() {
		if holds(g, "pool-8") {
			t.Errorf("group %s moved a healthy slot onto the new pool: %+v", g.Name, g.Status.Members)
		}
	}
}
