package cache

import (
	"bytes"
	"sync"
	"testing"
	"unsafe"
)

// TestMemoryAccessCountApproximateUnderConcurrency: hits from several
// goroutines are sampled into the entry's statistics (1 in 64, counted 64
// times): the count Stat reads stays within the bound the package doc
// states (a standard deviation of sqrt(63n) after n hits: 20 % here is
// more than 6 of them), and no hit is dropped wholesale.
func TestMemoryAccessCountApproximateUnderConcurrency(t *testing.T) {
	c := newTestMemory(t, 1<<20, newFakeClock(), Compression{})
	k := CacheKey{Bucket: "vol", Key: "hot"}
	if ok, err := c.Set(k, []byte("v")); err != nil || !ok {
		t.Fatalf("Set = %v, %v", ok, err)
	}
	c.Wait()
	const goroutines, gets = 4, 16000
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

// TestMemoryRefusesValuesLargerThanL1Holds: a payload's length is 32 bits
// in l1Value, so a larger value is refused rather than recorded wrongly.
func TestMemoryRefusesValuesLargerThanL1Holds(t *testing.T) {
	c := newTestMemory(t, 1<<20, newFakeClock(), Compression{})
	k := CacheKey{Bucket: "vol", Key: "huge"}
	// The payload need not be that large: only the recorded size is checked.
	s := &stored{payload: []byte("x"), codec: CodecLZ4, originalSize: maxL1ValueSize + 1, gen: 1}
	if c.setStored(k, s) {
		t.Fatalf("setStored accepted originalSize %d", s.originalSize)
	}
	s.originalSize = maxL1ValueSize
	if !c.setStored(k, s) {
		t.Fatal("setStored refused a value at the limit")
	}
	c.Wait()
	if md, ok := c.Stat(k); !ok || md.OriginalSize != maxL1ValueSize || md.Size != 1 || md.CompressionAlgorithm != CodecLZ4 {
		t.Fatalf("Stat at the limit = %+v, %v", md, ok)
	}
}

// TestL1ValueLayout pins what makes an L1 hit read nothing but ristretto's
// own map slot: the value ristretto holds is no larger than the slice
// header bare ristretto holds for a []byte value, and it round-trips the
// fields a hit returns.
func TestL1ValueLayout(t *testing.T) {
	if got, want := unsafe.Sizeof(l1Value{}), unsafe.Sizeof([]byte(nil)); got != want {
		t.Fatalf("sizeof(l1Value) = %d, want %d (a slice header)", got, want)
	}
	payload := []byte("payload")
	for _, s := range []stored{
		{payload: payload, codec: CodecNone, originalSize: len(payload), gen: 1<<29 - 1, createdAt: -5, readFill: true},
		{payload: payload, codec: CodecZstd, originalSize: maxL1ValueSize, gen: 1 << 40, createdAt: 1 << 62},
		{payload: nil, codec: CodecNone, originalSize: 0, gen: 7},
	} {
		v := newL1Value(&s)
		p, orig := v.payload()
		if !bytes.Equal(p, s.payload) || orig != s.originalSize || v.codec() != s.codec || v.readFill() != s.readFill ||
			v.payloadLen() != len(s.payload) || v.createdAt != s.createdAt {
			t.Errorf("l1Value of %+v = payload %q, original size %d, codec %v, readFill %v, createdAt %d", s, p, orig, v.codec(), v.readFill(), v.createdAt)
		}
	}
}

// TestColdShardFillsACacheLine: a sampled hit locks one cold shard; its
// neighbours' locks must not share the cache line.
func TestColdShardFillsACacheLine(t *testing.T) {
	if s := unsafe.Sizeof(coldShard{}); s != 64 {
		t.Fatalf("sizeof(coldShard) = %d, want 64", s)
	}
}
