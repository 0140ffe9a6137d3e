package cluster

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/billyronks/couchestor/tests/cluster/kit"
)

const (
	ns        = kit.OperatorNS
	node      = kit.Node
	image     = kit.Image
	podsBound = 5 * time.Minute
)

// TestCluster is one story in order: each step needs the one before it.
func TestCluster(t *testing.T) {
	steps := []struct {
		name string
		fn   func(*testing.T)
	}{
		{"HelmInstall", testHelmInstall},
		{"LeaderElection", testLeaderElection},
		{"WebhookThroughService", testWebhookThroughService},
		{"MetricsNeedAuthentication", testMetricsNeedAuthentication},
		{"DataPlaneShardServers", testDataPlaneShardServers},
		{"ECVolumeThroughExportPod", testECVolumeThroughExportPod},
		{"ShardServerPodLostAndRebuilt", testShardServerPodLostAndRebuilt},
		{"LeaderFailover", testLeaderFailover},
		{"HelmUpgradeKeepsDataAndLeader", testHelmUpgradeKeepsDataAndLeader},
		{"DataPlaneChangeRollsShardServers", testDataPlaneChangeRollsShardServers},
		// Erasure-coded volumes for pods (csi_test.go). After the rollout
		// steps: they delete a shard-server pod for good, and a pool lost
		// while still named in an idle volume's journal holds a rollout
		// back until that volume is exported again (pkg/shardrollout).
		{"CSIInstall", csiStep(testCSIInstall)},
		{"CSIPodsWriteAndReadBack", csiStep(testCSIPodsWriteAndReadBack)},
		{"CSIRawBlock", csiStep(testCSIRawBlock)},
		{"CSIExpand", csiStep(testCSIExpand)},
		{"CSIAttachElsewhereRefused", csiStep(testCSIAttachElsewhereRefused)},
		// Tiering against the REST double of Mayastor 2.x and a real
		// Prometheus (tiering_test.go).
		{"TieringThroughPrometheus", testTieringThroughPrometheus},
		// Cold Mayastor volumes (the REST double, its bytes served by the
		// Mayastor CSI stand-in) converted to erasure coding by the
		// operator pods, back when one heats up (heatup_test.go), and
		// undone (conversion_test.go). After the
		// tiering step: the same bridge addresses for the double and
		// Prometheus, which the operator was given at install.
		{"ConversionToErasureCoding", csiStep(testConversionToErasureCoding)},
		{"ConversionHeatUp", csiStep(testConversionHeatUp)},
		{"ConversionUndo", csiStep(testConversionUndo)},
		{"UninstallKeepsCRDsAndData", testUninstallKeepsCRDsAndData},
		{"CertManagerModeInstall", testCertManagerModeInstall},
		{"KustomizeInstall", testKustomizeInstall},
	}
	t.Cleanup(stopCertManagerDouble)
	t.Cleanup(stopConversionStory)
	for _, s := range steps {
		if !t.Run(s.name, s.fn) {
			return
		}
	}
}

// csiStep runs a CSI step unless the CSI images cannot be built here
// (csiSkipped, said loudly by TestMain).
func csiStep(fn func(*testing.T)) func(*testing.T) {
	return func(t *testing.T) {
		if csiSkipped != "" {
			t.Skipf("SKIPPED: the CSI sidecar images cannot be built on this machine: %s", csiSkipped)
		}
		fn(t)
	}
}

// testHelmInstall installs helm-charts/couchestor with the real helm CLI in
// self-signed webhook mode (two replicas, leader election) and waits for both
// operator pods to be Ready: in self-signed mode a pod is ready only once it
// has written its certificate and the caBundle.
func testHelmInstall(t *testing.T) {
	// Mayastor is a prerequisite: its CRDs (as the operator consumes them),
	// else the leader's DiskPool/MayastorVolume watches never sync.
	mustKubectl(t, "", "apply", "-f", filepath.Join(root, "config", "crd", "external"))
	// The data-plane namespace exists before the install: the chart renders
	// the operator's Role into it (dataPlaneNamespaces).
	mustKubectl(t, "", "create", "namespace", dpns)
	start := time.Now()
	// The story's install (kit.InstallArgs: self-signed webhooks, imported
	// images, the DataPlane's namespace, hostPath and Secret, no
	// Prometheus) with two replicas and leader election; a lost pool is
	// rebuilt after 20 s (default 10 min).
	// The tiering story's Mayastor double and Prometheus listen on the
	// bridge (tiering_test.go); the operator is pointed at them now and
	// must start while neither answers yet.
	pickTieringAddrs(t)
	args := append(kit.InstallArgs(root, runDir, append([]string{"--ec-down-out-delay=20s"}, tieringOperatorArgs...)...),
		"--set", "replicaCount=2", "--set", "leaderElection.enabled=true", "--wait", "--timeout", "5m")
	args = append(args, tieringHelmValues()...)
	out, err := helm(t, args...)
	if err != nil {
		t.Fatalf("helm install: %v\n%s\n%s", err, out, diagnose(t))
	}
	eventually(t, "2 operator pods Ready", podsBound, func() (bool, string) {
		out, err := kubectl(t, "", "-n", ns, "get", "pods", "-l", "control-plane=controller-manager",
			"-o", `jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}`)
		if err != nil {
			return false, out
		}
		ready := strings.Count(out, "=True")
		return ready == 2, out
	})
	t.Logf("helm install → 2 operator pods Ready in %s", time.Since(start).Round(time.Second))
}

