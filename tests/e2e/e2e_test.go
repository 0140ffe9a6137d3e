package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/mayastorrest"
	"github.com/billyronks/couchestor/tests/mayastorsim/sim"
	"github.com/billyronks/couchestor/tests/testenv"
)

const (
	annotationMigration = "storage.billyronks.io/migration"
	leaseName           = "couchestor.storage.billyronks.io"
	// Short leader-election timings so a takeover fits in a test; generous
	// enough that a busy 2-core machine does not make a leader give up.
	leaseDuration = 8 * time.Second
	renewDeadline = 6 * time.Second
	retryPeriod   = 1 * time.Second
	// samplingWindow of the suite's policies: IOPS over the last 10 s.
	samplingWindow = "10s"
)

// suite is what the subtests share: one control plane, one simulator, one
// Prometheus, and the operator processes.
type suite struct {
	dir        string
	kubeconfig string
	kubectlBin string
	c          client.Client
	sim        *sim.Process
	prom       *proc
	promAddr   string
	operator   *operator // the one expected to lead
	opSeq      int
	uuid       map[string]string // the suite's volume name (cycle-heat) -> REST volume uuid
	rest       *mayastorrest.Client
	opBin      string
}

// Volume groups: each subtest has its own volumes (PVC label e2e=<group>) and
// its own StoragePolicy selecting them. A volume's IOPS are steady from the
// start and no policy selects it until its subtest creates one, so when the
// policy appears the sampling window is full and the target tier is clear
// (a rate still ramping through the warm band would send a heating volume to
// warm, where the cooldown then holds it).
type vol struct {
	name, group, tier string
	iops              float64
}

var volumes = []vol{
	{"cycle-heat", "cycle", "cold", 900},
	{"cycle-cool", "cycle", "hot", 5},
	{"prom-hot-0", "prom", "hot", 900},
	{"prom-hot-1", "prom", "hot", 900},
	{"prom-warm", "prom", "warm", 300},
	{"crash-0", "crash", "cold", 900},
	{"crash-1", "crash", "cold", 900},
	{"leader-0", "leader", "cold", 900},
	{"leader-1", "leader2", "cold", 900},
}

// pvName is the PV of one of the suite's volumes: Mayastor's CSI driver names
// it pvc-<uuid> (the REST volume's uuid, the PV's volumeHandle).
func pvName(name string) string {
	for i, v := range volumes {
		if v.name == name {
			return "pvc-" + volumeUUID(i)
		}
	}
	panic("no e2e volume " + name)
}

func volumeUUID(i int) string { return fmt.Sprintf("00000000-0000-4000-8000-%012d", i+1) }

// scenario is a Mayastor 2.x cluster for the REST double: each volume's pool
// topology requires the pool label key "tier" (any value), as a StorageClass
// with poolHasTopologyKey: tier gives it; the operator steers a new replica
// by withholding that label from the pools of the other tiers. Every volume
// is published on node-app (its pod's node, no pool there): Mayastor removes
// a remote replica before the one local to the nexus, so a volume whose
// nexus sits on a replica's node could not leave that replica's tier.
func scenario() (*sim.Scenario, map[string]string) {
	const gib = int64(1) << 30
	sc := &sim.Scenario{Namespace: "mayastor", StorageClass: "mayastor"}
	nodes := []string{"node-1", "node-2", "node-3"}
	for _, n := range nodes {
		for _, t := range []string{"hot", "warm", "cold"} {
			sc.Pools = append(sc.Pools, sim.PoolSpec{Name: n + "-" + t, Node: n, Disks: []string{"/dev/" + t},
				Labels: map[string]string{"tier": t}, CapacityBytes: 200 * gib})
		}
	}
	uuids := map[string]string{}
	for i, v := range volumes {
		a, b := nodes[i%3], nodes[(i+1)%3]
		u := volumeUUID(i)
		uuids[v.name] = u
		sc.Volumes = append(sc.Volumes, sim.VolumeSpec{
			Name: "pvc-" + u, UUID: u, SizeBytes: gib, PoolInclusion: map[string]string{"tier": ""}, TargetNode: "node-app",
			Replicas: []string{a + "-" + v.tier, b + "-" + v.tier}, Published: true, IOPS: v.iops,
			PVC: sim.PVCSpec{Namespace: "default", Name: v.name + "-claim", Labels: map[string]string{"e2e": v.group}},
		})
	}
	return sc, uuids
}

