package nbd_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/fence"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/tests/testenv"
)

// lockedBuffer collects a process's output for the test to search.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, _ = os.Stderr.Write(p)
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// fenceExport is one `couchestor ec-volume serve` process.
type fenceExport struct {
	cmd               *exec.Cmd
	addr, metricsAddr string
	out               *lockedBuffer
	done              chan struct{}
	exitErr           error
}

func (e *fenceExport) exited() bool {
	select {
	case <-e.done:
		return true
	default:
		return false
	}
}

func (e *fenceExport) metric(name string) (float64, bool) {
	resp, err := http.Get("http://" + e.metricsAddr + "/metrics")
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, name+"{") || strings.HasPrefix(line, name+" ") {
			f := strings.Fields(line)
			v, err := strconv.ParseFloat(f[len(f)-1], 64)
			return v, err == nil
		}
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	return 0, false
}

func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestTwoExportsOfOneVolumeAreFenced runs two export processes on one
// ECVolume (issue 17 item 1). A serves and writes while its destager runs;
// A is paused (SIGSTOP) in the middle of a write burst; B must refuse to
// serve until A's writer Lease expired, then serves A's acknowledged writes,
// writes every block anew and destages it all. A resumed (SIGCONT) must
// answer with errors, never with its stale bytes, and exit; none of its
// pending destages may land (every ECStripe still carries B's writer epoch);
// and every byte B acknowledged reads back through a fresh export.
func TestTwoExportsOfOneVolumeAreFenced(t *testing.T) {
	c := newECCluster(t, 6)
	ctx := context.Background()
	const blocks = 256 // 16 MiB volume of 64 KiB blocks, 16 stripes of 1 MiB
	pol := &storagev1.ErasureCodingPolicy{ObjectMeta: metav1.ObjectMeta{Name: "rs-fence"}, Spec: storagev1.ErasureCodingPolicySpec{
		DataShards: ptr.To(int32(4)), ParityShards: ptr.To(int32(2)), StripeSizeBytes: ptr.To(int64(1 << 20)),
		Algorithm: storagev1.ECAlgorithm("ReedSolomon"),
		JournalConfig: &storagev1.JournalConfig{JournalSizeBytes: ptr.To(int64(8 << 20)), ReplicationFactor: ptr.To(int32(3)),
			DestageThresholdPercent: ptr.To(int32(50)), DestageInterval: "1s"}}}
	if err := c.env.Client.Create(ctx, pol); err != nil {
		t.Fatal(err)
	}
	if err := c.env.Client.Create(ctx, &storagev1.ECVolume{ObjectMeta: metav1.ObjectMeta{Name: exportNm},
		Spec: storagev1.ECVolumeSpec{SizeBytes: blocks * crashBlock, PolicyRef: "rs-fence"}}); err != nil {
		t.Fatal(err)
	}
	const lease = 6 * time.Second
	start := func(name string) *fenceExport {
		t.Helper()
		e := &fenceExport{addr: testenv.Addr(testenv.FreePort(t)), metricsAddr: testenv.Addr(testenv.FreePort(t)), out: &lockedBuffer{}, done: make(chan struct{})}
		e.cmd = exec.Command(c.bin, "ec-volume", "serve", "--volume", exportNm, "--listen", e.addr,
			"--cache-dir", filepath.Join(c.dir, "fence-cache-"+name), "--metrics-bind-address", e.metricsAddr,
			"--cache-memory-bytes", strconv.Itoa(4<<20), "--cache-disk-bytes", strconv.Itoa(8<<20), "--lease-duration", lease.String(),
			"--kubeconfig", c.kubeconfig, "--shard-secret", registry.DefaultNamespace+"/"+registry.DefaultShardSecret)
		e.cmd.Stdout, e.cmd.Stderr = e.out, e.out
		if err := e.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { e.exitErr = e.cmd.Wait(); close(e.done) }()
		t.Cleanup(func() {
			_ = e.cmd.Process.Signal(syscall.SIGCONT)
			_ = e.cmd.Process.Kill()
			<-e.done
		})
		return e
	}
	write := func(w *wireClient, state []blockState, b uint64, seq *atomic.Uint64) error {
		s := seq.Add(1)
		state[b].inflight = s
		if err := w.write(b*crashBlock, blockContent(b, s)); err != nil {
			return err
		}
		state[b].acked, state[b].inflight = s, 0
		return nil
	}

	// A serves; every block is written once, then a burst from 8
	// connections keeps the journal and the destager busy until SIGSTOP.
	a := start("a")
	waitListening(t, a.addr)
	state := make([]blockState, blocks)
	var seq atomic.Uint64
	w0, err := dialWire(a.addr, exportNm)
	if err != nil {
		t.Fatal(err)
	}
	for b := uint64(0); b < blocks; b++ {
		if err := write(w0, state, b, &seq); err != nil {
			t.Fatalf("A: write block %d: %v", b, err)
		}
	}
	probe, err := dialWire(a.addr, exportNm) // kept for after SIGCONT
	if err != nil {
		t.Fatal(err)
	}
	const workers = 8
	conns := make([]*wireClient, workers)
	for i := range conns {
		if conns[i], err = dialWire(a.addr, exportNm); err != nil {
			t.Fatal(err)
		}
	}
	var acked atomic.Int64
	var wg sync.WaitGroup
	stopped := make(chan struct{})
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := uint64(0); ; n++ {
				b := (n*workers + uint64(i)) % blocks // worker i owns blocks ≡ i mod 8
				if write(conns[i], state, b, &seq) != nil {
					return // A stopped: this write's fate is unknown
				}
				if acked.Add(1) == 300 {
					close(stopped)
				}
			}
		}()
	}
	select {
	case <-stopped:
	case <-time.After(120 * time.Second):
		t.Fatalf("A acknowledged only %d burst writes in 120s", acked.Load())
	}
	if err := a.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stoppedAt := time.Now()
	for _, w := range conns { // unblock the workers; A sees nothing while stopped
		_ = w.c.SetDeadline(time.Now())
	}
	wg.Wait()
	t.Logf("A paused after %d burst writes", acked.Load())

	// B refuses to serve while A's Lease is valid, then takes over.
	b := start("b")
	eventually(t, 60*time.Second, "B reports the Lease held by A", func() bool { return strings.Contains(b.out.String(), "is held by") })
	if conn, err := dialWire(b.addr, exportNm); err == nil {
		conn.close()
		t.Fatal("B serves while A's Lease is valid")
	}
	waitListening(t, b.addr)
	if waited := time.Since(stoppedAt); waited < lease-lease/4-time.Second {
		t.Fatalf("B served %s after A's pause; A's Lease lasts %s (renewed every %s)", waited, lease, lease/4)
	}
	if !strings.Contains(b.out.String(), "with writer epoch 2") {
		t.Fatalf("B does not hold writer epoch 2:\n%s", b.out.String())
	}
	verify(t, b.addr, state) // A's acknowledged writes, replayed by B
	wb, err := dialWire(b.addr, exportNm)
	if err != nil {
		t.Fatal(err)
	}
	for blk := uint64(0); blk < blocks; blk++ {
		if err := write(wb, state, blk, &seq); err != nil {
			t.Fatalf("B: write block %d: %v", blk, err)
		}
	}
	wb.close()
	eventually(t, 120*time.Second, "B destaged and trimmed its whole journal", func() bool {
		used, ok := b.metric("couchestor_ecvolume_journal_used_bytes")
		return ok && used == 0
	})

	// A resumes: it must answer with errors, then exit, and change nothing.
	if err := a.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	_ = probe.c.SetDeadline(time.Now().Add(30 * time.Second))
	buf := make([]byte, crashBlock)
	if err := probe.read(0, buf); err == nil {
		t.Fatalf("A served a read after it lost its Lease (block 0 holds seq %d; B acknowledged seq %d)", leUint64(buf[8:]), state[0].acked)
	} else if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("A neither answered nor closed the connection within 30s after SIGCONT")
	}
	select {
	case <-a.done:
	case <-time.After(60 * time.Second):
		t.Fatal("A kept running 60s after it lost its Lease")
	}
	if a.exitErr == nil || !strings.Contains(a.out.String(), "the volume's writer Lease is lost") {
		t.Fatalf("A exited with %v; want an error saying the Lease is lost; output:\n%s", a.exitErr, a.out.String())
	}
	stripes, err := c.store.ListStripes(ctx, exportNm)
	if err != nil {
		t.Fatal(err)
	}
	if len(stripes) != blocks*crashBlock/(1<<20) {
		t.Fatalf("%d ECStripes, want %d", len(stripes), blocks*crashBlock/(1<<20))
	}
	for id, s := range stripes {
		if e, err := fence.Epoch(s); err != nil || e != 2 {
			t.Fatalf("ECStripe %d carries writer epoch %d (%v) after A resumed; B (epoch 2) wrote it last", id, e, err)
		}
	}

	// Every byte B acknowledged reads back through a fresh export (cold cache).
	_ = b.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-b.done:
	case <-time.After(60 * time.Second):
		t.Fatal("B ignored SIGTERM for 60s")
	}
	fresh := start("fresh")
	waitListening(t, fresh.addr) // B released its Lease on the clean stop: no wait
	if !strings.Contains(fresh.out.String(), "with writer epoch 3") {
		t.Fatalf("the fresh export does not hold writer epoch 3:\n%s", fresh.out.String())
	}
	verify(t, fresh.addr, state)
}

func leUint64(b []byte) uint64 {
	var v uint64
	for i := 7; i >= 0; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v
}
