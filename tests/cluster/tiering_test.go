package cluster

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/internal/scheme"
	"github.com/billyronks/couchestor/pkg/mayastorrest"
	"github.com/billyronks/couchestor/pkg/migration"
	"github.com/billyronks/couchestor/tests/mayastorsim/sim"
	"github.com/billyronks/couchestor/tests/testenv"
)

// The tiering story through the real cluster: the operator runs as the
// chart's two pods (leader election); the Mayastor double (tests/mayastorsim
// --api=rest: Mayastor 2.x's REST API /v0, its DiskPools, the PVs and PVCs
// its CSI driver would have made, the io-engine's counters) and a real
// Prometheus scraping it run as host processes on the node's bridge address,
// which the operator pods reach directly (no packet leaves the machine). The
// chart's values point the operator at both (testHelmInstall: prometheusURL,
// mayastor.apiUrl, and short evaluation and scrape intervals in extraArgs).

// nodeIP is the node's (and the CNI bridge's) address (hack/cluster.sh).
const nodeIP = "10.244.0.1"

var (
	// tierSimAddr and tierPromAddr are chosen before the install, which
	// points the operator at them; nothing listens there until the tiering
	// step starts the double and Prometheus (the operator starts regardless).
	tierSimAddr, tierPromAddr string
)

// Timings of the story's policy and of the operator (extraArgs).
const (
	tierWindow   = "10s"
	tierCooldown = 60 * time.Second
)

// tierEvalArgs are the operator flags of the tiering step: policies
// evaluated every 5 s against a Prometheus scraping every second.
var tierEvalArgs = []string{"--evaluation-interval=5s", "--prometheus-scrape-interval=1s", "--metrics-cache-ttl=2s"}

// pickTieringAddrs chooses free ports on the bridge address for the double
// and Prometheus.
func pickTieringAddrs(t *testing.T) {
	t.Helper()
	free := func() string {
		for range 50 {
			addr := net.JoinHostPort(nodeIP, strconv.Itoa(testenv.FreePort(t)))
			if l, err := net.Listen("tcp", addr); err == nil {
				_ = l.Close()
				return addr
			}
		}
		t.Fatalf("no free port on %s", nodeIP)
		return ""
	}
	tierSimAddr, tierPromAddr = free(), free()
}

// tieringHelmValues point the chart's operator at the double and Prometheus.
func tieringHelmValues() []string {
	return []string{"--set", "prometheusURL=http://" + tierPromAddr, "--set", "mayastor.apiUrl=http://" + tierSimAddr}
}

