package cache

import (
	"bytes"
	"fmt"
	"testing"
	"time"
)

func newTestMemory(t *testing.T, capacity int64, clock *fakeClock, comp Compression) *MemoryCache {
	t.Helper()
	c, err := NewMemoryCache(MemoryConfig{CapacityBytes: capacity, Now: clock.Now, Compression: comp})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// The hit path returns the entry's stored form exactly and no access
// statistics; Stat reads them: the creation time exactly, the last access
// and the count as sampled (package doc, "Access statistics").
func TestMemoryAccessStatisticsOnStat(t *testing.T) {
	clock := newFakeClock()
	c := newTestMemory(t, 1<<20, clock, Compression{})
	k := CacheKey{Bucket: "vol", Key: "blk-1"}
	created := clock.Now()
	if ok, err := c.Set(k, []byte("hello")); err != nil || !ok {
		t.Fatalf("Set = %v, %v", ok, err)
	}
	c.Wait()
	md, ok := c.Stat(k)
	if !ok || md.AccessCount != 0 || !md.LastAccessed.Equal(created) || !md.CreatedAt.Equal(created) {
		t.Fatalf("Stat before any hit = %+v, %v", md, ok)
	}
	total := 0
	for round := 1; round <= 3; round++ {
		clock.Advance(time.Second)
		// 3,000 hits: all unrecorded with probability (63/64)^3000 < 1e-20.
		for range 3000 {
			e, ok := c.Get(k)
			if !ok {
				t.Fatal("miss after Wait")
			}
			if md := e.Metadata; md.Size != 5 || md.OriginalSize != 5 || md.Compressed || md.CompressionAlgorithm != CodecNone ||
				!md.CreatedAt.Equal(created) || md.AccessCount != 0 || !md.LastAccessed.IsZero() {
				t.Fatalf("hit metadata = %+v", md)
			}
			total++
		}
		md, ok := c.Stat(k)
		if !ok {
			t.Fatal("Stat: miss")
		}
		if !md.LastAccessed.Equal(clock.Now()) {
			t.Fatalf("round %d: LastAccessed = %v, want %v", round, md.LastAccessed, clock.Now())
		}
		const per = 1 << accessSampleBits
		if md.AccessCount == 0 || md.AccessCount%per != 0 || md.AccessCount > uint64(per*total) {
			t.Fatalf("round %d: AccessCount = %d after %d hits: want a positive multiple of %d, at most %d", round, md.AccessCount, total, per, per*total)
		}
		if !md.CreatedAt.Equal(created) || md.Size != 5 || md.OriginalSize != 5 {
			t.Fatalf("Stat = %+v", md)
		}
	}
	if _, ok := c.Stat(CacheKey{Bucket: "vol", Key: "absent"}); ok {
		t.Fatal("Stat of an absent key: ok")
	}
}

func TestMemoryCompressedEntry(t *testing.T) {
	c := newTestMemory(t, 1<<20, newFakeClock(), Compression{Codec: CodecLZ4})
	k := CacheKey{Bucket: "b", Key: "json"}
	v := textBytes("a", 16<<10)
	if _, err := c.Set(k, v); err != nil {
		t.Fatal(err)
	}
	c.Wait()
	e, ok := c.Get(k)
	if !ok {
		t.Fatal("miss")
	}
	if !bytes.Equal(e.Data, v) {
		t.Fatal("data differs")
	}
	md := e.Metadata
	if !md.Compressed || md.CompressionAlgorithm != CodecLZ4 || md.OriginalSize != uint64(len(v)) || md.Size >= md.OriginalSize {
		t.Fatalf("metadata = %+v", md)
	}
}

// Ristretto refuses a second Set of a key whose first Set is still buffered
// and keeps the first value; MemoryCache must end with the second.
func TestMemorySecondSetWinsWhileFirstIsBuffered(t *testing.T) {
	c := newTestMemory(t, 64<<20, newFakeClock(), Compression{})
	for i := range 2000 {
		k := key(i)
		if _, err := c.Set(k, []byte("old")); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Set(k, []byte("new")); err != nil {
			t.Fatal(err)
		}
	}
	c.Wait()
	for i := range 2000 {
		if e, ok := c.Get(key(i)); ok && string(e.Data) != "new" {
			t.Fatalf("key %d holds %q after a later Set of \"new\"", i, e.Data)
		}
	}
}

func TestMemoryCapacityBound(t *testing.T) {
	const capacity = 256 << 10
	c := newTestMemory(t, capacity, newFakeClock(), Compression{})
	v := randomBytes(2, 4096)
	for i := range 1000 {
		if _, err := c.Set(key(i), v); err != nil {
			t.Fatal(err)
		}
		if i%50 == 0 {
			c.Wait()
			if used := c.UsedBytes(); used > capacity {
				t.Fatalf("used %d bytes > capacity %d", used, capacity)
			}
		}
	}
	c.Wait()
	if used := c.UsedBytes(); used > capacity || used == 0 {
		t.Fatalf("used %d bytes, capacity %d", used, capacity)
	}
	n := 0
	for i := range 1000 {
		if _, ok := c.Get(key(i)); ok {
			n++
		}
	}
	if max := capacity / (4096 + 8); n > int(max) {
		t.Fatalf("%d entries of 4 KiB held in %d bytes", n, capacity)
	}
}

func TestMemoryDelIsExact(t *testing.T) {
	c := newTestMemory(t, 1<<20, newFakeClock(), Compression{})
	a, b := CacheKey{Bucket: "x", Key: "ab"}, CacheKey{Bucket: "xa", Key: "b"}
	_, _ = c.Set(a, []byte("A"))
	_, _ = c.Set(b, []byte("B"))
	c.Wait()
	c.Del(a)
	if _, ok := c.Get(a); ok {
		t.Fatal("deleted key still served")
	}
	if e, ok := c.Get(b); !ok || string(e.Data) != "B" {
		t.Fatalf("other key = %q, %v", e.Data, ok)
	}
}

// A Set of a readable key replaces its value in place: the next Get, with
// no Wait, returns the new bytes, and after Del no Get returns either.
func TestMemoryGetAfterSetOrDelIsNeverStale(t *testing.T) {
	c := newTestMemory(t, 1<<20, newFakeClock(), Compression{})
	k := CacheKey{Bucket: "vol", Key: "blk-9"}
	if _, err := c.Set(k, []byte("old")); err != nil {
		t.Fatal(err)
	}
	c.Wait()
	if e, ok := c.Get(k); !ok || string(e.Data) != "old" {
		t.Fatalf("Get = %q, %v", e.Data, ok)
	}
	for i := range 100 {
		v := fmt.Appendf(nil, "value-%d", i)
		if ok, err := c.Set(k, v); err != nil || !ok {
			t.Fatalf("Set = %v, %v", ok, err)
		}
		if e, ok := c.Get(k); !ok || !bytes.Equal(e.Data, v) {
			t.Fatalf("Get right after Set of %q = %q, %v", v, e.Data, ok)
		}
	}
	c.Del(k)
	if e, ok := c.Get(k); ok {
		t.Fatalf("Get after Del = %q", e.Data)
	}
	c.Wait()
	if e, ok := c.Get(k); ok {
		t.Fatalf("Get after Del and Wait = %q", e.Data)
	}
}

// Keys whose 64-bit ristretto keys collide (forced here: the same low half,
// another high half) never see each other's data: ristretto compares the
// high half on every Get, Set and Del.
func TestMemoryHashCollisionNeverServesAnotherKey(t *testing.T) {
	c := newTestMemory(t, 1<<20, newFakeClock(), Compression{})
	a, b := CacheKey{Bucket: "vol", Key: "a"}, CacheKey{Bucket: "vol", Key: "b"}
	ha := a.hash()
	hb := hashKey{lo: ha.lo, hi: ha.hi ^ 2} // still odd, as every hashKey's hi
	set := func(h hashKey, k CacheKey, v string) {
		t.Helper()
		c.setAt(h, k, &stored{payload: []byte(v), originalSize: len(v), gen: 1})
		c.Wait()
	}
	get := func(h hashKey) (string, bool) {
		e, ok := c.getAt(h)
		return string(e.Data), ok
	}
	set(ha, a, "A")
	if v, ok := get(hb); ok {
		t.Fatalf("b (colliding with a) served %q", v)
	}
	if _, ok := c.statAt(hb); ok {
		t.Fatal("Stat of b (colliding with a): ok")
	}
	set(hb, b, "B") // ristretto keeps a: its slot's conflict hash is a's
	if v, ok := get(hb); ok && v != "B" {
		t.Fatalf("b served %q", v)
	}
	if v, ok := get(ha); ok && v != "A" {
		t.Fatalf("a served %q", v)
	}
	c.delAt(hb)
	c.Wait()
	if v, ok := get(ha); !ok || v != "A" {
		t.Fatalf("after Del of b, a = %q, %v: want \"A\"", v, ok)
	}
	c.delAt(ha)
	c.Wait()
	set(hb, b, "B")
	if v, ok := get(hb); !ok || v != "B" {
		t.Fatalf("b after a left = %q, %v", v, ok)
	}
	if v, ok := get(ha); ok {
		t.Fatalf("a (deleted, colliding with b) served %q", v)
	}
}

// An uncompressed L1 hit allocates nothing: the key ristretto sees stays on
// the stack (see hashKey.ristrettoKey).
func TestMemoryGetDoesNotAllocate(t *testing.T) {
	c := newTestMemory(t, 1<<20, newFakeClock(), Compression{})
	k := CacheKey{Bucket: "vol", Key: "blk-1"}
	if _, err := c.Set(k, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	c.Wait()
	if allocs := testing.AllocsPerRun(1000, func() {
		if _, ok := c.Get(k); !ok {
			t.Fatal("miss")
		}
	}); allocs != 0 {
		t.Fatalf("an L1 hit allocates %.1f times", allocs)
	}
}
