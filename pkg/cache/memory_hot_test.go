package cache

import (
	"sync"
	"testing"
	"unsafe"
)

// TestMemItemLayout pins what makes an L1 hit touch one cache line: the
// fields a hit reads or writes lie in the first 64 bytes, and the item is
// exactly 128 bytes (the allocator's 128-byte size class is 128-aligned).
func TestMemItemLayout(t *testing.T) {
	var it memItem
	if s := unsafe.Sizeof(it); s != 128 {
		t.Fatalf("sizeof(memItem) = %d, want 128", s)
	}
	hot := map[string]uintptr{
		"check":        unsafe.Offsetof(it.check) + unsafe.Sizeof(it.check),
		"accessCount":  unsafe.Offsetof(it.accessCount) + unsafe.Sizeof(it.accessCount),
		"lastAccessed": unsafe.Offsetof(it.lastAccessed) + unsafe.Sizeof(it.lastAccessed),
		"createdAt":    unsafe.Offsetof(it.createdAt) + unsafe.Sizeof(it.createdAt),
		"payload":      unsafe.Offsetof(it.payload) + unsafe.Sizeof(it.payload),
		"originalSize": unsafe.Offsetof(it.originalSize) + unsafe.Sizeof(it.originalSize),
		"codec":        unsafe.Offsetof(it.codec) + unsafe.Sizeof(it.codec),
	}
	for name, end := range hot {
		if end > 64 {
			t.Errorf("hot field %s ends at byte %d, past the first cache line", name, end)
		}
	}
}

// TestMemoryAccessCountExactUnderConcurrency: the hit path's statistics are
// atomics, not a lock; no hit may be lost when goroutines hit one entry.
func TestMemoryAccessCountExactUnderConcurrency(t *testing.T) {
	c := newTestMemory(t, 1<<20, newFakeClock(), Compression{})
	k := CacheKey{Bucket: "vol", Key: "hot"}
	if ok, err := c.Set(k, []byte("v")); err != nil || !ok {
		t.Fatalf("Set = %v, %v", ok, err)
	}
	c.Wait()
	const goroutines, gets = 4, 2000
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
	e, ok := c.Get(k)
	if !ok {
		t.Fatal("miss")
	}
	if want := uint64(goroutines*gets + 1); e.Metadata.AccessCount != want {
		t.Fatalf("AccessCount = %d, want %d", e.Metadata.AccessCount, want)
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
