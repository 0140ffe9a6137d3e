package ecstripes

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/pkg/shardserver"
	"github.com/billyronks/couchestor/pkg/stripe"
	"github.com/billyronks/couchestor/tests/testenv"
)

// dataMiB is how much random data each volume gets: ECSTRIPES_MIB, default
// 48 (the issue asks for a few hundred; the shared 2-core machine is slow,
// set ECSTRIPES_MIB=300 to run at full size).
func dataMiB() int {
	if v, err := strconv.Atoi(os.Getenv("ECSTRIPES_MIB")); err == nil && v > 0 {
		return v
	}
	return 48
}

func random(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestECStripesEndToEnd(t *testing.T) {
	testenv.RequireAssets(t)
	c := newCluster(t, 8)
	ctx := context.Background()
	c.policy("rs-4-2", storagev1.AlgorithmReedSolomon, 4, 2, 1<<20)
	c.policy("lrc-4-4", storagev1.AlgorithmLRC, 4, 4, 1<<20) // 2 local groups of 2 + 2 global parities
	for _, tc := range []struct{ volume, policy string }{{"vol-rs", "rs-4-2"}, {"vol-lrc", "lrc-4-4"}} {
		t.Run(tc.volume, func(t *testing.T) {
			size := int64(dataMiB()) << 20
			v := c.volume(tc.volume, tc.policy, size)
			data := random(t, int(size))
			if err := c.store.WriteAt(ctx, v, data, 0); err != nil {
				t.Fatalf("write: %v", err)
			}
			readExact(t, c, v, data, "after the first write")
			checkMetadataMatchesServers(t, c, v)

			// Copy-on-write: overwrite part of stripe 1.
			before, err := c.store.ListStripes(ctx, v.Name())
			if err != nil {
				t.Fatal(err)
			}
			used := c.usedBytes()
			patch := random(t, 8192)
			off := int64(1<<20 + 4096)
			if err := c.store.WriteAt(ctx, v, patch, off); err != nil {
				t.Fatal(err)
			}
			copy(data[off:], patch)
			after, _ := c.store.ListStripes(ctx, v.Name())
			if after[1].Spec.Generation != before[1].Spec.Generation+1 {
				t.Fatalf("generation %d after overwrite, was %d", after[1].Spec.Generation, before[1].Spec.Generation)
			}
			for i, l := range after[1].Spec.ShardLocations {
				ol := before[1].Spec.ShardLocations[i]
				if l.PoolName == ol.PoolName && l.Offset == ol.Offset {
					t.Fatalf("shard %d rewritten in place at %s/%d", i, l.PoolName, l.Offset)
				}
			}
			if after[2].Spec.Generation != before[2].Spec.Generation {
				t.Fatal("an untouched stripe changed generation")
			}
			if got := c.usedBytes(); got != used {
				t.Fatalf("old shard space not freed: %d bytes used, %d before the overwrite", got, used)
			}
			readExact(t, c, v, data, "after copy-on-write")
			checkMetadataMatchesServers(t, c, v)

			// A writer that dies between its shard writes and the ECStripe update.
			killedWriterLeavesOldDataAndOrphansAreCollected(t, c, v, data)

			// Tampered shard: detected by checksum, read still exact.
			tamper(t, c, after[3], 0)
			rep, err := c.store.ReadAt(ctx, v, make([]byte, 1<<20), 3<<20)
			if err != nil || rep.Corrupt != 1 {
				t.Fatalf("read of a stripe with a tampered shard: corrupt=%d err=%v", rep.Corrupt, err)
			}
			readExact(t, c, v, data, "with a tampered shard")
			// Rewrite stripe 3 so its corrupt shard is replaced (copy-on-write).
			if err := c.store.WriteAt(ctx, v, data[3<<20:4<<20], 3<<20); err != nil {
				t.Fatal(err)
			}

			// Recovery: delete every ECStripe, rebuild them from shard headers.
			want, _ := c.store.ListStripes(ctx, v.Name())
			for _, es := range want {
				if err := c.env.Client.Delete(ctx, es); err != nil {
					t.Fatal(err)
				}
			}
			out, err := exec.Command(c.bin, "ec", "recover", "--volume", v.Name(), "--kubeconfig", c.kubeconfig,
				"--shard-secret", registry.DefaultNamespace+"/"+registry.DefaultShardSecret).CombinedOutput()
			if err != nil {
				t.Fatalf("ec recover: %v\n%s", err, out)
			}
			t.Logf("ec recover: %s", bytes.TrimSpace(out))
			got, _ := c.store.ListStripes(ctx, v.Name())
			if len(got) != len(want) {
				t.Fatalf("recovered %d ECStripes, had %d", len(got), len(want))
			}
			for id, es := range want {
				g := got[id]
				if g == nil || g.Spec.Checksum != es.Spec.Checksum || g.Spec.Generation != es.Spec.Generation || g.Spec.LbaRange != es.Spec.LbaRange {
					t.Fatalf("stripe %d recovered as %+v, was %+v", id, g.Spec, es.Spec)
				}
				for i := range es.Spec.ShardLocations {
					if g.Spec.ShardLocations[i] != es.Spec.ShardLocations[i] {
						t.Fatalf("stripe %d shard %d recovered as %+v, was %+v", id, i, g.Spec.ShardLocations[i], es.Spec.ShardLocations[i])
					}
				}
			}
			readExact(t, c, v, data, "after ec recover")
		})
	}

	// Degraded reads: stop as many shard servers as 4+2 tolerates.
	t.Run("degraded", func(t *testing.T) {
		v, err := c.store.OpenVolume(ctx, "vol-rs")
		if err != nil {
			t.Fatal(err)
		}
		data := make([]byte, v.Object.Spec.SizeBytes)
		if _, err := c.store.ReadAt(ctx, v, data, 0); err != nil {
			t.Fatal(err)
		}
		c.stop(c.servers[0])
		c.stop(c.servers[5])
		c.waitServers(6)
		rep := readExact(t, c, v, data, "with 2 of 8 shard servers stopped")
		if rep.Degraded == 0 {
			t.Fatal("no stripe needed reconstruction with 2 servers stopped")
		}
		c.start(c.servers[0])
		c.start(c.servers[5])
		c.waitServers(8)
	})

	t.Run("refusals", func(t *testing.T) {
		addr := testenv.Addr(c.servers[1].port)
		payload := random(t, 4096)
		h := &shardserver.ShardHeader{Volume: "x", StripeID: 1, ShardIndex: 0, Generation: 5, SizeBytes: 4096, Checksum: erasureSum(payload)}
		if _, err := c.client.Put(ctx, addr, h, payload); err != nil {
			t.Fatal(err)
		}
		old := *h
		old.Generation = 4
		if _, err := c.client.Put(ctx, addr, &old, payload); !errors.Is(err, shardserver.ErrStaleGeneration) {
			t.Fatalf("stale generation accepted: %v", err)
		}
		bad, _ := shardserver.NewClient(shardserver.ClientConfig{CAPEM: c.certs.CAPEM, Token: "wrong", Retries: 1})
		if _, err := bad.Space(ctx, addr); !errors.Is(err, shardserver.ErrUnauthorized) {
			t.Fatalf("wrong token accepted: %v", err)
		}
	})
}

func erasureSum(b []byte) string { return shardChecksum(b) }

func readExact(t *testing.T, c *cluster, v *stripe.Volume, want []byte, when string) stripe.ReadReport {
	t.Helper()
	got := make([]byte, len(want))
	rep, err := c.store.ReadAt(context.Background(), v, got, 0)
	if err != nil {
		t.Fatalf("read %s: %v", when, err)
	}
	if !bytes.Equal(got, want) {
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("read %s: first difference at byte %d (stripe %d)", when, i, int64(i)/v.StripeSize)
			}
		}
	}
	// An unaligned sub-range too.
	sub := make([]byte, 3*512)
	if _, err := c.store.ReadAt(context.Background(), v, sub, 1<<20-1024); err != nil || !bytes.Equal(sub, want[1<<20-1024:1<<20-1024+3*512]) {
		t.Fatalf("sub-range read across a stripe boundary %s: %v", when, err)
	}
	return rep
}

