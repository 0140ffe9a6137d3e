package nbd_test

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/fence"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/tests/testenv"
)

// TestSIGTERMWithAFullJournalExits: with every shard server down the
// destager cannot free the journal, so once it is full qemu-io's next write
// waits for room. SIGTERM must still end the export within its drain
// timeout (the waiting write fails, it was never acknowledged). On the old
// code the export waited for that write forever. The drain (10 s) outlasts
// the writer Lease (5 s): the export keeps renewing it while it shuts down
// and releases it at the end, so the next export need not wait (on the old
// code renewals stopped at SIGTERM and the Lease was left to expire).
func TestSIGTERMWithAFullJournalExits(t *testing.T) {
	need(t, "qemu-io")
	c := newECCluster(t, 3)
	ctx := context.Background()
	const journalBytes = 4 << 20
	pol := &storagev1.ErasureCodingPolicy{ObjectMeta: metav1.ObjectMeta{Name: "rs-2-1-full"}, Spec: storagev1.ErasureCodingPolicySpec{
		DataShards: ptr.To(int32(2)), ParityShards: ptr.To(int32(1)), StripeSizeBytes: ptr.To(int64(1 << 20)),
		Algorithm: storagev1.AlgorithmReedSolomon, MinHealthyShards: ptr.To(int32(2)),
		JournalConfig: &storagev1.JournalConfig{JournalSizeBytes: ptr.To(int64(journalBytes)), ReplicationFactor: ptr.To(int32(3)),
			DestageThresholdPercent: ptr.To(int32(50)), DestageInterval: "1s"}}}
	if err := c.env.Client.Create(ctx, pol); err != nil {
		t.Fatal(err)
	}
	const vol = "ecv-full-journal"
	if err := c.env.Client.Create(ctx, &storagev1.ECVolume{ObjectMeta: metav1.ObjectMeta{Name: vol},
		Spec: storagev1.ECVolumeSpec{SizeBytes: 16 << 20, PolicyRef: pol.Name}}); err != nil {
		t.Fatal(err)
	}
	e := &fenceExport{addr: testenv.Addr(testenv.FreePort(t)), metricsAddr: testenv.Addr(testenv.FreePort(t)), out: &lockedBuffer{}, done: make(chan struct{})}
	e.cmd = exec.Command(c.bin, "ec-volume", "serve", "--volume", vol, "--listen", e.addr, "--metrics-bind-address", e.metricsAddr,
		"--cache-dir", filepath.Join(c.dir, "full-cache"), "--journal-dir", filepath.Join(c.dir, "full-journal"),
		"--cache-memory-bytes", strconv.Itoa(4<<20), "--cache-disk-bytes", strconv.Itoa(8<<20), "--nbd-drain-timeout", "10s", "--lease-duration", "5s",
		"--kubeconfig", c.kubeconfig, "--shard-secret", registry.DefaultNamespace+"/"+registry.DefaultShardSecret)
	e.cmd.Stdout, e.cmd.Stderr = e.out, e.out
	if err := e.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { e.exitErr = e.cmd.Wait(); close(e.done) }()
	t.Cleanup(func() { _ = e.cmd.Process.Kill(); <-e.done })
	waitListening(t, e.addr)
	for i := range c.shards {
		c.stopShard(i) // nothing can be destaged from now on
	}

	// 200 writes of 64 KiB: three times the journal.
	args := []string{"-f", "raw"}
	for i := 0; i < 200; i++ {
		args = append(args, "-c", fmt.Sprintf("write -P 0x%02x %d 64k", 1+i%250, (i%256)*(64<<10)))
	}
	writer := exec.Command("qemu-io", append(args, "nbd://"+e.addr+"/"+vol)...)
	writer.Stdout, writer.Stderr = &quietBuffer{}, &quietBuffer{}
	if err := writer.Start(); err != nil {
		t.Fatal(err)
	}
	writerDone := make(chan error, 1)
	go func() { writerDone <- writer.Wait() }()
	t.Cleanup(func() { _ = writer.Process.Kill(); <-writerDone })
	eventually(t, 120*time.Second, "the journal is full", func() bool {
		used, ok := e.metric("couchestor_ecvolume_journal_used_bytes")
		return ok && used > journalBytes-(64<<10+4096)
	})

	if err := e.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	sent := time.Now()
	select {
	case <-e.done:
		t.Logf("the export exited %s after SIGTERM with a full journal (drain timeout 10s): %v", time.Since(sent).Round(time.Millisecond), e.exitErr)
	case <-time.After(60 * time.Second):
		t.Fatalf("the export still running 60s after SIGTERM with a full journal (drain timeout 10s); output:\n%s", e.out.String())
	}
	l := &coordinationv1.Lease{}
	if err := c.env.Client.Get(ctx, client.ObjectKey{Namespace: registry.DefaultNamespace, Name: fence.LeaseName(vol)}, l); err != nil {
		t.Fatal(err)
	}
	if h := ptr.Deref(l.Spec.HolderIdentity, ""); h != "" {
		t.Fatalf("after a shutdown longer than its Lease the export left the Lease held by %q (not released); output:\n%s", h, e.out.String())
	}
}
