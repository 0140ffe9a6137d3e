package controllers

import (
	"context"
	"fmt"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/stripeindex"
)

func benchStripe(i int) *storagev1.ECStripe {
	locs := make([]storagev1.ShardLocation, 6)
	for j := range locs {
		locs[j] = storagev1.ShardLocation{ShardIndex: int32(j), IsDataShard: j < 4, PoolName: fmt.Sprintf("pool-%d", j),
			NodeName: fmt.Sprintf("node-%d", j), Offset: int64(i) * 262144, SizeBytes: 262144, Checksum: fmt.Sprintf("xxh3:%016x", i*6+j)}
	}
	es := &storagev1.ECStripe{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("v-%06d", i)}, Spec: storagev1.ECStripeSpec{
		VolumeRef: "v", PolicyRef: "ec", StripeID: int64(i), ShardLocations: locs, Generation: 1,
		LbaRange: storagev1.LbaRange{StartLba: int64(i) * 2048, EndLba: int64(i+1) * 2048}}}
	es.Status.State = storagev1.StripeHealthy
	return es
}

// oldVolumeReconcile is the status path before the per-volume counters
// (commit 82eb045^): per ECStripe event, a List of all the volume's stripes
// to count them, then the orphan walk, whose stripe side is a second List of
// them all (its shard-server listings are left out here).
func oldVolumeReconcile(ctx context.Context, c client.Client, reader client.Reader, name string) error {
	vol := &storagev1.ECVolume{}
	if err := c.Get(ctx, client.ObjectKey{Name: name}, vol); err != nil {
		return err
	}
	pol := &storagev1.ErasureCodingPolicy{}
	ev := volumeEvidence{vol: vol}
	if err := c.Get(ctx, client.ObjectKey{Name: vol.Spec.PolicyRef}, pol); err == nil {
		ev.policy = pol
	}
	var list storagev1.ECStripeList
	if err := reader.List(ctx, &list, client.MatchingFields{storagev1.ECStripeVolumeRefField: name}); err != nil {
		return err
	}
	ev.stripes = stripeindex.VolumeCounts{ByState: map[storagev1.ECStripeState]int64{}}
	for i := range list.Items {
		es := &list.Items[i]
		ev.stripes.Stripes++
		ev.stripes.Bytes += (es.Spec.LbaRange.EndLba - es.Spec.LbaRange.StartLba) * 512
		ev.stripes.ByState[es.Status.State]++
	}
	if st := computeVolumeStatus(ev); !volumeStatusEqual(&vol.Status, &st) {
		vol.Status = st
		if err := c.Status().Update(ctx, vol); err != nil {
			return err
		}
	}
	referenced := map[string]bool{}
	var again storagev1.ECStripeList
	if err := reader.List(ctx, &again, client.MatchingFields{storagev1.ECStripeVolumeRefField: name}); err != nil {
		return err
	}
	for i := range again.Items {
		for _, l := range again.Items[i].Spec.ShardLocations {
			referenced[fmt.Sprint(l.PoolName, l.Offset)] = true
		}
	}
	return nil
}

// BenchmarkECVolumeStripeEvent: the ECVolume controller's cost of one
// ECStripe event (one stripe turns Degraded or back to Healthy, so every
// reconcile writes the status once; the event itself is not timed) for a volume of 1,000 and 100,000
// stripes. "new" is Reconcile reading the informer-fed per-volume counts;
// "old" is oldVolumeReconcile. Both read through controller-runtime's fake
// client (in memory, no HTTP, no JSON, no etcd), so "old" is a lower bound
// of what it cost against an API server.
//
//	go test -run '^$' -bench ECVolumeStripeEvent -benchtime 20x ./controllers/
func BenchmarkECVolumeStripeEvent(b *testing.B) {
	sc := runtime.NewScheme()
	if err := storagev1.AddToScheme(sc); err != nil {
		b.Fatal(err)
	}
	for _, n := range []int{1_000, 100_000} {
		objs := []client.Object{
			&storagev1.ECVolume{ObjectMeta: metav1.ObjectMeta{Name: "v", Finalizers: []string{storagev1.ECVolumeFinalizer}},
				Spec: storagev1.ECVolumeSpec{SizeBytes: int64(n) << 20, PolicyRef: "ec"}},
			&storagev1.ErasureCodingPolicy{ObjectMeta: metav1.ObjectMeta{Name: "ec"}, Status: storagev1.ErasureCodingPolicyStatus{Phase: storagev1.ECPolicyReady}},
		}
		x := stripeindex.NewStripeIndex()
		stripes := make([]*storagev1.ECStripe, n)
		for i := range stripes {
			stripes[i] = benchStripe(i)
			objs = append(objs, stripes[i])
			x.Add(stripes[i])
		}
		c := fake.NewClientBuilder().WithScheme(sc).WithObjects(objs...).
			WithStatusSubresource(&storagev1.ECVolume{}, &storagev1.ECStripe{}).
			WithIndex(&storagev1.ECStripe{}, storagev1.ECStripeVolumeRefField, func(o client.Object) []string {
				return []string{o.(*storagev1.ECStripe).Spec.VolumeRef}
			}).Build()
		ctx := context.Background()
		toggle := func(s storagev1.ECStripeState) storagev1.ECStripeState {
			if s == storagev1.StripeHealthy {
				return storagev1.StripeDegraded
			}
			return storagev1.StripeHealthy
		}
		// An event: stripe 0 turns Degraded, or Healthy again.
		flip := func(inIndex bool) {
			if inIndex {
				cur := stripes[0].DeepCopy()
				cur.Status.State = toggle(cur.Status.State)
				x.Update(stripes[0], cur)
				stripes[0] = cur
				return
			}
			var live storagev1.ECStripe
			if err := c.Get(ctx, client.ObjectKey{Name: stripes[0].Name}, &live); err != nil {
				b.Fatal(err)
			}
			live.Status.State = toggle(live.Status.State)
			if err := c.Status().Update(ctx, &live); err != nil {
				b.Fatal(err)
			}
		}
		b.Run(fmt.Sprintf("stripes=%d/new", n), func(b *testing.B) {
			r := &ECVolumeReconciler{Client: c, APIReader: c, Stripes: x, Orphans: &orphanCounter{}}
			req := ctrl.Request{NamespacedName: types.NamespacedName{Name: "v"}}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				flip(true)
				b.StartTimer()
				if _, err := r.Reconcile(ctx, req); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("stripes=%d/old", n), func(b *testing.B) {
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				flip(false)
				b.StartTimer()
				if err := oldVolumeReconcile(ctx, c, c, "v"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
