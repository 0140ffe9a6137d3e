// Package ecscale measures the schema's scale target for erasure coding on
// the operator itself: the couchestor binary (`couchestor`, the manager with
// its controllers and webhooks, as deployed) runs as a process against a real
// API server (envtest) holding N ECStripes of one ECVolume, created through
// the API beforehand (create, then the status a writer records: Healthy),
// with six shard servers (the same binary) registered for the six pools the
// shards name, so every pool is up and a settled operator writes nothing.
//
// For each count it starts a fresh operator (a cold start, as after a
// restart or a failover), waits until /readyz answers (its caches synced),
// the ErasureCodingPolicy roll-up counts every stripe Healthy and the
// ECStripe controller has reconciled every stripe with an empty work queue
// (its own metrics), then reads VmRSS and VmHWM from /proc/<pid>/status and
// stops it. A run with no stripe comes first: the idle operator. Reported:
// create rate (ECStripe create + status, 16 clients, no webhook), time from
// exec to settled, VmRSS (and its RssAnon part), VmHWM, Go heap in use and
// the GC's next goal (go_memstats_next_gc_bytes: twice the heap live after
// the last collection at GOGC=100, so less dependent on when the collector
// last ran than RSS), and bytes of RSS per stripe over the idle operator and
// between the last two counts.
//
// It is a benchmark behind its own switch (minutes of API-server load):
//
//	COUCHESTOR_SCALE_STRIPES=50000,100000 COUCHESTOR_BIN=$PWD/bin/couchestor KUBEBUILDER_ASSETS=$(hack/envtest.sh) \
//	  go test -run '^$' -bench ECStripeScale -benchtime 1x -timeout 120m -v ./tests/integration/ecscale/
//
// (`make bench-scale` builds the binary and runs exactly that;
// COUCHESTOR_SCALE_STRIPES lists the counts, ascending.) Loading the API
// server is most of the time: about 60 stripes/s on a loaded 2 vCPU machine.
package ecscale

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mayastorv1beta2 "github.com/billyronks/couchestor/apis/mayastor/v1beta2"
	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/pkg/shardserver"
	"github.com/billyronks/couchestor/pkg/stripe"
	"github.com/billyronks/couchestor/tests/testenv"
)

const (
	span       = 2048 // LBAs of a 1 MiB stripe
	volume     = "scale-vol"
	policy     = "scale-4-2"
	mayastorNS = "mayastor"
	shardToken = "ecscale-token"
	pools      = 6 // k+m: one shard per pool and node
)

func stripeObject(i int) *storagev1.ECStripe {
	locs := make([]storagev1.ShardLocation, pools)
	for j := range locs {
		locs[j] = storagev1.ShardLocation{ShardIndex: int32(j), IsDataShard: j < 4, PoolName: fmt.Sprintf("pool-%d", j),
			NodeName: fmt.Sprintf("node-%d", j), Offset: int64(i) * 262144, SizeBytes: 262144,
			Checksum: fmt.Sprintf("xxh3:%016x", uint64(i*6+j))}
	}
	return &storagev1.ECStripe{
		ObjectMeta: metav1.ObjectMeta{Name: stripe.StripeName(volume, int64(i)),
			Labels: map[string]string{stripe.LabelVolume: stripe.VolumeLabelValue(volume)}},
		Spec: storagev1.ECStripeSpec{VolumeRef: volume, StripeID: int64(i), PolicyRef: policy,
			LbaRange:       storagev1.LbaRange{StartLba: int64(i) * span, EndLba: int64(i+1) * span},
			ShardLocations: locs, Checksum: fmt.Sprintf("xxh3-shards:%016x", uint64(i)), Generation: 1},
	}
}