// testLeaderElection: exactly one of the two pods holds the Lease.
func testLeaderElection(t *testing.T) {
	pods := strings.Fields(mustKubectl(t, "", "-n", ns, "get", "pods", "-l", "control-plane=controller-manager",
		"-o", "jsonpath={.items[*].metadata.name}"))
	if len(pods) != 2 {
		t.Fatalf("want 2 operator pods, have %v", pods)
	}
	eventually(t, "the leader Lease is held by an operator pod", 2*time.Minute, func() (bool, string) {
		out, err := kubectl(t, "", "-n", ns, "get", "lease", "couchestor.storage.billyronks.io", "-o", "jsonpath={.spec.holderIdentity}")
		if err != nil {
			return false, out
		}
		for _, p := range pods {
			if strings.HasPrefix(out, p+"_") || out == p {
				return true, out
			}
		}
		return false, out
	})
}

// testWebhookThroughService: the API server reaches the webhook through the
// chart's Service (TLS with the self-signed caBundle): a StoragePolicy naming
// an ErasureCodingPolicy that does not exist is refused with the webhook's
// message (a cross-object rule no CRD schema can express), a valid one is
// admitted and defaulted.
func testWebhookThroughService(t *testing.T) {
	bad := `apiVersion: storage.billyronks.io/v1
kind: StoragePolicy
metadata:
  name: refused
spec:
  storageClassName: mayastor
  highWatermarkIOPS: 5000
  warmWatermarkIOPS: 2000
  lowWatermarkIOPS: 500
  ecPolicyRef: no-such-policy
`
	var out string
	var err error
	// The webhook answers once the pod is Ready; kube-proxy may take a moment
	// to program the Service, so retry until the webhook's own answer comes.
	// Only the webhook knows whether an ErasureCodingPolicy exists: that
	// message proves the API server reached it through the Service.
	const webhookOnly = "no ErasureCodingPolicy of that name exists"
	eventually(t, "the webhook answers through its Service", 2*time.Minute, func() (bool, string) {
		out, err = kubectl(t, bad, "apply", "-f", "-")
		return err == nil || strings.Contains(out, webhookOnly), out
	})
	if err == nil {
		t.Fatalf("an invalid StoragePolicy was admitted:\n%s", out)
	}
	for _, want := range []string{`The StoragePolicy "refused" is invalid`, "spec.ecPolicyRef", "no-such-policy", webhookOnly} {
		if !strings.Contains(out, want) {
			t.Errorf("refusal lacks %q:\n%s", want, out)
		}
	}
	good := strings.Replace(strings.Replace(bad, "refused", "admitted", 1), "  ecPolicyRef: no-such-policy\n", "", 1)
	mustKubectl(t, good, "apply", "-f", "-")
	// The mutating webhook filled the schema's defaults.
	got := mustKubectl(t, "", "get", "storagepolicy", "admitted", "-o", "jsonpath={.spec.maxConcurrentMigrations}")
	if strings.TrimSpace(got) == "" {
		t.Errorf("the defaulting webhook left spec.maxConcurrentMigrations empty")
	}
	mustKubectl(t, "", "delete", "storagepolicy", "admitted")
}

