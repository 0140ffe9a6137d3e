package controllers

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	mayastorv1beta2 "github.com/billyronks/couchestor/apis/mayastor/v1beta2"
	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/ecstate"
	"github.com/billyronks/couchestor/pkg/erasure"
)

const testMayastorNS = "mayastor"

// stripeFixture is a 2+1 stripe on three Online pools with its policy; the
// stripe's status is st (nil: no status).
func stripeFixture(st *storagev1.ECStripeStatus) []client.Object {
	objs := []client.Object{&storagev1.ErasureCodingPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "ec21"},
		Spec:       storagev1.ErasureCodingPolicySpec{DataShards: ptr.To[int32](2), ParityShards: ptr.To[int32](1)},
	}}
	s := &storagev1.ECStripe{
		ObjectMeta: metav1.ObjectMeta{Name: "vol-0"},
		Spec: storagev1.ECStripeSpec{
			VolumeRef: "vol", StripeID: 0, PolicyRef: "ec21",
			LbaRange: storagev1.LbaRange{StartLba: 0, EndLba: 2048},
		},
	}
	for i := 0; i < 3; i++ {
		pool := fmt.Sprintf("pool-%d", i)
		s.Spec.ShardLocations = append(s.Spec.ShardLocations, storagev1.ShardLocation{
			ShardIndex: int32(i), IsDataShard: i < 2, PoolName: pool, NodeName: "node", SizeBytes: 512 * 1024,
		})
		objs = append(objs, &mayastorv1beta2.DiskPool{
			ObjectMeta: metav1.ObjectMeta{Namespace: testMayastorNS, Name: pool},
			Status:     mayastorv1beta2.DiskPoolStatus{CRState: mayastorv1beta2.CRStateCreated, PoolStatus: mayastorv1beta2.PoolOnline},
		})
	}
	if st != nil {
		s.Status = *st
	}
	return append(objs, s)
}

func healthyStatus() *storagev1.ECStripeStatus {
	st := &storagev1.ECStripeStatus{State: storagev1.StripeHealthy, HealthyShards: 3, HealthyDataShards: 2, HealthyParityShards: 1}
	for i := int32(0); i < 3; i++ {
		st.ShardHealth = append(st.ShardHealth, storagev1.ShardHealth{ShardIndex: i, State: storagev1.ShardHealthy})
	}
	return st
}

func testScheme(t *testing.T) *runtime.Scheme {
	t.Helper()
	sc := runtime.NewScheme()
	if err := storagev1.AddToScheme(sc); err != nil {
		t.Fatal(err)
	}
	if err := mayastorv1beta2.AddToScheme(sc); err != nil {
		t.Fatal(err)
	}
	return sc
}

func newTestStripeReconciler(c client.Client) *ECStripeReconciler {
	return &ECStripeReconciler{
		Client: c,
		Pools: &PoolMonitor{
			Client: c, MayastorNamespace: testMayastorNS,
			Tracker: ecstate.NewDownOutTracker(time.Minute, nil),
		},
		findings: map[string]map[int]ecstate.Finding{},
		overlaps: map[string]string{},
		codecs:   map[string]erasure.Codec{},
	}
}

func getStripe(t *testing.T, c client.Client) *storagev1.ECStripe {
	t.Helper()
	var s storagev1.ECStripe
	if err := c.Get(context.Background(), types.NamespacedName{Name: "vol-0"}, &s); err != nil {
		t.Fatal(err)
	}
	return &s
}

