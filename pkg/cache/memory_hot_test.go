package cache

import (
	"sync"
	"testing"
	"time"
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

// TestSampleLatencyRate: about 1 in 64 keys is timed at any clock value,
// and every key is timed about 1 in 64 clock values (no key is never timed).
func TestSampleLatencyRate(t *testing.T) {
	const n = 1 << 16
	within := func(got int) bool { return got > n/64*8/10 && got < n/64*12/10 }
	ks, _ := benchKeySet()
	byKey := 0
	for i := range n {
		lo, _ := ks[i%len(ks)].hash128()
		lo ^= uint64(i / len(ks)) // distinct hashes past the key set
		if sampleLatency(lo, 1_700_000_000_000_000_000) {
			byKey++
		}
	}
	if !within(byKey) {
		t.Errorf("%d of %d keys timed at one clock value, want about %d", byKey, n, n/64)
	}
	lo, _ := ks[0].hash128()
	byTime := 0
	for i := range n {
		if sampleLatency(lo, 1_700_000_000_000_000_000+int64(i)*int64(time.Millisecond)) {
			byTime++
		}
	}
	if !within(byTime) {
		t.Errorf("one key timed at %d of %d clock values, want about %d", byTime, n, n/64)
	}
}