// testMetricsNeedAuthentication: the metrics Service refuses an anonymous
// scrape and serves a ServiceAccount bound to couchestor-metrics-reader.
func testMetricsNeedAuthentication(t *testing.T) {
	ip := strings.TrimSpace(mustKubectl(t, "", "-n", ns, "get", "service", "couchestor-controller-manager-metrics", "-o", "jsonpath={.spec.clusterIP}"))
	url := fmt.Sprintf("https://%s:8443/metrics", ip)
	// Serving cert is the operator's own self-signed one: this test checks
	// authentication, not the scraper's trust.
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	get := func(token string) (int, string, error) {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
		return resp.StatusCode, string(b), nil
	}
	eventually(t, "an anonymous scrape is refused", 2*time.Minute, func() (bool, string) {
		code, body, err := get("")
		return err == nil && (code == http.StatusUnauthorized || code == http.StatusForbidden), fmt.Sprintf("%d %v %.200s", code, err, body)
	})
	mustKubectl(t, "", "-n", ns, "create", "serviceaccount", "scraper")
	mustKubectl(t, "", "create", "clusterrolebinding", "couchestor-test-scraper", "--clusterrole", "couchestor-metrics-reader", "--serviceaccount", ns+":scraper")
	token := strings.TrimSpace(mustKubectl(t, "", "-n", ns, "create", "token", "scraper"))
	eventually(t, "an authorized ServiceAccount scrapes the metrics", 2*time.Minute, func() (bool, string) {
		code, body, err := get(token)
		// Either pod may answer (the Service balances); the follower runs no
		// controllers, so expect exposition text, not a controller metric.
		return err == nil && code == http.StatusOK && strings.Contains(body, "# TYPE "), fmt.Sprintf("%d %v %.200s", code, err, body)
	})
	// A ServiceAccount without the role is authenticated but not authorized.
	mustKubectl(t, "", "-n", ns, "create", "serviceaccount", "stranger")
	other := strings.TrimSpace(mustKubectl(t, "", "-n", ns, "create", "token", "stranger"))
	if code, body, err := get(other); err != nil || code != http.StatusForbidden {
		t.Errorf("a ServiceAccount without couchestor-metrics-reader got %d %v %.200s, want 403", code, err, body)
	}
}

