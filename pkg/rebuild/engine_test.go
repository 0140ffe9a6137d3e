package rebuild

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/internal/scheme"
	"github.com/billyronks/couchestor/pkg/ecstate"
)

// A controller working from an informer cache may still see the intent of a
// rebuild that has just finished (the stored stripe no longer carries it).
// Resuming from that stale copy must do nothing: rebuilding the same shards
// again would bump the generation for no reason, and it once hid a real
// rebuild request in CI. Pure unit test: the fake client stands for the
// API server's fresh copy; no shard is touched (Shards would fail the test).
func TestResumeFromAStaleIntentDoesNothing(t *testing.T) {
	fresh := &storagev1.ECStripe{ObjectMeta: metav1.ObjectMeta{Name: "vol-0"},
		Spec: storagev1.ECStripeSpec{VolumeRef: "vol", PolicyRef: "p", Generation: 3}}
	for i := 0; i < 6; i++ {
		fresh.Spec.ShardLocations = append(fresh.Spec.ShardLocations, storagev1.ShardLocation{ShardIndex: int32(i), PoolName: fmt.Sprintf("pool-%d", i), NodeName: fmt.Sprintf("node-%d", i)})
	}
	pol := &storagev1.ErasureCodingPolicy{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: storagev1.ErasureCodingPolicySpec{
		DataShards: ptr.To[int32](4), ParityShards: ptr.To[int32](2), StripeSizeBytes: ptr.To[int64](1 << 20)}}
	c := fake.NewClientBuilder().WithScheme(scheme.New()).WithObjects(fresh, pol).Build()
	done := make(chan map[int]ecstate.Finding, 1)
	e := &Engine{Client: c, Now: time.Now,
		Shards: func(context.Context) (ShardClient, error) {
			t.Error("a stale resume reached the shard servers")
			return nil, context.Canceled
		},
		Done: func(_ string, f map[int]ecstate.Finding) { done <- f }}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = e.Start(ctx) }()

	stale := fresh.DeepCopy()
	raw, _ := json.Marshal(Intent{Shards: []int{1}, FromGeneration: 2, Started: time.Now()})
	stale.Annotations = map[string]string{AnnotationIntent: string(raw)}
	deadline := time.Now().Add(30 * time.Second)
	for !e.StartRebuild(stale, nil) {
		if time.Now().After(deadline) {
			t.Fatal("the engine did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case f := <-done:
		if len(f) != 0 {
			t.Errorf("findings from a stale resume: %v", f)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the stale resume did not finish")
	}
	var got storagev1.ECStripe
	if err := c.Get(ctx, client.ObjectKey{Name: "vol-0"}, &got); err != nil {
		t.Fatal(err)
	}
	if got.Spec.Generation != 3 || got.Annotations[AnnotationIntent] != "" {
		t.Fatalf("the stripe changed: generation %d, intent %q", got.Spec.Generation, got.Annotations[AnnotationIntent])
	}
}
