package packaging

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	dataplanev1alpha1 "github.com/billyronks/couchestor/apis/dataplane/v1alpha1"
	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/internal/helmhybrid"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/tests/testenv"
)

// statefulSetSim plays, in envtest (no kube-controller-manager, no
// kubelet), what the StatefulSet controller and the kubelet do for the
// shard-server StatefulSets: it computes each StatefulSet's update revision
// from its template, creates the missing pod at that revision, and after
// readyAfter marks it Ready and registers it (its pool's Lease, as the
// shard server does); a deleted pod's server releases its Lease. It records
// the most servers ever down at once and how often each pod was created.
type statefulSetSim struct {
	c          client.Client
	ns         string
	readyAfter time.Duration

	mu      sync.Mutex
	maxDown int
	created map[string]int // pod name → creations
	errs    []string
}

func (s *statefulSetSim) run(ctx context.Context) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := s.tick(ctx); err != nil && ctx.Err() == nil && !apierrors.IsConflict(err) && !apierrors.IsAlreadyExists(err) && !apierrors.IsNotFound(err) {
				s.mu.Lock()
				s.errs = append(s.errs, err.Error())
				s.mu.Unlock()
			}
		}
	}
}

func templateRevision(sts *appsv1.StatefulSet) string {
	b, _ := json.Marshal(sts.Spec.Template)
	h := fnv.New32a()
	_, _ = h.Write(b)
	return fmt.Sprintf("%s-%08x", sts.Name, h.Sum32())
}

func (s *statefulSetSim) tick(ctx context.Context) error {
	var stss appsv1.StatefulSetList
	if err := s.c.List(ctx, &stss, client.InNamespace(s.ns), client.MatchingLabels{"app.kubernetes.io/component": "shard-server"}); err != nil {
		return err
	}
	down := 0
	for i := range stss.Items {
		sts := &stss.Items[i]
		rev := templateRevision(sts)
		if sts.Status.UpdateRevision != rev || sts.Status.ObservedGeneration != sts.Generation {
			sts.Status.ObservedGeneration, sts.Status.UpdateRevision, sts.Status.Replicas = sts.Generation, rev, 1
			if err := s.c.Status().Update(ctx, sts); err != nil {
				return err
			}
		}
		pool := sts.Labels["couchestor.billyronks.io/pool"]
		name := sts.Name + "-0"
		var p corev1.Pod
		err := s.c.Get(ctx, client.ObjectKey{Namespace: s.ns, Name: name}, &p)
		if apierrors.IsNotFound(err) {
			down++
			// The old server released its Lease on the way out.
			_ = s.c.Delete(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: s.ns, Name: registry.LeaseName(pool)}})
			p = corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: s.ns, Name: name, Labels: map[string]string{}}, Spec: sts.Spec.Template.Spec}
			for k, v := range sts.Spec.Template.Labels {
				p.Labels[k] = v
			}
			p.Labels[appsv1.ControllerRevisionHashLabelKey] = rev
			p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "StatefulSet", Name: sts.Name, UID: sts.UID, Controller: ptr.To(true)}}
			if err := s.c.Create(ctx, &p); err != nil {
				return err
			}
			s.mu.Lock()
			s.created[name]++
			s.mu.Unlock()
			continue
		} else if err != nil {
			return err
		}
		ready := false
		for _, c := range p.Status.Conditions {
			ready = ready || (c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue)
		}
		if !ready {
			down++
			if time.Since(p.CreationTimestamp.Time) < s.readyAfter {
				continue
			}
			p.Status.Phase = corev1.PodRunning
			p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now()}}
			if err := s.c.Status().Update(ctx, &p); err != nil {
				return err
			}
		}
		if err := s.register(ctx, pool, sts.Spec.Template.Spec.NodeSelector["kubernetes.io/hostname"], name); err != nil {
			return err
		}
	}
	s.mu.Lock()
	if down > s.maxDown {
		s.maxDown = down
	}
	s.mu.Unlock()
	return nil
}

// register creates or renews pod's Lease of pool as registry.Registrar does.
func (s *statefulSetSim) register(ctx context.Context, pool, node, pod string) error {
	now := metav1.NewMicroTime(time.Now())
	holder := node + "/" + pod + ".cold-shards." + s.ns + ".svc:7555"
	var l coordinationv1.Lease
	err := s.c.Get(ctx, client.ObjectKey{Namespace: s.ns, Name: registry.LeaseName(pool)}, &l)
	if apierrors.IsNotFound(err) {
		l = coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: s.ns, Name: registry.LeaseName(pool),
			Labels:      map[string]string{registry.LabelShardServer: "true"},
			Annotations: map[string]string{registry.AnnotationPool: pool, registry.AnnotationNode: node, registry.AnnotationAddress: holder[len(node)+1:]}},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: ptr.To[int32](15), AcquireTime: &now, RenewTime: &now}}
		return s.c.Create(ctx, &l)
	}
	if err != nil {
		return err
	}
	if l.Spec.RenewTime != nil && time.Since(l.Spec.RenewTime.Time) < time.Second {
		return nil
	}
	l.Spec.RenewTime = &now
	return s.c.Update(ctx, &l)
}

