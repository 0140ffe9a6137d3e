package cache

import (
	"bytes"
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
		// 600 hits: all unrecorded with probability (15/16)^600 < 1e-16.
		for range 600 {
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