// checkMetadataMatchesServers: every shardLocation is on its server with the
// recorded checksum and generation.
func checkMetadataMatchesServers(t *testing.T, c *cluster, v *stripe.Volume) {
	t.Helper()
	ctx := context.Background()
	held := map[string]map[int64]*shardserver.ShardHeader{}
	for _, s := range c.servers {
		list, err := c.client.List(ctx, testenv.Addr(s.port), v.Name())
		if err != nil {
			t.Fatal(err)
		}
		held[s.pool] = map[int64]*shardserver.ShardHeader{}
		for _, sh := range list {
			held[s.pool][sh.Offset] = sh.Header
		}
	}
	stripes, err := c.store.ListStripes(ctx, v.Name())
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(stripes)) != v.Stripes() {
		t.Fatalf("%d ECStripes for %d stripes", len(stripes), v.Stripes())
	}
	nodes := map[string]bool{}
	for id, es := range stripes {
		if es.Status.State != storagev1.StripeHealthy || int(es.Status.HealthyShards) != v.K+v.M {
			t.Fatalf("stripe %d status %+v", id, es.Status)
		}
		clear(nodes)
		for _, l := range es.Spec.ShardLocations {
			h := held[l.PoolName][l.Offset]
			if h == nil || h.Checksum != l.Checksum || h.Generation != es.Spec.Generation || h.StripeID != id || h.ShardIndex != int(l.ShardIndex) {
				t.Fatalf("stripe %d shard %d: ECStripe says %s@%d %s gen %d, server holds %+v", id, l.ShardIndex, l.PoolName, l.Offset, l.Checksum, es.Spec.Generation, h)
			}
			if nodes[l.NodeName] {
				t.Fatalf("stripe %d has two shards on node %s", id, l.NodeName)
			}
			nodes[l.NodeName] = true
		}
	}
}