// healthy is the status a writer records once every shard is durable
// (pkg/stripe's stripeStatus).
func healthy(now time.Time) storagev1.ECStripeStatus {
	t := metav1.NewTime(now)
	st := storagev1.ECStripeStatus{State: storagev1.StripeHealthy, HealthyShards: pools, HealthyDataShards: 4,
		HealthyParityShards: 2, LastModifiedTime: &t}
	for j := 0; j < pools; j++ {
		st.ShardHealth = append(st.ShardHealth, storagev1.ShardHealth{ShardIndex: int32(j), State: storagev1.ShardHealthy, LastVerified: &t})
	}
	return st
}

// procStatus reads VmRSS, VmHWM and RssAnon (bytes) of a process.
func procStatus(pid int) (rss, hwm, anon int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			rss = kb * 1024
		case "VmHWM:":
			hwm = kb * 1024
		case "RssAnon:":
			anon = kb * 1024
		}
	}
	if rss == 0 || hwm == 0 || anon == 0 {
		return 0, 0, 0, fmt.Errorf("no VmRSS/VmHWM/RssAnon in /proc/%d/status", pid)
	}
	return rss, hwm, anon, nil
}

func get(url string) (string, error) {
	c := &http.Client{Timeout: 30 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != 200 {
		err = fmt.Errorf("%s: HTTP %d", url, resp.StatusCode)
	}
	return string(b), err
}

// metric sums the samples of name whose labels contain every want (k="v").
func metric(exposition, name string, want ...string) float64 {
	sum := 0.0
	for _, l := range strings.Split(exposition, "\n") {
		if !strings.HasPrefix(l, name) {
			continue
		}
		rest := l[len(name):]
		if rest == "" || (rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		ok := true
		for _, w := range want {
			ok = ok && strings.Contains(rest, w)
		}
		f := strings.Fields(rest[strings.LastIndex(rest, "}")+1:])
		if !ok || len(f) == 0 {
			continue
		}
		if v, err := strconv.ParseFloat(f[0], 64); err == nil {
			sum += v
		}
	}
	return sum
}

func waitFor(b *testing.B, timeout time.Duration, what string, cond func() error) {
	b.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// counts parses COUCHESTOR_SCALE_STRIPES: stripe counts, ascending.
func counts(b *testing.B) []int {
	v := os.Getenv("COUCHESTOR_SCALE_STRIPES")
	if v == "" {
		b.Skip("set COUCHESTOR_SCALE_STRIPES (e.g. 50000,100000): minutes of API-server load (make bench-scale)")
	}
	var out []int
	for _, f := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 || (len(out) > 0 && n <= out[len(out)-1]) {
			b.Fatalf("COUCHESTOR_SCALE_STRIPES=%q: %q is not a positive count above the previous one", v, f)
		}
		out = append(out, n)
	}
	return out
}

type bench struct {
	b        *testing.B
	env      *testenv.Env
	c        client.Client
	bin, dir string
	kc       string
	created  int
}

type sample struct {
	stripes        int
	createRate     float64 // stripes per second (create + status), 0 when none were created
	ready, settled time.Duration
	rss, hwm, anon int64
	heapIn, gcGoal int64 // Go heap in use; the GC's next goal (2× the heap live after the last GC at GOGC=100)
}

func (s sample) line(idle sample) string {
	line := fmt.Sprintf("%7d stripes: operator ready %5.1fs, settled %6.1fs after exec; VmRSS %4d MiB (RssAnon %4d MiB), VmHWM %4d MiB, Go heap in use %4d MiB, GC goal %4d MiB",
		s.stripes, s.ready.Seconds(), s.settled.Seconds(), s.rss>>20, s.anon>>20, s.hwm>>20, s.heapIn>>20, s.gcGoal>>20)
	if s.stripes > 0 {
		line += fmt.Sprintf("; RSS over idle %.0f B/stripe; created at %.0f stripes/s", float64(s.rss-idle.rss)/float64(s.stripes), s.createRate)
	}
	return line
}

func BenchmarkECStripeScale(b *testing.B) {
	ns := counts(b)
	env := testenv.Start(b)
	cfg := rest.CopyConfig(env.Config)
	cfg.QPS, cfg.Burst = 5000, 10000 // measure the API server, not client-go's limiter
	c, err := client.New(cfg, client.Options{Scheme: env.Scheme})
	if err != nil {
		b.Fatal(err)
	}
	x := &bench{b: b, env: env, c: c, bin: testenv.OperatorBinary(b), dir: b.TempDir()}
	x.kc = env.WriteKubeconfig(b, x.dir)
	x.shardServers()
	ctx := context.Background()
	if err := c.Create(ctx, &storagev1.ErasureCodingPolicy{ObjectMeta: metav1.ObjectMeta{Name: policy},
		Spec: storagev1.ErasureCodingPolicySpec{DataShards: ptr.To[int32](4), ParityShards: ptr.To[int32](2),
			ScrubbingEnabled: ptr.To(false)}}); err != nil {
		b.Fatal(err)
	}
	if err := c.Create(ctx, &storagev1.ECVolume{ObjectMeta: metav1.ObjectMeta{Name: volume},
		Spec: storagev1.ECVolumeSpec{SizeBytes: int64(ns[len(ns)-1]) << 20, PolicyRef: policy}}); err != nil {
		b.Fatal(err)
	}

	samples := []sample{x.operator(0, 0)}
	b.Log(samples[0].line(samples[0]))
	b.ResetTimer()
	for _, n := range ns {
		rate := x.createUpTo(n)
		samples = append(samples, x.operator(n, rate))
		b.Log(samples[len(samples)-1].line(samples[0]))
	}
	b.StopTimer()

	idle, last := samples[0], samples[len(samples)-1]
	for _, s := range samples {
		b.Log(s.line(idle))
	}
	b.ReportMetric(float64(last.stripes), "stripes")
	b.ReportMetric(float64(last.rss)/(1<<20), "operator-RSS-MiB")
	b.ReportMetric(float64(last.hwm)/(1<<20), "operator-HWM-MiB")
	b.ReportMetric(last.settled.Seconds(), "settled-s")
	b.ReportMetric(float64(last.rss-idle.rss)/float64(last.stripes), "RSS-B/stripe-over-idle")
	if len(samples) > 2 {
		prev := samples[len(samples)-2]
		slope := float64(last.rss-prev.rss) / float64(last.stripes-prev.stripes)
		b.ReportMetric(slope, "RSS-B/stripe-slope")
		b.Logf("slope between %d and %d stripes: %.0f B of VmRSS per stripe (VmHWM: %.0f B)", prev.stripes, last.stripes, slope,
			float64(last.hwm-prev.hwm)/float64(last.stripes-prev.stripes))
	}
}

// shardServers starts one shard server per pool (the operator binary) with
// its DiskPool Online, and the Secret the operator's shard client reads.
func (x *bench) shardServers() {
	b, c, ctx := x.b, x.env.Client, context.Background()
	certs, err := shardserver.NewCertificates([]string{"127.0.0.1"}, 24*time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	for name, v := range map[string][]byte{"tls.crt": certs.CertPEM, "tls.key": certs.KeyPEM, "token": []byte(shardToken)} {
		if err := os.WriteFile(filepath.Join(x.dir, name), v, 0o600); err != nil {
			b.Fatal(err)
		}
	}
	for _, ns := range []string{registry.DefaultNamespace, mayastorNS} {
		if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			b.Fatal(err)
		}
	}
	if err := c.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: registry.DefaultNamespace, Name: registry.DefaultShardSecret},
		Data: map[string][]byte{registry.SecretKeyCA: certs.CAPEM, registry.SecretKeyToken: []byte(shardToken)}}); err != nil {
		b.Fatal(err)
	}
	for i := 0; i < pools; i++ {
		pool, node := fmt.Sprintf("pool-%d", i), fmt.Sprintf("node-%d", i)
		dp := &mayastorv1beta2.DiskPool{ObjectMeta: metav1.ObjectMeta{Namespace: mayastorNS, Name: pool},
			Spec: mayastorv1beta2.DiskPoolSpec{Node: node, Disks: []string{"/dev/sdb"}}}
		if err := c.Create(ctx, dp); err != nil {
			b.Fatal(err)
		}
		dp.Status = mayastorv1beta2.DiskPoolStatus{CRState: mayastorv1beta2.CRStateCreated, PoolStatus: mayastorv1beta2.PoolOnline,
			Capacity: 1 << 40, Available: 1 << 40}
		if err := c.Status().Update(ctx, dp); err != nil {
			b.Fatal(err)
		}
		cmd := exec.Command(x.bin, "shard-server", "--data-dir", filepath.Join(x.dir, pool), "--pool", pool, "--node", node,
			"--listen", testenv.Addr(testenv.FreePort(b)), "--capacity-bytes", strconv.Itoa(1<<30),
			"--tls-cert-file", filepath.Join(x.dir, "tls.crt"), "--tls-key-file", filepath.Join(x.dir, "tls.key"),
			"--token-file", filepath.Join(x.dir, "token"), "--kubeconfig", x.kc)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { stop(cmd) })
	}
	waitFor(b, 2*time.Minute, "shard servers registered", func() error {
		list, err := (&registry.Lookup{Client: c}).Servers(ctx)
		if err == nil && len(list) != pools {
			err = fmt.Errorf("%d of %d registered", len(list), pools)
		}
		return err
	})
}