func setup(t *testing.T) *suite {
	testenv.RequireAssets(t)
	promBin := os.Getenv("COUCHESTOR_PROMETHEUS")
	if promBin == "" {
		t.Skip("COUCHESTOR_PROMETHEUS is not set: run through `make test` (or export COUCHESTOR_PROMETHEUS=$(hack/prometheus.sh))")
	}
	s := &suite{dir: t.TempDir(), opBin: testenv.OperatorBinary(t)}
	s.kubectlBin = filepath.Join(os.Getenv("KUBEBUILDER_ASSETS"), "kubectl")
	if _, err := os.Stat(s.kubectlBin); err != nil {
		t.Fatalf("the project's kubectl: %v (hack/envtest.sh puts it next to kube-apiserver)", err)
	}
	// What a Mayastor 2.x cluster serves: DiskPool, no MayastorVolume kind.
	env := testenv.Start(t, testenv.MayastorV2("v1beta2"))
	s.c = env.Client
	s.kubeconfig = env.WriteKubeconfig(t, s.dir)
	if err := s.c.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "mayastor"}}); err != nil {
		t.Fatal(err)
	}
	var sc *sim.Scenario
	sc, s.uuid = scenario()
	// The REST double of Mayastor 2.x's control plane. 128 MiB/s: a 1 GiB
	// replica rebuilds in about 8 s, so a migration is in flight long enough
	// to be interrupted.
	s.sim = sim.StartWithArgs(t, s.kubeconfig, freeAddr(t), sc, "--api=rest", "--rebuild-bytes-per-second", "134217728")
	rest, err := mayastorrest.New(mayastorrest.Config{URL: s.sim.REST})
	if err != nil {
		t.Fatal(err)
	}
	s.rest = rest

	s.promAddr = freeAddr(t)
	cfg := fmt.Sprintf("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n- job_name: mayastor-io-engine\n  static_configs: [{targets: [%q]}]\n", s.sim.Addr)
	cfgPath := filepath.Join(s.dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	s.prom = startProc(t, "prometheus", filepath.Join(s.dir, "prometheus.log"), promBin,
		"--config.file="+cfgPath, "--storage.tsdb.path="+filepath.Join(s.dir, "tsdb"), "--web.listen-address="+s.promAddr)
	if err := testenv.WaitHTTP200("http://"+s.promAddr+"/-/ready", time.Minute); err != nil {
		t.Fatalf("prometheus: %v\n%s", err, tailFile(s.prom.log, 20))
	}
	s.operator = s.startOperator(t)
	s.operator.waitReady(t)
	return s
}

// startOperator runs a new operator process with its own ports and cert dir.
// Its webhook configurations point at its own URL (the last one started wins).
func (s *suite) startOperator(t *testing.T) *operator {
	t.Helper()
	s.opSeq++
	name := fmt.Sprintf("operator-%d", s.opSeq)
	o := &operator{metricsAddr: freeAddr(t), probeAddr: freeAddr(t)}
	_, o.webhookPort, _ = strings.Cut(freeAddr(t), ":")
	o.proc = startProc(t, name, filepath.Join(s.dir, name+".log"), s.opBin,
		"--kubeconfig", s.kubeconfig,
		"--metrics-bind-address", o.metricsAddr, "--health-probe-bind-address", o.probeAddr,
		"--leader-election-namespace", "default", "--mayastor-namespace", "mayastor", "--mayastor-api-url", s.sim.REST,
		"--leader-elect-lease-duration", leaseDuration.String(), "--leader-elect-renew-deadline", renewDeadline.String(),
		"--leader-elect-retry-period", retryPeriod.String(),
		"--webhook-cert-mode", "self-signed", "--webhook-port", o.webhookPort,
		"--webhook-local-url", "https://localhost:"+o.webhookPort, "--webhook-cert-dir", filepath.Join(s.dir, name+"-certs"),
		"--webhook-namespace", "default",
		"--prometheus-url", "http://"+s.promAddr, "--prometheus-scrape-interval", "1s",
		"--evaluation-interval", "5s", "--metrics-cache-ttl", "2s", "--zap-encoder", "console")
	return o
}