// testDataPlaneShardServers: a DataPlane makes the operator's Helm reconciler
// install the data-plane chart; its shard-server StatefulSet runs as a pod on
// hostPath storage (the kubelet creates the directory as root 0755; the
// chart's init container hands it to uid 65532 with only CAP_CHOWN) and
// registers (its Lease in the registry namespace), and the server resolves
// and answers under the DNS name it advertises.
func testDataPlaneShardServers(t *testing.T) {
	hostPath := shardHostPath()
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(diagnoseNS(t, dpns), diagnose(t))
		}
	})
	dp := kit.DataPlaneYAML(runDir)
	mustKubectl(t, dp, "apply", "-f", "-")
	eventually(t, "the DataPlane's release is Deployed", podsBound, func() (bool, string) {
		out, err := kubectl(t, "", "-n", dpns, "get", "dataplane", "cold", "-o", "json")
		if err != nil {
			return false, out
		}
		var dp struct {
			Status struct {
				Conditions []struct{ Type, Status, Reason, Message string }
			}
		}
		if err := json.Unmarshal([]byte(out), &dp); err != nil {
			return false, err.Error()
		}
		for _, c := range dp.Status.Conditions {
			if c.Type == "Deployed" && c.Status == "True" {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%+v", dp.Status.Conditions)
	})
	eventually(t, "the shard-server pod is Ready", podsBound, func() (bool, string) {
		out, err := kubectl(t, "", "-n", dpns, "get", "pods", "-l", dataPlanePods,
			"-o", `jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}`)
		return err == nil && strings.Count(out, "=True") == 1, out
	})
	eventually(t, "the shard server registers", 2*time.Minute, func() (bool, string) {
		out, err := kubectl(t, "", "-n", dpns, "get", "leases", "-o", "jsonpath={.items[*].metadata.name}")
		return err == nil && strings.Contains(out, "pool-cold-1"), out
	})
	// The store's files are on the host, owned by the server's uid, in the
	// directory the init container handed over.
	dir := filepath.Join(hostPath, "pool-cold-1")
	eventually(t, "the shard store's files are in the hostPath directory", time.Minute, func() (bool, string) {
		fi, err := os.Stat(dir)
		if err != nil {
			return false, err.Error()
		}
		st := fi.Sys().(*syscall.Stat_t)
		ents, _ := os.ReadDir(dir)
		return st.Uid == 65532 && fi.Mode().Perm() == 0o700 && len(ents) > 0, fmt.Sprintf("%d:%d %v %d entries", st.Uid, st.Gid, fi.Mode().Perm(), len(ents))
	})
}

const (
	dpns          = kit.DataNS
	dataPlanePods = kit.DataPlanePods
)

func shardHostPath() string { return kit.ShardHostPath(runDir) }

// leader returns the operator pod holding the leader Lease ("" if none).
func leader(t *testing.T) (string, []string) {
	t.Helper()
	pods := strings.Fields(mustKubectl(t, "", "-n", ns, "get", "pods", "-l", "control-plane=controller-manager",
		"--field-selector=status.phase=Running", "-o", "jsonpath={.items[*].metadata.name}"))
	out, err := kubectl(t, "", "-n", ns, "get", "lease", "couchestor.storage.billyronks.io", "-o", "jsonpath={.spec.holderIdentity}")
	if err != nil {
		return "", pods
	}
	for _, p := range pods {
		if strings.HasPrefix(out, p+"_") || out == p {
			return p, pods
		}
	}
	return "", pods
}

// testLeaderFailover deletes the leader pod: the other replica takes the
// Lease, and the controllers run on the new leader (a DataPlane change is
// reconciled: its release is upgraded with the new value).
func testLeaderFailover(t *testing.T) {
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(diagnoseNS(t, dpns), diagnose(t))
		}
	})
	old, _ := leader(t)
	if old == "" {
		t.Fatal("no leader before the failover")
	}
	start := time.Now()
	mustKubectl(t, "", "-n", ns, "delete", "pod", old, "--wait=false")
	eventually(t, "another operator pod takes the leader Lease", 3*time.Minute, func() (bool, string) {
		l, pods := leader(t)
		return l != "" && l != old, fmt.Sprintf("leader %q, pods %v", l, pods)
	})
	t.Logf("leader %s deleted → new leader in %s", old, time.Since(start).Round(time.Second))
	// The new leader reconciles: a changed DataPlane reaches its release.
	mustKubectl(t, "", "-n", dpns, "patch", "dataplane", "cold", "--type=merge", "-p", `{"spec":{"resources":{"requests":{"cpu":"50m","memory":"64Mi"},"limits":{"memory":"256Mi"}}}}`)
	eventually(t, "the new leader upgrades the DataPlane's release", podsBound, func() (bool, string) {
		out, err := kubectl(t, "", "-n", dpns, "get", "statefulsets", "-l", dataPlanePods,
			"-o", "jsonpath={.items[*].spec.template.spec.containers[0].resources.limits.memory}")
		return err == nil && strings.TrimSpace(out) == "256Mi", out
	})
	eventually(t, "the shard server is Ready again after the rollout", podsBound, func() (bool, string) {
		out, err := kubectl(t, "", "-n", dpns, "get", "pods", "-l", dataPlanePods,
			"-o", `jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status}/{.spec.containers[0].resources.limits.memory}{"\n"}{end}`)
		return err == nil && strings.Count(out, "=True/256Mi") == 1 && strings.Count(out, "=") == 1, out
	})
}

