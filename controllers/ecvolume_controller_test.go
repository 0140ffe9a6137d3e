package controllers

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/fence"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/pkg/stripe"
	"github.com/billyronks/couchestor/pkg/stripeindex"
)

// A volume whose ErasureCodingPolicy is Invalid is in phase Error with a
// Ready=False condition naming the policy and its message; a missing policy
// is Pending; a usable one Ready.
func TestECVolumePhaseFollowsItsPolicy(t *testing.T) {
	for _, tc := range []struct {
		name   string
		policy *storagev1.ErasureCodingPolicy
		phase  storagev1.ECVolumePhase
		reason string
		msg    string
	}{
		{"missing policy", nil, storagev1.ECVolumePending, "PolicyNotFound", `ErasureCodingPolicy "ec" does not exist`},
		{"invalid policy", &storagev1.ErasureCodingPolicy{ObjectMeta: metav1.ObjectMeta{Name: "ec"},
			Status: storagev1.ErasureCodingPolicyStatus{Phase: storagev1.ECPolicyInvalid, Message: "dataShards + parityShards = 9 exceeds the 6 pools with shard servers"}},
			storagev1.ECVolumeError, "PolicyInvalid", `ErasureCodingPolicy "ec" is Invalid: dataShards + parityShards = 9`},
		{"usable policy", &storagev1.ErasureCodingPolicy{ObjectMeta: metav1.ObjectMeta{Name: "ec"},
			Status: storagev1.ErasureCodingPolicyStatus{Phase: storagev1.ECPolicyReady}},
			storagev1.ECVolumeReady, "PolicyFound", "ErasureCodingPolicy ec"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := fake.NewClientBuilder().WithScheme(testScheme(t)).
				WithObjects(&storagev1.ECVolume{ObjectMeta: metav1.ObjectMeta{Name: "v"}, Spec: storagev1.ECVolumeSpec{SizeBytes: 1 << 20, PolicyRef: "ec"}}).
				WithStatusSubresource(&storagev1.ECVolume{}, &storagev1.ErasureCodingPolicy{}).
				// The controller lists a volume's stripes by this index, as the manager's cache serves it.
				WithIndex(&storagev1.ECStripe{}, storagev1.ECStripeVolumeRefField, func(o client.Object) []string {
					return []string{o.(*storagev1.ECStripe).Spec.VolumeRef}
				})
			if tc.policy != nil {
				b = b.WithObjects(tc.policy)
			}
			c := b.Build()
			r := &ECVolumeReconciler{Client: c, APIReader: c, GCInterval: 1, Stripes: stripeindex.NewStripeIndex()}
			if _, err := r.Reconcile(context.Background(), ctrl.Request{NamespacedName: types.NamespacedName{Name: "v"}}); err != nil {
				t.Fatal(err)
			}
			var v storagev1.ECVolume
			if err := c.Get(context.Background(), types.NamespacedName{Name: "v"}, &v); err != nil {
				t.Fatal(err)
			}
			ready := meta.FindStatusCondition(v.Status.Conditions, storagev1.ECVolumeConditionReady)
			if v.Status.Phase != tc.phase || ready == nil || ready.Reason != tc.reason || !strings.Contains(ready.Message, tc.msg) {
				t.Fatalf("phase %q, Ready %+v; want phase %q, reason %q, message containing %q", v.Status.Phase, ready, tc.phase, tc.reason, tc.msg)
			}
		})
	}
}

// A deleting ECVolume whose writer Lease an export holds keeps its
// finalizer and its data: the controller waits (WaitingForExport, naming the
// holder) instead of deleting stripes and journals under a live writer.
func TestDeletingVolumeWaitsForItsExport(t *testing.T) {
	sc := testScheme(t)
	if err := coordinationv1.AddToScheme(sc); err != nil {
		t.Fatal(err)
	}
	now := metav1.Now()
	vol := &storagev1.ECVolume{ObjectMeta: metav1.ObjectMeta{Name: "v", Finalizers: []string{storagev1.ECVolumeFinalizer}, DeletionTimestamp: &now},
		Spec: storagev1.ECVolumeSpec{SizeBytes: 1 << 20, PolicyRef: "ec"}}
	lease := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: registry.DefaultNamespace, Name: fence.LeaseName("v")},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To("node-a/4242/x"), LeaseDurationSeconds: ptr.To(int32(15))}}
	fence.SetEpoch(lease, 7)
	c := fake.NewClientBuilder().WithScheme(sc).WithObjects(vol, lease).WithStatusSubresource(&storagev1.ECVolume{}).Build()
	rec := events.NewFakeRecorder(10)
	r := &ECVolumeReconciler{Client: c, APIReader: c, Recorder: rec}
	res, err := r.Reconcile(context.Background(), ctrl.Request{NamespacedName: types.NamespacedName{Name: "v"}})
	if err != nil || res.RequeueAfter == 0 {
		t.Fatalf("Reconcile: %+v, %v; want a requeue while the export holds its Lease", res, err)
	}
	select {
	case ev := <-rec.Events:
		if !strings.Contains(ev, "WaitingForExport") || !strings.Contains(ev, "node-a/4242/x") || !strings.Contains(ev, "epoch 7") {
			t.Fatalf("event %q; want WaitingForExport naming node-a/4242/x and epoch 7", ev)
		}
	default:
		t.Fatal("no WaitingForExport Event")
	}
	var got storagev1.ECVolume
	if err := c.Get(context.Background(), types.NamespacedName{Name: "v"}, &got); err != nil || len(got.Finalizers) != 1 {
		t.Fatalf("volume after Reconcile: finalizers %v, %v; want the finalizer kept", got.Finalizers, err)
	}
}