// createPolicy applies a tiering policy over one volume group.
func (s *suite) createPolicy(t *testing.T, group, cooldown string) string {
	t.Helper()
	sel := func(tier string) *metav1.LabelSelector {
		return &metav1.LabelSelector{MatchLabels: map[string]string{"tier": tier}}
	}
	p := &storagev1.StoragePolicy{ObjectMeta: metav1.ObjectMeta{Name: "e2e-" + group},
		Spec: storagev1.StoragePolicySpec{
			HighWatermarkIOPS: ptr.To[int64](500), WarmWatermarkIOPS: ptr.To[int64](200), LowWatermarkIOPS: ptr.To[int64](50),
			SamplingWindow: samplingWindow, CooldownPeriod: cooldown, MigrationTimeout: "2m", MaxConcurrentMigrations: ptr.To[int32](2),
			HotPoolSelector: sel("hot"), WarmPoolSelector: sel("warm"), ColdPoolSelector: sel("cold"),
			VolumeSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"e2e": group}},
		}}
	if err := s.c.Create(context.Background(), p); err != nil {
		t.Fatalf("create StoragePolicy %s: %v", p.Name, err)
	}
	return p.Name
}

// migrationAnnotated reports whether any of the PVs carries the in-flight
// migration annotation.
func (s *suite) migrationAnnotated(names ...string) (bool, error) {
	for _, n := range names {
		var pv corev1.PersistentVolume
		if err := s.c.Get(context.Background(), client.ObjectKey{Name: pvName(n)}, &pv); err != nil {
			return false, err
		}
		if _, ok := pv.Annotations[annotationMigration]; ok {
			return true, nil
		}
	}
	return false, nil
}

// waitTiers waits until every named volume has want replicas, all online on
// pools of its tier, and no migration in flight.
func (s *suite) waitTiers(t *testing.T, timeout time.Duration, tiers map[string]string, want int) {
	t.Helper()
	var names []string
	for n := range tiers {
		names = append(names, n)
	}
	eventually(t, timeout, fmt.Sprintf("volumes on tiers %v", tiers), func() (bool, error) {
		if busy, err := s.migrationAnnotated(names...); err != nil || busy {
			return false, err
		}
		vs, err := s.volumes(names...)
		if err != nil {
			return false, err
		}
		for n, tier := range tiers {
			if !onTier(vs[n], tier, want) {
				return false, fmt.Errorf("%s: %s", n, replicaPools(vs[n]))
			}
		}
		return true, nil
	})
}

// sampler records, in the background, the fewest healthy replicas seen per
// volume, whether a migration annotation was ever seen, and the highest
// totalMigrations with any decrease of it.
type sampler struct {
	mu         sync.Mutex
	minHealthy map[string]int
	annotated  bool
	maxTotal   int64
	decreased  string
	metricsOff bool // MetricsAvailable=False seen
	stop, done chan struct{}
}

