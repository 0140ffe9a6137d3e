package foundation

import (
	"bytes"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/billyronks/couchestor/tests/testenv"
)

// /readyz fails while the informer caches have not synced, and passes once
// they have. The caches cannot sync while the Mayastor CRDs the operator
// watches are absent; /healthz answers meanwhile (the process is alive).
func TestReadyzFailsUntilTheCachesSync(t *testing.T) {
	env := testenv.Start(t, func(e *envtest.Environment) {
		e.CRDDirectoryPaths = []string{filepath.Join(testenv.Root(), "config", "crd", "bases")}
	})
	bin := testenv.OperatorBinary(t)
	kubeconfig := env.WriteKubeconfig(t, t.TempDir())
	probes := testenv.FreePort(t)
	var out bytes.Buffer
	cmd := exec.Command(bin, "--kubeconfig", kubeconfig, "--metrics-bind-address", "0",
		"--health-probe-bind-address", testenv.Addr(probes), "--leader-elect=false", "--enable-webhooks=false")
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

	if err := testenv.WaitHTTP200("http://"+testenv.Addr(probes)+"/healthz", 60*time.Second); err != nil {
		t.Fatalf("healthz: %v", err)
	}
	resp, err := http.Get("http://" + testenv.Addr(probes) + "/readyz?verbose")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK || !strings.Contains(string(body), "[-]informers") {
		t.Fatalf("/readyz answered %d before the caches could sync (DiskPool and MayastorVolume CRDs absent):\n%s", resp.StatusCode, body)
	}

	if _, err := envtest.InstallCRDs(env.Config, envtest.CRDInstallOptions{
		Paths: []string{filepath.Join(testenv.Root(), "config", "crd", "external")}, ErrorIfPathMissing: true,
	}); err != nil {
		t.Fatal(err)
	}
	ready := make(chan error, 1)
	go func() { ready <- testenv.WaitHTTP200("http://"+testenv.Addr(probes)+"/readyz", 90*time.Second) }()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatalf("/readyz after the CRDs were installed: %v", err)
		}
	case err := <-exited:
		t.Fatalf("operator exited before it became ready: %v", err)
	}
}
