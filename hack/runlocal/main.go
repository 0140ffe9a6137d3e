// Command runlocal is `make run-local`: it starts a local control plane
// (kube-apiserver + etcd from hack/envtest.sh), installs every CRD, runs the
// operator binary against it as its own process, writes the kubeconfig to
// .local/kubeconfig and prints how to talk to it. Ctrl-C (or SIGTERM) stops
// the operator, then the control plane, and removes the control plane's
// temporary files.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/billyronks/couchestor/internal/scheme"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "run-local: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	// If make (our parent) is terminated, we are too, and clean up below.
	_, _, _ = syscall.RawSyscall(syscall.SYS_PRCTL, syscall.PR_SET_PDEATHSIG, uintptr(syscall.SIGTERM), 0)
	bin := flag.String("bin", "bin/couchestor", "operator binary to run")
	dir := flag.String("dir", ".local", "directory for the kubeconfig and logs (git-ignored)")
	metrics := flag.String("metrics", "127.0.0.1:8080", "operator metrics address")
	probes := flag.String("probes", "127.0.0.1:8081", "operator health probe address")
	mayastorNS := flag.String("mayastor-namespace", "mayastor", "namespace for Mayastor's objects")
	flag.Parse()
	extra := flag.Args()

	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		return errors.New("KUBEBUILDER_ASSETS is not set: run `make run-local`, which provides the control plane via hack/envtest.sh")
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		return err
	}
	root, _ := os.Getwd()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	fmt.Println("starting the local control plane (kube-apiserver + etcd)...")
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(root, "config/crd/bases"), filepath.Join(root, "config/crd/external")},
		ErrorIfCRDPathMissing: true,
		Scheme:                scheme.New(),
	}
	cfg, err := env.Start()
	if err != nil {
		_ = env.Stop() // a failed Start can leave etcd and kube-apiserver running
		return fmt.Errorf("start control plane: %w", err)
	}
	defer func() {
		fmt.Println("stopping the control plane...")
		if err := env.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "stop control plane: %v\n", err)
		}
	}()

	kubeconfig, _ := filepath.Abs(filepath.Join(*dir, "kubeconfig"))
	if err := os.WriteFile(kubeconfig, env.KubeConfig, 0o600); err != nil {
		return err
	}
	c, err := client.New(cfg, client.Options{Scheme: env.Scheme})
	if err != nil {
		return err
	}
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: *mayastorNS}}); err != nil {
		return fmt.Errorf("create namespace %s: %w", *mayastorNS, err)
	}

	logPath := filepath.Join(*dir, "operator.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logFile.Close()
	args := append([]string{
		"--kubeconfig", kubeconfig,
		"--metrics-bind-address", *metrics,
		"--health-probe-bind-address", *probes,
		"--leader-election-namespace", "default",
		"--mayastor-namespace", *mayastorNS,
		"--zap-encoder", "console",
		// Webhooks in self-signed mode, reached by the API server on loopback.
		"--webhook-cert-mode", "self-signed",
		"--webhook-local-url", "https://localhost:9443",
		"--webhook-cert-dir", filepath.Join(root, *dir, "webhook-certs"),
		"--webhook-namespace", "default",
	}, extra...)
	op := exec.Command(*bin, args...)
	op.Stdout, op.Stderr = logFile, logFile
	op.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := op.Start(); err != nil {
		return fmt.Errorf("start operator %s: %w", *bin, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- op.Wait() }()

	kubectl := filepath.Join(assets, "kubectl")
	fmt.Printf(`
CoucheStor is running against a local control plane.

  kubeconfig:   %[1]s
  kubectl:      %[2]s
  operator log: %[3]s
  metrics:      http://%[4]s/metrics
  readiness:    http://%[5]s/readyz

Try:
  export KUBECONFIG=%[1]s
  %[2]s get crd
  %[2]s get sp,ecp,ecs
  %[2]s get couchestor
  %[2]s apply -f config/samples/storage_v1_erasurecodingpolicy.yaml
  %[2]s apply -f config/samples/storage_v1_storagepolicy.yaml

Ctrl-C stops everything.
`, kubeconfig, kubectl, logPath, *metrics, *probes)

	select {
	case <-ctx.Done():
		fmt.Println("\nstopping the operator...")
		_ = op.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(40 * time.Second):
			_ = op.Process.Kill()
			<-exited
		}
		return nil
	case err := <-exited:
		return fmt.Errorf("the operator exited (%v); see %s", err, logPath)
	}
}
