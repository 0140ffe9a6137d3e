package shardserver

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkPutIndex: shard PUT throughput into a Store (Store.Write, what
// the PUT handler calls after reading the body) with the stripe index and
// without it, side by side in one run: 16 concurrent writers, shards of
// 4 KiB and 256 KiB, every write fsynced before it returns (the store's and
// the index's group commits shared among the writers). It reports PUTs/s,
// MB/s of payload and, with the index, the index file's bytes per shard.
//
//	go test -run '^$' -bench PutIndex -benchtime 4000x ./pkg/shardserver/
func BenchmarkPutIndex(b *testing.B) {
	const writers = 16
	for _, size := range []int{4 << 10, 256 << 10} {
		for _, mode := range []struct {
			name string
			opt  StoreOptions
		}{{"index", StoreOptions{}}, {"noindex", StoreOptions{WithoutIndex: true}}} {
			b.Run(fmt.Sprintf("%dKiB/%s", size>>10, mode.name), func(b *testing.B) {
				s, err := OpenStoreWith(b.TempDir(), 1<<40, mode.opt)
				if err != nil {
					b.Fatal(err)
				}
				defer s.Close()
				payloads := make([][]byte, writers)
				for w := range payloads {
					payloads[w] = randBytes(size, uint64(w))
				}
				var next atomic.Int64
				var failed atomic.Pointer[error]
				b.SetBytes(int64(size))
				b.ResetTimer()
				start := time.Now()
				var wg sync.WaitGroup
				for w := 0; w < writers; w++ {
					wg.Add(1)
					go func(w int) {
						defer wg.Done()
						for {
							i := next.Add(1) - 1
							if i >= int64(b.N) {
								return
							}
							h := uidHeader(i, int(i%6), 1, payloads[w])
							if _, err := s.Write(h, payloads[w]); err != nil {
								failed.CompareAndSwap(nil, &err)
								return
							}
						}
					}(w)
				}
				wg.Wait()
				el := time.Since(start)
				b.StopTimer()
				if p := failed.Load(); p != nil {
					b.Fatal(*p)
				}
				b.ReportMetric(float64(b.N)/el.Seconds(), "PUTs/s")
				if mode.opt.WithoutIndex {
					return
				}
				n, err := s.IndexSizeBytes()
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(n)/float64(b.N), "index-B/shard")
			})
		}
	}
}
