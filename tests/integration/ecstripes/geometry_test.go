package ecstripes

import (
	"bytes"
	"context"
	"testing"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/tests/testenv"
)

// TestHugeShardSizeInAnECStripeIsNotTrusted: an ECStripe whose
// shardLocations[].sizeBytes was edited to an absurd value (the schema bounds
// it below only) used to size the reader's buffer and crashed it; the shard
// now counts as missing and the stripe is decoded around it.
func TestHugeShardSizeInAnECStripeIsNotTrusted(t *testing.T) {
	testenv.RequireAssets(t)
	c := newCluster(t, 6)
	ctx := context.Background()
	c.policy("rs-4-2-size", storagev1.AlgorithmReedSolomon, 4, 2, 1<<20)
	v := c.volume("vol-size", "rs-4-2-size", 1<<20)
	data := random(t, 1<<20)
	if err := c.store.WriteAt(ctx, v, data, 0); err != nil {
		t.Fatal(err)
	}
	stripes, err := c.store.ListStripes(ctx, v.Name())
	if err != nil || len(stripes) != 1 {
		t.Fatalf("stripes: %d %v", len(stripes), err)
	}
	es := stripes[0]
	for i := range es.Spec.ShardLocations {
		if es.Spec.ShardLocations[i].ShardIndex == 0 {
			es.Spec.ShardLocations[i].SizeBytes = 1 << 50
		}
	}
	if err := c.store.Client.Update(ctx, es); err != nil {
		t.Fatal(err)
	}
	const ss = 256 << 10
	for _, r := range []struct {
		name   string
		off, n int64
	}{{"inside shard 0", 4096, 4096}, {"exactly shard 0", 0, ss}, {"the whole stripe", 0, 1 << 20}} {
		got := make([]byte, r.n)
		rep, err := c.store.ReadAt(ctx, v, got, r.off)
		if err != nil || !bytes.Equal(got, data[r.off:r.off+r.n]) {
			t.Fatalf("read %s: equal=%v err=%v", r.name, bytes.Equal(got, data[r.off:r.off+r.n]), err)
		}
		if rep.Degraded != 1 {
			t.Fatalf("read %s: %+v, want a degraded read around the shard with the wrong size", r.name, rep)
		}
	}
}
