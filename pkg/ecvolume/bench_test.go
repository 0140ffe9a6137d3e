package ecvolume

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/billyronks/couchestor/pkg/journal"
)

// BenchmarkVolume measures the backend without the network: 1 MiB
// sequential writes (journal with 3 FileStores, destage included once the
// 64 MiB journal fills) and reads, and 4 KiB random reads, with 8 concurrent
// callers like an NBD client at queue depth 8.
//
//	go test -run '^$' -bench Volume -benchtime 2s ./pkg/ecvolume
func BenchmarkVolume(b *testing.B) {
	const size = 512 << 20
	ctx := context.Background()
	v := openVolume(&testing.T{}, b.TempDir(), NewMemoryStripeStore(256<<10), size, 64<<20, true)
	defer v.Close()
	buf := make([]byte, 1<<20)
	for _, tc := range []struct {
		name  string
		bs    int64
		write bool
		rnd   bool
	}{
		{"seqwrite-1MiB", 1 << 20, true, false},
		{"seqread-1MiB", 1 << 20, false, false},
		{"randread-4KiB", 4 << 10, false, true},
		{"randwrite-4KiB", 4 << 10, true, true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.SetBytes(tc.bs)
			var next int64
			var mu sync.Mutex
			b.SetParallelism(4) // 2 cores x 4 = 8 callers
			b.RunParallel(func(pb *testing.PB) {
				rng := rand.New(rand.NewPCG(rand.Uint64(), 1))
				p := make([]byte, tc.bs)
				copy(p, buf)
				for pb.Next() {
					var off int64
					if tc.rnd {
						off = rng.Int64N(size/tc.bs) * tc.bs
					} else {
						mu.Lock()
						off = next % size
						next += tc.bs
						mu.Unlock()
					}
					var err error
					if tc.write {
						err = v.WriteAt(ctx, p, off)
					} else {
						err = v.ReadAt(ctx, p, off)
					}
					if err != nil {
						panic(fmt.Sprint(tc.name, err))
					}
				}
			})
		})
	}
}

// BenchmarkVolumeColdSeqRead reads a 512 MiB volume sequentially in 1 MiB
// requests (8 callers, like fio at iodepth 8) through a cache much smaller
// than the data (32 MiB RAM + 64 MiB disk, 64 KiB blocks, as the NBD
// benchmark's export), so every pass misses: it measures the miss path —
// stripe read, cache fill, L1 eviction and demotion to L2.
//
//	go test -run '^$' -bench VolumeColdSeqRead -benchtime 2s ./pkg/ecvolume
func BenchmarkVolumeColdSeqRead(b *testing.B) {
	const size, stripe = 512 << 20, 1 << 20
	ctx := context.Background()
	dir := b.TempDir()
	stripes := NewMemoryStripeStore(stripe)
	chunk := make([]byte, stripe)
	for s := int64(0); s < size/stripe; s++ {
		for i := range chunk {
			chunk[i] = byte(s) ^ byte(i>>9)
		}
		if err := stripes.WriteStripe(ctx, s, []journal.Extent{{LBA: uint64(s * stripe / lba), Data: chunk}}); err != nil {
			b.Fatal(err)
		}
	}
	v, err := Open(ctx, Options{
		Name: "cold", SizeBytes: size, StripeSizeBytes: stripe,
		JournalStores: journalStores(&testing.T{}, dir, 3), Journal: journal.Options{SizeBytes: 64 << 20},
		DestageThresholdPercent: 50, DestageInterval: time.Hour, Stripes: stripes,
		Cache: &CacheOptions{BlockBytes: 64 << 10, MemoryBytes: 32 << 20, DiskDir: filepath.Join(dir, "l2"), DiskBytes: 64 << 20},
	})
	if err != nil {
		b.Fatal(err)
	}
	defer v.Close()
	b.SetBytes(1 << 20)
	var mu sync.Mutex
	var next int64
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		p := make([]byte, 1<<20)
		for pb.Next() {
			mu.Lock()
			off := next % size
			next += 1 << 20
			mu.Unlock()
			if err := v.ReadAt(ctx, p, off); err != nil {
				panic(err)
			}
		}
	})
}