// listCounter counts Lists of ECStripes through it.
type listCounter struct {
	client.Client
	stripeLists int
}

func (l *listCounter) List(ctx context.Context, list client.ObjectList, opts ...client.ListOption) error {
	if _, ok := list.(*storagev1.ECStripeList); ok {
		l.stripeLists++
	}
	return l.Client.List(ctx, list, opts...)
}

type orphanCounter struct{ calls []string }

func (o *orphanCounter) CollectOrphans(_ context.Context, volume string, _ time.Duration) (stripe.GCReport, error) {
	o.calls = append(o.calls, volume)
	return stripe.GCReport{}, nil
}

// A volume's status comes from the stripe index's counts: a reconcile per
// ECStripe event costs no List of the volume's stripes and never walks the
// shard servers for orphans (that is the orphan collector's, on its own
// schedule).
func TestECVolumeStatusFromTheIndexWithoutAWalk(t *testing.T) {
	pol := &storagev1.ErasureCodingPolicy{ObjectMeta: metav1.ObjectMeta{Name: "ec"}, Status: storagev1.ErasureCodingPolicyStatus{Phase: storagev1.ECPolicyReady}}
	base := fake.NewClientBuilder().WithScheme(testScheme(t)).
		WithObjects(&storagev1.ECVolume{ObjectMeta: metav1.ObjectMeta{Name: "v"}, Spec: storagev1.ECVolumeSpec{SizeBytes: 8 << 20, PolicyRef: "ec"}}, pol).
		WithStatusSubresource(&storagev1.ECVolume{}).Build()
	c := &listCounter{Client: base}
	x := stripeindex.NewStripeIndex()
	orphans := &orphanCounter{}
	r := &ECVolumeReconciler{Client: c, APIReader: c, GCInterval: 5 * time.Minute, Stripes: x, Orphans: orphans}
	req := ctrl.Request{NamespacedName: types.NamespacedName{Name: "v"}}
	for i := int64(0); i < 8; i++ {
		es := &storagev1.ECStripe{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("v-%d", i)}, Spec: storagev1.ECStripeSpec{
			VolumeRef: "v", PolicyRef: "ec", StripeID: i, LbaRange: storagev1.LbaRange{StartLba: i * 2048, EndLba: (i + 1) * 2048}}}
		es.Status.State = storagev1.StripeHealthy
		if i == 5 {
			es.Status.State = storagev1.StripeDegraded
		}
		x.Add(es)
		if res, err := r.Reconcile(context.Background(), req); err != nil || res != (ctrl.Result{}) {
			t.Fatalf("Reconcile: %+v, %v; want no error and no requeue (the index wakes the volume)", res, err)
		}
	}
	var v storagev1.ECVolume
	if err := c.Get(context.Background(), req.NamespacedName, &v); err != nil {
		t.Fatal(err)
	}
	deg := meta.FindStatusCondition(v.Status.Conditions, storagev1.ConditionDegraded)
	if v.Status.Stripes != 8 || v.Status.BytesWritten != 8<<20 || deg == nil || deg.Status != metav1.ConditionTrue || !strings.Contains(deg.Message, "1 Degraded, 0 Rebuilding, 0 Failed of 8 stripes") {
		t.Fatalf("status %+v; want 8 stripes, 8 MiB, Degraded naming 1 of 8", v.Status)
	}
	if c.stripeLists != 0 {
		t.Fatalf("8 reconciles listed ECStripes %d times; the counts come from the index", c.stripeLists)
	}
	if len(orphans.calls) != 0 {
		t.Fatalf("status reconciles collected orphans %d times; only the orphan collector walks", len(orphans.calls))
	}
}