// testHelmUpgradeKeepsDataAndLeader: `helm upgrade` with a changed value
// rolls the operator pods (one surge pod at a time, maxUnavailable 0); a new
// pod holds the Lease, the webhook still answers, the data plane is not
// restarted by an operator upgrade (same shard-server pod), and the ECVolume
// reads back exactly.
func testHelmUpgradeKeepsDataAndLeader(t *testing.T) {
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(diagnoseNS(t, dpns), diagnose(t))
		}
	})
	shardUID := strings.TrimSpace(mustKubectl(t, "", "-n", dpns, "get", "pods", "-l", dataPlanePods, "-o", "jsonpath={.items[*].metadata.uid}"))
	before := strings.Fields(mustKubectl(t, "", "-n", ns, "get", "pods", "-l", "control-plane=controller-manager", "-o", "jsonpath={.items[*].metadata.name}"))
	start := time.Now()
	out, err := helm(t, "upgrade", "couchestor", filepath.Join(root, "helm-charts", "couchestor"),
		"--namespace", ns, "--reuse-values", "--set", "logLevel=debug", "--wait", "--timeout", "5m")
	if err != nil {
		t.Fatalf("helm upgrade: %v\n%s", err, out)
	}
	eventually(t, "2 upgraded operator pods Ready, none of the old ones left", podsBound, func() (bool, string) {
		out, err := kubectl(t, "", "-n", ns, "get", "pods", "-l", "control-plane=controller-manager",
			"-o", `jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status}/{.spec.containers[0].args}{"\n"}{end}`)
		if err != nil {
			return false, out
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 2 {
			return false, out
		}
		for _, l := range lines {
			for _, o := range before {
				if strings.HasPrefix(l, o+"=") {
					return false, out
				}
			}
			if !strings.Contains(l, "=True/") || !strings.Contains(l, "--zap-log-level=debug") {
				return false, out
			}
		}
		return true, out
	})
	eventually(t, "an upgraded pod holds the leader Lease", 3*time.Minute, func() (bool, string) {
		l, pods := leader(t)
		for _, o := range before {
			if l == o {
				return false, "leader is the old pod " + l
			}
		}
		return l != "", fmt.Sprintf("leader %q, pods %v", l, pods)
	})
	t.Logf("helm upgrade → 2 new operator pods Ready and leading in %s", time.Since(start).Round(time.Second))
	// The webhook of the new pods answers through the Service.
	bad := "apiVersion: storage.billyronks.io/v1\nkind: StoragePolicy\nmetadata: {name: refused}\nspec: {storageClassName: mayastor, highWatermarkIOPS: 5000, warmWatermarkIOPS: 2000, lowWatermarkIOPS: 500, ecPolicyRef: no-such-policy}\n"
	eventually(t, "the upgraded webhook refuses through its Service", 2*time.Minute, func() (bool, string) {
		out, err := kubectl(t, bad, "apply", "--dry-run=server", "-f", "-")
		return err != nil && strings.Contains(out, "no ErasureCodingPolicy of that name exists"), out
	})
	if got := strings.TrimSpace(mustKubectl(t, "", "-n", dpns, "get", "pods", "-l", dataPlanePods, "-o", "jsonpath={.items[*].metadata.uid}")); got != shardUID {
		t.Errorf("the operator's upgrade replaced the shard-server pod (%s → %s)", shardUID, got)
	}
	readBack(t, "ecv-export-4")
}

// testUninstallKeepsCRDsAndData: helm uninstall removes the operator but
// keeps the CRDs (helm.sh/resource-policy: keep), the custom resources, and
// the shard bytes on the node.
func testUninstallKeepsCRDsAndData(t *testing.T) {
	store := filepath.Join(shardHostPath(), "pool-cold-1")
	before, err := os.ReadDir(store)
	if err != nil || len(before) == 0 {
		t.Fatalf("shard store before uninstall: %v %v", before, err)
	}
	if out, err := helm(t, "uninstall", "couchestor", "--namespace", ns, "--wait", "--timeout", "5m"); err != nil {
		t.Fatalf("helm uninstall: %v\n%s", err, out)
	}
	eventually(t, "the operator pods are gone", podsBound, func() (bool, string) {
		out, err := kubectl(t, "", "-n", ns, "get", "pods", "-l", "control-plane=controller-manager", "-o", "name")
		return err == nil && strings.TrimSpace(out) == "", out
	})
	crds := mustKubectl(t, "", "get", "crds", "-o", "name")
	for _, c := range []string{"dataplanes.storage.billyronks.io", "ecvolumes.storage.billyronks.io", "storagepolicies.storage.billyronks.io", "erasurecodingpolicies.storage.billyronks.io"} {
		if !strings.Contains(crds, c) {
			t.Errorf("CRD %s removed by helm uninstall:\n%s", c, crds)
		}
	}
	mustKubectl(t, "", "-n", dpns, "get", "dataplane", "cold")
	after, err := os.ReadDir(store)
	if err != nil || len(after) < len(before) {
		t.Errorf("shard store after uninstall: %d entries (%v), before %d", len(after), err, len(before))
	}
}

// diagnose prints what a failed install needs to be understood.
func diagnose(t *testing.T) string {
	return diagnoseNS(t, ns)
}

func diagnoseNS(t *testing.T, namespace string) string {
	t.Helper()
	var b strings.Builder
	for _, args := range [][]string{
		{"-n", namespace, "get", "pods", "-o", "wide"},
		{"-n", namespace, "get", "events", "--sort-by=.lastTimestamp"},
		{"-n", namespace, "logs", "-l", "app.kubernetes.io/name=couchestor", "--all-containers", "--tail=40", "--prefix"},
		{"-n", namespace, "logs", "-l", "app.kubernetes.io/component=shard-server", "--all-containers", "--tail=40", "--prefix", "--previous"},
	} {
		out, _ := kubectl(t, "", args...)
		fmt.Fprintf(&b, "\n$ kubectl %s\n%s", strings.Join(args, " "), out)
	}
	return b.String()
}
