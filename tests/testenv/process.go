package testenv

import (
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// FreePort returns a loopback TCP port that is free and reserved for this
// test process: no other FreePort caller, in this process or another one
// running at the same time, gets it while this process lives.
//
// A port picked by binding :0 comes from the kernel's ephemeral range, from
// which every outgoing connection (and every other :0 bind on the machine,
// e.g. envtest's own) also takes its source port, so between the pick and
// the child process binding it another socket could take it ("bind: address
// already in use", seen in CI with the test packages running side by side).
// So the port is chosen below the ephemeral range, and reserved across
// processes by an flock on a file per port, released when the process exits.
func FreePort(t testing.TB) int {
	t.Helper()
	portMu.Lock()
	defer portMu.Unlock()
	lo, hi := 10000, ephemeralStart()-1
	if hi-lo < 1000 {
		// An unusual ephemeral range: fall back to the kernel's pick.
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port
	}
	dir := filepath.Join(os.TempDir(), "couchestor-test-ports")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for range 1000 {
		port := lo + rand.IntN(hi-lo+1)
		if portsHeld[port] != nil {
			continue
		}
		f, err := os.OpenFile(filepath.Join(dir, strconv.Itoa(port)), os.O_CREATE|os.O_RDWR, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			_ = f.Close() // another test process holds it
			continue
		}
		l, err := net.Listen("tcp", Addr(port))
		if err != nil {
			_ = f.Close() // in use by something that is not a test
			continue
		}
		_ = l.Close()
		portsHeld[port] = f // kept open (and locked) until the process exits
		return port
	}
	t.Fatalf("no free loopback port in [%d, %d] after 1000 tries", lo, hi)
	return 0
}

var (
	portMu    sync.Mutex
	portsHeld = map[int]*os.File{}
)

// ephemeralStart is the first port of the kernel's ephemeral range
// (32768 when it cannot be read, Linux's default).
func ephemeralStart() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(b))
	if len(f) < 1 {
		return 32768
	}
	n, err := strconv.Atoi(f[0])
	if err != nil {
		return 32768
	}
	return n
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
