package journal

import (
	"context"
	"fmt"
	"sync"
	"testing"
)

// BenchmarkAppend: durable appends of 4 KiB writes to 3 local file stores
// (fsync each), acknowledged on a 2-of-3 quorum, with 1 and 64 concurrent
// writers; with 64, group commit shares each write+fsync between many
// records. ops/s = 1e9 / ns/op; MB/s counts payload bytes.
func BenchmarkAppend(b *testing.B) {
	for _, writers := range []int{1, 64} {
		b.Run(fmt.Sprintf("4KiB/writers=%d", writers), func(b *testing.B) {
			j := openJournal(b, b.TempDir(), 3, 1<<40)
			defer j.Close()
			data := block(0, 1, 8)
			b.SetBytes(int64(len(data)))
			ctx := context.Background()
			var next sync.Mutex
			n := 0
			var wg sync.WaitGroup
			b.ResetTimer()
			for w := 0; w < writers; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						next.Lock()
						if n >= b.N {
							next.Unlock()
							return
						}
						n++
						next.Unlock()
						if _, err := j.Append(ctx, uint64(w*8), data); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
		})
	}
}
