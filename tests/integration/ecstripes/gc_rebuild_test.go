package ecstripes

import (
	"context"
	"crypto/rand"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/erasure"
	"github.com/billyronks/couchestor/pkg/stripe"
	"github.com/billyronks/couchestor/tests/testenv"
)

// TestOrphanCollectionKeepsTheShardsOfARebuildInProgress: a rebuild writes
// generation+1 shards before it records them on the ECStripe, with its
// intent persisted on the stripe first; one that runs (or waits to be
// resumed by the next leader) longer than the orphan grace must not have
// its new shards freed under it. With the intent dropped, the same shard is
// an orphan and is freed. On the old code the first collection freed it.
func TestOrphanCollectionKeepsTheShardsOfARebuildInProgress(t *testing.T) {
	testenv.RequireAssets(t)
	c := newCluster(t, 3)
	ctx := context.Background()
	c.policy("rs-2-1-gc", storagev1.AlgorithmReedSolomon, 2, 1, 1<<20)
	v := c.volume("vol-gc-rebuild", "rs-2-1-gc", 1<<20)
	if err := c.store.WriteAt(ctx, v, random(t, 1<<20), 0); err != nil {
		t.Fatal(err)
	}
	name := stripe.StripeName(v.Name(), 0)
	es := &storagev1.ECStripe{}
	if err := c.env.Client.Get(ctx, types.NamespacedName{Name: name}, es); err != nil {
		t.Fatal(err)
	}
	// The rebuild's intent, then its new shard 0 on another pool, written
	// an hour ago (as by a rebuild that has been running that long).
	es.Annotations = map[string]string{storagev1.ECStripeAnnotationRebuildIntent: `{"shards":[0],"fromGeneration":1,"started":"2026-01-01T00:00:00Z"}`}
	if err := c.env.Client.Update(ctx, es); err != nil {
		t.Fatal(err)
	}
	loc := es.Spec.ShardLocations[0]
	var target string
	for _, s := range c.servers {
		if s.pool != loc.PoolName {
			target = testenv.Addr(s.port)
			break
		}
	}
	shards, err := c.client.List(ctx, target, v.Name())
	if err != nil || len(shards) == 0 || shards[0].Header == nil {
		t.Fatalf("shards of %s on %s: %v, %v", v.Name(), target, shards, err)
	}
	h := *shards[0].Header
	payload := make([]byte, h.SizeBytes)
	if _, err := rand.Read(payload); err != nil {
		t.Fatal(err)
	}
	h.ShardIndex, h.Generation = 0, es.Spec.Generation+1
	h.Checksum, h.WrittenUnixNano = erasure.ShardChecksum(payload), time.Now().Add(-time.Hour).UnixNano()
	h.ShardChecksums = nil
	if _, err := c.client.Put(ctx, target, &h, payload); err != nil {
		t.Fatal(err)
	}

	rep, err := c.store.CollectOrphans(ctx, v.Name(), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Freed != 0 || rep.Rebuilding != 1 {
		t.Fatalf("orphan collection with a rebuild in progress: %+v; want the rebuild's shard kept (Rebuilding 1, Freed 0)", rep)
	}
	// The rebuild ended without recording its shard: now it is an orphan.
	if err := c.env.Client.Get(ctx, types.NamespacedName{Name: name}, es); err != nil {
		t.Fatal(err)
	}
	delete(es.Annotations, storagev1.ECStripeAnnotationRebuildIntent)
	if err := c.env.Client.Update(ctx, es); err != nil {
		t.Fatal(err)
	}
	if rep, err = c.store.CollectOrphans(ctx, v.Name(), time.Minute); err != nil || rep.Freed != 1 {
		t.Fatalf("orphan collection after the intent was dropped: %+v, %v; want 1 freed", rep, err)
	}
}
