package nbd_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/tests/testenv"
)

// benchStripeCluster is the real stripe path for the fio comparison: the
// cluster of ecvolume_e2e_test.go (envtest, n shard servers as processes of
// the couchestor binary) plus the benchmark's own volume, export and
// API-request accounting.
type benchStripeCluster struct{ *ecCluster }

func newBenchStripeCluster(t *testing.T, n int) *benchStripeCluster {
	t.Helper()
	return &benchStripeCluster{newECCluster(t, n)}
}

// stopProcess ends cmd with SIGTERM, or SIGKILL after grace.
func stopProcess(cmd *exec.Cmd, grace time.Duration) {
	if cmd == nil || cmd.Process == nil || cmd.ProcessState != nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		_ = cmd.Process.Kill()
		<-done
	}
}

// createVolume creates a 4+2 Reed-Solomon policy with stripes of stripeBytes and a
// 3-replica journal of journalBytes, and an ECVolume of size bytes on it.
func (c *benchStripeCluster) createVolume(name string, size, journalBytes, stripeBytes int64) {
	c.t.Helper()
	ctx := context.Background()
	pol := &storagev1.ErasureCodingPolicy{ObjectMeta: metav1.ObjectMeta{Name: name + "-rs-4-2"}, Spec: storagev1.ErasureCodingPolicySpec{
		DataShards: ptr.To(int32(4)), ParityShards: ptr.To(int32(2)), StripeSizeBytes: ptr.To(stripeBytes),
		Algorithm: storagev1.ECAlgorithm("ReedSolomon"), MinHealthyShards: ptr.To(int32(4)),
		JournalConfig: &storagev1.JournalConfig{JournalSizeBytes: ptr.To(journalBytes), ReplicationFactor: ptr.To(int32(3)),
			DestageThresholdPercent: ptr.To(int32(50)), DestageInterval: "1s"}}}
	if err := c.env.Client.Create(ctx, pol); err != nil {
		c.t.Fatal(err)
	}
	if err := c.env.Client.Create(ctx, &storagev1.ECVolume{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: storagev1.ECVolumeSpec{SizeBytes: size, PolicyRef: pol.Name}}); err != nil {
		c.t.Fatal(err)
	}
}