func (s *statefulSetSim) snapshot() (maxDown int, created map[string]int, errs []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	created = map[string]int{}
	for k, v := range s.created {
		created[k] = v
	}
	return s.maxDown, created, append([]string(nil), s.errs...)
}

func rolloutCondition(c client.Client, key client.ObjectKey) (*dataplanev1alpha1.HelmCondition, *dataplanev1alpha1.DataPlane, error) {
	var dp dataplanev1alpha1.DataPlane
	if err := c.Get(context.Background(), key, &dp); err != nil {
		return nil, nil, err
	}
	for i := range dp.Status.Conditions {
		if dp.Status.Conditions[i].Type == helmhybrid.ConditionShardServersUpToDate {
			return &dp.Status.Conditions[i], &dp, nil
		}
	}
	return nil, &dp, nil
}

// A changed DataPlane restarts its shard servers one at a time: the
// StatefulSets are OnDelete, the operator deletes one outdated pod only
// while every other server is Ready and registered, holds back the servers
// whose restart would cost an ECVolume's journal its quorum (and says so in
// the condition and an Event), resumes after an operator restart, and ends
// with every pod at the new revision, each created exactly once more.
func TestShardServersRollOneByOneKeepingJournalQuorum(t *testing.T) {
	env := testenv.Start(t)
	c := env.Client
	ctx := context.Background()
	const ns = "roll"
	newNamespace(t, c, ns)
	// Journal replicas on pool-a, pool-b and pool-x; pool-x's server is
	// down, so restarting pool-a or pool-b would leave 1 of 3.
	vol := &storagev1.ECVolume{ObjectMeta: metav1.ObjectMeta{Name: "v", Annotations: map[string]string{storagev1.ECVolumeAnnotationJournalPools: "pool-a,pool-b,pool-x"}},
		Spec: storagev1.ECVolumeSpec{SizeBytes: 1 << 26, PolicyRef: "rs-2-1"}}
	if err := c.Create(ctx, vol); err != nil {
		t.Fatal(err)
	}
	dp := &dataplanev1alpha1.DataPlane{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "cold"},
		Spec: dataplanev1alpha1.DataPlaneSpec{
			Image: "registry.example/couchestor:v1",
			ShardServers: []dataplanev1alpha1.ShardServer{
				{Node: "node-a", DiskPool: "pool-a"}, {Node: "node-b", DiskPool: "pool-b"}, {Node: "node-c", DiskPool: "pool-c"},
			},
			Port:    ptr.To[int32](7555),
			Storage: dataplanev1alpha1.ShardStorage{Type: dataplanev1alpha1.StorageHostPath, HostPath: "/srv/shards"},
		},
	}
	if err := c.Create(ctx, dp); err != nil {
		t.Fatal(err)
	}
	stop1 := runHybrid(t, env)
	sim := &statefulSetSim{c: c, ns: ns, readyAfter: 1500 * time.Millisecond, created: map[string]int{}}
	simCtx, simStop := context.WithCancel(ctx)
	simDone := make(chan struct{})
	go func() { defer close(simDone); sim.run(simCtx) }()
	t.Cleanup(func() { simStop(); <-simDone })

	pods := []string{"cold-node-a-0", "cold-node-b-0", "cold-node-c-0"}
	uids := func() map[string]string {
		m := map[string]string{}
		for _, n := range pods {
			var p corev1.Pod
			if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: n}, &p); err == nil {
				m[n] = string(p.UID)
			}
		}
		return m
	}
	eventually(t, "3 OnDelete StatefulSets, their pods up, condition ShardServersUpToDate True", func() error {
		for _, n := range []string{"node-a", "node-b", "node-c"} {
			var sts appsv1.StatefulSet
			if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "cold-" + n}, &sts); err != nil {
				return err
			}
			if sts.Spec.UpdateStrategy.Type != appsv1.OnDeleteStatefulSetStrategyType {
				return errorf("StatefulSet cold-%s updateStrategy %q, want OnDelete", n, sts.Spec.UpdateStrategy.Type)
			}
		}
		cond, _, err := rolloutCondition(c, client.ObjectKeyFromObject(dp))
		if err != nil || cond == nil || cond.Status != corev1.ConditionTrue || cond.Reason != "UpToDate" {
			return errorf("condition %+v err %v", cond, err)
		}
		for _, n := range []string{"node-a", "node-b", "node-c"} {
			var l coordinationv1.Lease
			if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: registry.LeaseName("pool-" + n[len("node-"):])}, &l); err != nil {
				return errorf("shard server on %s not registered yet: %v", n, err)
			}
		}
		return nil
	})
	// The install started them all at once; from here on, count.
	sim.mu.Lock()
	sim.maxDown = 0
	sim.mu.Unlock()
	before := uids()
	if len(before) != 3 {
		t.Fatalf("pods %v", before)
	}

	// Change the DataPlane: every StatefulSet's template changes.
	eventually(t, "update the DataPlane's image", func() error {
		var cur dataplanev1alpha1.DataPlane
		if err := c.Get(ctx, client.ObjectKeyFromObject(dp), &cur); err != nil {
			return err
		}
		cur.Spec.Image = "registry.example/couchestor:v2"
		return c.Update(ctx, &cur)
	})
	// pool-c holds no journal replica: it is restarted; pool-a and pool-b wait.
	eventually(t, "pool-c's server restarted, pool-a's and pool-b's held back for ECVolume v's journal quorum", func() error {
		cond, _, err := rolloutCondition(c, client.ObjectKeyFromObject(dp))
		if err != nil || cond == nil {
			return errorf("condition %+v err %v", cond, err)
		}
		for _, want := range []string{"RolloutWaiting", "restarting pod cold-node-a-0 (pool pool-a) now would cost a journal its write quorum",
			"cold-node-b-0 (pool pool-b)", "ECVolume v (journal on pools pool-a,pool-b,pool-x) would keep 1 live replicas, its quorum is 2"} {
			if !strings.Contains(cond.Reason+" "+cond.Message, want) {
				return errorf("condition %s %s %q lacks %q", cond.Status, cond.Reason, cond.Message, want)
			}
		}
		now := uids()
		if now["cold-node-c-0"] == before["cold-node-c-0"] || now["cold-node-c-0"] == "" {
			return errorf("pod cold-node-c-0 not replaced yet")
		}
		return nil
	})
	if now := uids(); now["cold-node-a-0"] != before["cold-node-a-0"] || now["cold-node-b-0"] != before["cold-node-b-0"] {
		t.Fatalf("a pod whose restart would break the journal's quorum was restarted: before %v now %v", before, now)
	}
	var waitingEvent bool
	eventually(t, "an Event says the rollout waits for the quorum", func() error {
		var evs corev1.EventList
		if err := c.List(ctx, &evs, client.InNamespace(ns)); err != nil {
			return err
		}
		for _, e := range evs.Items {
			if e.InvolvedObject.Name == "cold" && e.Reason == "ShardServerRolloutWaiting" && strings.Contains(e.Message, "ECVolume v") {
				waitingEvent = true
			}
		}
		if !waitingEvent {
			return errorf("no ShardServerRolloutWaiting Event naming ECVolume v among %d events", len(evs.Items))
		}
		return nil
	})

	// The operator restarts in the middle of the rollout; then pool-x's
	// server comes back: the new operator goes on from where it stands.
	stop1()
	runHybrid(t, env)
	holder := "node-x/shard-x.example:7443"
	now := metav1.NewMicroTime(time.Now())
	if err := c.Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: registry.LeaseName("pool-x"),
		Labels:      map[string]string{registry.LabelShardServer: "true"},
		Annotations: map[string]string{registry.AnnotationPool: "pool-x", registry.AnnotationNode: "node-x", registry.AnnotationAddress: "shard-x.example:7443"}},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: ptr.To[int32](3600), AcquireTime: &now, RenewTime: &now}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "every pod replaced, condition ShardServersUpToDate True again", func() error {
		cond, got, err := rolloutCondition(c, client.ObjectKeyFromObject(dp))
		if err != nil || cond == nil || cond.Status != corev1.ConditionTrue {
			return errorf("condition %+v err %v", cond, err)
		}
		if d := deployedCondition(got); d == nil || d.Status != corev1.ConditionTrue {
			return errorf("the Helm reconciler's Deployed condition is gone: %+v", got.Status.Conditions)
		}
		now := uids()
		for _, n := range pods {
			if now[n] == "" || now[n] == before[n] {
				return errorf("pod %s not replaced (before %v now %v)", n, before, now)
			}
		}
		return nil
	})
	for _, n := range pods {
		var p corev1.Pod
		if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: n}, &p); err != nil {
			t.Fatal(err)
		}
		if img := p.Spec.Containers[0].Image; img != "registry.example/couchestor:v2" {
			t.Errorf("pod %s runs %s after the rollout", n, img)
		}
	}
	maxDown, created, errs := sim.snapshot()
	if maxDown > 1 {
		t.Errorf("%d shard servers were down at the same time, want at most 1", maxDown)
	}
	for _, n := range pods {
		if created[n] != 2 {
			t.Errorf("pod %s created %d times, want 2 (once, and once at the new revision): %v", n, created[n], created)
		}
	}
	if len(errs) > 0 {
		t.Errorf("the StatefulSet stand-in failed: %v", errs)
	}
	var evs corev1.EventList
	if err := c.List(ctx, &evs, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	restarted := map[string]bool{}
	for _, e := range evs.Items {
		if e.InvolvedObject.Name == "cold" && e.Reason == "ShardServerRestart" {
			for _, n := range pods {
				if strings.Contains(e.Message, "restarting pod "+n+" ") {
					restarted[n] = true
				}
			}
		}
	}
	if len(restarted) != 3 {
		t.Errorf("ShardServerRestart Events name %v, want all of %v", restarted, pods)
	}
}
