package cluster

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/utils/ptr"

	"github.com/billyronks/couchestor/pkg/mayastorrest"
	"github.com/billyronks/couchestor/tests/mayastorsim/sim"
)

// The tiering story in the cluster: the operator pods (installed by the
// chart, REST backend, real Prometheus) against the REST double of Mayastor
// 2.x's control plane (tests/mayastorsim --api=rest, a named TEST DOUBLE)
// and a real Prometheus scraping the double's io-engine exporter. Both run
// as processes on the node, listening on the CNI bridge's address, which
// the pods reach; the chart is given their URLs at install
// (tieringHelmValues), so the operator starts while neither answers yet,
// as it must on a real cluster whose Prometheus comes up later.

// bridgeIP is the node's address on the CNI bridge (hack/cluster.sh).
const bridgeIP = "10.244.0.1"

// tieringScrape is Prometheus's scrape interval in this story; the operator
// is told the same (--prometheus-scrape-interval).
const tieringScrape = 2 * time.Second

var (
	simAddr, promAddr string // host:port on the bridge, chosen at install
)

// pickTieringAddrs chooses the double's and Prometheus's ports on the
// bridge (free now; they are bound again a few minutes later).
func pickTieringAddrs(t *testing.T) {
	t.Helper()
	pick := func() string {
		l, err := net.Listen("tcp", bridgeIP+":0")
		if err != nil {
			t.Fatalf("listen on the bridge %s: %v", bridgeIP, err)
		}
		defer l.Close()
		return l.Addr().String()
	}
	simAddr, promAddr = pick(), pick()
}

// tieringHelmValues point the operator at the double's REST API and the
// Prometheus of this story, steering new replicas by pool label (the
// double serves no pool cordon route, as Mayastor before OpenEBS 4.4).
func tieringHelmValues() []string {
	return []string{
		"--set", "mayastor.apiUrl=http://" + simAddr,
		"--set", "mayastor.placementLever=label",
		"--set", "prometheusURL=http://" + promAddr,
	}
}

// tieringOperatorArgs: Prometheus's real scrape interval, and evaluations
// every 5 s so that the story takes seconds, not minutes.
var tieringOperatorArgs = []string{
	"--prometheus-scrape-interval=" + tieringScrape.String(),
	"--evaluation-interval=5s",
}

// hostProcess is a process of this story on the node (the double,
// Prometheus), stopped at the end of the step.
type hostProcess struct {
	name string
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  strings.Builder
}

func (p *hostProcess) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.out.Len() < 1<<20 {
		p.out.Write(b)
	}
	return len(b), nil
}

func (p *hostProcess) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.out.String()
	if len(s) > 4000 {
		s = "…" + s[len(s)-4000:]
	}
	return s
}

func startHostProcess(t *testing.T, name string, bin string, args ...string) *hostProcess {
	t.Helper()
	p := &hostProcess{name: name, cmd: exec.Command(bin, args...)}
	p.cmd.Stdout, p.cmd.Stderr = p, p
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(p.stop)
	return p
}

func (p *hostProcess) stop() {
	if p.cmd.Process == nil || p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
}

// startPrometheus runs a real Prometheus on promAddr scraping the double's
// exporter, with its data under dir (kept across a restart).
func startPrometheus(t *testing.T, dir string) *hostProcess {
	t.Helper()
	bin := os.Getenv("COUCHESTOR_PROMETHEUS")
	if bin == "" {
		t.Fatal("COUCHESTOR_PROMETHEUS is not set: `make test-cluster` sets it (hack/prometheus.sh)")
	}
	cfg := fmt.Sprintf("global:\n  scrape_interval: %s\n  evaluation_interval: %s\nscrape_configs:\n  - job_name: mayastor-io-engine\n    static_configs:\n      - targets: [%q]\n",
		tieringScrape, tieringScrape, simAddr)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startHostProcess(t, "prometheus", bin, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+promAddr, "--storage.tsdb.retention.time=1h")
	eventually(t, "Prometheus ready", 2*time.Minute, func() (bool, string) {
		out, err := httpGet("http://" + promAddr + "/-/ready")
		return err == nil, fmt.Sprintf("%v %s\n%s", err, out, p.output())
	})
	return p
}

func httpGet(url string) (string, error) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), nil
}

