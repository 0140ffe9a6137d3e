package testenv

import (
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Addr is "127.0.0.1:port".
func Addr(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }

// WriteKubeconfig writes the environment's admin kubeconfig into dir.
func (e *Env) WriteKubeconfig(t testing.TB, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(p, e.KubeConfig, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
)

// OperatorBinary returns the couchestor binary to run as a process: the one
// `make test` built (COUCHESTOR_BIN), else a fresh build into a temp dir.
func OperatorBinary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("COUCHESTOR_BIN"); p != "" {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "couchestor-bin-")
		if err != nil {
			buildErr = err
			return
		}
		builtBin = filepath.Join(dir, "couchestor")
		cmd := exec.Command("go", "build", "-o", builtBin, ".")
		cmd.Dir = Root()
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		buildErr = cmd.Run()
	})
	if buildErr != nil {
		t.Fatalf("build couchestor: %v", buildErr)
	}
	return builtBin
}

// WaitHTTP200 polls url until it answers 200 or the timeout passes, and
// returns the last error.
func WaitHTTP200(url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = &httpStatusError{url: url, code: resp.StatusCode}
		} else {
			last = err
		}
		time.Sleep(200 * time.Millisecond)
	}
	return last
}

type httpStatusError struct {
	url  string
	code int
}

func (e *httpStatusError) Error() string { return e.url + ": HTTP " + strconv.Itoa(e.code) }
