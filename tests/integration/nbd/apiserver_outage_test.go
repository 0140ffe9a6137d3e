package nbd_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/tests/testenv"
)

// apiServerPID finds this test's own kube-apiserver process (envtest's,
// started by newECCluster for this test alone) by its secure port.
func apiServerPID(t *testing.T, c *ecCluster) int {
	t.Helper()
	port := c.env.ControlPlane.APIServer.SecureServing.Port
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if !strings.HasSuffix(args[0], "kube-apiserver") {
			continue
		}
		for _, a := range args {
			if a == "--secure-port="+port {
				return pid
			}
		}
	}
	t.Fatalf("no kube-apiserver process with --secure-port=%s", port)
	return 0
}

// readAllBounded copies the whole export into a file with nbdcopy (a real
// NBD client) and returns its sha256; a read that hangs fails after within.
func readAllBounded(uri, dir string, within time.Duration) ([32]byte, time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	out := filepath.Join(dir, "out.raw")
	_ = os.Remove(out)
	start := time.Now()
	b, err := exec.CommandContext(ctx, "nbdcopy", uri, out).CombinedOutput()
	took := time.Since(start)
	if ctx.Err() != nil {
		return [32]byte{}, took, fmt.Errorf("nbdcopy did not finish within %s (the read hangs): %s", within, b)
	}
	if err != nil {
		return [32]byte{}, took, fmt.Errorf("nbdcopy: %v: %s", err, b)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		return [32]byte{}, took, err
	}
	return sha256.Sum256(data), took, nil
}

// TestReadsOfKnownStripesSurviveAnAPIServerOutage (issue 17 item 4): an
// export that knows its volume's stripes and shard servers serves reads
// from the shard servers while its API server is paused (SIGSTOP: requests
// hang) and after it was killed (SIGKILL: requests are refused): every byte
// reads back, within a bound, with the caches too small to hold the volume.
//
// The export runs with a writer Lease longer than the test: an export that
// cannot renew its Lease stops serving at Duration×4/5 after the last
// renewal by design (issue 17 item 1, pkg/fence), since it can no longer
// prove it is the only writer. That window is what an outage may last.
func TestReadsOfKnownStripesSurviveAnAPIServerOutage(t *testing.T) {
	need(t, "nbdcopy", "qemu-io")
	c := newECCluster(t, 6)
	ctx := context.Background()
	const size = 32 << 20 // 32 stripes of 1 MiB; the caches hold 3 MiB
	pol := &storagev1.ErasureCodingPolicy{ObjectMeta: metav1.ObjectMeta{Name: "rs-outage"}, Spec: storagev1.ErasureCodingPolicySpec{
		DataShards: ptr.To(int32(4)), ParityShards: ptr.To(int32(2)), StripeSizeBytes: ptr.To(int64(1 << 20)),
		Algorithm: storagev1.ECAlgorithm("ReedSolomon"),
		JournalConfig: &storagev1.JournalConfig{JournalSizeBytes: ptr.To(int64(8 << 20)), ReplicationFactor: ptr.To(int32(3)),
			DestageThresholdPercent: ptr.To(int32(50)), DestageInterval: "1s"}}}
	if err := c.env.Client.Create(ctx, pol); err != nil {
		t.Fatal(err)
	}
	if err := c.env.Client.Create(ctx, &storagev1.ECVolume{ObjectMeta: metav1.ObjectMeta{Name: exportNm},
		Spec: storagev1.ECVolumeSpec{SizeBytes: size, PolicyRef: "rs-outage"}}); err != nil {
		t.Fatal(err)
	}
	start := func(name string) *fenceExport {
		t.Helper()
		e := &fenceExport{addr: testenv.Addr(testenv.FreePort(t)), metricsAddr: testenv.Addr(testenv.FreePort(t)), out: &lockedBuffer{}, done: make(chan struct{})}
		e.cmd = exec.Command(c.bin, "ec-volume", "serve", "--volume", exportNm, "--listen", e.addr,
			"--cache-dir", filepath.Join(c.dir, "outage-cache-"+name), "--metrics-bind-address", e.metricsAddr,
			"--cache-memory-bytes", strconv.Itoa(1<<20), "--cache-disk-bytes", strconv.Itoa(2<<20),
			"--lease-duration", "10m", "--kube-request-timeout", "3s",
			"--kubeconfig", c.kubeconfig, "--shard-secret", registry.DefaultNamespace+"/"+registry.DefaultShardSecret)
		e.cmd.Stdout, e.cmd.Stderr = e.out, e.out
		if err := e.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { e.exitErr = e.cmd.Wait(); close(e.done) }()
		t.Cleanup(func() {
			_ = e.cmd.Process.Kill()
			<-e.done
		})
		waitListening(t, e.addr)
		return e
	}
	uri := func(e *fenceExport) string { return "nbd://" + e.addr + "/" + exportNm }

	// Write the volume through one export and let it destage every stripe.
	a := start("a")
	img, sum := randomImage(t, size)
	run(t, 5*time.Minute, "nbdcopy", img, uri(a))
	eventually(t, 120*time.Second, "every stripe destaged", func() bool {
		used, ok := a.metric("couchestor_ecvolume_journal_used_bytes")
		var list storagev1.ECStripeList
		err := c.env.Client.List(ctx, &list, client.MatchingFields{storagev1.ECStripeVolumeRefField: exportNm})
		return ok && used == 0 && err == nil && len(list.Items) == size>>20
	})
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	eventually(t, 120*time.Second, "export a stopped", a.exited)

	// A fresh export (empty caches) knows the stripes (Prime) and, after one
	// read, the shard servers.
	b := start("b")
	run(t, time.Minute, "qemu-io", "-f", "raw", "-c", "read 0 64k", uri(b))

	pid := apiServerPID(t, c)
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGCONT) })
	for _, phase := range []struct {
		name string
		sig  syscall.Signal
	}{{"paused (SIGSTOP)", syscall.SIGSTOP}, {"killed (SIGKILL)", syscall.SIGKILL}} {
		if phase.sig == syscall.SIGKILL {
			_ = syscall.Kill(pid, syscall.SIGCONT)
		}
		if err := syscall.Kill(pid, phase.sig); err != nil {
			t.Fatal(err)
		}
		// Let the export's server view (2 s) and any cached API answers
		// age past their TTL: the reads below are the first after it.
		time.Sleep(3 * time.Second)
		got, took, err := readAllBounded(uri(b), t.TempDir(), 90*time.Second)
		if err != nil {
			t.Fatalf("API server %s: reading the volume: %v", phase.name, err)
		}
		if got != sum {
			t.Fatalf("API server %s: the volume reads back with sha256 %x, want %x", phase.name, got, sum)
		}
		if b.exited() {
			t.Fatalf("API server %s: the export exited: %v", phase.name, b.exitErr)
		}
		t.Logf("API server %s: read %d MiB back intact in %s", phase.name, size>>20, took.Round(time.Millisecond))
	}
}
