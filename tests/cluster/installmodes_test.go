package cluster

import (
	"context"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/billyronks/couchestor/hack/cluster/certmanagerdouble"
)

var (
	cmDoubleMu   sync.Mutex
	cmDoubleStop func()
)

// startCertManagerDouble installs the cert-manager test double's CRDs and
// runs it in this process until stopCertManagerDouble (cert-manager itself
// cannot be built or pulled here: hack/cluster/certmanagerdouble says why).
func startCertManagerDouble(t *testing.T) {
	t.Helper()
	cmDoubleMu.Lock()
	defer cmDoubleMu.Unlock()
	if cmDoubleStop != nil {
		return
	}
	mustKubectl(t, certmanagerdouble.CRDs, "apply", "-f", "-")
	mustKubectl(t, "", "wait", "--for=condition=Established", "--timeout=60s", "crd/certificates.cert-manager.io", "crd/issuers.cert-manager.io")
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	d, err := certmanagerdouble.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	d.Logf = func(format string, args ...any) { t.Logf(format, args...) }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); d.Run(ctx, time.Second) }()
	cmDoubleStop = func() { cancel(); <-done }
}

func stopCertManagerDouble() {
	cmDoubleMu.Lock()
	defer cmDoubleMu.Unlock()
	if cmDoubleStop != nil {
		cmDoubleStop()
		cmDoubleStop = nil
	}
}

// webhookRefuses waits until the API server, through the webhook Service,
// gets the webhook's own refusal of a StoragePolicy naming a missing
// ErasureCodingPolicy (only the webhook can know that).
func webhookRefuses(t *testing.T, what string) {
	t.Helper()
	bad := "apiVersion: storage.billyronks.io/v1\nkind: StoragePolicy\nmetadata: {name: refused}\nspec: {storageClassName: mayastor, highWatermarkIOPS: 5000, warmWatermarkIOPS: 2000, lowWatermarkIOPS: 500, ecPolicyRef: no-such-policy}\n"
	eventually(t, what, 2*time.Minute, func() (bool, string) {
		out, err := kubectl(t, bad, "apply", "--dry-run=server", "-f", "-")
		return err != nil && strings.Contains(out, "no ErasureCodingPolicy of that name exists"), out
	})
}

func operatorPodsReady(t *testing.T, n int) {
	t.Helper()
	eventually(t, "operator pods Ready", podsBound, func() (bool, string) {
		out, err := kubectl(t, "", "-n", ns, "get", "pods", "-l", "control-plane=controller-manager",
			"-o", `jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}`)
		return err == nil && strings.Count(out, "=True") == n && strings.Count(out, "=") == n, out
	})
}

// testCertManagerModeInstall installs the chart with webhook.certMode
// cert-manager: the chart's Issuer and Certificate are issued (by the
// double) into the Secret the pods mount, the caBundle is injected per
// cert-manager.io/inject-ca-from, the pods turn Ready and the webhook
// refuses through its Service; then it is uninstalled again.
func testCertManagerModeInstall(t *testing.T) {
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(diagnose(t))
		}
	})
	startCertManagerDouble(t)
	start := time.Now()
	out, err := helm(t, "install", "couchestor", filepath.Join(root, "helm-charts", "couchestor"),
		"--namespace", ns, "--set", "replicaCount=1", "--set", "webhook.certMode=cert-manager",
		"--set", "image.pullPolicy=Never", "--set", "prometheusURL=http://127.0.0.1:9", "--wait", "--timeout", "5m")
	if err != nil {
		t.Fatalf("helm install (cert-manager mode): %v\n%s", err, out)
	}
	operatorPodsReady(t, 1)
	got := mustKubectl(t, "", "get", "validatingwebhookconfiguration", "couchestor-validating-webhook-configuration",
		"-o", `jsonpath={.metadata.annotations.cert-manager\.io/inject-ca-from}`)
	if strings.TrimSpace(got) != ns+"/couchestor-serving-cert" {
		t.Errorf("inject-ca-from annotation %q", got)
	}
	webhookRefuses(t, "the webhook (cert-manager mode) refuses through its Service")
	t.Logf("helm install in cert-manager mode → pod Ready and webhook answering in %s", time.Since(start).Round(time.Second))
	if out, err := helm(t, "uninstall", "couchestor", "--namespace", ns, "--wait", "--timeout", "5m"); err != nil {
		t.Fatalf("helm uninstall: %v\n%s", err, out)
	}
	operatorPodsReady(t, 0)
}

// testKustomizeInstall: `kubectl apply -k config/default` (kubectl's own
// kustomize) installs the operator with cert-manager certificates; both pods
// turn Ready and the webhook refuses through its Service. It is removed
// again without its CRDs and Namespace (the custom resources of the story
// stay).
func testKustomizeInstall(t *testing.T) {
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(diagnose(t))
		}
	})
	startCertManagerDouble(t)
	start := time.Now()
	dir := filepath.Join(root, "config", "default")
	if out, err := kubectl(t, "", "apply", "-k", dir); err != nil {
		t.Fatalf("kubectl apply -k config/default: %v\n%s", err, out)
	}
	operatorPodsReady(t, 2)
	webhookRefuses(t, "the webhook (kustomize install) refuses through its Service")
	t.Logf("kubectl apply -k config/default → 2 pods Ready and webhook answering in %s", time.Since(start).Round(time.Second))

	// Remove what it created but the CRDs and the Namespace.
	built := mustKubectl(t, "", "kustomize", dir)
	var keep []string
	for _, doc := range strings.Split(built, "\n---\n") {
		var u unstructured.Unstructured
		if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil || u.Object == nil {
			continue
		}
		if k := u.GetKind(); k == "CustomResourceDefinition" || k == "Namespace" {
			continue
		}
		keep = append(keep, doc)
	}
	mustKubectl(t, strings.Join(keep, "\n---\n"), "delete", "--wait=true", "--timeout=3m", "-f", "-")
	operatorPodsReady(t, 0)
}