// A scrub finding reported before a status write that conflicts is written
// by the retry: a lost corruption finding would stay hidden until the next
// scrub (days). Reconcile is called as the workqueue would call it: again
// after the conflict's requeue.
func TestECStripeFindingSurvivesStatusConflict(t *testing.T) {
	var patches atomic.Int32
	c := interceptor.NewClient(
		fake.NewClientBuilder().WithScheme(testScheme(t)).WithObjects(stripeFixture(healthyStatus())...).
			WithStatusSubresource(&storagev1.ECStripe{}).Build(),
		interceptor.Funcs{
			SubResourcePatch: func(ctx context.Context, cl client.Client, sub string, obj client.Object, p client.Patch, opts ...client.SubResourcePatchOption) error {
				if patches.Add(1) == 1 {
					return apierrors.NewConflict(schema.GroupResource{Group: storagev1.GroupVersion.Group, Resource: "ecstripes"}, obj.GetName(),
						fmt.Errorf("the object has been modified"))
				}
				return cl.SubResource(sub).Patch(ctx, obj, p, opts...)
			},
			SubResourceUpdate: func(ctx context.Context, cl client.Client, sub string, obj client.Object, opts ...client.SubResourceUpdateOption) error {
				if patches.Add(1) == 1 {
					return apierrors.NewConflict(schema.GroupResource{Group: storagev1.GroupVersion.Group, Resource: "ecstripes"}, obj.GetName(),
						fmt.Errorf("the object has been modified"))
				}
				return cl.SubResource(sub).Update(ctx, obj, opts...)
			},
		})
	r := newTestStripeReconciler(c)
	r.Report("vol-0", map[int]ecstate.Finding{1: {Kind: ecstate.FindingCorrupt, At: time.Now(), Detail: "xxh3 mismatch"}})

	req := ctrl.Request{NamespacedName: types.NamespacedName{Name: "vol-0"}}
	for attempt := 1; attempt <= 3; attempt++ {
		res, err := r.Reconcile(context.Background(), req)
		if err != nil {
			t.Fatalf("attempt %d: %v", attempt, err)
		}
		if attempt == 1 && res.RequeueAfter == 0 {
			t.Fatalf("attempt 1 conflicted but asked for no retry: %+v", res)
		}
	}
	if n := patches.Load(); n < 1 {
		t.Fatalf("the injected conflict never happened (%d status writes)", n)
	}
	s := getStripe(t, c)
	if s.Status.State != storagev1.StripeDegraded {
		t.Errorf("state %q after the retry, want Degraded (shard 1 reported corrupt)", s.Status.State)
	}
	var sh1 *storagev1.ShardHealth
	for i := range s.Status.ShardHealth {
		if s.Status.ShardHealth[i].ShardIndex == 1 {
			sh1 = &s.Status.ShardHealth[i]
		}
	}
	if sh1 == nil || sh1.State != storagev1.ShardCorrupted {
		t.Fatalf("shard 1 health %+v after the retry, want Corrupted: the finding was lost with the conflicting write", sh1)
	}
}

// A stripe without status, or in Writing, is its writer's for the grace and
// the controller's after it: a writer that failed between its shards and the
// status must not leave the stripe unjudged forever.
func TestECStripeWriterGraceThenAdoption(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	lm := metav1.NewTime(t0)
	for _, tc := range []struct {
		name string
		st   *storagev1.ECStripeStatus
	}{
		{"no status", nil},
		// Left mid-overwrite: the recorded health is an earlier version's.
		{"writing", &storagev1.ECStripeStatus{State: storagev1.StripeWriting, LastModifiedTime: &lm, ShardHealth: []storagev1.ShardHealth{
			{ShardIndex: 0, State: storagev1.ShardCorrupted, Error: "an earlier version's"}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs := stripeFixture(tc.st)
			objs[len(objs)-1].SetCreationTimestamp(metav1.NewTime(t0))
			c := fake.NewClientBuilder().WithScheme(testScheme(t)).WithObjects(objs...).
				WithStatusSubresource(&storagev1.ECStripe{}).Build()
			r := newTestStripeReconciler(c)
			now := t0.Add(10 * time.Second)
			r.Now = func() time.Time { return now }
			r.WritingGrace = time.Minute
			req := ctrl.Request{NamespacedName: types.NamespacedName{Name: "vol-0"}}

			res, err := r.Reconcile(context.Background(), req)
			if err != nil {
				t.Fatal(err)
			}
			if res.RequeueAfter < 50*time.Second || res.RequeueAfter > 51*time.Second {
				t.Fatalf("within the grace: RequeueAfter %v, want the 50s left of it", res.RequeueAfter)
			}
			if s := getStripe(t, c); !stripeStatusEqual(&s.Status, orEmpty(tc.st)) {
				t.Fatalf("the controller wrote a stripe its writer still holds: %+v", s.Status)
			}

			now = t0.Add(time.Minute)
			if _, err := r.Reconcile(context.Background(), req); err != nil {
				t.Fatal(err)
			}
			s := getStripe(t, c)
			if s.Status.State != storagev1.StripeHealthy || s.Status.HealthyShards != 3 || len(s.Status.ShardHealth) != 3 {
				t.Fatalf("after the grace: status %+v, want the stripe adopted and Healthy (3 pools Online)", s.Status)
			}
			for _, h := range s.Status.ShardHealth {
				if h.State != storagev1.ShardHealthy {
					t.Fatalf("shard %d %s (%s): the earlier version's health must not carry over", h.ShardIndex, h.State, h.Error)
				}
			}
		})
	}
}

func orEmpty(st *storagev1.ECStripeStatus) *storagev1.ECStripeStatus {
	if st == nil {
		return &storagev1.ECStripeStatus{}
	}
	return st
}