// tieringVolume is a volume as Mayastor's CSI driver makes it (PV
// pvc-<uuid>, volumeHandle <uuid>, topology requiring the pool label key
// "tier"), with two replicas on the cold pools and 6,000 IOPS: hot.
func tieringVolume() sim.VolumeSpec {
	u := "00000000-0000-4000-8000-000000000018"
	return sim.VolumeSpec{Name: "pvc-" + u, UUID: u, SizeBytes: 1 << 30, Replicas: []string{"sim-cold-1", "sim-cold-2"},
		Published: true, IOPS: 6000, PoolInclusion: map[string]string{"tier": ""}, TargetNode: "sim-app",
		PVC: sim.PVCSpec{Namespace: "tiering-apps", Name: "busy", Labels: map[string]string{"tiering": "on"}}}
}

const tieringPolicy = `apiVersion: storage.billyronks.io/v1
kind: StoragePolicy
metadata:
  name: tiering-story
spec:
  storageClassName: mayastor
  highWatermarkIOPS: 5000
  warmWatermarkIOPS: 2000
  lowWatermarkIOPS: 500
  samplingWindow: 30s
  cooldownPeriod: 1h
  hotPoolSelector: {matchLabels: {tier: hot}}
  warmPoolSelector: {matchLabels: {tier: warm}}
  coldPoolSelector: {matchLabels: {tier: cold}}
  volumeSelector: {matchLabels: {tiering: "on"}}
`