func stop(cmd *exec.Cmd) {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// createUpTo creates stripes x.created..n-1 with 16 clients, each stripe
// created and then given a writer's Healthy status, and returns stripes/s.
func (x *bench) createUpTo(n int) float64 {
	b, ctx := x.b, context.Background()
	// The stopped operator's webhook configurations point at nothing now:
	// the load goes around admission, the next operator installs them again.
	if err := x.c.DeleteAllOf(ctx, &admissionregistrationv1.MutatingWebhookConfiguration{}); err != nil {
		b.Fatal(err)
	}
	if err := x.c.DeleteAllOf(ctx, &admissionregistrationv1.ValidatingWebhookConfiguration{}); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	put := func(i int) error {
		s := stripeObject(i)
		if err := x.c.Create(ctx, s); err != nil {
			return fmt.Errorf("create stripe %d: %w", i, err)
		}
		s.Status = healthy(time.Now())
		if err := x.c.Status().Update(ctx, s); err != nil {
			return fmt.Errorf("status of stripe %d: %w", i, err)
		}
		return nil
	}
	// The API server drops the deleted configurations from its own informer
	// a moment later: the first stripe waits for that.
	waitFor(b, time.Minute, "admission webhooks gone", func() error { return put(x.created) })
	var next atomic.Int64
	next.Store(int64(x.created + 1))
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
				if err := put(i); err != nil {
					errs <- err
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
	rate := float64(n-x.created) / time.Since(start).Seconds()
	b.Logf("created stripes %d..%d in %s (%.0f stripes/s, create + status)", x.created, n-1, time.Since(start).Round(time.Second), rate)
	x.created = n
	return rate
}

// operator runs a fresh operator until it settled over n stripes, samples
// its memory and stops it.
func (x *bench) operator(n int, rate float64) sample {
	b := x.b
	metrics, probe := testenv.Addr(testenv.FreePort(b)), testenv.Addr(testenv.FreePort(b))
	port := fmt.Sprint(testenv.FreePort(b))
	logf, err := os.Create(filepath.Join(x.dir, fmt.Sprintf("operator-%d.log", n)))
	if err != nil {
		b.Fatal(err)
	}
	defer logf.Close()
	args := []string{"--kubeconfig", x.kc, "--metrics-bind-address", metrics, "--health-probe-bind-address", probe,
		"--leader-election-namespace", "default", "--webhook-namespace", "default", "--mayastor-namespace", mayastorNS,
		"--webhook-cert-mode", "self-signed", "--webhook-port", port, "--webhook-local-url", "https://localhost:" + port,
		"--webhook-cert-dir", filepath.Join(x.dir, "certs"), "--zap-encoder", "console", "--zap-log-level", "error"}
	// COUCHESTOR_SCALE_PPROF=DIR: a heap profile of the settled operator
	// per count (DIR/heap-N.pb.gz; go tool pprof -sample_index=inuse_space).
	pprofDir := os.Getenv("COUCHESTOR_SCALE_PPROF")
	pprofAddr := testenv.Addr(testenv.FreePort(b))
	if pprofDir != "" {
		args = append(args, "--pprof-bind-address", pprofAddr)
	}
	op := exec.Command(x.bin, args...)
	op.Stdout, op.Stderr = logf, logf
	op.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	if err := op.Start(); err != nil {
		b.Fatal(err)
	}
	defer stop(op)
	if err := testenv.WaitHTTP200("http://"+probe+"/readyz", 10*time.Minute); err != nil {
		b.Fatalf("operator over %d stripes never ready (log %s): %v", n, logf.Name(), err)
	}
	ready := time.Since(start)
	var exposition string
	waitFor(b, 20*time.Minute, fmt.Sprintf("operator settled over %d stripes", n), func() error {
		var p storagev1.ErasureCodingPolicy
		if err := x.env.Client.Get(context.Background(), client.ObjectKey{Name: policy}, &p); err != nil {
			return err
		}
		if p.Status.TotalStripes != int64(n) || p.Status.HealthyStripes != int64(n) {
			return fmt.Errorf("policy roll-up: %d stripes, %d healthy", p.Status.TotalStripes, p.Status.HealthyStripes)
		}
		body, err := get("http://" + metrics + "/metrics")
		if err != nil {
			return err
		}
		if r := metric(body, "controller_runtime_reconcile_total", `controller="erasurecodingpolicy"`); r < 1 {
			return fmt.Errorf("the policy not reconciled by this operator yet")
		}
		if r := metric(body, "controller_runtime_reconcile_total", `controller="ecstripe"`); r < float64(n) {
			return fmt.Errorf("%.0f of %d stripes reconciled", r, n)
		}
		for _, q := range []string{"ecstripe", "ecvolume", "erasurecodingpolicy"} {
			if d := metric(body, "workqueue_depth", `name="`+q+`"`); d != 0 {
				return fmt.Errorf("work queue %s holds %.0f", q, d)
			}
		}
		exposition = body
		return nil
	})
	settled := time.Since(start)
	if pprofDir != "" {
		body, err := get("http://" + pprofAddr + "/debug/pprof/heap")
		if err != nil {
			b.Fatalf("heap profile: %v", err)
		}
		f := filepath.Join(pprofDir, fmt.Sprintf("heap-%d.pb.gz", n))
		if err := os.WriteFile(f, []byte(body), 0o644); err != nil {
			b.Fatal(err)
		}
		b.Logf("heap profile of the operator over %d stripes: %s", n, f)
	}
	rss, hwm, anon, err := procStatus(op.Process.Pid)
	if err != nil {
		b.Fatal(err)
	}
	if w := metric(exposition, "couchestor_ecstripe_transitions_total"); w != 0 {
		b.Logf("note: %v stripe state transitions over %d Healthy stripes", w, n)
	}
	return sample{stripes: n, createRate: rate, ready: ready, settled: settled, rss: rss, hwm: hwm, anon: anon,
		heapIn: int64(metric(exposition, "go_memstats_heap_inuse_bytes")), gcGoal: int64(metric(exposition, "go_memstats_next_gc_bytes"))}
}
