package ecrebuild

import (
	"context"
	"crypto/rand"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
)

// TestRebuildAfterANewerExportRaisedTheFence: a stripe written by the
// export of writer epoch 1, then the volume exported again (epoch 3: every
// CSI stage is a new export) and other stripes written, so every shard
// server's fence for the volume stands at 3. A pool of the first stripe is
// then lost: its rebuild must be admitted (a rebuild carries no writer
// epoch) and the data read back exactly. The rebuild used to copy epoch 1
// from the surviving shard's header and every rebuilt shard was refused
// with HTTP 412 (found by tests/cluster CSIPodsWriteAndReadBack).
func TestRebuildAfterANewerExportRaisedTheFence(t *testing.T) {
	c := newCluster(t, 8)
	ctx := context.Background()
	const pol = "rs42-fence"
	p := &storagev1.ErasureCodingPolicy{ObjectMeta: metav1.ObjectMeta{Name: pol}, Spec: storagev1.ErasureCodingPolicySpec{
		DataShards: ptr.To[int32](4), ParityShards: ptr.To[int32](2), StripeSizeBytes: ptr.To[int64](1 << 20), MinHealthyShards: ptr.To[int32](4)}}
	if err := c.env.Client.Create(ctx, p); err != nil {
		t.Fatal(err)
	}
	const size = 8 << 20
	if err := c.env.Client.Create(ctx, &storagev1.ECVolume{ObjectMeta: metav1.ObjectMeta{Name: "fenced"}, Spec: storagev1.ECVolumeSpec{SizeBytes: size, PolicyRef: pol}}); err != nil {
		t.Fatal(err)
	}
	v, err := c.store.OpenVolume(ctx, "fenced")
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, size)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	c.store.WriterEpoch = 1
	if err := c.store.WriteAt(ctx, v, data[:1<<20], 0); err != nil {
		t.Fatal(err)
	}
	c.store.WriterEpoch = 3
	if err := c.store.WriteAt(ctx, v, data[1<<20:], 1<<20); err != nil {
		t.Fatal(err)
	}
	c.store.WriterEpoch = 0
	var first storagev1.ECStripe
	seen3 := map[string]bool{}
	for _, s := range c.stripes("fenced") {
		if s.Spec.LbaRange.StartLba == 0 {
			first = s
			continue
		}
		for _, l := range s.Spec.ShardLocations {
			seen3[l.PoolName] = true
		}
	}
	if first.Name == "" {
		t.Fatal("no stripe at offset 0")
	}
	for pool := range c.servers {
		if !seen3[pool] {
			t.Fatalf("pool %s holds no shard written at epoch 3: the fence is not raised everywhere (placement %v)", pool, seen3)
		}
	}
	lost := c.servers[first.Spec.ShardLocations[0].PoolName]
	c.stop(lost)
	c.startOperator()
	c.waitStripes("fenced", "every stripe rebuilt off "+lost.pool, healthyAt(1, lost.pool))
	for _, s := range c.stripes("fenced") {
		if s.Name == first.Name && s.Spec.Generation <= first.Spec.Generation {
			t.Fatalf("stripe %s was not rebuilt (generation %d)", s.Name, s.Spec.Generation)
		}
	}
	c.mustReadExact(v, data, "after the rebuild")
}
