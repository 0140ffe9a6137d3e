package foundation

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/billyronks/couchestor/tests/testenv"
)

// /readyz fails while the informer caches have not synced, and passes once
// they have. The operator runs as a user without any RBAC grant, so no
// informer can list; /healthz answers meanwhile (the process is alive). Once
// the user is granted cluster-admin the caches sync and /readyz passes.
// (Mayastor's kinds would not do: they are optional watches and never hold
// readiness back — TestOperatorStartsOnAMayastor2xCluster.)
func TestReadyzFailsUntilTheCachesSync(t *testing.T) {
	env := testenv.Start(t)
	user, err := env.ControlPlane.AddUser(envtest.User{Name: "couchestor-readyz", Groups: []string{"couchestor-readyz"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := user.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	bin := testenv.OperatorBinary(t)
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
		t.Fatalf("/readyz answered %d before the caches could sync (no RBAC grant):\n%s", resp.StatusCode, body)
	}

	grant := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "couchestor-readyz"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "cluster-admin"},
		Subjects: []rbacv1.Subject{{Kind: "Group", APIGroup: "rbac.authorization.k8s.io", Name: "couchestor-readyz"}}}
	if err := env.Client.Create(ctx(t), grant); err != nil {
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
