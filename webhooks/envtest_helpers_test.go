package webhooks

import (
	"context"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/billyronks/couchestor/internal/scheme"
)

func needEnvtest(t *testing.T) {
	t.Helper()
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		t.Skip("KUBEBUILDER_ASSETS is unset: run `make test`, or KUBEBUILDER_ASSETS=$(hack/envtest.sh) go test ./webhooks/")
	}
}

// startAPIServer starts kube-apiserver+etcd with the CRDs, and with the
// generated webhook configurations when webhooks is true.
func startAPIServer(t *testing.T, webhooks bool) (*envtest.Environment, *rest.Config) {
	t.Helper()
	needEnvtest(t)
	env := &envtest.Environment{CRDDirectoryPaths: []string{"../config/crd/bases"}, ErrorIfCRDPathMissing: true,
		ControlPlaneStartTimeout: 2 * time.Minute, ControlPlaneStopTimeout: 2 * time.Minute}
	if webhooks {
		env.WebhookInstallOptions = envtest.WebhookInstallOptions{Paths: []string{"../config/webhook/manifests.yaml"}}
	}
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("start envtest: %v", err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Logf("stop envtest: %v", err)
		}
	})
	return env, cfg
}

// startManager runs a manager with mgrOpts and the webhooks of Setup(opts),
// and waits until the returned readiness check passes.
func startManager(t *testing.T, cfg *rest.Config, mgrOpts ctrl.Options, opts Options) {
	t.Helper()
	m := startManagerAsync(t, cfg, mgrOpts, opts)
	waitReady(t, m.ready, m.done)
}

// runningManager is a started manager: its readiness check and exit.
type runningManager struct {
	ready healthz.Checker
	done  chan error
}

// startManagerAsync is startManager without waiting for readiness.
func startManagerAsync(t *testing.T, cfg *rest.Config, mgrOpts ctrl.Options, opts Options) runningManager {
	t.Helper()
	mgrOpts.Scheme = scheme.New()
	// Several managers run in this one test process (the cert rotator's
	// controller name is process-global otherwise).
	mgrOpts.Controller.SkipNameValidation = ptr.To(true)
	mgrOpts.Metrics = metricsserver.Options{BindAddress: "0"}
	mgrOpts.HealthProbeBindAddress = "0"
	mgr, err := ctrl.NewManager(cfg, mgrOpts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready, err := Setup(ctx, mgr, opts)
	if err != nil {
		cancel()
		t.Fatalf("Setup: %v", err)
	}
	done := make(chan error, 1)
	exited := make(chan error, 1)
	go func() { err := mgr.Start(ctx); done <- err; exited <- err }()
	t.Cleanup(func() {
		cancel()
		if err := <-exited; err != nil {
			t.Errorf("manager: %v", err)
		}
	})
	return runningManager{ready: ready, done: done}
}

func waitReady(t *testing.T, ready healthz.Checker, done chan error) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		select {
		case err := <-done:
			t.Fatalf("manager exited before ready: %v", err)
		default:
		}
		if last = ready(httptest.NewRequest("GET", "/readyz", nil)); last == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("webhooks not ready after 90s: %v", last)
}

// warnings collects the admission warnings the API server relays.
type warnings struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warnings) HandleWarningHeader(_ int, _ string, text string) {
	w.mu.Lock()
	w.msgs = append(w.msgs, text)
	w.mu.Unlock()
}

// take returns and clears the collected warnings.
func (w *warnings) take() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := strings.Join(w.msgs, "\n")
	w.msgs = nil
	return s
}

func newClient(t *testing.T, cfg *rest.Config) (client.Client, *warnings) {
	t.Helper()
	w := &warnings{}
	c2 := rest.CopyConfig(cfg)
	c2.WarningHandler = w
	c, err := client.New(c2, client.Options{Scheme: scheme.New()})
	if err != nil {
		t.Fatal(err)
	}
	return c, w
}

func wantRefused(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("accepted; want refusal containing %q", parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Fatalf("refusal %q does not contain %q", err, p)
		}
	}
}

func wantAccepted(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("refused: %v", err)
	}
}