// tamper flips a payload byte of shard idx of es in its pool's store file.
func tamper(t *testing.T, c *cluster, es *storagev1.ECStripe, idx int) {
	t.Helper()
	l := es.Spec.ShardLocations[idx]
	f, err := os.OpenFile(filepath.Join(c.dir, l.PoolName, "shards.dat"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	pos := l.Offset + 4096 + 100
	if _, err := f.ReadAt(b, pos); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x5a
	if _, err := f.WriteAt(b, pos); err != nil {
		t.Fatal(err)
	}
}

func killedWriterLeavesOldDataAndOrphansAreCollected(t *testing.T, c *cluster, v *stripe.Volume, data []byte) {
	ctx := context.Background()
	used := c.usedBytes()
	before, _ := c.store.ListStripes(ctx, v.Name())
	// The writer's death: once its shards are durable it loses its context
	// (the API server and shard servers become unreachable to it), so neither
	// the ECStripe update nor any cleanup happens — as with SIGKILL.
	wctx, kill := context.WithCancel(ctx)
	dead := *c.store
	dead.AfterShardsDurable = func(string, int64, int64) { kill() }
	if err := dead.WriteAt(wctx, v, random(t, 1<<20), 2<<20); err == nil {
		t.Fatal("the killed writer reported success")
	}
	after, _ := c.store.ListStripes(ctx, v.Name())
	if after[2].Spec.Generation != before[2].Spec.Generation || after[2].ResourceVersion != before[2].ResourceVersion {
		t.Fatal("the killed writer changed the ECStripe")
	}
	readExact(t, c, v, data, "after a writer died before its ECStripe update")
	if c.usedBytes() <= used {
		t.Fatal("the killed writer left no orphaned shards: the test does not test")
	}
	// Young orphans are kept (a write may be in flight) ...
	if rep, err := c.store.CollectOrphans(ctx, v.Name(), time.Hour); err != nil || rep.Freed != 0 || rep.Young != v.K+v.M {
		t.Fatalf("orphans within the grace period: %+v %v", rep, err)
	}
	// ... and freed once the grace period has passed.
	later := *c.store
	later.Now = func() time.Time { return time.Now().Add(2 * time.Hour) }
	// One stripe per List page: the references of every page count (a
	// collector that saw only the first page would free live shards).
	later.ListPageSize = 1
	rep, err := later.CollectOrphans(ctx, v.Name(), time.Hour)
	if err != nil || rep.Freed != v.K+v.M {
		t.Fatalf("orphan collection: %+v %v", rep, err)
	}
	if got := c.usedBytes(); got != used {
		t.Fatalf("%d bytes used after collecting orphans, %d before the killed write", got, used)
	}
	readExact(t, c, v, data, "after orphan collection")
	_ = client.ObjectKey{}
}