// The orphan collector walks a volume once per GCInterval however often it is
// asked, asks again when the interval ends, and forgets a deleting volume
// (its finalizer frees everything).
func TestOrphanCollectorOncePerInterval(t *testing.T) {
	c := fake.NewClientBuilder().WithScheme(testScheme(t)).
		WithObjects(&storagev1.ECVolume{ObjectMeta: metav1.ObjectMeta{Name: "v", Finalizers: []string{storagev1.ECVolumeFinalizer}}, Spec: storagev1.ECVolumeSpec{SizeBytes: 8 << 20, PolicyRef: "ec"}}).
		Build()
	now := time.Unix(1_000_000, 0)
	orphans := &orphanCounter{}
	r := &ECVolumeReconciler{Client: c, APIReader: c, GCInterval: 5 * time.Minute, Orphans: orphans, Now: func() time.Time { return now }}
	oc := &volumeOrphanCollector{r: r}
	req := ctrl.Request{NamespacedName: types.NamespacedName{Name: "v"}}
	collect := func() ctrl.Result {
		t.Helper()
		res, err := oc.Reconcile(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	if res := collect(); len(orphans.calls) != 1 || res.RequeueAfter != 5*time.Minute {
		t.Fatalf("first collection: %d walks, requeue %v; want 1 walk and the next in 5m", len(orphans.calls), res.RequeueAfter)
	}
	now = now.Add(time.Minute)
	if res := collect(); len(orphans.calls) != 1 || res.RequeueAfter != 4*time.Minute {
		t.Fatalf("asked again after 1m: %d walks, requeue %v; want still 1 walk and a requeue in 4m", len(orphans.calls), res.RequeueAfter)
	}
	now = now.Add(4 * time.Minute)
	if collect(); len(orphans.calls) != 2 {
		t.Fatalf("after the interval: %d walks; want 2", len(orphans.calls))
	}
	var v storagev1.ECVolume
	if err := c.Get(context.Background(), req.NamespacedName, &v); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(context.Background(), &v); err != nil {
		t.Fatal(err)
	}
	now = now.Add(time.Hour)
	if res := collect(); len(orphans.calls) != 2 || res != (ctrl.Result{}) {
		t.Fatalf("deleting volume: %d walks, %+v; want no walk and no requeue", len(orphans.calls), res)
	}
	if _, ok := r.lastGC["v"]; ok {
		t.Fatal("a deleting volume's last collection is still remembered")
	}
}

func TestOrphanCollectionWait(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	const iv = 5 * time.Minute
	for _, tc := range []struct {
		name      string
		last      time.Time
		collected bool
		now       time.Time
		want      time.Duration
	}{
		{"never collected", time.Time{}, false, t0, 0},
		{"just collected", t0, true, t0, iv},
		{"one minute ago", t0, true, t0.Add(time.Minute), 4 * time.Minute},
		{"exactly one interval ago", t0, true, t0.Add(iv), 0},
		{"long ago", t0, true, t0.Add(24 * time.Hour), 0},
		{"clock stepped back: at most one interval", t0, true, t0.Add(-time.Hour), iv},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := orphanCollectionWait(tc.last, tc.collected, tc.now, iv); got != tc.want {
				t.Fatalf("orphanCollectionWait = %v, want %v", got, tc.want)
			}
		})
	}
}

// Only updates that can change what a reconcile does wake the volume; its
// own status writes and resyncs do not.
func TestVolumeUpdateMatters(t *testing.T) {
	base := &storagev1.ECVolume{ObjectMeta: metav1.ObjectMeta{Name: "v", Generation: 1, Finalizers: []string{storagev1.ECVolumeFinalizer},
		Annotations: map[string]string{storagev1.ECVolumeAnnotationJournalPools: "p1,p2"}}}
	now := metav1.Now()
	for _, tc := range []struct {
		name   string
		change func(v *storagev1.ECVolume)
		want   bool
	}{
		{"resync (same object)", func(*storagev1.ECVolume) {}, false},
		{"status only", func(v *storagev1.ECVolume) { v.Status.Stripes = 7; v.ResourceVersion = "2" }, false},
		{"labels only", func(v *storagev1.ECVolume) { v.Labels = map[string]string{"a": "b"} }, false},
		{"spec (generation)", func(v *storagev1.ECVolume) { v.Generation = 2 }, true},
		{"deletion", func(v *storagev1.ECVolume) { v.DeletionTimestamp = &now }, true},
		{"finalizer removed", func(v *storagev1.ECVolume) { v.Finalizers = nil }, true},
		{"journal pools annotation", func(v *storagev1.ECVolume) {
			v.Annotations = map[string]string{storagev1.ECVolumeAnnotationJournalPools: "p1,p3"}
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := base.DeepCopy()
			tc.change(n)
			if got := volumeUpdateMatters(base, n); got != tc.want {
				t.Fatalf("volumeUpdateMatters = %v, want %v", got, tc.want)
			}
		})
	}
}
