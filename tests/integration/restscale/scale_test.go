// Package restscale measures one StoragePolicy evaluation over many volumes
// through the REST backend: the operator binary as a process, the REST double
// of Mayastor 2.x's control plane (tests/mayastorsim --api=rest) as a process
// with COUCHESTOR_REST_SCALE_VOLUMES volumes, a real Prometheus scraping its
// exporter, and an API server without the MayastorVolume kind (`make
// bench-rest`).
package restscale

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
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/tests/mayastorsim/sim"
	"github.com/billyronks/couchestor/tests/testenv"
)

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
		v, err := strconv.ParseFloat(f[0], 64)
		if err == nil {
			sum += v
		}
	}
	return sum
}

// vmRSS reads VmRSS and VmHWM (the peak) of a process, in bytes.
func vmRSS(pid int) (rss, hwm int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
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
		}
	}
	if rss == 0 || hwm == 0 {
		return 0, 0, fmt.Errorf("no VmRSS/VmHWM in /proc/%d/status", pid)
	}
	return rss, hwm, nil
}

func restRequests(simAddr string) (int64, error) {
	body, err := get("http://" + simAddr + "/control/rest/requests")
	if err != nil {
		return 0, err
	}
	var n int64
	_, err = fmt.Sscanf(strings.TrimSpace(body), `{"requests":%d}`, &n)
	return n, err
}

