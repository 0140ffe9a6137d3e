package nbd_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	ecvolumecmd "github.com/billyronks/couchestor/internal/cmd/ecvolume"
	"github.com/billyronks/couchestor/internal/scheme"
	"github.com/billyronks/couchestor/pkg/ecvolume"
	"github.com/billyronks/couchestor/pkg/journal"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/pkg/shardserver"
	"github.com/billyronks/couchestor/pkg/stripe"
	"github.com/billyronks/couchestor/pkg/volumejournal"
)

// Environment of the "ecvolume" child export (besides envSize and envDir).
const (
	envKubeconfig = "COUCHESTOR_NBD_TEST_KUBECONFIG"
	envVolume     = "COUCHESTOR_NBD_TEST_VOLUME"
)

// openRemoteJournalVolume is the export `couchestor ec-volume serve` builds,
// with the journal replicas on shard servers (volumejournal.Placement), run as the
// test binary's child so the test can SIGKILL it. It mirrors serve.go until
// the lead wires volumejournal.Placement into it.
func openRemoteJournalVolume(ctx context.Context) (*ecvolume.VolumeBackend, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", os.Getenv(envKubeconfig))
	if err != nil {
		return nil, err
	}
	cfg.QPS, cfg.Burst = 200, 400
	kc, err := client.New(cfg, client.Options{Scheme: scheme.New()})
	if err != nil {
		return nil, err
	}
	cc, err := registry.ClientConfigFromSecret(ctx, kc, registry.DefaultNamespace, registry.DefaultShardSecret)
	if err != nil {
		return nil, err
	}
	sc, err := shardserver.NewClient(cc)
	if err != nil {
		return nil, err
	}
	st := &stripe.Store{Client: kc, Shards: sc, Registry: &registry.Lookup{Client: kc}, MayastorNamespace: "mayastor"}
	name := os.Getenv(envVolume)
	vol, err := st.OpenVolume(ctx, name)
	if err != nil {
		return nil, err
	}
	pol := &storagev1.ErasureCodingPolicy{}
	if err := kc.Get(ctx, client.ObjectKey{Name: vol.Policy}, pol); err != nil {
		return nil, err
	}
	jc := pol.Spec.JournalConfig
	stores, err := (&volumejournal.Placement{Kube: kc, Registry: st.Registry, Shards: sc}).OpenStores(ctx, vol.Object, int(*jc.ReplicationFactor))
	if err != nil {
		return nil, err
	}
	interval, err := storagev1.ParseDuration(jc.DestageInterval)
	if err != nil {
		return nil, err
	}
	dir := os.Getenv(envDir)
	return ecvolume.Open(ctx, ecvolume.Options{
		Name: name, SizeBytes: vol.Object.Spec.SizeBytes, StripeSizeBytes: vol.StripeSize,
		JournalStores: stores, Journal: journal.Options{SizeBytes: *jc.JournalSizeBytes},
		DestageThresholdPercent: int(*jc.DestageThresholdPercent), DestageInterval: interval,
		Stripes: &ecvolumecmd.StripeAdapter{Store: st, Volume: vol},
		Cache:   &ecvolume.CacheOptions{BlockBytes: vol.StripeSize, MemoryBytes: 8 << 20, DiskDir: filepath.Join(dir, "cache"), DiskBytes: 16 << 20},
		OnDestageError: func(err error) {
			fmt.Fprintln(os.Stderr, "destage (retried):", err)
		},
	})
}

// burstKills writes random blocks from several connections until the
// export dies, recording every acknowledgement, and calls kills[n] once the
// n-th write is acknowledged. It returns the number of acknowledged writes.
func burstKills(t *testing.T, addr string, state []blockState, seq *atomic.Uint64, kills map[int64]func()) int64 {
	t.Helper()
	const workers = 8
	var acked atomic.Int64
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		c, err := dialWire(addr, exportNm)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.c.Close()
			rng := rand.New(rand.NewPCG(uint64(w), seq.Load()))
			for {
				b := uint64(rng.IntN(crashBlocks/workers)*workers + w) // one write in flight per block
				s := seq.Add(1)
				state[b].inflight = s
				if err := c.write(b*crashBlock, blockContent(b, s)); err != nil {
					return
				}
				state[b].acked, state[b].inflight = s, 0
				n := acked.Add(1)
				mu.Lock()
				kill := kills[n]
				delete(kills, n)
				mu.Unlock()
				if kill != nil {
					kill()
				}
			}
		}()
	}
	wg.Wait()
	return acked.Load()
}

// journalPools reads the ECVolume's recorded journal replicas.
func journalPools(t *testing.T, c *ecCluster, volume string) (pools []string, retired string) {
	t.Helper()
	v := &storagev1.ECVolume{}
	if err := c.env.Client.Get(context.Background(), client.ObjectKey{Name: volume}, v); err != nil {
		t.Fatal(err)
	}
	p := v.Annotations[volumejournal.AnnotationJournalPools]
	if p == "" {
		t.Fatalf("ECVolume %s has no %s annotation: the journal placement was not recorded", volume, volumejournal.AnnotationJournalPools)
	}
	return strings.Split(p, ","), v.Annotations[volumejournal.AnnotationJournalPoolsRetired]
}

