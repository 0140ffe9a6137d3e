package cache

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

type tieredFixture struct {
	t     *Tiered
	l3    *MemoryStore
	reg   *prometheus.Registry
	dir   string
	clock *fakeClock
}

func newTiered(t *testing.T, l1Bytes, l2Bytes int64, dir string, l3 Store) *tieredFixture {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	ms, _ := l3.(*MemoryStore)
	if l3 == nil {
		ms = NewMemoryStore()
		l3 = ms
	}
	reg := prometheus.NewRegistry()
	clock := newFakeClock()
	tc, err := NewTiered(TieredConfig{
		Memory:      MemoryConfig{CapacityBytes: l1Bytes},
		Disk:        DiskConfig{Dir: dir, CapacityBytes: l2Bytes},
		Store:       l3,
		Compression: Compression{Codec: CodecZstd},
		Registerer:  reg,
		Now:         clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tc.Close() })
	return &tieredFixture{t: tc, l3: ms, reg: reg, dir: dir, clock: clock}
}

func (f *tieredFixture) get(t *testing.T, k CacheKey) ([]byte, Tier) {
	t.Helper()
	e, tier, err := f.t.Get(context.Background(), k)
	if err != nil {
		t.Fatalf("Get %v: %v", k, err)
	}
	return e.Data, tier
}

