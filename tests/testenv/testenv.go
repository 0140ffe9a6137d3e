// Package testenv starts a real kube-apiserver and etcd (controller-runtime's
// envtest) with every CRD CoucheStor installs, for integration tests. The
// binaries come from `make envtest` (hack/envtest.sh) through
// KUBEBUILDER_ASSETS; `make test` always sets it. Outside make, tests that
// need the control plane skip with a message saying how to run them.
package testenv

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/billyronks/couchestor/internal/scheme"
)

// Root is the repository root.
func Root() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// CRDPaths are CoucheStor's own CRDs and the Mayastor CRDs it consumes.
func CRDPaths() []string {
	return []string{
		filepath.Join(Root(), "config", "crd", "bases"),
		filepath.Join(Root(), "config", "crd", "external"),
	}
}

// RequireAssets skips the test when no control-plane binaries are configured.
func RequireAssets(t testing.TB) {
	t.Helper()
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		t.Skip("KUBEBUILDER_ASSETS is not set: run through `make test` (or export KUBEBUILDER_ASSETS=$(hack/envtest.sh))")
	}
}

// Env is a running control plane.
type Env struct {
	*envtest.Environment
	Config *rest.Config
	Client client.Client
}

// StartTimeout bounds the start (and stop) of a test control plane.
const StartTimeout = 2 * time.Minute

// Start starts kube-apiserver and etcd with every CRD installed and stops them
// when the test ends. Options may adjust the environment before it starts.
func Start(t testing.TB, opts ...func(*envtest.Environment)) *Env {
	t.Helper()
	RequireAssets(t)
	env := &envtest.Environment{
		CRDDirectoryPaths:     CRDPaths(),
		ErrorIfCRDPathMissing: true,
		Scheme:                scheme.New(),
		// envtest's default (20 s) is missed on a loaded 2-core machine
		// (seen: kube-apiserver "timeout waiting … to start", 5 retries):
		// a generous bound, never a skip.
		ControlPlaneStartTimeout: StartTimeout,
		ControlPlaneStopTimeout:  StartTimeout,
	}
	for _, o := range opts {
		o(env)
	}
	cfg, err := env.Start()
	if err != nil {
		// Start leaves etcd and kube-apiserver running when a later step
		// (e.g. CRD installation) fails: stop them so no process leaks.
		_ = env.Stop()
		t.Fatalf("start envtest control plane: %v", err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Logf("stop envtest: %v", err)
		}
	})
	c, err := client.New(cfg, client.Options{Scheme: env.Scheme})
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	return &Env{Environment: env, Config: cfg, Client: c}
}