func waitFor(b *testing.B, timeout time.Duration, what string, cond func() (bool, error)) {
	b.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for {
		ok, err := cond()
		if ok {
			return
		}
		if err != nil {
			last = err
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s: not within %s (last error %v)", what, timeout, last)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// BenchmarkRESTEvaluation: every volume has two replicas on cold pools and
// runs at 10 IOPS, so every decision is Stay (no move, no lever): what is
// measured is the evaluation itself. Reported: REST requests per evaluation
// (the double's request counter over the operator's evaluation counter),
// the mean evaluation time (couchestor_policy_evaluation_duration_seconds),
// and the operator process's VmRSS and VmHWM (/proc/<pid>/status) after its
// caches synced and five evaluations over every volume.
func BenchmarkRESTEvaluation(b *testing.B) {
	n, _ := strconv.Atoi(os.Getenv("COUCHESTOR_REST_SCALE_VOLUMES"))
	if n <= 0 {
		b.Skip("set COUCHESTOR_REST_SCALE_VOLUMES (e.g. 10000): minutes of setup (make bench-rest)")
	}
	promBin := os.Getenv("COUCHESTOR_PROMETHEUS")
	if promBin == "" {
		b.Skip("COUCHESTOR_PROMETHEUS is not set (hack/prometheus.sh)")
	}
	setup := time.Now()
	env := testenv.Start(b, testenv.MayastorV2("v1beta2"))
	dir := b.TempDir()
	kc := env.WriteKubeconfig(b, dir)
	if err := env.Client.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "apps"}}); err != nil {
		b.Fatal(err)
	}
	sc := &sim.Scenario{}
	nodes := 6
	for i := 0; i < nodes; i++ {
		for _, tier := range []string{"hot", "cold"} {
			sc.Pools = append(sc.Pools, sim.PoolSpec{Name: fmt.Sprintf("%s-n%d", tier, i), Node: fmt.Sprintf("n%d", i),
				Labels: map[string]string{"tier": tier}, CapacityBytes: 1 << 50})
		}
	}
	for i := 0; i < n; i++ {
		u := fmt.Sprintf("00000000-0000-4000-8000-%012d", i+1)
		sc.Volumes = append(sc.Volumes, sim.VolumeSpec{Name: "pvc-" + u, UUID: u, SizeBytes: 1 << 30, Published: true, IOPS: 10,
			Replicas:      []string{fmt.Sprintf("cold-n%d", i%nodes), fmt.Sprintf("cold-n%d", (i+1)%nodes)},
			PoolInclusion: map[string]string{"tier": ""}, TargetNode: "app",
			PVC: sim.PVCSpec{Namespace: "apps", Name: fmt.Sprintf("claim-%d", i), Labels: map[string]string{"bench": "rest"}}})
	}
	sp := sim.StartWithArgs(b, kc, testenv.Addr(testenv.FreePort(b)), sc, "--api=rest")
	b.Logf("%d volumes created by the double in %s", n, time.Since(setup).Round(time.Second))

	promAddr := testenv.Addr(testenv.FreePort(b))
	cfg := fmt.Sprintf("global: {scrape_interval: 5s, evaluation_interval: 5s}\nscrape_configs:\n- job_name: io-engine\n  static_configs: [{targets: [%q]}]\n", sp.Addr)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o600); err != nil {
		b.Fatal(err)
	}
	prom := exec.Command(promBin, "--config.file="+filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path="+filepath.Join(dir, "tsdb"), "--web.listen-address="+promAddr)
	prom.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := prom.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = prom.Process.Kill(); _ = prom.Wait() })
	if err := testenv.WaitHTTP200("http://"+promAddr+"/-/ready", time.Minute); err != nil {
		b.Fatal(err)
	}

	metrics, probe := testenv.Addr(testenv.FreePort(b)), testenv.Addr(testenv.FreePort(b))
	port := fmt.Sprint(testenv.FreePort(b))
	logf, err := os.Create(filepath.Join(dir, "operator.log"))
	if err != nil {
		b.Fatal(err)
	}
	op := exec.Command(testenv.OperatorBinary(b), "--kubeconfig", kc, "--metrics-bind-address", metrics, "--health-probe-bind-address", probe,
		"--leader-election-namespace", "default", "--webhook-namespace", "default", "--mayastor-namespace", "mayastor",
		"--webhook-cert-mode", "self-signed", "--webhook-port", port, "--webhook-local-url", "https://localhost:"+port,
		"--webhook-cert-dir", filepath.Join(dir, "certs"), "--prometheus-url", "http://"+promAddr, "--prometheus-scrape-interval", "5s",
		"--evaluation-interval", "10s", "--zap-encoder", "console", "--mayastor-api-url", sp.REST)
	op.Stdout, op.Stderr = logf, logf
	op.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := op.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = op.Process.Kill(); _ = op.Wait(); logf.Close() })
	if err := testenv.WaitHTTP200("http://"+probe+"/readyz", 3*time.Minute); err != nil {
		b.Fatalf("operator never ready: %v", err)
	}
	pol := &storagev1.StoragePolicy{ObjectMeta: metav1.ObjectMeta{Name: "bench"}, Spec: storagev1.StoragePolicySpec{
		HighWatermarkIOPS: ptr.To[int64](500), WarmWatermarkIOPS: ptr.To[int64](200), LowWatermarkIOPS: ptr.To[int64](50),
		SamplingWindow: "30s", CooldownPeriod: "1h",
		HotPoolSelector:  &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "hot"}},
		ColdPoolSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "cold"}},
		VolumeSelector:   &metav1.LabelSelector{MatchLabels: map[string]string{"bench": "rest"}},
	}}
	// Admission goes through the operator's webhook: retry until it serves.
	waitFor(b, 2*time.Minute, "policy created", func() (bool, error) {
		err := env.Client.Create(context.Background(), pol.DeepCopy())
		return err == nil, err
	})
	m := "http://" + metrics + "/metrics"
	evals := func() (count, sum float64, err error) {
		body, err := get(m)
		if err != nil {
			return 0, 0, err
		}
		return metric(body, "couchestor_policy_evaluation_duration_seconds_count", `policy="bench"`),
			metric(body, "couchestor_policy_evaluation_duration_seconds_sum", `policy="bench"`), nil
	}
	// Past the first evaluations (cold caches, the sampling window filling).
	waitFor(b, 5*time.Minute, "volumes measured (MetricsAvailable=True)", func() (bool, error) {
		var p storagev1.StoragePolicy
		if err := env.Client.Get(context.Background(), client.ObjectKey{Name: "bench"}, &p); err != nil {
			return false, err
		}
		for _, c := range p.Status.Conditions {
			if c.Type == "MetricsAvailable" && c.Status == metav1.ConditionTrue && p.Status.WatchedVolumes == int32(n) {
				return true, nil
			}
		}
		return false, fmt.Errorf("watched %d, conditions %+v", p.Status.WatchedVolumes, p.Status.Conditions)
	})
	c0, s0, err := evals()
	if err != nil {
		b.Fatal(err)
	}
	r0, err := restRequests(sp.Addr)
	if err != nil {
		b.Fatal(err)
	}
	const rounds = 5
	b.ResetTimer()
	var c1, s1 float64
	waitFor(b, 10*time.Minute, fmt.Sprintf("%d more evaluations", rounds), func() (bool, error) {
		c1, s1, err = evals()
		return c1 >= c0+rounds, err
	})
	b.StopTimer()
	r1, err := restRequests(sp.Addr)
	if err != nil {
		b.Fatal(err)
	}
	rss, hwm, err := vmRSS(op.Process.Pid)
	if err != nil {
		b.Fatal(err)
	}
	body, _ := get(m)
	if moves := metric(body, "couchestor_migrations_total"); moves != 0 {
		b.Fatalf("%v migrations: the benchmark must measure evaluations only", moves)
	}
	e := c1 - c0
	perEval := float64(r1-r0) / e
	mean := time.Duration((s1 - s0) / e * float64(time.Second))
	b.ReportMetric(perEval, "rest-requests/eval")
	b.ReportMetric(mean.Seconds()*1000, "ms/eval")
	b.ReportMetric(float64(rss)/(1<<20), "operator-RSS-MiB")
	b.ReportMetric(float64(hwm)/(1<<20), "operator-HWM-MiB")
	b.Logf("%d volumes, %.0f evaluations: %.1f REST requests per evaluation, mean evaluation %s, operator VmRSS %d MiB (VmHWM %d MiB)",
		n, e, perEval, mean.Round(time.Millisecond), rss>>20, hwm>>20)
}
