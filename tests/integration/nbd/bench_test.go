package nbd_test

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/billyronks/couchestor/tests/testenv"
)

// TestFioThroughput measures the export with fio's nbd engine next to
// nbdkit's memory plugin (the transport's ceiling on this machine), same
// client, same machine. It is a measurement, not an assertion: it runs only
// with COUCHESTOR_NBD_BENCH=1 and prints a table.
//
//	COUCHESTOR_NBD_BENCH=1 KUBEBUILDER_ASSETS=$(hack/envtest.sh) go test -run FioThroughput -v -timeout 60m ./tests/integration/nbd
//
// Rows: nbdkit memory; the NBD server over RAM (protocol cost); the
// ECVolume backend over memory stripes (journal + cache cost); and, when
// KUBEBUILDER_ASSETS is set, the ECVolume served by `couchestor ec-volume
// serve` over six shard-server processes and envtest (the real stripe path:
// 4+2 Reed-Solomon, one ECStripe object per stripe).
//
// What each job measures:
//   - seq write writes a fixed number of bytes (not a fixed time), several
//     times the journal size, so destaging into stripes is inside the
//     measurement; on the stripe path it also reports ECStripe creates/s.
//   - seq read then reads data the write job wrote, cold: on the memory
//     stripe row the 512 MiB region is 5x the cache (32 MiB RAM + 64 MiB
//     disk) and journaled data is never cached, so a sequential pass misses;
//     on the stripe path the export is restarted with an empty cache
//     directory after every stripe was destaged (256 MiB region, 8+16 MiB
//     cache), so reads go to the shard servers.
//   - random 4 KiB jobs run for the fixed time over the same region.
func TestFioThroughput(t *testing.T) {
	if os.Getenv("COUCHESTOR_NBD_BENCH") != "1" {
		t.Skip("set COUCHESTOR_NBD_BENCH=1 to run the fio comparison (about 5 minutes; 10 with the stripe path)")
	}
	need(t, "fio", "nbdkit")
	runtime := 8 * time.Second
	if s := os.Getenv("COUCHESTOR_NBD_BENCH_SECONDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			t.Fatal(err)
		}
		runtime = time.Duration(n) * time.Second
	}
	const size = 1 << 30
	const region = 512 << 20
	var targets []benchTarget
	// COUCHESTOR_NBD_BENCH_ROWS=stripe runs only the stripe-path row,
	// =local only the others (for profiling one side); unset runs every row.
	rows := os.Getenv("COUCHESTOR_NBD_BENCH_ROWS")
	if rows != "stripe" {
		targets = append(targets, localTargets(t, region, size)...)
	}
	switch {
	case rows == "local":
	case os.Getenv("KUBEBUILDER_ASSETS") == "":
		t.Log("KUBEBUILDER_ASSETS is unset: skipping the stripe-path row (set it with hack/envtest.sh)")
	default:
		targets = append(targets, stripePathTarget(t))
	}

	jobs := []fioJob{
		{name: "seq write 1 MiB", rw: "write", bs: "1M", depth: 8},
		{name: "seq read 1 MiB (cold)", rw: "read", bs: "1M", depth: 8},
		{name: "rand write 4 KiB", rw: "randwrite", bs: "4k", depth: 32, iops: true},
		{name: "rand read 4 KiB", rw: "randread", bs: "4k", depth: 32, iops: true},
	}
	var table []string
	for _, tg := range targets {
		uri := tg.uri
		for i, j := range jobs {
			if i == 0 {
				j.ioBytes = tg.writeBytes
			}
			res := runFio(t, uri, j, tg.region, runtime)
			note := ""
			if i == 0 {
				note = fmt.Sprintf("%d MiB in %.1f s", res.bytes>>20, res.elapsed.Seconds())
				if tg.writeNote != nil {
					note += "; " + tg.writeNote(res)
				}
			}
			table = append(table, fmt.Sprintf("| %s | %s | %s | %s |", tg.name, j.name, res.String(j.iops), note))
			if i == 0 && tg.afterWrite != nil {
				var n string
				uri, n = tg.afterWrite(res)
				table = append(table, fmt.Sprintf("| %s | (between write and read) | | %s |", tg.name, n))
			}
		}
	}
	t.Logf("fio --ioengine=nbd, iodepth 8 (1 MiB) / 32 (4 KiB), random jobs and seq read %s each:\n| target | job | result | notes |\n|---|---|---|---|\n%s",
		runtime, strings.Join(table, "\n"))
}

// localTargets starts nbdkit's memory plugin, the NBD server over RAM and
// the ECVolume backend over memory stripes (a child process each).
func localTargets(t *testing.T, region, size int64) []benchTarget {
	var targets []benchTarget
	port := freePort(t)
	nbdkit := exec.Command("nbdkit", "-f", "-i", "127.0.0.1", "-p", strconv.Itoa(port), "memory", "1G")
	if err := nbdkit.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nbdkit.Process.Kill(); _ = nbdkit.Wait() })
	waitListening(t, fmt.Sprintf("127.0.0.1:%d", port))
	targets = append(targets, benchTarget{name: "nbdkit memory 1G", uri: fmt.Sprintf("nbd://127.0.0.1:%d", port), region: region, writeBytes: 4 * region})

	mem := startServer(t, serverOpts{backend: "memory", size: size})
	targets = append(targets, benchTarget{name: "couchestor nbd, memory backend", uri: mem.uri(), region: region, writeBytes: 4 * region})
	vol := startServer(t, serverOpts{backend: "volume", stripe: "memory", dir: t.TempDir(), size: size})
	targets = append(targets, benchTarget{name: "couchestor ecvolume (3-replica journal 64 MiB, cache 32+64 MiB, memory stripes)", uri: vol.uri(), region: region, writeBytes: 4 * region})
	return targets
}