// serve starts `couchestor ec-volume serve` for volume with a cache of
// cacheMem (L1) + cacheDisk (L2) bytes in a fresh directory, and returns its
// NBD URI and a stop function (SIGTERM; also run at cleanup).
func (c *benchStripeCluster) serve(volume, cacheDir string, cacheMem, cacheDisk int64) (string, func()) {
	c.t.Helper()
	port := testenv.FreePort(c.t)
	cmd := exec.Command(c.bin, "ec-volume", "serve", "--volume", volume, "--listen", testenv.Addr(port),
		"--cache-dir", cacheDir, // the journal replicas go to shard servers, as in production
		"--cache-memory-bytes", strconv.FormatInt(cacheMem, 10), "--cache-disk-bytes", strconv.FormatInt(cacheDisk, 10),
		"--kubeconfig", c.kubeconfig, "--shard-secret", registry.DefaultNamespace+"/"+registry.DefaultShardSecret)
	// COUCHESTOR_NBD_BENCH_SERVE_ARGS adds flags (e.g. "--destage-parallel 16").
	cmd.Args = append(cmd.Args, strings.Fields(os.Getenv("COUCHESTOR_NBD_BENCH_SERVE_ARGS"))...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	stop := func() { stopProcess(cmd, 60*time.Second) }
	c.t.Cleanup(stop)
	waitListening(c.t, testenv.Addr(port))
	return "nbd://" + testenv.Addr(port) + "/" + volume, stop
}

// stripeWrites returns how many ECStripe objects the volume has and how
// many stripe writes made them (the sum of spec.generation: 1 per create,
// +1 per copy-on-write update).
func (c *benchStripeCluster) stripeWrites(volume string) (objects int, writes int64) {
	c.t.Helper()
	m, err := c.store.ListStripes(context.Background(), volume)
	if err != nil {
		c.t.Fatalf("list ECStripes of %s: %v", volume, err)
	}
	for _, s := range m {
		writes += max(s.Spec.Generation, 1)
	}
	return len(m), writes
}

// fioJob is one fio run with the nbd engine.
type fioJob struct {
	name, rw, bs string
	depth        int
	iops         bool
	// ioBytes > 0 makes the job size-based: it writes (or reads) exactly
	// ioBytes over the region, as long as it takes (capped at the timeout),
	// instead of running for the fixed time.
	ioBytes int64
}

type fioResult struct {
	bw, iops float64 // bytes/s, IO/s
	bytes    int64   // moved
	elapsed  time.Duration
}

func runFio(t *testing.T, uri string, j fioJob, region int64, runtime time.Duration) fioResult {
	t.Helper()
	args := []string{"--name=" + j.name, "--ioengine=nbd", "--uri=" + uri, "--rw=" + j.rw, "--bs=" + j.bs,
		"--iodepth=" + strconv.Itoa(j.depth), "--size=" + strconv.FormatInt(region, 10), "--output-format=json"}
	timeout := runtime + 2*time.Minute
	if j.ioBytes > 0 {
		args = append(args, "--io_size="+strconv.FormatInt(j.ioBytes, 10), "--runtime=600")
		timeout = 12 * time.Minute
	} else {
		args = append(args, "--time_based", "--runtime="+strconv.Itoa(int(runtime.Seconds())))
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := time.Now()
	out, err := exec.CommandContext(ctx, "fio", args...).Output()
	elapsed := time.Since(start)
	if err != nil {
		t.Fatalf("fio %s on %s: %v\n%s", j.name, uri, err, out)
	}
	var res struct {
		Jobs []struct {
			Read, Write struct {
				BW      float64 `json:"bw_bytes"`
				IOPS    float64 `json:"iops"`
				IOBytes int64   `json:"io_bytes"`
			}
		} `json:"jobs"`
	}
	i := strings.Index(string(out), "{")
	if i < 0 {
		t.Fatalf("fio %s: no JSON in output:\n%s", j.name, out)
	}
	if err := json.Unmarshal(out[i:], &res); err != nil {
		t.Fatalf("fio json: %v", err)
	}
	r := res.Jobs[0].Write
	if strings.Contains(j.rw, "read") {
		r = res.Jobs[0].Read
	}
	return fioResult{bw: r.BW, iops: r.IOPS, bytes: r.IOBytes, elapsed: elapsed}
}

func (r fioResult) String(iops bool) string {
	if iops {
		return fmt.Sprintf("%.0f IOPS", r.iops)
	}
	return fmt.Sprintf("%.0f MB/s", r.bw/1e6)
}

// apiRequests returns kube-apiserver's request counters
// (apiserver_request_total) summed by "verb resource", and the summed
// request seconds by the same key, so the benchmark can say how many API
// calls a stripe write costs and how long they took.
func (c *benchStripeCluster) apiRequests() (counts, seconds map[string]float64) {
	c.t.Helper()
	rc, err := rest.RESTClientFor(restMetricsConfig(c.env.Config))
	if err != nil {
		c.t.Fatalf("metrics client: %v", err)
	}
	raw, err := rc.Get().AbsPath("/metrics").DoRaw(context.Background())
	if err != nil {
		c.t.Fatalf("GET /metrics: %v", err)
	}
	counts, seconds = map[string]float64{}, map[string]float64{}
	for _, line := range strings.Split(string(raw), "\n") {
		var m map[string]float64
		switch {
		case strings.HasPrefix(line, "apiserver_request_total{"):
			m = counts
		case strings.HasPrefix(line, "apiserver_request_duration_seconds_sum{"):
			m = seconds
		default:
			continue
		}
		labels, value, ok := strings.Cut(line[strings.Index(line, "{")+1:], "} ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil {
			continue
		}
		var verb, resource string
		for _, kv := range strings.Split(labels, ",") {
			k, val, _ := strings.Cut(kv, "=")
			val = strings.Trim(val, `"`)
			switch k {
			case "verb":
				verb = val
			case "resource":
				resource = val
			}
		}
		m[verb+" "+resource] += v
	}
	return counts, seconds
}

func restMetricsConfig(cfg *rest.Config) *rest.Config {
	c := rest.CopyConfig(cfg)
	c.GroupVersion = &schema.GroupVersion{}
	c.APIPath = "/"
	c.NegotiatedSerializer = serializer.NewCodecFactory(runtime.NewScheme()).WithoutConversion()
	return c
}

// apiDelta formats the API requests between two apiRequests snapshots, per
// stripe write: "GET ecstripes 2.0 (3.1 ms)", biggest first.
func apiDelta(before, after, secBefore, secAfter map[string]float64, stripeWrites int64) string {
	type row struct {
		key     string
		n, secs float64
	}
	var rows []row
	for k, v := range after {
		if d := v - before[k]; d > 0 && !strings.Contains(k, "lease") && !strings.HasPrefix(k, "WATCH") {
			rows = append(rows, row{k, d, secAfter[k] - secBefore[k]})
		}
	}
	sort.Slice(rows, func(a, b int) bool { return rows[a].n > rows[b].n })
	var parts []string
	for _, r := range rows {
		if len(parts) == 8 {
			break
		}
		parts = append(parts, fmt.Sprintf("%s %.1f (%.1f ms each)", r.key, r.n/float64(max(stripeWrites, 1)), 1000*r.secs/r.n))
	}
	return strings.Join(parts, ", ")
}
