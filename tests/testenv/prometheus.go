package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// PrometheusOptions configure a real Prometheus server process.
type PrometheusOptions struct {
	// Bin is the prometheus binary (COUCHESTOR_PROMETHEUS, hack/prometheus.sh).
	Bin string
	// Addr is the listen address host:port. It stays the same across
	// Stop/Start, so clients configured with URL() reach the restarted server.
	Addr string
	// Interval is the scrape (and evaluation) interval.
	Interval time.Duration
	// Targets are the host:port addresses of the one job, named Job
	// (default "mayastor-io-engine", as the io-engine's exporter is scraped).
	Targets []string
	Job     string
}

// Prometheus is a real Prometheus server process scraping Targets. It can be
// stopped and started again on the same address and data directory: an
// outage after which the server comes back with its TSDB, and a gap in it.
type Prometheus struct {
	t    testing.TB
	opts PrometheusOptions
	dir  string
	cmd  *exec.Cmd
	done chan struct{}
	out  *syncBuffer
}

// StartPrometheus writes the configuration, starts the server, waits until
// it is ready and stops it when the test ends.
func StartPrometheus(t testing.TB, opts PrometheusOptions) *Prometheus {
	t.Helper()
	if opts.Bin == "" {
		t.Fatal("testenv.StartPrometheus: no binary (COUCHESTOR_PROMETHEUS / hack/prometheus.sh)")
	}
	if opts.Job == "" {
		opts.Job = "mayastor-io-engine"
	}
	p := &Prometheus{t: t, opts: opts, dir: t.TempDir()}
	var targets []string
	for _, x := range opts.Targets {
		targets = append(targets, fmt.Sprintf("%q", x))
	}
	cfg := fmt.Sprintf("global:\n  scrape_interval: %s\n  evaluation_interval: %s\nscrape_configs:\n  - job_name: %s\n    static_configs:\n      - targets: [%s]\n",
		opts.Interval, opts.Interval, opts.Job, strings.Join(targets, ", "))
	if err := os.WriteFile(filepath.Join(p.dir, "prometheus.yml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p.Start()
	t.Cleanup(p.Stop)
	return p
}

// URL is "http://" + the listen address.
func (p *Prometheus) URL() string { return "http://" + p.opts.Addr }

// Addr is the listen address.
func (p *Prometheus) Addr() string { return p.opts.Addr }

// Output is what the server printed since its latest start.
func (p *Prometheus) Output() string {
	if p.out == nil {
		return ""
	}
	return p.out.String()
}

// Start runs the server (again) and waits until /-/ready answers.
func (p *Prometheus) Start() {
	p.t.Helper()
	p.out = &syncBuffer{}
	cmd := exec.Command(p.opts.Bin,
		"--config.file="+filepath.Join(p.dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(p.dir, "data"),
		"--web.listen-address="+p.opts.Addr,
		"--storage.tsdb.retention.time=1h",
	)
	cmd.Stdout, cmd.Stderr = p.out, p.out
	// The server dies with the test binary even if that is killed outright.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		p.t.Fatalf("start prometheus: %v", err)
	}
	p.cmd, p.done = cmd, make(chan struct{})
	go func(done chan struct{}) { _ = cmd.Wait(); close(done) }(p.done)
	if err := WaitHTTP200(p.URL()+"/-/ready", time.Minute); err != nil {
		p.t.Fatalf("prometheus not ready: %v\n%s", err, p.out.String())
	}
}

// Stop terminates the server (SIGTERM, SIGKILL after 30 s) and waits until
// it is gone (idempotent).
func (p *Prometheus) Stop() {
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	p.cmd = nil
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(b)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
