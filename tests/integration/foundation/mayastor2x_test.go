package foundation

import (
	"bytes"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/tests/testenv"
)

// startOperatorProcess runs the operator binary with args added to a base
// set; it fails the test if the process exits before the test ends.
func startOperatorProcess(t *testing.T, env *testenv.Env, args ...string) (probes, metrics string, out *bytes.Buffer) {
	t.Helper()
	bin := testenv.OperatorBinary(t)
	kubeconfig := env.WriteKubeconfig(t, t.TempDir())
	metrics, probes = testenv.Addr(testenv.FreePort(t)), testenv.Addr(testenv.FreePort(t))
	webhookPort := testenv.FreePort(t)
	base := []string{
		"--kubeconfig", kubeconfig, "--metrics-bind-address", metrics, "--health-probe-bind-address", probes,
		"--leader-election-namespace", "default", "--webhook-namespace", "default",
		"--webhook-cert-mode", "self-signed", "--webhook-port", itoa(webhookPort),
		"--webhook-local-url", "https://localhost:" + itoa(webhookPort), "--webhook-cert-dir", t.TempDir(),
		"--prometheus-url", "http://127.0.0.1:1", "--evaluation-interval", "2s", "--zap-encoder", "console",
	}
	out = &bytes.Buffer{}
	cmd := exec.Command(bin, append(base, args...)...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		select {
		case <-exited:
			t.Errorf("the operator exited during the test:\n%s", tail(out.String(), 40))
		default:
		}
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("operator output:\n%s", tail(out.String(), 80))
		}
	})
	ready := make(chan error, 1)
	go func() { ready <- testenv.WaitHTTP200("http://"+probes+"/readyz", 90*time.Second) }()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatalf("operator never became ready: %v\n%s", err, tail(out.String(), 60))
		}
	case <-exited:
		t.Fatalf("operator exited before it became ready:\n%s", tail(out.String(), 60))
	}
	return probes, metrics, out
}

// TestOperatorStartsOnAMayastor2xCluster: an API server with DiskPool and
// no MayastorVolume CRD, the default (REST) backend, and a REST API that is
// not there. The operator becomes ready and stays up, its webhooks answer,
// and a StoragePolicy says which call failed instead of moving anything.
// On the operator that watched MayastorVolume, /readyz never passed and the
// process exited after 120 s.
func TestOperatorStartsOnAMayastor2xCluster(t *testing.T) {
	// DiskPool served at v1beta3 only (OpenEBS 4.3+): every DiskPool reader
	// and watch must find the version the cluster serves.
	env := testenv.Start(t, testenv.MayastorV2("v1beta3"))
	_, _, _ = startOperatorProcess(t, env, "--mayastor-api-url", "http://127.0.0.1:1")

	// Webhooks work whatever the tiering backend's state: a policy naming an
	// ErasureCodingPolicy that does not exist (a cross-object rule only the
	// validating webhook checks) is refused.
	bad := policy("bad-ref")
	bad.Spec.ECPolicyRef = "does-not-exist"
	err := eventually(60*time.Second, func() error {
		err := env.Client.Create(ctx(t), bad)
		if err == nil {
			_ = env.Client.Delete(ctx(t), bad)
			return errString("an invalid StoragePolicy was admitted")
		}
		if !strings.Contains(err.Error(), "admission webhook") {
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatalf("webhook: %v", err)
	}

	pol := policy("rest-down")
	if err := env.Client.Create(ctx(t), pol); err != nil {
		t.Fatal(err)
	}
	var got storagev1.StoragePolicy
	err = eventually(60*time.Second, func() error {
		if err := env.Client.Get(ctx(t), client.ObjectKeyFromObject(pol), &got); err != nil {
			return err
		}
		c := meta.FindStatusCondition(got.Status.Conditions, "MayastorAvailable")
		if c == nil || c.Status != metav1.ConditionFalse {
			return errString("no MayastorAvailable=False condition yet")
		}
		if !strings.Contains(c.Message, "/v0/") || !strings.Contains(c.Message, "127.0.0.1:1") {
			return errString("the condition does not name the call and the URL: " + c.Message)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if r := meta.FindStatusCondition(got.Status.Conditions, "Ready"); r == nil || r.Status != metav1.ConditionFalse || r.Reason != "MayastorUnavailable" {
		t.Fatalf("Ready condition %+v, want False/MayastorUnavailable", r)
	}
	if len(got.Status.MigrationHistory) != 0 {
		t.Fatalf("history %+v: nothing may move while Mayastor cannot be read", got.Status.MigrationHistory)
	}
}

// TestMissingMayastorVolumeKindIsWatchedWhenItAppears: with the crd backend
// and no MayastorVolume CRD, the operator is ready, reports the kind as not
// served (metric, policy condition naming it), and watches it once the CRD
// is installed, without a restart.
func TestMissingMayastorVolumeKindIsWatchedWhenItAppears(t *testing.T) {
	env := testenv.Start(t, testenv.MayastorV2("v1beta2"))
	_, metrics, _ := startOperatorProcess(t, env, "--mayastor-backend", "crd", "--mayastor-kind-poll-interval", "1s")

	served := func(want string) error {
		resp, err := http.Get("http://" + metrics + "/metrics")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		line := `couchestor_optional_kind_served{controller="storagepolicy",kind="MayastorVolume.openebs.io",version="v1alpha1"} ` + want
		if !strings.Contains(string(b), line) {
			return errString("metrics lack " + line)
		}
		return nil
	}
	if err := eventually(60*time.Second, func() error { return served("0") }); err != nil {
		t.Fatal(err)
	}
	pol := policy("crd-missing")
	if err := env.Client.Create(ctx(t), pol); err != nil {
		t.Fatal(err)
	}
	condition := func(status metav1.ConditionStatus, contains string) error {
		var got storagev1.StoragePolicy
		if err := env.Client.Get(ctx(t), client.ObjectKeyFromObject(pol), &got); err != nil {
			return err
		}
		c := meta.FindStatusCondition(got.Status.Conditions, "MayastorAvailable")
		if c == nil || c.Status != status || !strings.Contains(c.Message, contains) {
			return errString("MayastorAvailable is not " + string(status) + " with " + contains)
		}
		return nil
	}
	if err := eventually(60*time.Second, func() error { return condition(metav1.ConditionFalse, "MayastorVolume") }); err != nil {
		t.Fatal(err)
	}

	if _, err := envtest.InstallCRDs(env.Config, envtest.CRDInstallOptions{
		Paths: []string{filepath.Join(testenv.Root(), "config", "crd", "external", "openebs.io_mayastorvolumes.yaml")}}); err != nil {
		t.Fatal(err)
	}
	if err := eventually(90*time.Second, func() error { return served("1") }); err != nil {
		t.Fatal(err)
	}
	if err := eventually(60*time.Second, func() error { return condition(metav1.ConditionTrue, "MayastorVolume") }); err != nil {
		t.Fatal(err)
	}
}

func policy(name string) *storagev1.StoragePolicy {
	sel := func(tier string) *metav1.LabelSelector {
		return &metav1.LabelSelector{MatchLabels: map[string]string{"tier": tier}}
	}
	return &storagev1.StoragePolicy{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: storagev1.StoragePolicySpec{HotPoolSelector: sel("hot"), ColdPoolSelector: sel("cold")}}
}

type errString string

func (e errString) Error() string { return string(e) }

// eventually polls f until it returns nil or the bound passes.
func eventually(bound time.Duration, f func() error) error {
	deadline := time.Now().Add(bound)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func itoa(i int) string { return strconv.Itoa(i) }
