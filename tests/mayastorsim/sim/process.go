package sim

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
)

// Binary builds the simulator command once per test process and returns its path.
func Binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "mayastorsim-")
		if err != nil {
			buildErr = err
			return
		}
		builtBin = filepath.Join(dir, "mayastorsim")
		_, file, _, _ := runtime.Caller(0)
		cmd := exec.Command("go", "build", "-o", builtBin, ".")
		cmd.Dir = filepath.Join(filepath.Dir(file), "..")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		buildErr = cmd.Run()
	})
	if buildErr != nil {
		t.Fatalf("build mayastorsim: %v", buildErr)
	}
	return builtBin
}

// Process is a simulator running as its own process.
type Process struct {
	Cmd    *exec.Cmd
	Addr   string // host:port of /metrics and /control
	Client *Client
	// REST is the base URL of the REST API /v0 ("http://host:port") with
	// --api=rest, "" otherwise.
	REST string
}

// Start runs the simulator process for scenario against kubeconfig, listening
// on listen (host:port), waits until it reports ready, and kills it when the
// test ends.
func Start(t testing.TB, kubeconfig, listen string, scenario *Scenario) *Process {
	t.Helper()
	return StartWithArgs(t, kubeconfig, listen, scenario)
}

// StartWithArgs is Start with extra command-line flags for the simulator,
// e.g. "--replica-behaviour" (end-to-end tests that let the operator migrate
// replicas).
func StartWithArgs(t testing.TB, kubeconfig, listen string, scenario *Scenario, extra ...string) *Process {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "scenario.json")
	b, err := json.MarshalIndent(scenario, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"--kubeconfig", kubeconfig, "--scenario", path, "--listen", listen, "--sync-interval", "500ms"}, extra...)
	cmd := exec.Command(Binary(t), args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &lockedWriter{w: &strings.Builder{}}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start mayastorsim: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("mayastorsim stderr:\n%s", stderr.String())
		}
	})
	ready := make(chan []string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			// "mayastorsim ready <addr>" or "mayastorsim ready <addr> rest=<url>"
			if f := strings.Fields(sc.Text()); len(f) >= 3 && f[0] == "mayastorsim" && f[1] == "ready" {
				ready <- f[2:]
			}
		}
		close(ready)
	}()
	select {
	case f, ok := <-ready:
		if !ok {
			t.Fatalf("mayastorsim exited before it was ready:\n%s", stderr.String())
		}
		p := &Process{Cmd: cmd, Addr: f[0], Client: &Client{Base: "http://" + f[0]}}
		for _, x := range f[1:] {
			if u, ok := strings.CutPrefix(x, "rest="); ok {
				p.REST = u
			}
		}
		return p
	case <-time.After(readyBound(scenario)):
		t.Fatalf("mayastorsim not ready within %s:\n%s", readyBound(scenario), stderr.String())
	}
	return nil
}

type lockedWriter struct {
	mu sync.Mutex
	w  *strings.Builder
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.String()
}

// readyBound is how long the simulator may take to create the scenario: 2
// minutes, plus 50 ms per volume (a PV and a PVC each; 10,000 volumes of a
// benchmark take minutes on a busy machine).
func readyBound(sc *Scenario) time.Duration {
	return 2*time.Minute + time.Duration(len(sc.Volumes))*50*time.Millisecond
}
