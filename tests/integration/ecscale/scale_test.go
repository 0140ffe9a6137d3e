// Package ecscale measures the schema's scale target for erasure coding:
// 100,000 ECStripe objects in a real API server (envtest). It reports how long
// the ErasureCodingPolicy roll-up (StripeCounter) and the webhook's overlap
// index take to be complete from a cold informer, the process's memory with
// both loaded, and the overlap check's p99 over the loaded index.
//
// It is a benchmark behind its own switch (minutes of API-server load):
//
//	COUCHESTOR_SCALE_STRIPES=100000 KUBEBUILDER_ASSETS=$(hack/envtest.sh) \
//	  go test -run '^$' -bench ECStripeScale -benchtime 1x -timeout 60m ./tests/integration/ecscale/
//
// (`make bench-scale` runs exactly that.)
package ecscale

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/controllers"
	"github.com/billyronks/couchestor/pkg/stripeindex"
	"github.com/billyronks/couchestor/tests/testenv"
)

const span = 2048 // LBAs of a 1 MiB stripe

func stripe(i int, policy string) *storagev1.ECStripe {
	locs := make([]storagev1.ShardLocation, 6)
	for j := range locs {
		locs[j] = storagev1.ShardLocation{ShardIndex: int32(j), IsDataShard: j < 4, PoolName: fmt.Sprintf("pool-%d", j),
			NodeName: fmt.Sprintf("node-%d", j), Offset: int64(i) * 262144, SizeBytes: 262144,
			Checksum: fmt.Sprintf("xxh3:%016x", uint64(i*6+j))}
	}
	return &storagev1.ECStripe{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("scale-vol-%06d", i)},
		Spec: storagev1.ECStripeSpec{VolumeRef: "scale-vol", StripeID: int64(i), PolicyRef: policy,
			LbaRange:       storagev1.LbaRange{StartLba: int64(i) * span, EndLba: int64(i+1) * span},
			ShardLocations: locs, Checksum: fmt.Sprintf("xxh3-shards:%016x", uint64(i)), Generation: 1},
	}
}

func rssBytes() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			f := strings.Fields(l)
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb * 1024
		}
	}
	return -1
}

func BenchmarkECStripeScale(b *testing.B) {
	n, _ := strconv.Atoi(os.Getenv("COUCHESTOR_SCALE_STRIPES"))
	if n <= 0 {
		b.Skip("set COUCHESTOR_SCALE_STRIPES (e.g. 100000): minutes of API-server load (make bench-scale)")
	}
	env := testenv.Start(b)
	cfg := rest.CopyConfig(env.Config)
	cfg.QPS, cfg.Burst = 5000, 10000 // measure the API server, not client-go's limiter
	c, err := client.New(cfg, client.Options{Scheme: env.Scheme})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	const policy = "scale-4-2"
	if err := c.Create(ctx, &storagev1.ErasureCodingPolicy{ObjectMeta: metav1.ObjectMeta{Name: policy},
		Spec: storagev1.ErasureCodingPolicySpec{DataShards: ptr.To[int32](4), ParityShards: ptr.To[int32](2)}}); err != nil {
		b.Fatal(err)
	}

	// Load: n stripes of one volume, 16 writers.
	start := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := c.Create(ctx, stripe(i, policy)); err != nil {
					errs <- fmt.Errorf("create stripe %d: %w", i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	load := time.Since(start)

	runtime.GC()
	rssBefore := rssBytes()
	b.ResetTimer()

	// Cold informer → roll-up complete and overlap index complete.
	start = time.Now()
	ca, err := cache.New(cfg, cache.Options{Scheme: env.Scheme, DefaultTransform: cache.TransformStripManagedFields()})
	if err != nil {
		b.Fatal(err)
	}
	inf, err := ca.GetInformer(ctx, &storagev1.ECStripe{})
	if err != nil {
		b.Fatal(err)
	}
	// One index on the informer serves the webhook's overlap check and the
	// policy roll-up, as in the operator (stripeindex.For).
	index := stripeindex.NewStripeIndex()
	if err := index.Attach(inf); err != nil {
		b.Fatal(err)
	}
	counter := controllers.NewStripeCounter(nil)
	counter.Attach(index)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { _ = ca.Start(cctx) }()
	if !ca.WaitForCacheSync(cctx) {
		b.Fatal("cache never synced")
	}
	for counter.Counts(policy).Total != int64(n) || index.Len("scale-vol") != n {
		if time.Since(start) > 10*time.Minute {
			b.Fatalf("roll-up has %d of %d stripes after 10 min", counter.Counts(policy).Total, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	rollup := time.Since(start)
	b.StopTimer()

	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	rss := rssBytes()

	// Overlap check p99 over the loaded index: new stripes past the end and
	// colliding ones in the middle.
	lat := make([]time.Duration, 0, 20000)
	for i := 0; i < 20000; i++ {
		s := int64((i*7919)%(n+100)) * span
		t0 := time.Now()
		_, _ = index.Overlapping("scale-vol", s, s+span, "probe")
		_, _ = index.StripeWithID("scale-vol", int64(i), "probe")
		lat = append(lat, time.Since(t0))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })

	b.ReportMetric(float64(n)/load.Seconds(), "creates/s")
	b.ReportMetric(rollup.Seconds(), "rollup-s")
	b.ReportMetric(float64(rss)/(1<<20), "rss-MiB")
	b.ReportMetric(float64(rss-rssBefore)/float64(n), "rss-B/stripe")
	b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "heap-MiB")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1000, "overlap-p99-µs")
	b.Logf("%d stripes: created in %s (%.0f/s); cold informer to complete roll-up + index %s; RSS %d MiB (+%d B/stripe), heap in use %d MiB; overlap check p99 %s",
		n, load.Round(time.Second), float64(n)/load.Seconds(), rollup.Round(time.Millisecond), rss>>20, (rss-rssBefore)/int64(n), ms.HeapInuse>>20, lat[len(lat)*99/100])
}
