package foundation

import (
	"bytes"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/billyronks/couchestor/tests/testenv"
)

// The operator binary, run as users run it: it becomes ready against a real
// API server, takes the leader Lease, serves /metrics, and exits 0 on SIGTERM.
func TestManagerBinaryStartsServesAndStopsOnSIGTERM(t *testing.T) {
	env := testenv.Start(t)
	bin := testenv.OperatorBinary(t)
	kubeconfig := env.WriteKubeconfig(t, t.TempDir())
	metrics, probes := testenv.FreePort(t), testenv.FreePort(t)

	var out bytes.Buffer
	cmd := exec.Command(bin,
		"--kubeconfig", kubeconfig,
		"--metrics-bind-address", testenv.Addr(metrics),
		"--health-probe-bind-address", testenv.Addr(probes),
		"--leader-election-namespace", "default",
		"--enable-webhooks=false",
	)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		if t.Failed() {
			t.Logf("operator output:\n%s", out.String())
		}
	})

	ready := make(chan error, 1)
	go func() { ready <- testenv.WaitHTTP200("http://"+testenv.Addr(probes)+"/readyz", 60*time.Second) }()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatalf("operator never became ready: %v", err)
		}
	case err := <-exited:
		t.Fatalf("operator exited before it became ready: %v", err)
	}
	if err := testenv.WaitHTTP200("http://"+testenv.Addr(probes)+"/healthz", 10*time.Second); err != nil {
		t.Fatalf("healthz: %v", err)
	}
	resp, err := http.Get("http://" + testenv.Addr(metrics) + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "controller_runtime_") {
		t.Fatalf("/metrics answered %d without controller-runtime metrics", resp.StatusCode)
	}

	// Leader election is on by default: the Lease names this process.
	lease := &coordinationv1.Lease{}
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := env.Client.Get(ctx(t), client.ObjectKey{Namespace: "default", Name: "couchestor.storage.billyronks.io"}, lease)
		if err == nil && lease.Spec.HolderIdentity != nil && *lease.Spec.HolderIdentity != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no leader Lease held: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("operator exited with %v after SIGTERM", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("operator did not exit within 60s of SIGTERM")
	}
	if !strings.Contains(out.String(), "stopped cleanly") {
		t.Errorf("no clean-stop log line in output")
	}
	// The Lease is released on a clean stop so a standby takes over at once.
	if err := env.Client.Get(ctx(t), client.ObjectKey{Namespace: "default", Name: "couchestor.storage.billyronks.io"}, lease); err == nil {
		if lease.Spec.HolderIdentity != nil && *lease.Spec.HolderIdentity != "" {
			t.Errorf("Lease still held by %q after a clean stop", *lease.Spec.HolderIdentity)
		}
	}
}

func TestHelpExplainsEveryFlag(t *testing.T) {
	out, err := exec.Command(testenv.OperatorBinary(t), "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("--help: %v\n%s", err, out)
	}
	for _, f := range []string{"-metrics-bind-address", "-health-probe-bind-address", "-leader-elect", "-mayastor-namespace", "-zap-log-level", "-zap-encoder"} {
		if !strings.Contains(string(out), f) {
			t.Errorf("--help does not mention %s", f)
		}
	}
}