// benchTarget is one export under test.
type benchTarget struct {
	name       string
	uri        string
	region     int64 // bytes the jobs address
	writeBytes int64 // bytes the seq write job writes
	// afterWrite runs between the write and the read jobs and may return a
	// new URI (a restarted export); its note goes into the table.
	afterWrite func(wrote fioResult) (uri, note string)
	writeNote  func(wrote fioResult) string
}

// stripePathTarget sets up the real stripe path: a 256 MiB ECVolume (4+2,
// 1 MiB stripes, 64 MiB 3-replica journal) served with an 8+16 MiB cache.
// The write job writes the whole volume once (4x the journal); afterwards
// the benchmark waits until the destager has written every stripe, then
// restarts the export on an empty cache directory for the cold reads.
func stripePathTarget(t *testing.T) (tg benchTarget) {
	const volSize, journalBytes = 256 << 20, 64 << 20
	// COUCHESTOR_NBD_BENCH_STRIPE_BYTES sets the policy's stripeSizeBytes
	// (default 1 MiB, the schema's default). The caches scale with it (8 and
	// 16 stripes), so the 256 MiB read stays larger than them.
	stripeBytes := int64(1 << 20)
	if s := os.Getenv("COUCHESTOR_NBD_BENCH_STRIPE_BYTES"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatalf("COUCHESTOR_NBD_BENCH_STRIPE_BYTES=%q: %v", s, err)
		}
		stripeBytes = n
	}
	cacheMem, cacheDisk := 8*stripeBytes, 16*stripeBytes
	c := newBenchStripeCluster(t, 6)
	c.createVolume("ecv-bench", volSize, journalBytes, stripeBytes)
	uri, stop := c.serve("ecv-bench", filepath.Join(c.dir, "cache-warm"), cacheMem, cacheDisk)
	tg.name = fmt.Sprintf("couchestor ec-volume serve (4+2 RS, %d KiB stripes, 6 shard-server processes, envtest; 3-replica journal 64 MiB on shard servers, cache %d+%d MiB)", stripeBytes>>10, cacheMem>>20, cacheDisk>>20)
	tg.uri, tg.region, tg.writeBytes = uri, volSize, volSize
	var writeStart time.Time
	var n0, s0 map[string]float64
	var objs0 int
	var writes0 int64
	tg.writeNote = func(wrote fioResult) string {
		objs, writes := c.stripeWrites("ecv-bench")
		n1, s1 := c.apiRequests()
		writeStart = time.Now().Add(-wrote.elapsed)
		return fmt.Sprintf("during the job: %d ECStripes created (%.0f creates/s), %d stripe writes (%.0f/s); API requests per stripe write (all clients): %s",
			objs-objs0, float64(objs-objs0)/wrote.elapsed.Seconds(), writes-writes0, float64(writes-writes0)/wrote.elapsed.Seconds(),
			apiDelta(n0, n1, s0, s1, writes-writes0))
	}
	objs0, writes0 = c.stripeWrites("ecv-bench")
	n0, s0 = c.apiRequests()
	tg.afterWrite = func(wrote fioResult) (string, string) {
		// Destaging continues after the last write was acknowledged: wait
		// until every stripe exists and no stripe write happened for 3 s.
		want := int(volSize / stripeBytes)
		deadline := time.Now().Add(10 * time.Minute)
		var objs int
		var writes, last int64
		stableSince := time.Now()
		for {
			objs, writes = c.stripeWrites("ecv-bench")
			if writes != last {
				last, stableSince = writes, time.Now()
			}
			if objs >= want && time.Since(stableSince) > 3*time.Second {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("destager wrote %d of %d ECStripes in 10 minutes", objs, want)
			}
			time.Sleep(250 * time.Millisecond)
		}
		drained := time.Since(writeStart) - 3*time.Second
		stop()
		uri, _ := c.serve("ecv-bench", filepath.Join(c.dir, "cache-cold"), cacheMem, cacheDisk)
		return uri, fmt.Sprintf("all %d ECStripes (%d stripe writes) durable %.1f s after the write job began: %.0f creates/s, %.0f stripe writes/s end to end; export restarted on an empty cache",
			objs-objs0, writes-writes0, drained.Seconds(), float64(objs-objs0)/drained.Seconds(), float64(writes-writes0)/drained.Seconds())
	}
	return tg
}

func freePort(t *testing.T) int { return testenv.FreePort(t) }

func waitListening(t *testing.T, addr string) {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s did not listen within 30s", addr)
}
