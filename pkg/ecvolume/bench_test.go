package ecvolume

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
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
