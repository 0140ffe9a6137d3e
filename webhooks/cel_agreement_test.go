package webhooks

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
)

// TestCELAgreesWithGo sends the same specs to an API server WITHOUT the
// webhooks (only the CRD's OpenAPI bounds and CEL rules judge) and to the Go
// rule functions, and requires the same verdict. The specs vary only the
// fields the CRD can judge (watermarks, shard counts, minHealthyShards,
// stripe size, algorithm, journal bounds), around every boundary; durations,
// selectors and cross-object rules are the webhook's alone.
func TestCELAgreesWithGo(t *testing.T) {
	_, cfg := startAPIServer(t, false)
	c, _ := newClient(t, cfg)
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(7, 8))
	pick := func(vals ...int64) *int64 {
		i := rng.IntN(len(vals) + 1)
		if i == len(vals) {
			return nil // absent: the default applies
		}
		return ptr.To(vals[i])
	}
	pick32 := func(vals ...int64) *int32 {
		if p := pick(vals...); p != nil {
			return ptr.To(int32(*p))
		}
		return nil
	}
	disagree := 0
	judge := func(kind string, i int, obj client.Object, goErr bool) {
		err := c.Create(ctx, obj, client.DryRunAll)
		if (err != nil) != goErr {
			disagree++
			t.Errorf("%s case %d %+v: API server (CEL) refused=%v (%v), Go refused=%v", kind, i, obj, err != nil, err, goErr)
		}
	}
	for i := 0; i < 150; i++ {
		spec := storagev1.StoragePolicySpec{
			HighWatermarkIOPS: pick(0, 1, 500, 2000, 2001, 5000, 6000),
			WarmWatermarkIOPS: pick(0, 499, 500, 501, 2000, 4999, 5000),
			LowWatermarkIOPS:  pick(0, 1, 499, 500, 1999, 2000, 3000),
			HotPoolSelector:   &metav1.LabelSelector{MatchLabels: map[string]string{"t": "h"}},
			ColdPoolSelector:  &metav1.LabelSelector{MatchLabels: map[string]string{"t": "c"}},
		}
		if rng.IntN(4) == 0 {
			spec.MaxConcurrentMigrations = pick32(1, 2)
		}
		errs, _ := storagev1.ValidateStoragePolicySpec(&spec, specPath)
		judge("StoragePolicy", i, &storagev1.StoragePolicy{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("sp-%d", i)}, Spec: spec}, len(errs) > 0)
	}
	for i := 0; i < 250; i++ {
		spec := storagev1.ErasureCodingPolicySpec{
			DataShards:       pick32(1, 2, 3, 4, 5, 6, 8, 12, 200, 250, 253, 254, 255),
			ParityShards:     pick32(1, 2, 3, 4, 5, 6, 55, 56),
			MinHealthyShards: pick32(1, 3, 4, 5, 6, 7, 8, 12, 255),
			StripeSizeBytes:  pick(65536, 65536+4096, 67108864, 1048576+512, 1048576),
		}
		if rng.IntN(2) == 0 {
			spec.Algorithm = storagev1.AlgorithmLRC
		}
		if rng.IntN(3) == 0 {
			spec.JournalConfig = &storagev1.JournalConfig{ReplicationFactor: pick32(1, 3, 255), DestageThresholdPercent: pick32(0, 80, 100)}
		}
		errs, _ := storagev1.ValidateErasureCodingPolicySpec(&spec, specPath)
		judge("ErasureCodingPolicy", i, &storagev1.ErasureCodingPolicy{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("ecp-%d", i)}, Spec: spec}, len(errs) > 0)
	}
	// The one ECStripe rule the CRD judges on its own: a non-empty half-open range.
	for i, r := range [][2]int64{{0, 1}, {5, 5}, {6, 5}, {0, 2048}} {
		s := ecs(fmt.Sprintf("ecs-%d", i), "v", "p", int64(i), r[0], r[1], 1, 1)
		errs, _ := storagev1.ValidateECStripeSpec(&s.Spec, &storagev1.ErasureCodingPolicySpec{DataShards: ptr.To[int32](1), ParityShards: ptr.To[int32](1)}, specPath)
		judge("ECStripe", i, s, len(errs) > 0)
	}
	if disagree > 0 {
		t.Fatalf("%d disagreements between the CRD's CEL rules and the Go rules", disagree)
	}
}
