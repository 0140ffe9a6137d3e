package ecvolume

import (
	"context"
	"net"
	"os/exec"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/billyronks/couchestor/pkg/nbd"
)

// The export's op counters count what a real NBD client (qemu-io) had
// answered with success: reads, writes and write-zeroes with their bytes,
// not a refused request; labelled with the volume.
func TestExportCountsAnsweredOperations(t *testing.T) {
	if _, err := exec.LookPath("qemu-io"); err != nil {
		t.Skip("qemu-io not found in PATH: install the NBD clients with hack/nbd-clients.sh (make test does)")
	}
	const vol = "ecv-count"
	obs := newObserver(vol, nil)
	be, err := nbd.NewMemoryBackend(4 << 20)
	if err != nil {
		t.Fatal(err)
	}
	srv := &nbd.Server{Exports: []nbd.Export{{Name: vol, Backend: be, Answered: obs.io.Answered}}}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	t.Cleanup(func() { cancel(); <-done })
	uri := "nbd://" + l.Addr().String() + "/" + vol

	qemuIO := func(wantOK bool, cmds ...string) {
		t.Helper()
		args := []string{"-f", "raw"}
		for _, c := range cmds {
			args = append(args, "-c", c)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, "qemu-io", append(args, uri)...).CombinedOutput()
		if (err == nil) != wantOK {
			t.Fatalf("qemu-io %v: %v\n%s", cmds, err, out)
		}
	}
	qemuIO(true, "write -P 0x5a 0 64k", "write -P 0x11 1M 4k", "read -P 0x5a 0 64k", "write -z 2M 128k", "flush")
	want := map[string]float64{
		"couchestor_ecvolume_read_ops_total":    1,
		"couchestor_ecvolume_read_bytes_total":  64 << 10,
		"couchestor_ecvolume_write_ops_total":   3,
		"couchestor_ecvolume_write_bytes_total": 64<<10 + 4<<10 + 128<<10,
	}
	check := func() {
		t.Helper()
		got := gatherCounters(t, obs, vol)
		for name, v := range want {
			if got[name] != v {
				t.Errorf("%s{volume=%q} = %v, want %v (all: %v)", name, vol, got[name], v, got)
			}
		}
	}
	check()
	// A read past the end fails (the client or the server refuses it): nothing more is counted.
	qemuIO(false, "read 8M 4k")
	check()
}

// gatherCounters reads the export's registry: counter name -> value, for
// series labelled with the volume.
func gatherCounters(t *testing.T, o *observer, vol string) map[string]float64 {
	t.Helper()
	mfs, err := o.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetType() != dto.MetricType_COUNTER {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "volume" && lp.GetValue() == vol {
					out[mf.GetName()] = m.GetCounter().GetValue()
				}
			}
		}
	}
	return out
}
