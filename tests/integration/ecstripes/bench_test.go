package ecstripes

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/erasure"
	"github.com/billyronks/couchestor/pkg/stripe"
	"github.com/billyronks/couchestor/tests/testenv"
)

// cpuSeconds is user+system CPU time of this process and its children so
// far (children only after they are waited for), so the benchmark reads the
// shard servers' CPU from /proc instead.
func cpuSeconds(pids []int) float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	total := float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)/1e6
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		var utime, stime float64
		// Fields 14 and 15 (1-based) after the ")"-terminated comm field.
		i := len(b) - 1
		for ; i >= 0 && b[i] != ')'; i-- {
		}
		var skip string
		var n1, n2, n3, n4, n5, n6, n7, n8, n9, n10, n11 int64
		fmt.Sscan(string(b[i+2:]), &skip, &n1, &n2, &n3, &n4, &n5, &n6, &n7, &n8, &n9, &n10, &n11, &utime, &stime)
		total += (utime + stime) / 100 // USER_HZ
	}
	return total
}

// BenchmarkStripePath writes then reads 64 MiB through 8 shard-server
// processes (RS 4+2, 1 MiB stripes), next to a plain copy of the same bytes
// into 8 local files with fsync (the upper bound).
func BenchmarkStripePath(b *testing.B) {
	testenv.RequireAssets(b)
	c := newClusterTB(b, 8)
	const size = 64 << 20
	c.policy("bench", storagev1.AlgorithmReedSolomon, 4, 2, 1<<20)
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i * 7)
	}
	var pids []int
	for _, s := range c.servers {
		pids = append(pids, s.cmd.Process.Pid)
	}
	ctx := context.Background()
	b.Run("write", func(b *testing.B) {
		b.SetBytes(size)
		cpu0 := cpuSeconds(pids)
		for i := 0; i < b.N; i++ {
			v := c.volume(fmt.Sprintf("bw-%d-%d", b.N, i), "bench", size)
			if err := c.store.WriteAt(ctx, v, data, 0); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric((cpuSeconds(pids)-cpu0)/(float64(b.N)*size/1e9), "cpu-s/GB")
	})
	v := c.volume("br", "bench", size)
	if err := c.store.WriteAt(ctx, v, data, 0); err != nil {
		b.Fatal(err)
	}
	b.Run("read", func(b *testing.B) {
		b.SetBytes(size)
		buf := make([]byte, size)
		cpu0 := cpuSeconds(pids)
		for i := 0; i < b.N; i++ {
			if _, err := c.store.ReadAt(ctx, v, buf, 0); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric((cpuSeconds(pids)-cpu0)/(float64(b.N)*size/1e9), "cpu-s/GB")
	})
	// The same on the PlacementGroups layout (16 groups over the 8 pools):
	// no ECStripe request on the path.
	c.placementGroups("bench", 16, 6, roundRobin(8))
	b.Run("write-placement-groups", func(b *testing.B) {
		b.SetBytes(size)
		cpu0 := cpuSeconds(pids)
		for i := 0; i < b.N; i++ {
			v := c.placedVolume(fmt.Sprintf("bwpg-%d-%d", b.N, i), "bench", size)
			if err := c.store.WriteAt(ctx, v, data, 0); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric((cpuSeconds(pids)-cpu0)/(float64(b.N)*size/1e9), "cpu-s/GB")
	})
	vpg := c.placedVolume("brpg", "bench", size)
	if err := c.store.WriteAt(ctx, vpg, data, 0); err != nil {
		b.Fatal(err)
	}
	b.Run("read-placement-groups", func(b *testing.B) {
		b.SetBytes(size)
		buf := make([]byte, size)
		cpu0 := cpuSeconds(pids)
		for i := 0; i < b.N; i++ {
			if _, err := c.store.ReadAt(ctx, vpg, buf, 0); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric((cpuSeconds(pids)-cpu0)/(float64(b.N)*size/1e9), "cpu-s/GB")
	})
	// As an export reads: its resolutions remembered (Known), warmed by one
	// read, so the members are not asked before each stripe.
	known := *c.store
	known.Known = &stripe.Known{}
	if _, err := known.ReadAt(ctx, vpg, make([]byte, size), 0); err != nil {
		b.Fatal(err)
	}
	b.Run("read-placement-groups-remembered", func(b *testing.B) {
		b.SetBytes(size)
		buf := make([]byte, size)
		cpu0 := cpuSeconds(pids)
		for i := 0; i < b.N; i++ {
			if _, err := known.ReadAt(ctx, vpg, buf, 0); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric((cpuSeconds(pids)-cpu0)/(float64(b.N)*size/1e9), "cpu-s/GB")
	})
	b.Run("plain-copy-8-files-fsync", func(b *testing.B) {
		b.SetBytes(size)
		dir := b.TempDir()
		cpu0 := cpuSeconds(nil)
		for i := 0; i < b.N; i++ {
			var wg sync.WaitGroup
			for f := 0; f < 8; f++ {
				wg.Add(1)
				go func(f int) {
					defer wg.Done()
					fh, err := os.Create(filepath.Join(dir, fmt.Sprintf("f%d", f)))
					if err != nil {
						b.Error(err)
						return
					}
					part := data[f*size/8 : (f+1)*size/8]
					for off := 0; off < len(part); off += 1 << 20 {
						fh.Write(part[off : off+1<<20])
					}
					fh.Sync()
					fh.Close()
				}(f)
			}
			wg.Wait()
		}
		b.ReportMetric((cpuSeconds(nil)-cpu0)/(float64(b.N)*size/1e9), "cpu-s/GB")
	})
}

// BenchmarkECStripeCreate measures sustained ECStripe creates against the
// envtest API server (4+2: six shard locations with checksums), 8 clients in
// parallel, and reports the bytes one ECStripe takes in etcd as stored.
func BenchmarkECStripeCreate(b *testing.B) {
	env := testenv.Start(b)
	ctx := context.Background()
	spec := func(id int64) storagev1.ECStripeSpec {
		s := storagev1.ECStripeSpec{VolumeRef: "bench-volume", StripeID: id, PolicyRef: "rs-4-2", LbaRange: storagev1.LbaRange{StartLba: id * 2048, EndLba: (id + 1) * 2048}, Generation: 1}
		var sums []string
		for i := 0; i < 6; i++ {
			sum := erasure.ShardChecksum([]byte(fmt.Sprint(id, i)))
			sums = append(sums, sum)
			s.ShardLocations = append(s.ShardLocations, storagev1.ShardLocation{ShardIndex: int32(i), IsDataShard: i < 4, PoolName: fmt.Sprintf("cold-pool-node-%02d", i), NodeName: fmt.Sprintf("storage-node-%02d", i), Offset: id * 266240, SizeBytes: 262144, Checksum: sum})
		}
		s.Checksum, _ = erasure.StripeChecksum(1<<20, sums)
		return s
	}
	var next atomic.Int64
	b.ResetTimer()
	start := time.Now()
	b.SetParallelism(4) // 4*GOMAXPROCS client goroutines
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := next.Add(1)
			es := &storagev1.ECStripe{ObjectMeta: metav1.ObjectMeta{Name: stripe.StripeName("bench-volume", id), Labels: map[string]string{stripe.LabelVolume: "bench-volume"}}, Spec: spec(id)}
			if err := env.Client.Create(ctx, es); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(next.Load())/time.Since(start).Seconds(), "creates/s")
	b.StopTimer()

	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{env.ControlPlane.Etcd.URL.String()}, DialTimeout: 5 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	defer cli.Close()
	resp, err := cli.Get(ctx, "/registry/storage.billyronks.io/ecstripes/", clientv3.WithPrefix(), clientv3.WithLimit(50))
	if err != nil {
		b.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		b.Fatal("no ECStripe keys found in etcd")
	}
	var total int
	for _, kv := range resp.Kvs {
		total += len(kv.Key) + len(kv.Value)
	}
	b.ReportMetric(float64(total)/float64(len(resp.Kvs)), "etcd-bytes/ECStripe")
}
