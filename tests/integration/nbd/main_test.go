// Package nbd_test exercises the NBD export with unmodified Debian clients
// (qemu-io, qemu-img, nbdcopy, nbdinfo, fio) against a live server on
// loopback. The server is this test binary re-executed (serveChild), so a
// test can SIGKILL it and start it again on the same data directory.
//
// The clients come from hack/nbd-clients.sh; tests skip, saying which tool is
// missing, when they are absent.
package nbd_test

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/billyronks/couchestor/pkg/ecvolume"
	"github.com/billyronks/couchestor/pkg/journal"
	"github.com/billyronks/couchestor/pkg/nbd"
)

// Environment of the child server process.
const (
	envServe  = "COUCHESTOR_NBD_TEST_SERVE"  // backend: "memory", "volume" or "ecvolume"
	envDir    = "COUCHESTOR_NBD_TEST_DIR"    // volume data directory
	envSize   = "COUCHESTOR_NBD_TEST_SIZE"   // export size in bytes
	envStripe = "COUCHESTOR_NBD_TEST_STRIPE" // "memory" or "file"
	envJSize  = "COUCHESTOR_NBD_TEST_JOURNAL_BYTES"
	exportNm  = "vol"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(envServe); mode != "" {
		if err := serveChild(mode); err != nil {
			fmt.Fprintln(os.Stderr, "serve:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	flag.Parse()
	os.Exit(m.Run())
}

// serveChild runs the export until SIGTERM and prints "LISTENING addr".
func serveChild(mode string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	size, err := strconv.ParseInt(os.Getenv(envSize), 10, 64)
	if err != nil {
		return fmt.Errorf("%s: %w", envSize, err)
	}
	var be nbd.Backend
	switch mode {
	case "memory":
		if be, err = nbd.NewMemoryBackend(size); err != nil {
			return err
		}
	case "volume":
		v, err := openTestVolume(ctx, os.Getenv(envDir), size)
		if err != nil {
			return err
		}
		defer v.Close()
		be = v
	case "ecvolume": // an ECVolume with its journal on shard servers (journal_remote_test.go)
		v, err := openRemoteJournalVolume(ctx)
		if err != nil {
			return err
		}
		defer v.Close()
		be = v
	default:
		return fmt.Errorf("unknown backend %q", mode)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Printf("LISTENING %s\n", l.Addr())
	s := &nbd.Server{Exports: []nbd.Export{{Name: exportNm, Description: "couchestor test export (" + mode + ")", Backend: be}},
		Logf: func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }}
	return s.Serve(ctx, l)
}

// openTestVolume builds the journal-backed VolumeBackend: three journal
// replicas (FileStores) in dir, a stripe store (in memory, or a durable local
// file for crash tests), and an L1 + L2 cache.
func openTestVolume(ctx context.Context, dir string, size int64) (*ecvolume.VolumeBackend, error) {
	const stripeSize = 1 << 20
	var stores []journal.Store
	for i := 0; i < 3; i++ {
		s, err := journal.OpenFileStore(filepath.Join(dir, fmt.Sprintf("journal-%d", i)))
		if err != nil {
			return nil, err
		}
		stores = append(stores, s)
	}
	var stripes ecvolume.StripeStore
	switch os.Getenv(envStripe) {
	case "file":
		fs, err := ecvolume.OpenFileStripeStore(filepath.Join(dir, "stripes"), stripeSize)
		if err != nil {
			return nil, err
		}
		stripes = fs
	default:
		stripes = ecvolume.NewMemoryStripeStore(stripeSize)
	}
	jsize := int64(64 << 20)
	if s := os.Getenv(envJSize); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", envJSize, err)
		}
		jsize = n
	}
	return ecvolume.Open(ctx, ecvolume.Options{
		Name: exportNm, SizeBytes: size, StripeSizeBytes: stripeSize,
		JournalStores: stores, Journal: journal.Options{SizeBytes: jsize},
		DestageThresholdPercent: 50, DestageInterval: 200 * time.Millisecond,
		Stripes:        stripes,
		Cache:          &ecvolume.CacheOptions{MemoryBytes: 32 << 20, DiskDir: filepath.Join(dir, "cache"), DiskBytes: 64 << 20},
		OnDestageError: func(err error) { fmt.Fprintln(os.Stderr, "destage:", err) },
	})
}

// server is a running child export.
type server struct {
	cmd  *exec.Cmd
	addr string
	done chan error
}

func (s *server) uri() string { return "nbd://" + s.addr + "/" + exportNm }

type serverOpts struct {
	backend      string // memory | volume
	stripe       string // memory | file
	dir          string
	size         int64
	journalBytes int64
}

func startServer(t *testing.T, o serverOpts) *server {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envServe+"="+o.backend, envDir+"="+o.dir, envSize+"="+strconv.FormatInt(o.size, 10),
		envStripe+"="+o.stripe, envJSize+"="+strconv.FormatInt(o.journalBytes, 10))
	if o.journalBytes == 0 {
		cmd.Env = append(cmd.Env, envJSize+"=")
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = &testWriter{t: t}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &server{cmd: cmd, done: make(chan error, 1)}
	lines := bufio.NewScanner(stdout)
	addrc := make(chan string, 1)
	go func() {
		for lines.Scan() {
			if a, ok := strings.CutPrefix(lines.Text(), "LISTENING "); ok {
				addrc <- a
			}
		}
	}()
	go func() { s.done <- cmd.Wait() }()
	select {
	case s.addr = <-addrc:
	case err := <-s.done:
		t.Fatalf("server exited before listening: %v", err)
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("server did not listen within 60s")
	}
	t.Cleanup(func() { s.stop(t) })
	return s
}

// stop ends the server with SIGTERM (a clean shutdown) if it still runs.
func (s *server) stop(t *testing.T) {
	if s.cmd.ProcessState != nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
		t.Errorf("server ignored SIGTERM for 30s")
	}
}

// kill SIGKILLs the server and waits for it to be gone.
func (s *server) kill() {
	_ = s.cmd.Process.Kill()
	<-s.done
}

type testWriter struct{ t *testing.T }

func (w *testWriter) Write(p []byte) (int, error) {
	w.t.Logf("server: %s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// need skips the test when a client tool is absent.
func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not found in PATH: install the NBD clients with hack/nbd-clients.sh (make test does)", tool)
		}
	}
}

// run runs a client tool and returns its combined output, failing on error.
func run(t *testing.T, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		cmdline := strings.Join(args, " ")
		if len(cmdline) > 300 {
			cmdline = cmdline[:300] + "..."
		}
		t.Fatalf("%s %s: %v\n%s", name, cmdline, err, failureLines(string(out)))
	}
	return string(out)
}

// failureLines keeps a long tool output readable: the lines that report a
// failure, or the output itself when it is short.
func failureLines(out string) string {
	if len(out) < 4000 {
		return out
	}
	var keep []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(strings.ToLower(l), "fail") || strings.Contains(strings.ToLower(l), "error") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}