func counter(t *testing.T, f *tieredFixture, name, tier string) float64 {
	t.Helper()
	mfs, err := f.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "tier" && l.GetValue() == tier {
					if m.GetCounter() != nil {
						return m.GetCounter().GetValue()
					}
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	return 0
}

func TestTieredPromotionFromL3AndL2(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	l3 := NewMemoryStore()
	k := CacheKey{Bucket: "vol-1", Key: "stripe-7"}
	v := textBytes("stripe", 8192)
	if err := l3.Put(ctx, k, v); err != nil {
		t.Fatal(err)
	}

	f := newTiered(t, 1<<20, 1<<20, dir, l3)
	data, tier := f.get(t, k)
	if tier != TierL3 || !bytes.Equal(data, v) {
		t.Fatalf("first Get served by %v, equal=%v; want L3", tier, bytes.Equal(data, v))
	}
	f.t.Flush()
	data, tier = f.get(t, k)
	if tier != TierL1 || !bytes.Equal(data, v) {
		t.Fatalf("second Get served by %v; want L1 after promotion", tier)
	}
	if got := counter(t, f, "couchestor_cache_promotions_total", "l3"); got != 1 {
		t.Fatalf("l3 promotions = %v", got)
	}
	if l3.Gets() != 1 {
		t.Fatalf("L3 read %d times, want 1", l3.Gets())
	}

	// Seed L2 directly (as a previous run's demotions would) and restart.
	_ = f.t.Close()
	d, err := OpenDiskCache(DiskConfig{Dir: dir, CapacityBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Put(k, v); err != nil {
		t.Fatal(err)
	}
	_ = d.Close()
	f2 := newTiered(t, 1<<20, 1<<20, dir, l3)
	if data, tier = f2.get(t, k); tier != TierL2 || !bytes.Equal(data, v) {
		t.Fatalf("after restart served by %v; want L2", tier)
	}
	f2.t.Flush()
	if data, tier = f2.get(t, k); tier != TierL1 || !bytes.Equal(data, v) {
		t.Fatalf("after L2 hit served by %v; want L1", tier)
	}
	if got := counter(t, f2, "couchestor_cache_promotions_total", "l2"); got != 1 {
		t.Fatalf("l2 promotions = %v", got)
	}
	if l3.Gets() != 1 {
		t.Fatalf("L3 read %d times after restart, want still 1", l3.Gets())
	}
}

// Fill a small L1 so it evicts: the evicted values land in L2 and are served
// from there, intact, without touching L3.
func TestTieredDemotionOnL1Eviction(t *testing.T) {
	f := newTiered(t, 64<<10, 16<<20, "", nil)
	ctx := context.Background()
	const n = 200
	vals := make([][]byte, n)
	for i := range n {
		vals[i] = randomBytes(uint64(i), 4096)
		if err := f.t.Put(ctx, key(i), vals[i]); err != nil {
			t.Fatal(err)
		}
		f.t.Flush()
	}
	demoted := counter(t, f, "couchestor_cache_demotions_total", "l2")
	if demoted == 0 {
		t.Fatal("no demotions after filling L1 16 times over")
	}
	if got := counter(t, f, "couchestor_cache_evictions_total", "l1"); got < demoted {
		t.Fatalf("l1 evictions %v < demotions %v", got, demoted)
	}
	if f.t.l2.Len() != int(demoted) {
		t.Fatalf("L2 holds %d entries, %v demotions counted", f.t.l2.Len(), demoted)
	}
	gets := f.l3.Gets()
	tiers := map[Tier]int{}
	for i := range n {
		data, tier := f.get(t, key(i))
		if !bytes.Equal(data, vals[i]) {
			t.Fatalf("key %d: wrong bytes from %v", i, tier)
		}
		tiers[tier]++
	}
	if tiers[TierL2] == 0 {
		t.Fatalf("no Get served by L2: %v", tiers)
	}
	if int64(tiers[TierL3]) != f.l3.Gets()-gets {
		t.Fatalf("tier report %v disagrees with %d L3 reads", tiers, f.l3.Gets()-gets)
	}
	if l2 := counter(t, f, "couchestor_cache_bytes", "l2"); l2 <= 0 || l2 > 16<<20 {
		t.Fatalf("l2 bytes gauge = %v", l2)
	}
}

func TestTieredInvalidateAfterL3ChangedBehindTheCache(t *testing.T) {
	f := newTiered(t, 64<<10, 16<<20, "", nil)
	ctx := context.Background()
	// Spread keys over L1 and L2.
	for i := range 100 {
		if err := f.t.Put(ctx, key(i), fmt.Appendf(nil, "v1-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 100 {
		f.get(t, key(i))
	}
	f.t.Flush()
	for i := range 100 {
		// Another writer changes L3; the cache is told.
		if err := f.l3.Put(ctx, key(i), fmt.Appendf(nil, "v2-%d", i)); err != nil {
			t.Fatal(err)
		}
		if err := f.t.Invalidate(key(i)); err != nil {
			t.Fatal(err)
		}
		data, tier := f.get(t, key(i))
		if want := fmt.Sprintf("v2-%d", i); string(data) != want || tier != TierL3 {
			t.Fatalf("key %d after Invalidate: %q from %v, want %q from l3", i, data, tier, want)
		}
	}
	if err := f.t.Delete(ctx, key(0)); err != nil {
		t.Fatal(err)
	}
	if _, tier, err := f.t.Get(ctx, key(0)); !errors.Is(err, ErrNotFound) || tier != TierNone {
		t.Fatalf("after Delete: tier %v, err %v", tier, err)
	}
}

// Every Get returns exactly the last completed Put's bytes, under eviction and
// demotion pressure, never an older version and never zeros.
func TestTieredNeverStaleAfterPut(t *testing.T) {
	f := newTiered(t, 32<<10, 256<<10, "", nil)
	ctx := context.Background()
	const keys = 40
	last := make([]uint32, keys)
	for i := range keys {
		if err := f.t.Put(ctx, key(i), versioned(i, 0, 2048)); err != nil {
			t.Fatal(err)
		}
	}
	for round := uint32(1); round <= 30; round++ {
		for i := range keys {
			v := versioned(i, round, 2048)
			if err := f.t.Put(ctx, key(i), v); err != nil {
				t.Fatal(err)
			}
			last[i] = round
			// Read a few keys right away, without Wait or Flush.
			for _, j := range []int{i, (i + 7) % keys, (i + 13) % keys} {
				data, tier := f.get(t, key(j))
				if r := checkVersioned(t, data, j); r != last[j] {
					t.Fatalf("round %d key %d: got version %d from %v, last Put was %d", round, j, r, tier, last[j])
				}
			}
		}
	}
	if counter(t, f, "couchestor_cache_demotions_total", "l2") == 0 {
		t.Fatal("test ran without demotions; it must exercise them")
	}
}

// versioned is n incompressible bytes naming key i and version r, with no zero byte.
func versioned(i int, r uint32, n int) []byte {
	b := randomBytes(uint64(i)<<32|uint64(r), n)
	for j := range b {
		b[j] |= 1
	}
	binary.LittleEndian.PutUint32(b[0:], uint32(i))
	binary.LittleEndian.PutUint32(b[4:], r)
	binary.LittleEndian.PutUint32(b[n-4:], r)
	return b
}

func checkVersioned(t *testing.T, b []byte, i int) uint32 {
	t.Helper()
	if len(b) < 12 || bytes.IndexByte(b[8:len(b)-4], 0) >= 0 {
		t.Fatalf("key %d: %d bytes, zero-filled", i, len(b))
	}
	if got := binary.LittleEndian.Uint32(b); got != uint32(i) {
		t.Fatalf("key %d served key %d's bytes", i, got)
	}
	r := binary.LittleEndian.Uint32(b[4:])
	if binary.LittleEndian.Uint32(b[len(b)-4:]) != r {
		t.Fatalf("key %d: torn value", i)
	}
	return r
}

// Concurrent writers and readers: a reader never sees a version older than
// the one completed before its Get started.
func TestTieredConcurrentReadersSeeNoOldVersion(t *testing.T) {
	f := newTiered(t, 48<<10, 512<<10, "", nil)
	ctx := context.Background()
	const keys = 32
	var done atomic.Bool
	var completed [keys]atomic.Uint32
	for i := range keys {
		if err := f.t.Put(ctx, key(i), versioned(i, 0, 1024)); err != nil {
			t.Fatal(err)
		}
	}
	var writers, readers sync.WaitGroup
	errs := make(chan string, 4)
	for w := range 2 {
		writers.Go(func() {
			for r := uint32(1); r <= 150; r++ {
				for i := w; i < keys; i += 2 {
					if err := f.t.Put(ctx, key(i), versioned(i, r, 1024)); err != nil {
						errs <- err.Error()
						return
					}
					completed[i].Store(r)
				}
			}
		})
	}
	for range 2 {
		readers.Go(func() {
			for n := 0; !done.Load() && n < 1_000_000; n++ {
				i := n % keys
				floor := completed[i].Load()
				e, tier, err := f.t.Get(ctx, key(i))
				if err != nil {
					errs <- err.Error()
					return
				}
				if got := binary.LittleEndian.Uint32(e.Data[4:]); got < floor || binary.LittleEndian.Uint32(e.Data) != uint32(i) {
					errs <- fmt.Sprintf("key %d: version %d from %v, %d was complete before the Get", i, got, tier, floor)
					return
				}
			}
		})
	}
	writers.Wait()
	done.Store(true)
	readers.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
}

type failingStore struct {
	*MemoryStore
	fail atomic.Bool
}

func (s *failingStore) Put(ctx context.Context, k CacheKey, d []byte) error {
	if s.fail.Load() {
		return errors.New("ec store unavailable")
	}
	return s.MemoryStore.Put(ctx, k, d)
}

func TestTieredPutFailureLeavesNoCachedCopy(t *testing.T) {
	fs := &failingStore{MemoryStore: NewMemoryStore()}
	f := newTiered(t, 1<<20, 1<<20, "", fs)
	ctx := context.Background()
	k := key(1)
	if err := f.t.Put(ctx, k, []byte("v1")); err != nil {
		t.Fatal(err)
	}
	fs.fail.Store(true)
	err := f.t.Put(ctx, k, []byte("v2"))
	if err == nil || !strings.Contains(err.Error(), "ec store unavailable") {
		t.Fatalf("Put with failing L3 = %v", err)
	}
	// Neither v2 (not in L3) nor a cached v1 that skips L3: the read goes to L3.
	data, tier := f.get(t, k)
	if string(data) != "v1" || tier != TierL3 {
		t.Fatalf("after failed Put: %q from %v, want v1 from l3", data, tier)
	}
}

func TestTieredMetricsRegistered(t *testing.T) {
	f := newTiered(t, 1<<20, 1<<20, "", nil)
	ctx := context.Background()
	_ = f.t.Put(ctx, key(1), []byte("x"))
	f.t.Flush()
	f.get(t, key(1))
	if _, _, err := f.t.Get(ctx, key(2)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing key: %v", err)
	}
	for _, name := range []string{"couchestor_cache_hits_total", "couchestor_cache_misses_total", "couchestor_cache_get_duration_seconds", "couchestor_cache_bytes"} {
		if n, err := testutil.GatherAndCount(f.reg, name); err != nil || n == 0 {
			t.Fatalf("%s: %d series, %v", name, n, err)
		}
	}
	if got := counter(t, f, "couchestor_cache_hits_total", "l1"); got != 1 {
		t.Fatalf("l1 hits = %v", got)
	}
	if got := counter(t, f, "couchestor_cache_misses_total", "l3"); got != 1 {
		t.Fatalf("l3 misses = %v", got)
	}
	if got := counter(t, f, "couchestor_cache_bytes", "l1"); got <= 0 {
		t.Fatalf("l1 bytes = %v", got)
	}
	// A second cache on the same registry is refused, not silently unmeasured.
	if _, err := NewTiered(TieredConfig{Memory: MemoryConfig{CapacityBytes: 1 << 20}, Disk: DiskConfig{Dir: t.TempDir(), CapacityBytes: 1 << 20}, Store: NewMemoryStore(), Registerer: f.reg}); err == nil {
		t.Fatal("duplicate registration accepted")
	}
}
