package shardindex

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/billyronks/couchestor/pkg/placement"
)

// BenchmarkIngest: metadata ingest of b.N healthy 4+2 stripes into the
// indexes of 6 shard servers (one file each, same disk), every server a
// member of every group, stripes spread over 256 groups by placement.GroupOf,
// written the way a writer would: batches of 1,000 stripes per server, the
// six servers in parallel. It reports stripes/s and the index bytes per
// stripe summed over the six files (index-B/stripe; target ≤ 400). The
// anchor in the same run: the same entries appended to six plain files with
// one fsync per batch (append-B/stripe, the floor for a durable record).
//
//	go test -run '^$' -bench Ingest -benchtime 1000000x ./pkg/shardindex/
func BenchmarkIngest(b *testing.B) {
	const servers, batch, groups = 6, 1000, 256
	const vol = "8d7e3f0a-2f6b-4c1e-9a57-3b1f0c2d4e5f"
	entry := func(s uint64, shard int) Record {
		return Record{
			Key:   Key{Group: placement.GroupOf(vol, s, groups), Volume: vol, Stripe: s, Shard: uint8(shard)},
			Entry: Entry{Generation: 1, Offset: s * 266240, Length: 266240, Checksum: s*0x9e3779b97f4a7c15 ^ uint64(shard), Epoch: 1},
		}
	}
	b.Run("bbolt", func(b *testing.B) {
		stripes := b.N
		dir := b.TempDir()
		xs := make([]*Index, servers)
		for i := range xs {
			x, err := Open(filepath.Join(dir, fmt.Sprintf("server-%d.db", i)), time.Second)
			if err != nil {
				b.Fatal(err)
			}
			defer x.Close()
			xs[i] = x
		}
		b.ResetTimer()
		start := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, servers)
		for i := range xs {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				recs := make([]Record, 0, batch)
				for s := 0; s < stripes; s++ {
					recs = append(recs, entry(uint64(s), i))
					if len(recs) == batch || s == stripes-1 {
						if err := xs[i].Put(recs); err != nil {
							errs <- err
							return
						}
						recs = recs[:0]
					}
				}
			}(i)
		}
		wg.Wait()
		el := time.Since(start)
		b.StopTimer()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
		var size int64
		for _, x := range xs {
			n, err := x.SizeBytes()
			if err != nil {
				b.Fatal(err)
			}
			size += n
		}
		// Spot check: the counts add up to every stripe on every server.
		var total uint64
		for g := uint32(0); g < groups; g++ {
			n, _ := xs[0].Count(g)
			total += n
		}
		if total != uint64(stripes) {
			b.Fatalf("server 0 counts %d entries for %d stripes", total, stripes)
		}
		b.ReportMetric(float64(stripes)/el.Seconds(), "stripes/s")
		b.ReportMetric(float64(size)/float64(stripes), "index-B/stripe")
	})
	b.Run("appendlog", func(b *testing.B) {
		stripes := b.N
		dir := b.TempDir()
		b.ResetTimer()
		start := time.Now()
		var wg sync.WaitGroup
		var size int64
		var mu sync.Mutex
		for i := 0; i < servers; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				f, err := os.Create(filepath.Join(dir, fmt.Sprintf("server-%d.log", i)))
				if err != nil {
					b.Error(err)
					return
				}
				defer f.Close()
				buf := make([]byte, 0, batch*96)
				var n int64
				for s := 0; s < stripes; s++ {
					r := entry(uint64(s), i)
					buf = binary.BigEndian.AppendUint32(buf, r.Group)
					buf = append(buf, r.Volume...)
					buf = binary.BigEndian.AppendUint64(buf, r.Stripe)
					buf = append(buf, r.Shard)
					buf = append(buf, encode(r.Group, r.Entry)...)
					if (s+1)%batch == 0 || s == stripes-1 {
						if _, err := f.Write(buf); err != nil {
							b.Error(err)
							return
						}
						if err := f.Sync(); err != nil {
							b.Error(err)
							return
						}
						n += int64(len(buf))
						buf = buf[:0]
					}
				}
				mu.Lock()
				size += n
				mu.Unlock()
			}(i)
		}
		wg.Wait()
		el := time.Since(start)
		b.StopTimer()
		b.ReportMetric(float64(stripes)/el.Seconds(), "stripes/s")
		b.ReportMetric(float64(size)/float64(stripes), "append-B/stripe")
	})
}
