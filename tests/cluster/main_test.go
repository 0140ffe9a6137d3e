// Package cluster runs CoucheStor in a real single-node Kubernetes
// (hack/cluster.sh: containerd, kubelet, kube-proxy, the control plane) and
// installs it with the real helm CLI: the chart's pods, the in-cluster
// webhook path through the Service, authenticated metrics, and a DataPlane
// whose shard-server StatefulSets the operator's Helm reconciler installs.
//
// It runs only with COUCHESTOR_CLUSTER_TESTS=1, which `make test-cluster`
// sets; `make test` runs it after every other package wherever
// `hack/cluster.sh can` says the machine can (see the README). The cluster is
// brought up once in TestMain and always torn down.
package cluster

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

var (
	root       string // repository root
	kubeconfig string
	kubectlBin string
	helmBin    string
	// runDir is the cluster's run directory (hostPath data lives below it).
	runDir string
	// csiSkipped says why the CSI steps do not run ("" when they do).
	csiSkipped string
)

func TestMain(m *testing.M) {
	if os.Getenv("COUCHESTOR_CLUSTER_TESTS") != "1" {
		fmt.Fprintln(os.Stderr, "tests/cluster: SKIPPED: set COUCHESTOR_CLUSTER_TESTS=1 (make test-cluster) on a root Linux machine to run it")
		os.Exit(0)
	}
	os.Exit(run(m))
}

func run(m *testing.M) (code int) {
	_, file, _, _ := runtime.Caller(0)
	root = filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
	runDir = os.Getenv("COUCHESTOR_CLUSTER_DIR")
	if runDir == "" {
		runDir = "/var/tmp/couchestor-cluster"
	}
	if why, err := script("can"); err != nil {
		fmt.Fprintf(os.Stderr, "tests/cluster: this machine cannot run the cluster: %s\n", why)
		return 1
	}
	bins, err := script("bins")
	if err != nil {
		fmt.Fprintf(os.Stderr, "tests/cluster: build the cluster binaries: %v\n", err)
		return 1
	}
	kubectlBin = filepath.Join(bins, "kubectl")
	if os.Getenv("COUCHESTOR_CLUSTER_NO_HELM") == "" { // steps without helm only (debugging)
		if helmBin, err = script("helm"); err != nil {
			fmt.Fprintf(os.Stderr, "tests/cluster: build helm: %v\n", err)
			return 1
		}
	}

	// Whatever happens from here on, the cluster goes down (a signal too).
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case s := <-sig:
			fmt.Fprintf(os.Stderr, "tests/cluster: %v: taking the cluster down\n", s)
			// Processes of the story on the node first: they inherit the
			// cluster lock's descriptor from flock and would hold it.
			stopConversionStory()
			down(true)
			os.Exit(1)
		case <-done:
		}
	}()

	// A cluster already up (make cluster-up): use it, leave it running.
	if kc := os.Getenv("COUCHESTOR_CLUSTER_KUBECONFIG"); kc != "" {
		kubeconfig = kc
		fmt.Fprintf(os.Stderr, "tests/cluster: using the running cluster of %s (not taken down)\n", kc)
		return m.Run()
	}
	// The CSI steps' images (sidecars, node plugin, workload), imported by
	// up. Two of the sidecars build only from their git tags: where those
	// cannot be had (no cache, no mirror, no github.com, as on a fresh CI
	// machine of this workplace), or with COUCHESTOR_CLUSTER_CSI=0, the CSI
	// steps are skipped, said loudly here and in each step.
	switch why, err := script("csi-can"); {
	case os.Getenv("COUCHESTOR_CLUSTER_CSI") == "0":
		csiSkipped = "COUCHESTOR_CLUSTER_CSI=0 was set"
	case err != nil:
		csiSkipped = why
	}
	if csiSkipped != "" {
		fmt.Fprintf(os.Stderr, "\n!!!!!!!! tests/cluster: the CSI steps are SKIPPED: %s !!!!!!!!\n\n", csiSkipped)
	} else {
		imgs, err := script("csi-images")
		if err != nil {
			fmt.Fprintf(os.Stderr, "tests/cluster: build the CSI images: %v\n", err)
			return 1
		}
		os.Setenv("COUCHESTOR_CLUSTER_EXTRA_IMAGES", imgs)
	}
	start := time.Now()
	kc, err := script("up")
	if err != nil {
		fmt.Fprintf(os.Stderr, "tests/cluster: cluster up: %v\n", err)
		down(true)
		return 1
	}
	kubeconfig = kc
	fmt.Fprintf(os.Stderr, "tests/cluster: cluster up in %s\n", time.Since(start).Round(time.Second))
	defer func() {
		if n, err := script("guard"); err != nil || strings.TrimSpace(n) != "0" {
			fmt.Fprintf(os.Stderr, "tests/cluster: the guard rules dropped %q packets (err %v): something tried to leave the machine\n", n, err)
			code = 1
		}
		down(code != 0)
	}()
	return m.Run()
}

// down removes the cluster; keepLogs copies its logs to bin/cluster-logs.
func down(keepLogs bool) {
	cmd := exec.Command(filepath.Join(root, "hack", "cluster.sh"), "down")
	cmd.Env = os.Environ()
	if keepLogs {
		logs := filepath.Join(root, "bin", "cluster-logs")
		cmd.Env = append(cmd.Env, "COUCHESTOR_CLUSTER_KEEP_LOGS="+logs)
	}
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "tests/cluster: cluster down: %v\n", err)
	}
}

// script runs hack/cluster.sh ARG and returns its one stdout line.
func script(arg string) (string, error) {
	cmd := exec.Command(filepath.Join(root, "hack", "cluster.sh"), arg)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, os.Stderr
	err := cmd.Run()
	s := strings.TrimSpace(out.String())
	if err != nil {
		return s, fmt.Errorf("hack/cluster.sh %s: %w (%s)", arg, err, s)
	}
	return s, nil
}

// kubectl runs kubectl against the cluster; stdin may be empty.
func kubectl(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	return runTool(t, kubectlBin, stdin, append([]string{"--kubeconfig", kubeconfig}, args...)...)
}

func mustKubectl(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	out, err := kubectl(t, stdin, args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func helm(t *testing.T, args ...string) (string, error) {
	t.Helper()
	return runTool(t, helmBin, "", append([]string{"--kubeconfig", kubeconfig}, args...)...)
}

func runTool(t *testing.T, bin, stdin string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = root
	// helm keeps caches and config under $HOME: a throwaway one per run.
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+filepath.Join(t.TempDir(), "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(t.TempDir(), "config"), "HELM_DATA_HOME="+filepath.Join(t.TempDir(), "data"))
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// eventually polls cond until it returns true or the bound passes; bounds are
// generous (a shared 2-core machine), the poll is what makes the test fast.
func eventually(t *testing.T, what string, bound time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(bound)
	var last string
	for {
		ok, s := cond()
		if ok {
			return
		}
		last = s
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after %s; last: %s", what, bound, last)
		}
		time.Sleep(time.Second)
	}
}