// replicaInfos reads each pool's journal replica of volume directly.
func replicaInfos(t *testing.T, c *ecCluster, volume string, pools []string) []journal.StoreInfo {
	t.Helper()
	ctx := context.Background()
	byPool, err := c.store.Registry.ByPool(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []journal.StoreInfo
	for _, p := range pools {
		e, ok := byPool[p]
		if !ok {
			t.Fatalf("journal pool %s has no registered shard server", p)
		}
		info, err := c.store.Shards.JournalStore(e.Address, volume).Info(ctx)
		if err != nil {
			t.Fatalf("journal replica on %s: %v", p, err)
		}
		out = append(out, info)
	}
	return out
}

// TestJournalRemoteShardServerKilled exports an ECVolume whose journal has
// three replicas on shard servers (four shard-server processes on four
// nodes). While eight connections write, a shard server holding a replica
// is SIGKILLed: writes go on being acknowledged (2 of 3); then the export
// itself is SIGKILLed. Restarted, the export finds its replicas from the
// ECVolume's annotation, replaces the lost one (its Lease expired) by the
// fourth server, catches it up, and every acknowledged write reads back.
// Restarted once more, it reopens exactly the recorded replicas.
func TestJournalRemoteShardServerKilled(t *testing.T) {
	c := newECCluster(t, 4)
	ctx := context.Background()
	pol := &storagev1.ErasureCodingPolicy{ObjectMeta: metav1.ObjectMeta{Name: "rs-2-1"}, Spec: storagev1.ErasureCodingPolicySpec{
		DataShards: ptr.To(int32(2)), ParityShards: ptr.To(int32(1)), StripeSizeBytes: ptr.To(int64(1 << 20)),
		Algorithm: storagev1.ECAlgorithm("ReedSolomon"), MinHealthyShards: ptr.To(int32(2)),
		JournalConfig: &storagev1.JournalConfig{JournalSizeBytes: ptr.To(int64(64 << 20)), ReplicationFactor: ptr.To(int32(3)),
			DestageThresholdPercent: ptr.To(int32(50)), DestageInterval: "2s"}}}
	if err := c.env.Client.Create(ctx, pol); err != nil {
		t.Fatal(err)
	}
	const volume = "ecv-journal"
	if err := c.env.Client.Create(ctx, &storagev1.ECVolume{ObjectMeta: metav1.ObjectMeta{Name: volume},
		Spec: storagev1.ECVolumeSpec{SizeBytes: crashBlocks * crashBlock, PolicyRef: "rs-2-1"}}); err != nil {
		t.Fatal(err)
	}
	t.Setenv(envKubeconfig, c.kubeconfig)
	t.Setenv(envVolume, volume)
	opts := serverOpts{backend: "ecvolume", dir: t.TempDir(), size: crashBlocks * crashBlock}

	s := startServer(t, opts)
	pools, _ := journalPools(t, c, volume)
	if len(pools) != 3 {
		t.Fatalf("recorded journal pools %v, want 3", pools)
	}
	victim, err := strconv.Atoi(strings.TrimPrefix(pools[1], "pool-"))
	if err != nil {
		t.Fatal(err)
	}
	state := make([]blockState, crashBlocks)
	var seq atomic.Uint64
	const shardKillAt, exportKillAt = 150, 400
	n := burstKills(t, s.addr, state, &seq, map[int64]func(){
		shardKillAt: func() {
			_ = c.shards[victim].Process.Kill()
			_ = c.shards[victim].Wait()
			c.shards[victim] = nil
			t.Logf("SIGKILLed the shard server of pool %s (journal replica 1)", pools[1])
		},
		exportKillAt: s.kill,
	})
	if n < exportKillAt {
		t.Fatalf("only %d writes acknowledged, want >= %d: writes stopped after the shard server died", n, exportKillAt)
	}
	t.Logf("%d writes acknowledged (%d after the shard server was killed), then SIGKILL of the export", n, n-shardKillAt)

	// The victim's Lease expires (6 s): it is no longer registered.
	deadline := time.Now().Add(60 * time.Second)
	for {
		byPool, err := c.store.Registry.ByPool(ctx)
		if _, live := byPool[pools[1]]; err == nil && !live {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the killed shard server's Lease of %s is still live after 60s", pools[1])
		}
		time.Sleep(200 * time.Millisecond)
	}

	s = startServer(t, opts)
	verify(t, s.addr, state)
	now, retired := journalPools(t, c, volume)
	if slices.Contains(now, pools[1]) || now[0] != pools[0] || now[2] != pools[2] || retired != pools[1] {
		t.Fatalf("journal pools after losing %s: %v (retired %q), want %s replaced and the others kept", pools[1], now, retired, pools[1])
	}
	infos := replicaInfos(t, c, volume, now)
	if infos[1].LastSeq != infos[0].LastSeq || infos[2].LastSeq != infos[0].LastSeq {
		t.Fatalf("the replacement replica on %s is not caught up: %+v", now[1], infos)
	}
	t.Logf("replica on %s replaced by %s and caught up to seq %d", pools[1], now[1], infos[1].LastSeq)

	// More writes, another SIGKILL, and a restart: the same replicas, read
	// from the annotation, all three in the new writer's epoch.
	burstKills(t, s.addr, state, &seq, map[int64]func(){100: s.kill})
	s = startServer(t, opts)
	verify(t, s.addr, state)
	again, _ := journalPools(t, c, volume)
	if !slices.Equal(again, now) {
		t.Fatalf("journal pools changed on a plain restart: %v, then %v", now, again)
	}
	infos2 := replicaInfos(t, c, volume, again)
	for i, info := range infos2 {
		if info.Epoch != infos2[0].Epoch || info.Epoch <= infos[0].Epoch {
			t.Fatalf("replica %d on %s after restart: epoch %d (others %+v, before %d): the restarted export did not open the recorded replicas", i, again[i], info.Epoch, infos2, infos[0].Epoch)
		}
	}
}

// TestJournalRemotePlacement drives volumejournal.Placement directly over three
// shard-server processes on three nodes: the choice is recorded and reused,
// a replica whose server is gone counts as failed while no other node can
// take it (the journal runs on the majority), losing the majority is an
// error naming the pools, and a replicationFactor above the number of nodes
// is refused naming the field, the value and the nodes found.
func TestJournalRemotePlacement(t *testing.T) {
	c := newECCluster(t, 3)
	ctx := context.Background()
	kc := c.env.Client
	if err := kc.Create(ctx, &storagev1.ErasureCodingPolicy{ObjectMeta: metav1.ObjectMeta{Name: "rs-2-1"}, Spec: storagev1.ErasureCodingPolicySpec{
		DataShards: ptr.To(int32(2)), ParityShards: ptr.To(int32(1))}}); err != nil {
		t.Fatal(err)
	}
	newVolume := func(name string) *storagev1.ECVolume {
		v := &storagev1.ECVolume{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: storagev1.ECVolumeSpec{SizeBytes: 1 << 20, PolicyRef: "rs-2-1"}}
		if err := kc.Create(ctx, v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	open := func(v *storagev1.ECVolume, rf int) ([]journal.Store, error) {
		fresh := &storagev1.ECVolume{}
		if err := kc.Get(ctx, client.ObjectKeyFromObject(v), fresh); err != nil {
			t.Fatal(err)
		}
		return (&volumejournal.Placement{Kube: kc, Registry: c.store.Registry, Shards: c.store.Shards}).OpenStores(ctx, fresh, rf)
	}

	if _, err := open(newVolume("too-many"), 4); err == nil ||
		!strings.Contains(err.Error(), "spec.journalConfig.replicationFactor is 4") || !strings.Contains(err.Error(), "only 3 distinct nodes") {
		t.Fatalf("replicationFactor 4 over 3 nodes: %v, want an error naming spec.journalConfig.replicationFactor, 4 and the 3 nodes", err)
	}

	v := newVolume("placed")
	stores, err := open(v, 3)
	if err != nil {
		t.Fatal(err)
	}
	pools, _ := journalPools(t, c, "placed")
	j, err := journal.Open(ctx, stores, journal.Options{SizeBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := j.Append(ctx, 0, make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	j.Close()
	if _, err := open(v, 5); err == nil || !strings.Contains(err.Error(), "replicationFactor is 5") {
		t.Fatalf("reopen with another replicationFactor: %v, want a refusal naming it", err)
	}

	// The server of the second recorded pool stops (its Lease goes with it);
	// no fourth node exists, so its replica counts as failed: 2 of 3 remain.
	lost, _ := strconv.Atoi(strings.TrimPrefix(pools[1], "pool-"))
	c.stopShard(lost)
	stores, err = open(v, 3)
	if err != nil {
		t.Fatalf("one of three journal servers gone: %v", err)
	}
	if again, _ := journalPools(t, c, "placed"); !slices.Equal(again, pools) {
		t.Fatalf("journal pools changed to %v (was %v) without a node to replace the lost one", again, pools)
	}
	j, err = journal.Open(ctx, stores, journal.Options{SizeBytes: 1 << 20})
	if err != nil {
		t.Fatalf("journal on 2 of 3 replicas: %v", err)
	}
	if h := j.HealthyStores(); !h[0] || h[1] || !h[2] {
		t.Fatalf("healthy replicas %v, want the one on %s failed", h, pools[1])
	}
	if ext, err := j.Lookup(ctx, 0, 8); err != nil || len(ext) != 1 {
		t.Fatalf("acknowledged write after losing a replica: %v %v", ext, err)
	}
	j.Close()

	other, _ := strconv.Atoi(strings.TrimPrefix(pools[0], "pool-"))
	c.stopShard(other)
	if _, err := open(v, 3); err == nil || !strings.Contains(err.Error(), "only 1 of 3") || !strings.Contains(err.Error(), pools[0]) {
		t.Fatalf("two of three journal servers gone: %v, want a no-quorum error naming the pools", err)
	}
}
