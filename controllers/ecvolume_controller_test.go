package controllers

import (
	"context"
	"strings"
	"testing"

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
			r := &ECVolumeReconciler{Client: c, APIReader: c, GCInterval: 1}
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
