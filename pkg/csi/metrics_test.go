package csi

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// The child mode of the test binary: a stand-in for one export's metrics
// endpoint (the families `ec-volume serve` registers, made with the same
// library), started with the export's argv shape so that the plugin finds it
// in /proc as it finds a real export.
func TestMain(m *testing.M) {
	if mode := os.Getenv("CSI_TEST_EXPORT_METRICS"); mode != "" {
		serveFakeExportMetrics(mode)
		return
	}
	os.Exit(m.Run())
}

func serveFakeExportMetrics(mode string) {
	var addr, volume string
	for i, a := range os.Args {
		switch a {
		case "--metrics-bind-address":
			addr = os.Args[i+1]
		case "--volume":
			volume = os.Args[i+1]
		}
	}
	label := volume
	if mode == "other-volume" {
		label = "someone-else"
	}
	reg := prometheus.NewRegistry()
	reads := prometheus.NewCounter(prometheus.CounterOpts{Name: "couchestor_ecvolume_read_ops_total", Help: "READ commands.", ConstLabels: prometheus.Labels{"volume": label}})
	reads.Add(float64(len(volume)))
	reg.MustRegister(reads, prometheus.NewGoCollector())
	mux := http.NewServeMux()
	if mode == "huge" {
		mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
			line := "couchestor_ecvolume_read_ops_total{volume=\"" + volume + "\"} 1\n"
			for n := 0; n < (exportMetricsLimit/len(line))+10; n++ {
				_, _ = io.WriteString(w, line)
			}
		})
	} else {
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	_ = http.Serve(l, mux)
}

// startFakeExport starts the stand-in for volume's export with a
// metrics address (or "0") and records the volume's state.
func startFakeExport(t *testing.T, d *Driver, volume, mode string, withMetrics bool) {
	t.Helper()
	if err := d.state().Save(&VolumeState{Volume: volume}); err != nil {
		t.Fatal(err)
	}
	maddr := "0"
	if withMetrics {
		var err error
		if maddr, err = freeLoopbackAddr(); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(os.Args[0], "ec-volume", "serve", "--volume", volume, "--cache-dir", d.cacheDir(volume), "--metrics-bind-address", maddr)
	cmd.Env = append(os.Environ(), "CSI_TEST_EXPORT_METRICS="+mode)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	if withMetrics {
		deadline := time.Now().Add(time.Minute)
		for {
			c, err := net.Dial("tcp", maddr)
			if err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the stand-in export of %s does not listen on %s: %v", volume, maddr, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// TestMetricsHandlerMergesTheExportsCounters: one scrape of the node
// plugin carries every running export's couchestor_ecvolume_* series, says
// per export whether it was read, leaves out exports that answer for
// another volume or too much, other families, exports without metrics and
// volumes with no export running.
func TestMetricsHandlerMergesTheExportsCounters(t *testing.T) {
	d := &Driver{StateDir: t.TempDir(), Logf: t.Logf}
	startFakeExport(t, d, "vol-a", "ok", true)
	startFakeExport(t, d, "vol-bb", "ok", true)
	startFakeExport(t, d, "vol-liar", "other-volume", true)
	startFakeExport(t, d, "vol-huge", "huge", true)
	startFakeExport(t, d, "vol-nometrics", "ok", false)
	if err := d.state().Save(&VolumeState{Volume: "vol-stopped"}); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(d.MetricsHandler())
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	out := string(b)
	for _, want := range []string{
		`couchestor_ecvolume_read_ops_total{volume="vol-a"} 5`,
		`couchestor_ecvolume_read_ops_total{volume="vol-bb"} 6`,
		`couchestor_csi_export_metrics_up{volume="vol-a"} 1`,
		`couchestor_csi_export_metrics_up{volume="vol-bb"} 1`,
		`couchestor_csi_export_metrics_up{volume="vol-liar"} 0`,
		`couchestor_csi_export_metrics_up{volume="vol-huge"} 0`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the plugin's /metrics lacks %q:\n%s", want, out)
		}
	}
	for _, not := range []string{"someone-else", `volume="vol-huge"} 1`, "vol-nometrics", "vol-stopped", "go_goroutines"} {
		if strings.Contains(out, not) {
			t.Errorf("the plugin's /metrics has %q:\n%s", not, out)
		}
	}
	if n := strings.Count(out, "# TYPE couchestor_ecvolume_read_ops_total"); n != 1 {
		t.Errorf("the read counter's family appears %d times, want once (merged):\n%s", n, out)
	}
}