// testTieringThroughPrometheus: a hot volume on two cold pools, measured by
// a real Prometheus, is moved by the operator pods to the two hot pools
// through the double's REST API (the double places replicas by Mayastor's
// rules; the operator only steers and verifies); the move is recorded once;
// a Prometheus restart afterwards (history gone from its head) moves
// nothing (cooldown and the coverage rules). The operator's resource use is
// sampled during the migration.
func testTieringThroughPrometheus(t *testing.T) {
	dir := t.TempDir()
	simBin := filepath.Join(dir, "mayastorsim")
	if out, err := exec.Command("go", "build", "-o", simBin, filepath.Join(root, "tests", "mayastorsim")).CombinedOutput(); err != nil {
		t.Fatalf("build the Mayastor double: %v\n%s", err, out)
	}
	pool := func(name, node, tier string) sim.PoolSpec {
		return sim.PoolSpec{Name: name, Node: node, Labels: map[string]string{"tier": tier}, CapacityBytes: 1 << 40}
	}
	vol := tieringVolume()
	sc := sim.Scenario{Pools: []sim.PoolSpec{pool("sim-cold-1", "sim-n1", "cold"), pool("sim-cold-2", "sim-n2", "cold"),
		pool("sim-hot-3", "sim-n3", "hot"), pool("sim-hot-4", "sim-n4", "hot"), pool("sim-warm-5", "sim-n5", "warm")},
		Volumes: []sim.VolumeSpec{vol}}
	raw, err := json.Marshal(sc)
	if err != nil {
		t.Fatal(err)
	}
	scenario := filepath.Join(dir, "scenario.json")
	if err := os.WriteFile(scenario, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	// The PVC's namespace: the double creates PVs and PVCs, not namespaces.
	mustKubectl(t, "", "create", "namespace", vol.PVC.Namespace)
	// A 1 GiB replica rebuilds in ≈ 20 s: long enough to sample the
	// operator during the migration.
	simProc := startHostProcess(t, "mayastorsim", simBin, "--kubeconfig", kubeconfig, "--scenario", scenario,
		"--api=rest", "--listen", simAddr, "--rebuild-bytes-per-second", fmt.Sprint(50<<20))
	t.Cleanup(func() { cleanupTiering(t, vol) })
	eventually(t, "the Mayastor double ready", 2*time.Minute, func() (bool, string) {
		return strings.Contains(simProc.output(), "mayastorsim ready"), simProc.output()
	})
	promDir := filepath.Join(dir, "prometheus")
	if err := os.Mkdir(promDir, 0o700); err != nil {
		t.Fatal(err)
	}
	prom := startPrometheus(t, promDir)
	api, err := mayastorrest.New(mayastorrest.Config{URL: "http://" + simAddr})
	if err != nil {
		t.Fatal(err)
	}
	replicas := func() ([]string, int, int, error) {
		v, err := api.GetVolume(context.Background(), vol.UUID)
		if err != nil {
			return nil, 0, 0, err
		}
		var pools []string
		synced := 0
		for id, r := range v.State.ReplicaTopology {
			pools = append(pools, ptr.Deref(r.Pool, "?"))
			if mayastorrest.ReplicaSynced(v, id) {
				synced++
			}
		}
		sort.Strings(pools)
		return pools, synced, int(v.Spec.NumReplicas), nil
	}

	logFigures(t, "idle before the migration (REST backend, Prometheus reachable)")
	start := time.Now()
	mustKubectl(t, tieringPolicy, "apply", "-f", "-")
	sampled := 0
	eventually(t, "both replicas on the hot pools, synced, and the move recorded", 6*time.Minute, func() (bool, string) {
		pools, synced, num, err := replicas()
		hist, _ := kubectl(t, "", "get", "storagepolicy", "tiering-story", "-o", "jsonpath={.status.migrationHistory}")
		migrating, _ := kubectl(t, "", "get", "pv", vol.Name, "-o", `jsonpath={.metadata.annotations.storage\.billyronks\.io/migration}`)
		if strings.TrimSpace(migrating) != "" && sampled < 3 {
			sampled++
			logFigures(t, fmt.Sprintf("during a migration (sample %d)", sampled))
		}
		ok := err == nil && strings.Join(pools, ",") == "sim-hot-3,sim-hot-4" && synced == 2 && num == 2 &&
			strings.Count(hist, `"success":true`) == 1 && strings.Contains(hist, `"toTier":"hot"`)
		return ok, fmt.Sprintf("pools %v synced %d num %d err %v\nhistory %s\nevents:\n%s", pools, synced, num, err, hist, policyEvents(t))
	})
	t.Logf("hot volume moved cold → hot by the operator pods in %s", time.Since(start).Round(time.Second))
	if sampled == 0 {
		t.Errorf("the migration ran without the test seeing it in progress: no figures during a migration")
	}
	logFigures(t, "after the migration")

	// Prometheus restarts (its head, the recent samples, is replayed from
	// the WAL or lost): the operator must neither move the volume again
	// (cooldown 1h) nor read the gap as an idle volume.
	prom.stop()
	prom = startPrometheus(t, promDir)
	seen := map[string]bool{}
	eventually(t, "five evaluations after the Prometheus restart", 3*time.Minute, func() (bool, string) {
		out, _ := kubectl(t, "", "get", "storagepolicy", "tiering-story", "-o", "jsonpath={.status.lastReconcileTime}")
		if v := strings.TrimSpace(out); v != "" {
			seen[v] = true
		}
		return len(seen) > 5, fmt.Sprintf("%d evaluations seen", len(seen))
	})
	pools, synced, num, err := replicas()
	hist := mustKubectl(t, "", "get", "storagepolicy", "tiering-story", "-o", "jsonpath={.status.migrationHistory}")
	if err != nil || strings.Join(pools, ",") != "sim-hot-3,sim-hot-4" || synced != 2 || num != 2 || strings.Count(hist, `"success":`) != 1 {
		t.Errorf("after a Prometheus restart: pools %v synced %d num %d err %v, history %s", pools, synced, num, err, hist)
	}
}

func policyEvents(t *testing.T) string {
	out, _ := kubectl(t, "", "get", "events", "-A", "--field-selector", "involvedObject.name=tiering-story", "-o",
		`jsonpath={range .items[*]}{.reason}: {.message}{"\n"}{end}`)
	var b strings.Builder
	sc := bufio.NewScanner(strings.NewReader(out))
	for i := 0; sc.Scan() && i < 20; i++ {
		b.WriteString(sc.Text() + "\n")
	}
	return b.String()
}

// cleanupTiering removes what the step created, so that later steps see the
// cluster as before it: the policy, the double's PV, PVC and DiskPools.
func cleanupTiering(t *testing.T, vol sim.VolumeSpec) {
	_, _ = kubectl(t, "", "delete", "storagepolicy", "tiering-story", "--ignore-not-found", "--wait=false")
	_, _ = kubectl(t, "", "delete", "namespace", vol.PVC.Namespace, "--ignore-not-found", "--wait=false")
	_, _ = kubectl(t, "", "delete", "pv", vol.Name, "--ignore-not-found", "--wait=false")
	for _, p := range []string{"sim-cold-1", "sim-cold-2", "sim-hot-3", "sim-hot-4", "sim-warm-5"} {
		_, _ = kubectl(t, "", "-n", "mayastor", "delete", "diskpool", p, "--ignore-not-found", "--wait=false")
	}
}
