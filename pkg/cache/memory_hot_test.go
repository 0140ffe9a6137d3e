package cache

import (
	"sync"
	"testing"
	"unsafe"
)

// TestMemoryAccessCountApproximateUnderConcurrency: hits from several
// goroutines are sampled into the item's statistics (1 in 16, counted 16
// times, with atomics): the count Stat reads stays within the bound the
// package doc states (a standard deviation of sqrt(15n) after n hits; 20 %
// here is more than 6 of them), and no hit is dropped wholesale.
func TestMemoryAccessCountApproximateUnderConcurrency(t *testing.T) {
	c := newTestMemory(t, 1<<20, newFakeClock(), Compression{})
	k := CacheKey{Bucket: "vol", Key: "hot"}
	if ok, err := c.Set(k, []byte("v")); err != nil || !ok {
		t.Fatalf("Set = %v, %v", ok, err)
	}
	c.Wait()
	const goroutines, gets = 4, 4000
	var wg sync.WaitGroup
	for range goroutines {
		wg.Go(func() {
			for range gets {
				if _, ok := c.Get(k); !ok {
					t.Error("miss")
					return
				}
			}
		})
	}
	wg.Wait()
	md, ok := c.Stat(k)
	if !ok {
		t.Fatal("Stat: miss")
	}
	const n = goroutines * gets
	if lo, hi := uint64(n*8/10), uint64(n*12/10); md.AccessCount < lo || md.AccessCount > hi {
		t.Fatalf("AccessCount = %d after %d hits, want within [%d, %d]", md.AccessCount, n, lo, hi)
	}
}

// TestMemoryRefusesValuesLargerThanL1Holds: originalSize is 32 bits in an
// item, so a larger value is refused rather than recorded wrongly.
func TestMemoryRefusesValuesLargerThanL1Holds(t *testing.T) {
	c := newTestMemory(t, 1<<20, newFakeClock(), Compression{})
	k := CacheKey{Bucket: "vol", Key: "huge"}
	// The payload need not be that large: only the recorded size is checked.
	s := &stored{payload: []byte("x"), originalSize: maxL1ValueSize + 1}
	if it := newMemItem(k, s); it != nil {
		t.Fatalf("newMemItem accepted originalSize %d", s.originalSize)
	}
	if c.setItem(nil) {
		t.Fatal("setItem(nil) = true")
	}
	s.originalSize = maxL1ValueSize
	it := newMemItem(k, s)
	if it == nil || it.originalSize != maxL1ValueSize {
		t.Fatalf("newMemItem at the limit = %+v", it)
	}
}

// TestMemItemLayout pins what makes an L1 hit one shared read of one cache
// line: the fields a hit reads lie in the first 64 bytes, the fields that
// sampled hits and eviction write lie past them, and the item is exactly
// 128 bytes (the allocator's 128-byte size class is 128-aligned).
func TestMemItemLayout(t *testing.T) {
	var it memItem
	if s := unsafe.Sizeof(it); s != 128 {
		t.Fatalf("sizeof(memItem) = %d, want 128", s)
	}
	for name, end := range map[string]uintptr{
		"check":        unsafe.Offsetof(it.check) + unsafe.Sizeof(it.check),
		"payload":      unsafe.Offsetof(it.payload) + unsafe.Sizeof(it.payload),
		"createdAt":    unsafe.Offsetof(it.createdAt) + unsafe.Sizeof(it.createdAt),
		"originalSize": unsafe.Offsetof(it.originalSize) + unsafe.Sizeof(it.originalSize),
		"codec":        unsafe.Offsetof(it.codec) + unsafe.Sizeof(it.codec),
		"readFill":     unsafe.Offsetof(it.readFill) + unsafe.Sizeof(it.readFill),
	} {
		if end > 64 {
			t.Errorf("hot field %s ends at byte %d, past the first cache line", name, end)
		}
	}
	for name, start := range map[string]uintptr{
		"accessCount":  unsafe.Offsetof(it.accessCount),
		"lastAccessed": unsafe.Offsetof(it.lastAccessed),
	} {
		if start < 64 {
			t.Errorf("written field %s starts at byte %d, on the hits' cache line", name, start)
		}
	}
}