func (s *suite) sample(t *testing.T, policy string, names ...string) *sampler {
	sm := &sampler{minHealthy: map[string]int{}, stop: make(chan struct{}), done: make(chan struct{})}
	for _, n := range names {
		sm.minHealthy[n] = 1 << 30
	}
	go func() {
		defer close(sm.done)
		for {
			if vs, err := s.volumes(names...); err == nil {
				sm.mu.Lock()
				for n, v := range vs {
					sm.minHealthy[n] = min(sm.minHealthy[n], healthyReplicas(v))
				}
				sm.mu.Unlock()
			}
			if a, err := s.migrationAnnotated(names...); err == nil && a {
				sm.mu.Lock()
				sm.annotated = true
				sm.mu.Unlock()
			}
			p := &storagev1.StoragePolicy{}
			if err := s.c.Get(context.Background(), client.ObjectKey{Name: policy}, p); err == nil {
				sm.mu.Lock()
				if p.Status.TotalMigrations < sm.maxTotal {
					sm.decreased = fmt.Sprintf("totalMigrations went from %d to %d", sm.maxTotal, p.Status.TotalMigrations)
				}
				sm.maxTotal = max(sm.maxTotal, p.Status.TotalMigrations)
				if conditionStatus(p, "MetricsAvailable") == metav1.ConditionFalse {
					sm.metricsOff = true
				}
				sm.mu.Unlock()
			}
			select {
			case <-sm.stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(sm.finish)
	return sm
}

func (sm *sampler) finish() {
	select {
	case <-sm.stop:
	default:
		close(sm.stop)
	}
	<-sm.done
}

// historyFor is the history of one of the suite's volumes (by its PV's name).
func historyFor(p *storagev1.StoragePolicy, volume string) []storagev1.MigrationHistoryEntry {
	var out []storagev1.MigrationHistoryEntry
	for _, h := range p.Status.MigrationHistory {
		if h.VolumeName == pvName(volume) {
			out = append(out, h)
		}
	}
	return out
}

// TestEndToEnd runs the subtests in order over one shared environment; each
// uses its own StoragePolicy and volumes.
func TestEndToEnd(t *testing.T) {
	start := time.Now()
	s := setup(t)
	t.Logf("environment up in %s", time.Since(start).Round(time.Second))
	t.Run("webhooks through kubectl", s.testWebhooks)
	t.Run("heat-up and cool-down cycle", s.testCycle)
	t.Run("metrics and readyz", s.testMetricsReadyz)
	t.Run("prometheus restart demotes nothing", s.testPrometheusRestart)
	t.Run("SIGKILL mid-migration", s.testKillMidMigration)
	t.Run("leader election takeover", s.testLeaderElection)
	t.Logf("whole suite took %s", time.Since(start).Round(time.Second))
}

func (s *suite) testWebhooks(t *testing.T) {
	refused := func(what, manifest string, wants ...string) {
		t.Helper()
		out, err := s.kubectl(manifest, "apply", "-f", "-")
		if err == nil {
			t.Fatalf("%s: kubectl apply accepted it:\n%s", what, out)
		}
		for _, w := range wants {
			if !strings.Contains(out, w) {
				t.Errorf("%s: refusal does not mention %q:\n%s", what, w, out)
			}
		}
	}
	refused("StoragePolicy with warm below low and a zero sampling window", `
apiVersion: storage.billyronks.io/v1
kind: StoragePolicy
metadata: {name: e2e-bad-watermarks}
spec:
  highWatermarkIOPS: 500
  warmWatermarkIOPS: 40
  lowWatermarkIOPS: 50
  samplingWindow: 0s
  hotPoolSelector: {matchLabels: {tier: hot}}
  coldPoolSelector: {matchLabels: {tier: cold}}
`, "spec.warmWatermarkIOPS", "spec.samplingWindow")
	// Only the validating webhook (over TLS, at the URL the operator
	// installed) can look up other objects: this refusal proves the path.
	refused("StoragePolicy naming a missing ErasureCodingPolicy", `
apiVersion: storage.billyronks.io/v1
kind: StoragePolicy
metadata: {name: e2e-bad-ecref}
spec:
  hotPoolSelector: {matchLabels: {tier: hot}}
  coldPoolSelector: {matchLabels: {tier: cold}}
  ecPolicyRef: e2e-missing
`, "spec.ecPolicyRef", "e2e-missing")

	if out, err := s.kubectl(`
apiVersion: storage.billyronks.io/v1
kind: ErasureCodingPolicy
metadata: {name: e2e-ec}
spec: {dataShards: 4, parityShards: 2}
---
apiVersion: storage.billyronks.io/v1
kind: StoragePolicy
metadata: {name: e2e-defaults}
spec:
  hotPoolSelector: {matchLabels: {tier: hot}}
  coldPoolSelector: {matchLabels: {tier: cold}}
  volumeSelector: {matchLabels: {e2e: none}}
`, "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	} else if !strings.Contains(out, "Warning: spec.dataShards + spec.parityShards = 6, but only 0 shard servers") {
		// No shard server runs in this suite: kubectl must say the policy
		// cannot be written to yet, while accepting it.
		t.Errorf("kubectl apply of a 4+2 policy without shard servers printed no capacity warning:\n%s", out)
	}
	out, err := s.kubectl("", "get", "sp", "e2e-defaults", "-o", "yaml")
	if err != nil {
		t.Fatal(err)
	}
	var got storagev1.StoragePolicy
	if err := yaml.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("parse kubectl get sp -o yaml: %v\n%s", err, out)
	}
	want := storagev1.StoragePolicySpec{}
	storagev1.DefaultStoragePolicySpec(&want)
	sp := got.Spec
	if sp.HighWatermarkIOPS == nil || *sp.HighWatermarkIOPS != *want.HighWatermarkIOPS ||
		sp.SamplingWindow != want.SamplingWindow || sp.CooldownPeriod != want.CooldownPeriod ||
		sp.MaxConcurrentMigrations == nil || *sp.MaxConcurrentMigrations != *want.MaxConcurrentMigrations ||
		sp.Enabled == nil || !*sp.Enabled || sp.StorageClassName != want.StorageClassName || sp.MigrationTimeout != want.MigrationTimeout {
		t.Errorf("the stored policy is not defaulted:\n%s", out)
	}

	stripe := func(name string, start, end int64) string {
		var shards []string
		for i := 0; i < 6; i++ {
			shards = append(shards, fmt.Sprintf("{shardIndex: %d, isDataShard: %v, poolName: node-%d-cold, nodeName: node-%d, offset: 0, sizeBytes: 262144}", i, i < 4, i%3+1, i%3+1))
		}
		return fmt.Sprintf(`
apiVersion: storage.billyronks.io/v1
kind: ECStripe
metadata: {name: %s}
spec:
  volumeRef: e2e-ec-volume
  stripeId: %d
  policyRef: e2e-ec
  lbaRange: {startLba: %d, endLba: %d}
  shardLocations: [%s]
`, name, start/2048, start, end, strings.Join(shards, ", "))
	}
	if out, err := s.kubectl(stripe("e2e-stripe-0", 0, 2048), "apply", "-f", "-"); err != nil {
		t.Fatalf("a valid ECStripe was refused: %v\n%s", err, out)
	}
	// Overlap is a cross-object rule only the webhook can check.
	refused("ECStripe overlapping another stripe of its volume", strings.Replace(stripe("e2e-stripe-1", 1024, 3072), "stripeId: 0", "stripeId: 1", 1),
		"spec.lbaRange", "overlaps ECStripe e2e-stripe-0")
	// The CRD's CEL rule and the webhook both refuse this; whichever speaks
	// first names the field.
	refused("ECStripe with an empty LBA range", stripe("e2e-stripe-2", 4096, 4096), "spec.lbaRange", "endLba")

	for _, c := range []struct {
		resource string
		header   []string
	}{
		{"sp", []string{"NAME", "PHASE", "HOT", "WARM", "COLD", "ACTIVE", "TOTAL", "AGE"}},
		{"spolicy", []string{"NAME", "PHASE", "HOT", "WARM", "COLD", "ACTIVE", "TOTAL", "AGE"}},
		{"ecp", []string{"NAME", "DATA", "PARITY", "ALGORITHM", "STRIPE", "PHASE", "EFFICIENCY", "AGE"}},
		{"ecs", []string{"NAME", "VOLUME", "STRIPE", "STATE", "HEALTHY", "START", "LBA", "END", "LBA", "AGE"}},
	} {
		out, err := s.kubectl("", "get", c.resource)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if got := strings.Fields(lines[0]); strings.Join(got, " ") != strings.Join(c.header, " ") {
			t.Errorf("kubectl get %s header = %q, want %q", c.resource, got, c.header)
		}
		if len(lines) < 2 {
			t.Errorf("kubectl get %s lists nothing:\n%s", c.resource, out)
		}
		if c.resource == "sp" {
			// Counters the schema defines are always present: a 0 shows as 0,
			// never as a blank cell (which would shorten the row). Waits for
			// each policy's first evaluation (before it, the phase is blank too).
			eventually(t, time.Minute, "every kubectl get sp (-o wide) cell filled", func() (bool, error) {
				for _, args := range [][]string{{"get", "sp"}, {"get", "sp", "-o", "wide"}} {
					out, err := s.kubectl("", args...)
					if err != nil {
						return false, err
					}
					ls := strings.Split(strings.TrimSpace(out), "\n")
					for _, l := range ls[1:] {
						if got, want := len(strings.Fields(l)), len(strings.Fields(ls[0])); got != want {
							return false, fmt.Errorf("kubectl %s: row %q has %d cells, want %d", strings.Join(args, " "), l, got, want)
						}
					}
				}
				return true, nil
			})
		}
	}
}

func (s *suite) testCycle(t *testing.T) {
	policy := s.createPolicy(t, "cycle", "1h")
	s.waitTiers(t, 3*time.Minute, map[string]string{"cycle-heat": "hot", "cycle-cool": "cold"}, 2)

	var p storagev1.StoragePolicy
	eventually(t, time.Minute, "both migrations in the history", func() (bool, error) {
		out, err := s.kubectl("", "get", "sp", policy, "-o", "yaml")
		if err != nil {
			return false, err
		}
		p = storagev1.StoragePolicy{}
		if err := yaml.Unmarshal([]byte(out), &p); err != nil {
			return false, err
		}
		return len(historyFor(&p, "cycle-heat")) > 0 && len(historyFor(&p, "cycle-cool")) > 0 && p.Status.TotalMigrations >= 2, nil
	})
	for v, want := range map[string][2]string{"cycle-heat": {"cold", "hot"}, "cycle-cool": {"hot", "cold"}} {
		h := historyFor(&p, v)
		last := h[len(h)-1]
		if !last.Success || last.FromTier != want[0] || last.ToTier != want[1] || last.DryRun {
			t.Errorf("%s history: %+v, want a successful %s -> %s", v, h, want[0], want[1])
		}
	}
	if p.Status.FailedMigrations != 0 {
		t.Errorf("failedMigrations = %d, want 0 (history %+v)", p.Status.FailedMigrations, p.Status.MigrationHistory)
	}
	t.Logf("totalMigrations %d, history %d entries", p.Status.TotalMigrations, len(p.Status.MigrationHistory))
}

func (s *suite) testMetricsReadyz(t *testing.T) {
	o := s.operator
	m, err := o.metrics()
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := metricValue(m, "couchestor_migrations_total", `result="success"`); !ok || v < 2 {
		t.Errorf("couchestor_migrations_total{result=\"success\"} = %v (found %v), want >= 2 after the cycle", v, ok)
	}
	code, body, err := httpGet("http://" + o.probeAddr + "/readyz?verbose")
	if err != nil || code != 200 {
		t.Fatalf("/readyz?verbose: HTTP %d, %v\n%s", code, err, body)
	}
	for _, check := range []string{"[+]informers ok", "[+]webhooks ok"} {
		if !strings.Contains(body, check) {
			t.Errorf("/readyz?verbose lacks %q:\n%s", check, body)
		}
	}
}

func (s *suite) testPrometheusRestart(t *testing.T) {
	names := []string{"prom-hot-0", "prom-hot-1", "prom-warm"}
	tiers := map[string]string{"prom-hot-0": "hot", "prom-hot-1": "hot", "prom-warm": "warm"}
	// A short cooldown: these volumes never moved, so nothing holds them.
	policy := s.createPolicy(t, "prom", "1m")
	eventually(t, 2*time.Minute, "the policy measures its volumes", func() (bool, error) {
		p := s.policy(t, policy)
		return conditionStatus(p, "MetricsAvailable") == metav1.ConditionTrue && p.Status.HotVolumes == 2 && p.Status.WarmVolumes == 1, nil
	})
	sm := s.sample(t, policy, names...)

	s.prom.stop()
	if err := waitTCPClosed(s.promAddr, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	eventually(t, time.Minute, "MetricsAvailable=False while Prometheus is gone", func() (bool, error) {
		return conditionStatus(s.policy(t, policy), "MetricsAvailable") == metav1.ConditionFalse, nil
	})
	// Let the operator evaluate several times without metrics: more than a
	// sampling window and three evaluation intervals.
	eventually(t, time.Minute, "three evaluations after Prometheus went away", func() (bool, error) {
		p := s.policy(t, policy)
		return p.Status.LastReconcileTime != nil && p.Status.LastReconcileTime.Time.After(stopped.Add(15*time.Second)), nil
	})

	s.prom.start(t)
	if err := testenv.WaitHTTP200("http://"+s.promAddr+"/-/ready", time.Minute); err != nil {
		t.Fatalf("prometheus restart: %v\n%s", err, tailFile(s.prom.log, 20))
	}
	restarted := time.Now()
	eventually(t, 2*time.Minute, "MetricsAvailable=True again", func() (bool, error) {
		return conditionStatus(s.policy(t, policy), "MetricsAvailable") == metav1.ConditionTrue, nil
	})
	// And a full sampling window plus some evaluations after recovery, when
	// the window holds the gap.
	eventually(t, time.Minute, "evaluations after recovery", func() (bool, error) {
		p := s.policy(t, policy)
		return p.Status.LastReconcileTime != nil && p.Status.LastReconcileTime.Time.After(restarted.Add(15*time.Second)), nil
	})
	sm.finish()

	if !sm.metricsOff {
		t.Error("the sampler never saw MetricsAvailable=False")
	}
	if sm.annotated {
		t.Error("a migration started on a hot/warm volume around the Prometheus outage")
	}
	p := s.policy(t, policy)
	if len(p.Status.MigrationHistory) != 0 || p.Status.TotalMigrations != 0 {
		t.Errorf("migrations happened: total %d, history %+v", p.Status.TotalMigrations, p.Status.MigrationHistory)
	}
	vs, err := s.volumes(names...)
	if err != nil {
		t.Fatal(err)
	}
	for n, tier := range tiers {
		if !onTier(vs[n], tier, 2) {
			t.Errorf("%s moved: %s", n, replicaPools(vs[n]))
		}
	}
	if p.Status.HotVolumes != 2 || p.Status.WarmVolumes != 1 {
		t.Errorf("tier counts hot %d warm %d, want 2 and 1", p.Status.HotVolumes, p.Status.WarmVolumes)
	}
}

func (s *suite) testKillMidMigration(t *testing.T) {
	names := []string{"crash-0", "crash-1"}
	policy := "e2e-crash"
	sm := s.sample(t, policy, names...)
	s.createPolicy(t, "crash", "1h")
	eventually(t, 2*time.Minute, "a migration in flight (PV annotated)", func() (bool, error) {
		return s.migrationAnnotated(names...)
	})
	before := s.policy(t, policy).Status.TotalMigrations
	// What earlier subtests recorded must survive the crash too.
	cycleBefore := s.policy(t, "e2e-cycle").Status
	s.operator.kill()
	t.Logf("operator SIGKILLed mid-migration (totalMigrations %d)", before)
	busy, err := s.migrationAnnotated(names...)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("migration annotation still present after the kill: %v", busy)

	s.operator.start(t)
	s.operator.waitReady(t)
	// Completes (both hot) or rolls back and is retried: either way the
	// volumes end on the hot tier with two healthy replicas.
	s.waitTiers(t, 3*time.Minute, map[string]string{"crash-0": "hot", "crash-1": "hot"}, 2)
	eventually(t, time.Minute, "both volumes in the history", func() (bool, error) {
		p := s.policy(t, policy)
		return len(historyFor(p, "crash-0")) > 0 && len(historyFor(p, "crash-1")) > 0, nil
	})
	sm.finish()
	for n, h := range sm.minHealthy {
		if h < 2 {
			t.Errorf("%s had only %d healthy replicas at some point (started with 2)", n, h)
		}
	}
	if sm.decreased != "" {
		t.Errorf("counters went back: %s", sm.decreased)
	}
	p := s.policy(t, policy)
	if p.Status.TotalMigrations < before {
		t.Errorf("totalMigrations %d < %d before the kill", p.Status.TotalMigrations, before)
	}
	cycleAfter := s.policy(t, "e2e-cycle").Status
	if cycleAfter.TotalMigrations != cycleBefore.TotalMigrations || len(cycleAfter.MigrationHistory) != len(cycleBefore.MigrationHistory) {
		t.Errorf("e2e-cycle changed across the crash: total %d -> %d, history %d -> %d entries",
			cycleBefore.TotalMigrations, cycleAfter.TotalMigrations, len(cycleBefore.MigrationHistory), len(cycleAfter.MigrationHistory))
	}
	if p.Status.TotalMigrations < 2 || len(historyFor(p, "crash-0")) == 0 || len(historyFor(p, "crash-1")) == 0 {
		t.Errorf("the interrupted migrations are not counted: total %d, history %+v", p.Status.TotalMigrations, p.Status.MigrationHistory)
	}
	t.Logf("after restart: totalMigrations %d, failed %d, history %+v", p.Status.TotalMigrations, p.Status.FailedMigrations, p.Status.MigrationHistory)
}

func (s *suite) testLeaderElection(t *testing.T) {
	a := s.operator
	eventually(t, time.Minute, "the running operator leads", func() (bool, error) { return a.isLeader(), nil })
	// b starts second, so the webhook configurations now point at b's URL.
	b := s.startOperator(t)
	b.waitReady(t)
	if b.isLeader() {
		t.Fatal("the second operator leads while the first is alive")
	}
	lease := &coordinationv1.Lease{}
	if err := s.c.Get(context.Background(), client.ObjectKey{Namespace: "default", Name: leaseName}, lease); err != nil {
		t.Fatalf("get Lease: %v", err)
	}
	holder := ptr.Deref(lease.Spec.HolderIdentity, "")

	// Only the leader acts: a migration happens, counted by a, not by b.
	policy := s.createPolicy(t, "leader", "1h")
	s.waitTiers(t, 3*time.Minute, map[string]string{"leader-0": "hot"}, 2)
	if m, err := b.metrics(); err != nil {
		t.Fatal(err)
	} else if v, _ := metricValue(m, "couchestor_migrations_total"); v != 0 {
		t.Errorf("the follower counted %v migrations", v)
	}
	if b.isLeader() {
		t.Error("the follower leads")
	}

	// Admission during the takeover: kubectl server-side dry runs of a valid
	// policy, every 200 ms from the kill until b leads and for 2 s more.
	probe := `
apiVersion: storage.billyronks.io/v1
kind: StoragePolicy
metadata: {name: e2e-admission-probe}
spec:
  hotPoolSelector: {matchLabels: {tier: hot}}
  coldPoolSelector: {matchLabels: {tier: cold}}
`
	a.kill()
	killed := time.Now()
	var took time.Duration
	var tries, refused int
	var firstRefusal string
	for {
		if took == 0 && b.isLeader() {
			took = time.Since(killed)
		}
		if took != 0 && time.Since(killed) > took+2*time.Second {
			break
		}
		if time.Since(killed) > 2*leaseDuration+30*time.Second {
			t.Fatalf("the follower did not take over within %s", 2*leaseDuration+30*time.Second)
		}
		tries++
		if out, err := s.kubectl(probe, "apply", "--dry-run=server", "-f", "-"); err != nil {
			refused++
			if firstRefusal == "" {
				firstRefusal = out
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("takeover after %s (lease %s, retry %s); admission during it: %d of %d dry-run applies refused %s",
		took.Round(100*time.Millisecond), leaseDuration, retryPeriod, refused, tries, firstRefusal)
	// SIGKILL leaves the Lease held until it expires: the follower may take
	// it leaseDuration after the last renewal and polls every retryPeriod;
	// measured 8.5-10.2 s here. The slack covers a busy 2-core machine.
	if bound := leaseDuration + 10*time.Second; took > bound {
		t.Errorf("takeover took %s, more than lease %s + slack (%s)", took, leaseDuration, bound)
	}
	// The webhook configurations point at b, which serves admission whether
	// or not it leads, so killing a costs admission nothing (0 refusals
	// measured). Outside a cluster (--webhook-local-url) the configurations
	// hold one URL, the last process started wins: had b died instead, every
	// apply of these kinds would be refused (failurePolicy Fail) until an
	// operator restarted and installed its URL again — leadership does not
	// move the URL. In a cluster the Service sends admission to any ready
	// replica, leader or not, so a takeover has no admission gap there.
	if refused != 0 {
		t.Errorf("%d admission requests failed while the follower took over: %s", refused, firstRefusal)
	}
	if err := s.c.Get(context.Background(), client.ObjectKey{Namespace: "default", Name: leaseName}, lease); err != nil {
		t.Fatal(err)
	}
	if ptr.Deref(lease.Spec.HolderIdentity, "") == holder {
		t.Errorf("the Lease is still held by %s", holder)
	}

	// Work continues under the new leader: a new policy (admitted by b) over
	// a volume that wants to be hot.
	policy2 := s.createPolicy(t, "leader2", "1h")
	s.waitTiers(t, 3*time.Minute, map[string]string{"leader-1": "hot"}, 2)
	eventually(t, time.Minute, "the new leader counts its migration", func() (bool, error) {
		m, err := b.metrics()
		if err != nil {
			return false, err
		}
		v, _ := metricValue(m, "couchestor_migrations_total", `result="success"`)
		return v >= 1, nil
	})
	// The migration counter moves when the move finishes; the history entry
	// lands with the next status write of the policy, moments later.
	for _, h := range []struct{ policy, volume string }{{policy, "leader-0"}, {policy2, "leader-1"}} {
		eventually(t, time.Minute, "the history of "+h.policy+" records "+h.volume, func() (bool, error) {
			return len(historyFor(s.policy(t, h.policy), h.volume)) > 0, nil
		})
	}
	s.operator = b
}
