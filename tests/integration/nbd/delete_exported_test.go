package nbd_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlconfig "sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/controllers"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/tests/testenv"
)

// TestDeletingAnExportedVolumeStopsItsWrites deletes an ECVolume while
// `ec-volume serve` exports it over three shard-server processes and qemu-io
// (one NBD connection) writes to it in a loop (issue 17 item 9). The export
// is paused (SIGSTOP) across the deletion, so the finalizer meets a live
// writer Lease: it must wait (a WaitingForExport Event naming the export)
// and delete nothing meanwhile. Resumed, the export must refuse further
// writes (qemu-io sees them fail), exit non-zero saying the ECVolume is being
// deleted, and release its Lease; the finalizer then completes, and no
// ECStripe and no journal directory of the volume remains.
//
// On the old code the finalizer deleted stripes and journals at once while
// the export kept serving and destaging: stripes and journal directories
// came back and the export never exited.
func TestDeletingAnExportedVolumeStopsItsWrites(t *testing.T) {
	need(t, "qemu-io")
	c := newECCluster(t, 3)
	ctx := context.Background()
	pol := &storagev1.ErasureCodingPolicy{ObjectMeta: metav1.ObjectMeta{Name: "rs-2-1-del"}, Spec: storagev1.ErasureCodingPolicySpec{
		DataShards: ptr.To(int32(2)), ParityShards: ptr.To(int32(1)), StripeSizeBytes: ptr.To(int64(1 << 20)),
		Algorithm: storagev1.AlgorithmReedSolomon, MinHealthyShards: ptr.To(int32(2)),
		JournalConfig: &storagev1.JournalConfig{JournalSizeBytes: ptr.To(int64(16 << 20)), ReplicationFactor: ptr.To(int32(3)),
			DestageThresholdPercent: ptr.To(int32(50)), DestageInterval: "1s"}}}
	if err := c.env.Client.Create(ctx, pol); err != nil {
		t.Fatal(err)
	}
	mctx, stopMgr := context.WithCancel(ctx)
	defer stopMgr()
	// Other tests of this package run an ECVolume controller in this process too.
	mgr, err := ctrl.NewManager(c.env.Config, ctrl.Options{Scheme: c.env.Scheme, Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0",
		Controller: ctrlconfig.Controller{SkipNameValidation: ptr.To(true)}})
	if err != nil {
		t.Fatal(err)
	}
	if err := (&controllers.ECVolumeReconciler{Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("test"), MayastorNamespace: "mayastor"}).SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	go func() { _ = mgr.Start(mctx) }()

	const vol = "ecv-deleted-while-exported"
	key := client.ObjectKey{Name: vol}
	if err := c.env.Client.Create(ctx, &storagev1.ECVolume{ObjectMeta: metav1.ObjectMeta{Name: vol},
		Spec: storagev1.ECVolumeSpec{SizeBytes: 8 << 20, PolicyRef: pol.Name}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "the ECVolume has its finalizer", func() bool {
		v := &storagev1.ECVolume{}
		return c.env.Client.Get(ctx, key, v) == nil && len(v.Finalizers) == 1
	})

	// The export, as a process. A 60s Lease (renewed every 15s, trusted for
	// 48s) outlasts the pause below.
	e := &fenceExport{addr: testenv.Addr(testenv.FreePort(t)), out: &lockedBuffer{}, done: make(chan struct{})}
	e.cmd = exec.Command(c.bin, "ec-volume", "serve", "--volume", vol, "--listen", e.addr,
		"--cache-dir", filepath.Join(c.dir, "del-cache"), "--cache-memory-bytes", strconv.Itoa(4<<20), "--cache-disk-bytes", strconv.Itoa(8<<20),
		"--lease-duration", "60s", "--kubeconfig", c.kubeconfig, "--shard-secret", registry.DefaultNamespace+"/"+registry.DefaultShardSecret)
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
	waitListening(t, e.addr)
	uri := "nbd://" + e.addr + "/" + vol

	// qemu-io writes 64 KiB blocks round the volume in a loop, 20 ms apart,
	// for at least 2 minutes.
	args := []string{"-f", "raw"}
	for i := 0; i < 6000; i++ {
		args = append(args, "-c", fmt.Sprintf("write -P 0x%02x %d 64k", 1+i%250, (i%128)*(64<<10)), "-c", "sleep 20")
	}
	writer := exec.Command("qemu-io", append(args, uri)...)
	wout := &quietBuffer{}
	writer.Stdout, writer.Stderr = wout, wout
	if err := writer.Start(); err != nil {
		t.Fatal(err)
	}
	writerDone := make(chan error, 1)
	go func() { writerDone <- writer.Wait() }()
	t.Cleanup(func() { _ = writer.Process.Kill(); <-writerDone })

	eventually(t, 120*time.Second, "the writes are destaged into ECStripes", func() bool {
		s, err := c.store.ListStripes(ctx, vol)
		return err == nil && len(s) > 0
	})
	cur := &storagev1.ECVolume{}
	if err := c.env.Client.Get(ctx, key, cur); err != nil {
		t.Fatal(err)
	}
	pools := strings.Split(cur.Annotations[storagev1.ECVolumeAnnotationJournalPools], ",")
	if len(pools) != 3 {
		t.Fatalf("journal pools annotation %q, want three pools", cur.Annotations[storagev1.ECVolumeAnnotationJournalPools])
	}
	journalDir := func(pool string) string { return filepath.Join(c.dir, pool, "journals", vol) }
	for _, p := range pools {
		if _, err := os.Stat(journalDir(p)); err != nil {
			t.Fatalf("journal replica on %s: %v", p, err)
		}
	}

	// Delete the volume while the export is paused: its Lease is still valid.
	if err := e.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	if err := c.env.Client.Delete(ctx, cur); err != nil {
		t.Fatal(err)
	}
	holder := fmt.Sprintf("/%d/", e.cmd.Process.Pid)
	eventually(t, 30*time.Second, "a WaitingForExport Event names the export", func() bool {
		var evs eventsv1.EventList
		if err := c.env.Client.List(ctx, &evs); err != nil {
			return false
		}
		for _, ev := range evs.Items {
			if ev.Regarding.Name == vol && ev.Reason == "WaitingForExport" && strings.Contains(ev.Note, holder) {
				return true
			}
		}
		return false
	})
	if s, err := c.store.ListStripes(ctx, vol); err != nil || len(s) == 0 {
		t.Fatalf("the finalizer deleted ECStripes while the export held its Lease (%d left, %v)", len(s), err)
	}
	if err := e.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}

	// The export stops: writes fail, it exits non-zero naming the volume.
	select {
	case <-e.done:
	case <-time.After(90 * time.Second):
		t.Fatalf("the export kept running 90s after its ECVolume was deleted; output:\n%s", e.out.String())
	}
	if e.exitErr == nil || !strings.Contains(e.out.String(), "ECVolume "+vol+" is being deleted") {
		t.Fatalf("the export exited with %v; want an error saying ECVolume %s is being deleted; output:\n%s", e.exitErr, vol, e.out.String())
	}
	// qemu-io goes on (each failed write is quick); its output arrives in
	// stdio-buffer chunks.
	eventually(t, 60*time.Second, "qemu-io reports a failed write", func() bool { return strings.Contains(wout.String(), "write failed") })
	_ = writer.Process.Kill()
	<-writerDone
	writerDone <- nil // for the cleanup
	wlog := wout.String()
	wrote, failed := strings.Index(wlog, "wrote 65536/65536"), strings.Index(wlog, "write failed")
	if wrote < 0 || failed < 0 || failed < wrote {
		t.Fatalf("qemu-io: want acknowledged writes, then failed ones; output:\n%s", failureLines(wlog))
	}
	t.Logf("qemu-io: %d writes acknowledged, then: %s", strings.Count(wlog, "wrote 65536/65536"), firstLine(wlog[failed:]))

	// The finalizer completes; nothing of the volume remains.
	eventually(t, 120*time.Second, "the ECVolume is gone", func() bool {
		return apierrors.IsNotFound(c.env.Client.Get(ctx, key, &storagev1.ECVolume{}))
	})
	if s, err := c.store.ListStripes(ctx, vol); err != nil || len(s) != 0 {
		t.Fatalf("%d ECStripes of the deleted volume remain (%v)", len(s), err)
	}
	for _, p := range pools {
		if _, err := os.Stat(journalDir(p)); !os.IsNotExist(err) {
			t.Errorf("journal directory %s remains after the volume was deleted (%v)", journalDir(p), err)
		}
	}
}

// quietBuffer collects a chatty client's output without echoing it.
type quietBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (q *quietBuffer) Write(p []byte) (int, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.b.Write(p)
}

func (q *quietBuffer) String() string {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.b.String()
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