// prometheusBin is COUCHESTOR_PROMETHEUS (make test-cluster sets it), else
// what hack/prometheus.sh provides.
func prometheusBin(t *testing.T) string {
	t.Helper()
	if b := os.Getenv("COUCHESTOR_PROMETHEUS"); b != "" {
		return b
	}
	out, err := runTool(t, filepath.Join(root, "hack", "prometheus.sh"), "")
	if err != nil {
		t.Fatalf("hack/prometheus.sh: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	return lines[len(lines)-1]
}

func clusterClient(t *testing.T) client.Client {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme.New()})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// The story's volumes, as Mayastor's CSI driver makes them (PV pvc-<uuid>,
// pool topology requiring the label key "tier"), published on a node with no
// pool: "heat" on the cold pools at 900 IOPS (hot above 500), "steady"
// already on the hot pools at 900 IOPS.
const (
	heatUUID   = "00000000-0000-4000-8000-0000000c1001"
	steadyUUID = "00000000-0000-4000-8000-0000000c1002"
	tierNS     = "tiering"
	tierPolicy = "cluster-tiering"
)

func tieringScenario() *sim.Scenario {
	const gib = int64(1) << 30
	sc := &sim.Scenario{Namespace: "mayastor", StorageClass: "mayastor"}
	for _, n := range []string{"sim-1", "sim-2"} {
		for _, tier := range []string{"hot", "cold"} {
			sc.Pools = append(sc.Pools, sim.PoolSpec{Name: n + "-" + tier, Node: n, Disks: []string{"/dev/" + tier},
				Labels: map[string]string{"tier": tier}, CapacityBytes: 200 * gib})
		}
	}
	vol := func(uuid, name, tier string) sim.VolumeSpec {
		return sim.VolumeSpec{Name: "pvc-" + uuid, UUID: uuid, SizeBytes: gib, PoolInclusion: map[string]string{"tier": ""},
			TargetNode: "sim-app", Replicas: []string{"sim-1-" + tier, "sim-2-" + tier}, Published: true, IOPS: 900,
			PVC: sim.PVCSpec{Namespace: tierNS, Name: name, Labels: map[string]string{"tiering": "cluster"}}}
	}
	sc.Volumes = []sim.VolumeSpec{vol(heatUUID, "heat", "cold"), vol(steadyUUID, "steady", "hot")}
	return sc
}

// tierWatch follows the story in the background: the fewest full copies
// each volume had, whether "steady" was ever being migrated, whether the
// policy's metrics were ever unavailable, and the FIGURE during the first
// migration of "heat".
type tierWatch struct {
	mu         sync.Mutex
	minHealthy map[string]int
	steadyMig  bool
	metricsOff bool
	figured    bool
	stop, done chan struct{}
}

func watchTiering(t *testing.T, c client.Client, rest *mayastorrest.Client) *tierWatch {
	w := &tierWatch{minHealthy: map[string]int{heatUUID: 1 << 30, steadyUUID: 1 << 30}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			for _, u := range []string{heatUUID, steadyUUID} {
				if v, err := rest.GetVolume(ctx, u); err == nil {
					w.mu.Lock()
					w.minHealthy[u] = min(w.minHealthy[u], testenv.HealthyReplicas(&v))
					w.mu.Unlock()
				}
			}
			for _, u := range []string{heatUUID, steadyUUID} {
				var pv corev1.PersistentVolume
				if err := c.Get(ctx, client.ObjectKey{Name: "pvc-" + u}, &pv); err != nil {
					continue
				}
				if _, ok := pv.Annotations[migration.AnnotationMigration]; ok {
					w.mu.Lock()
					if u == steadyUUID {
						w.steadyMig = true
					}
					first := u == heatUUID && !w.figured
					w.figured = w.figured || first
					w.mu.Unlock()
					if first {
						logFigures(t, "during a migration (1 GiB volume, 2 replicas cold → hot at 128 MiB/s)")
					}
				}
			}
			var p storagev1.StoragePolicy
			if err := c.Get(ctx, client.ObjectKey{Name: tierPolicy}, &p); err == nil {
				if cond := meta.FindStatusCondition(p.Status.Conditions, "MetricsAvailable"); cond != nil && cond.Status == metav1.ConditionFalse {
					w.mu.Lock()
					w.metricsOff = true
					w.mu.Unlock()
				}
			}
			cancel()
			select {
			case <-w.stop:
				return
			case <-time.After(300 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(w.finish)
	return w
}

func (w *tierWatch) finish() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

// leaderMetrics scrapes the leader pod's /metrics directly (pod IP, port
// 8443) with a token of the scraper ServiceAccount of
// testMetricsNeedAuthentication: only the leader runs the controllers.
func leaderMetrics(t *testing.T, token string) (string, error) {
	t.Helper()
	l, _ := leader(t)
	if l == "" {
		return "", fmt.Errorf("no leader")
	}
	ip, err := kubectl(t, "", "-n", ns, "get", "pod", l, "-o", "jsonpath={.status.podIP}")
	if err != nil {
		return "", fmt.Errorf("%v: %s", err, ip)
	}
	req, _ := http.NewRequest(http.MethodGet, "https://"+net.JoinHostPort(strings.TrimSpace(ip), "8443")+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("leader %s /metrics: HTTP %d", l, resp.StatusCode)
	}
	return string(b), err
}

func historyOf(p *storagev1.StoragePolicy, uuid string) []storagev1.MigrationHistoryEntry {
	var out []storagev1.MigrationHistoryEntry
	for _, h := range p.Status.MigrationHistory {
		if h.VolumeName == "pvc-"+uuid {
			out = append(out, h)
		}
	}
	return out
}

// testTieringThroughPrometheus: "heat", measured at 900 IOPS by the real
// Prometheus, is promoted to the hot pools by the leader pod — the double
// adds replicas on pools of Mayastor's choosing (the operator steers by
// withholding the topology label from the pools of other tiers), rebuilds
// them, and removes the old ones — never with fewer than two full copies; a
// successful cold → hot entry is in the policy's history. Its IOPS then drop
// to 0: the cooldown holds it (the leader's latest evaluation reports a
// Cooldown skip), and it is demoted only once the cooldown is over. Between
// the two, Prometheus is stopped and started again: MetricsAvailable turns
// False and True again, and "steady", a healthy hot volume that never moved,
// is not demoted (an unknown measurement is never a 0).
func testTieringThroughPrometheus(t *testing.T) {
	c := clusterClient(t)
	ctx := context.Background()
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(diagnose(t))
			p := &storagev1.StoragePolicy{}
			if err := c.Get(ctx, client.ObjectKey{Name: tierPolicy}, p); err == nil {
				t.Logf("policy status: %+v", p.Status)
			}
		}
	})
	start := time.Now()
	// 128 MiB/s: a 1 GiB replica rebuilds in about 8 s, long enough to
	// measure the leader during the migration.
	simP := sim.StartWithArgs(t, kubeconfig, tierSimAddr, tieringScenario(), "--api=rest", "--rebuild-bytes-per-second", "134217728")
	if simP.REST != "http://"+tierSimAddr {
		t.Fatalf("the double serves /v0 at %s, the operator was pointed at http://%s", simP.REST, tierSimAddr)
	}
	prom := testenv.StartPrometheus(t, testenv.PrometheusOptions{Bin: prometheusBin(t), Addr: tierPromAddr, Interval: time.Second, Targets: []string{simP.Addr}})
	rest, err := mayastorrest.New(mayastorrest.Config{URL: simP.REST})
	if err != nil {
		t.Fatal(err)
	}
	// Leave nothing of the story behind for the next steps (the double's
	// DiskPools, PVs and PVCs; the policy).
	t.Cleanup(func() {
		for _, args := range [][]string{
			{"delete", "storagepolicy", tierPolicy, "--ignore-not-found"},
			{"-n", tierNS, "delete", "pvc", "--all", "--wait=false"},
			{"delete", "pv", "pvc-" + heatUUID, "pvc-" + steadyUUID, "--ignore-not-found", "--wait=false"},
			{"-n", "mayastor", "delete", "diskpools.openebs.io", "--all", "--wait=false"},
		} {
			if out, err := kubectl(t, "", args...); err != nil {
				t.Logf("cleanup: kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
			}
		}
	})
	token := strings.TrimSpace(mustKubectl(t, "", "-n", ns, "create", "token", "scraper"))
	w := watchTiering(t, c, rest)

	sel := func(tier string) *metav1.LabelSelector {
		return &metav1.LabelSelector{MatchLabels: map[string]string{"tier": tier}}
	}
	pol := &storagev1.StoragePolicy{ObjectMeta: metav1.ObjectMeta{Name: tierPolicy}, Spec: storagev1.StoragePolicySpec{
		HighWatermarkIOPS: ptr.To[int64](500), WarmWatermarkIOPS: ptr.To[int64](200), LowWatermarkIOPS: ptr.To[int64](50),
		SamplingWindow: tierWindow, CooldownPeriod: tierCooldown.String(), MigrationTimeout: "3m", StorageClassName: "mayastor",
		HotPoolSelector: sel("hot"), ColdPoolSelector: sel("cold"),
		VolumeSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tiering": "cluster"}},
	}}
	if err := c.Create(ctx, pol); err != nil { // through the webhook
		t.Fatalf("create StoragePolicy: %v", err)
	}
	onTier := func(uuid, tier string) (bool, string) {
		v, err := rest.GetVolume(ctx, uuid)
		if err != nil {
			return false, err.Error()
		}
		var pv corev1.PersistentVolume
		if err := c.Get(ctx, client.ObjectKey{Name: "pvc-" + uuid}, &pv); err != nil {
			return false, err.Error()
		}
		_, busy := pv.Annotations[migration.AnnotationMigration]
		return !busy && testenv.OnTier(&v, tier, 2), fmt.Sprintf("%s (migration annotation %v)", testenv.ReplicaPools(&v), busy)
	}
	policy := func() *storagev1.StoragePolicy {
		p := &storagev1.StoragePolicy{}
		if err := c.Get(ctx, client.ObjectKey{Name: tierPolicy}, p); err != nil {
			t.Fatalf("get StoragePolicy: %v", err)
		}
		return p
	}

	// 1. Promotion.
	eventually(t, "heat promoted onto the hot pools", 4*time.Minute, func() (bool, string) { return onTier(heatUUID, "hot") })
	promoted := time.Now()
	t.Logf("policy created → heat on the hot pools in %s", promoted.Sub(start).Round(time.Second))
	var p *storagev1.StoragePolicy
	eventually(t, "the promotion in the policy's history", time.Minute, func() (bool, string) {
		p = policy()
		return len(historyOf(p, heatUUID)) == 1, fmt.Sprintf("%+v", p.Status.MigrationHistory)
	})
	if h := historyOf(p, heatUUID)[0]; !h.Success || h.DryRun || h.FromTier != "cold" || h.ToTier != "hot" || h.TriggerIOPS < 500 {
		t.Errorf("heat's history entry %+v, want a successful cold → hot move triggered above 500 IOPS", h)
	}
	var pv corev1.PersistentVolume
	if err := c.Get(ctx, client.ObjectKey{Name: "pvc-" + heatUUID}, &pv); err != nil {
		t.Fatal(err)
	}
	last, err := time.Parse(time.RFC3339, pv.Annotations[migration.AnnotationLastMigration])
	if err != nil {
		t.Fatalf("heat's PV after the promotion: %s: %v", migration.AnnotationLastMigration, err)
	}
	until := last.Add(tierCooldown)

	// 2. Cooldown: heat goes quiet; the leader measures it cold and holds it.
	if err := simP.Client.SetIOPS("pvc-"+heatUUID, 0); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the leader holds heat in its cooldown", time.Until(until), func() (bool, string) {
		m, err := leaderMetrics(t, token)
		if err != nil {
			return false, err.Error()
		}
		v, ok := testenv.MetricValue(m, "couchestor_tiering_decisions", `policy="`+tierPolicy+`"`, `action="Skip"`, `code="Cooldown"`)
		return ok && v == 1, fmt.Sprintf("couchestor_tiering_decisions{code=\"Cooldown\"} = %v (found %v)", v, ok)
	})
	if ok, s := onTier(heatUUID, "hot"); !ok {
		t.Fatalf("heat left the hot pools during its cooldown: %s", s)
	}
	t.Logf("heat held by its cooldown %s after the promotion (cooldown until %s)", time.Since(promoted).Round(time.Second), until.Format(time.RFC3339))

	// 3. Prometheus restarts: no healthy volume is demoted.
	prom.Stop()
	stopped := time.Now()
	eventually(t, "MetricsAvailable=False while Prometheus is down", time.Minute, func() (bool, string) {
		cond := meta.FindStatusCondition(policy().Status.Conditions, "MetricsAvailable")
		return cond != nil && cond.Status == metav1.ConditionFalse, fmt.Sprintf("%+v", cond)
	})
	// Several evaluations without metrics (5 s apart).
	eventually(t, "evaluations while Prometheus is down", time.Minute, func() (bool, string) {
		lr := policy().Status.LastReconcileTime
		return lr != nil && lr.Time.After(stopped.Add(15*time.Second)), fmt.Sprintf("last evaluation %v", lr)
	})
	prom.Start()
	restarted := time.Now()
	eventually(t, "MetricsAvailable=True after Prometheus's restart", 2*time.Minute, func() (bool, string) {
		cond := meta.FindStatusCondition(policy().Status.Conditions, "MetricsAvailable")
		return cond != nil && cond.Status == metav1.ConditionTrue, fmt.Sprintf("%+v", cond)
	})
	// A full sampling window and more after the restart: the window holds
	// the gap, then only fresh samples.
	eventually(t, "evaluations after Prometheus's restart", time.Minute, func() (bool, string) {
		lr := policy().Status.LastReconcileTime
		return lr != nil && lr.Time.After(restarted.Add(15*time.Second)), fmt.Sprintf("last evaluation %v", lr)
	})
	if ok, s := onTier(steadyUUID, "hot"); !ok {
		t.Errorf("steady left the hot pools around Prometheus's restart: %s", s)
	}

	// 4. The cooldown over, heat is demoted.
	eventually(t, "heat demoted onto the cold pools after its cooldown", 3*time.Minute, func() (bool, string) { return onTier(heatUUID, "cold") })
	eventually(t, "the demotion in the policy's history", time.Minute, func() (bool, string) {
		p = policy()
		return len(historyOf(p, heatUUID)) == 2, fmt.Sprintf("%+v", p.Status.MigrationHistory)
	})
	w.finish()
	if h := historyOf(p, heatUUID)[1]; !h.Success || h.FromTier != "hot" || h.ToTier != "cold" || h.Timestamp.Time.Before(until) {
		t.Errorf("heat's second history entry %+v, want a successful hot → cold move started no earlier than the cooldown's end %s", h, until.Format(time.RFC3339))
	}
	if n := len(historyOf(p, steadyUUID)); n != 0 || w.steadyMig {
		t.Errorf("steady was migrated (history %+v, migration annotation seen %v)", historyOf(p, steadyUUID), w.steadyMig)
	}
	if p.Status.FailedMigrations != 0 || p.Status.TotalMigrations != 2 {
		t.Errorf("totalMigrations %d, failedMigrations %d, want 2 and 0 (history %+v)", p.Status.TotalMigrations, p.Status.FailedMigrations, p.Status.MigrationHistory)
	}
	if !w.metricsOff {
		t.Error("the watcher never saw MetricsAvailable=False during Prometheus's outage")
	}
	if !w.figured {
		t.Error("the watcher never saw heat's migration annotation (no FIGURE during a migration)")
	}
	for u, n := range w.minHealthy {
		if n < 2 {
			t.Errorf("volume %s had only %d full copies at some point (a replica was removed before its successor synced)", u, n)
		}
	}
	t.Logf("tiering story %s (Prometheus down %s)", time.Since(start).Round(time.Second), restarted.Sub(stopped).Round(time.Second))
}
