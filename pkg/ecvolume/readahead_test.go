package ecvolume

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/billyronks/couchestor/pkg/cache"
	"github.com/billyronks/couchestor/pkg/journal"
)

// TestReadAheadPrefetchesSequentialReadsOnly: a sequential run of reads has
// the next blocks fetched from the stripes in the background, so reading on
// costs no further stripe read; scattered reads prefetch nothing; and what
// the prefetch cached is exactly the stripes' bytes.
func TestReadAheadPrefetchesSequentialReadsOnly(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	const size, stripe, block = 8 << 20, 256 << 10, 16 << 10
	stripes := NewMemoryStripeStore(stripe)
	img := make([]byte, size)
	for i := range img {
		img[i] = byte(i/block) ^ byte(i)
	}
	for s := int64(0); s < size/stripe; s++ {
		if err := stripes.WriteStripe(ctx, s, []journal.Extent{{LBA: uint64(s * stripe / lba), Data: img[s*stripe : (s+1)*stripe]}}); err != nil {
			t.Fatal(err)
		}
	}
	v, err := Open(ctx, Options{
		Name: "ra", SizeBytes: size, StripeSizeBytes: stripe,
		JournalStores: journalStores(t, dir, 3), Journal: journal.Options{SizeBytes: 1 << 20},
		DestageThresholdPercent: 50, DestageInterval: time.Hour, Stripes: stripes,
		// 1 MiB of RAM: the read-ahead window is a quarter of it, 16 blocks.
		Cache: &CacheOptions{BlockBytes: block, MemoryBytes: 1 << 20, DiskDir: filepath.Join(dir, "l2"), DiskBytes: 4 << 20},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if v.ahead.window != 16 {
		t.Fatalf("read-ahead window %d blocks, want 16", v.ahead.window)
	}
	settle := func() { v.ahead.wg.Wait(); v.cache.Flush() }
	p := make([]byte, block)
	read := func(b int64) {
		t.Helper()
		if err := v.ReadAt(ctx, p, b*block); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(p, img[b*block:(b+1)*block]) {
			t.Fatalf("block %d differs from the stripes", b)
		}
	}
	// Scattered reads: one stripe read each, nothing prefetched.
	for _, b := range []int64{100, 7, 300, 42} {
		read(b)
	}
	settle()
	if got := stripes.Reads(); got != 4 {
		t.Fatalf("4 scattered reads made %d stripe reads, want 4", got)
	}
	// A sequential run: blocks 200, 201 start it; 202..217 get prefetched.
	read(200)
	read(201)
	settle()
	if got := stripes.Reads(); got != 4+2+16 {
		t.Fatalf("after a sequential run of 2 blocks: %d stripe reads in all, want 22 (4 scattered, 2 demanded, 16 prefetched)", got)
	}
	// The next blocks come from the cache, not the stripes.
	for b := int64(202); b <= 217; b++ {
		if _, tier, err := v.cache.Get(ctx, v.key(b)); err != nil || tier == cache.TierL3 {
			t.Fatalf("block %d was not prefetched: served by %v (%v)", b, tier, err)
		}
	}
	for b := int64(202); b <= 217; b++ {
		read(b)
	}
}
