package nbd_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	storagev1alpha1 "github.com/billyronks/couchestor/apis/storage/v1alpha1"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/tests/testenv"
)

// TestCrashOfTheExportOverShardServers is the crash test on the real parts:
// `couchestor ec-volume serve` as a process, its journal replicas on shard
// servers (processes), its stripes erasure coded (4+2) onto them as ECStripes.
// A 4 MiB journal over a 32 MiB volume keeps the destager busy, so SIGKILL
// lands during a write burst and during destage. Each restart must read back
// every acknowledged block; the second round kills the restarted export while
// it is still destaging what it replayed; the last check reads every block
// through a fresh export with a cold cache, i.e. from the stripes and the
// journal the dead processes left behind.
func TestCrashOfTheExportOverShardServers(t *testing.T) {
	crashOfTheExport(t, storagev1.LayoutECStripes)
}

// TestCrashOfTheExportOverPlacementGroups is the same crash test on a volume
// of spec.stripeLayout PlacementGroups: the destager writes each stripe's
// shards to its placement group's members and no ECStripe (checked), and
// every restart reads its stripes back from what the members hold.
func TestCrashOfTheExportOverPlacementGroups(t *testing.T) {
	crashOfTheExport(t, storagev1.LayoutPlacementGroups)
}

func crashOfTheExport(t *testing.T, layout storagev1.StripeLayout) {
	c := newECCluster(t, 6)
	ctx := context.Background()
	pol := &storagev1.ErasureCodingPolicy{ObjectMeta: metav1.ObjectMeta{Name: "rs-crash"}, Spec: storagev1.ErasureCodingPolicySpec{
		DataShards: ptr.To(int32(4)), ParityShards: ptr.To(int32(2)), StripeSizeBytes: ptr.To(int64(1 << 20)),
		Algorithm: storagev1.ECAlgorithm("ReedSolomon"),
		JournalConfig: &storagev1.JournalConfig{JournalSizeBytes: ptr.To(int64(4 << 20)), ReplicationFactor: ptr.To(int32(3)),
			DestageThresholdPercent: ptr.To(int32(50)), DestageInterval: "1s"}}}
	if err := c.env.Client.Create(ctx, pol); err != nil {
		t.Fatal(err)
	}
	if err := c.env.Client.Create(ctx, &storagev1.ECVolume{ObjectMeta: metav1.ObjectMeta{Name: exportNm},
		Spec: storagev1.ECVolumeSpec{SizeBytes: crashBlocks * crashBlock, PolicyRef: "rs-crash", StripeLayout: layout}}); err != nil {
		t.Fatal(err)
	}
	if layout == storagev1.LayoutPlacementGroups {
		// 8 groups over the 6 pools, slot i of group g on pool (g+i) mod 6,
		// as the placement-group controller would record them.
		for g := 0; g < 8; g++ {
			o := &storagev1alpha1.ECPlacementGroup{ObjectMeta: metav1.ObjectMeta{Name: "rs-crash-pg-" + strconv.Itoa(g)},
				Spec: storagev1alpha1.ECPlacementGroupSpec{PolicyRef: "rs-crash", Group: int32(g), GroupCount: 8, Width: 6}}
			if err := c.env.Client.Create(ctx, o); err != nil {
				t.Fatal(err)
			}
			o.Status.Epoch = 1
			for slot := 0; slot < 6; slot++ {
				o.Status.Members = append(o.Status.Members, storagev1alpha1.PlacementMember{Slot: int32(slot), Pool: "pool-" + strconv.Itoa((g+slot)%6), State: storagev1alpha1.MemberUp})
			}
			if err := c.env.Client.Status().Update(ctx, o); err != nil {
				t.Fatal(err)
			}
		}
	}

	starts := 0
	start := func() (addr string, kill func()) {
		t.Helper()
		starts++
		addr = testenv.Addr(testenv.FreePort(t))
		cmd := exec.Command(c.bin, "ec-volume", "serve", "--volume", exportNm, "--listen", addr,
			"--cache-dir", filepath.Join(c.dir, "crash-cache-"+strconv.Itoa(starts)),
			"--cache-memory-bytes", strconv.Itoa(4<<20), "--cache-disk-bytes", strconv.Itoa(8<<20),
			// A SIGKILLed export leaves its writer Lease to expire (10 s: a 3 s Lease
			// was lost under the load of a CI run, which ended the burst early).
			"--lease-duration", "10s",
			"--kubeconfig", c.kubeconfig, "--shard-secret", registry.DefaultNamespace+"/"+registry.DefaultShardSecret)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		kill = func() {
			_ = cmd.Process.Kill()
			<-done
		}
		t.Cleanup(kill)
		waitListening(t, addr)
		return addr, kill
	}

	state := make([]blockState, crashBlocks)
	var seq atomic.Uint64
	for round, killAfter := range []int64{600, 20} {
		addr, kill := start()
		if round > 0 {
			verify(t, addr, state)
		}
		began := time.Now()
		n := burst(t, addr, state, &seq, killAfter, kill)
		if n < killAfter {
			t.Fatalf("round %d: only %d writes acknowledged before the export died", round, n)
		}
		t.Logf("round %d: %d writes of 64 KiB acknowledged in %s, then SIGKILL", round, n, time.Since(began).Round(time.Millisecond))
	}
	stripes, err := c.store.ListStripes(ctx, exportNm)
	if err != nil {
		t.Fatal(err)
	}
	if layout == storagev1.LayoutPlacementGroups {
		if len(stripes) != 0 {
			t.Fatalf("%d ECStripes of a PlacementGroups volume", len(stripes))
		}
		vol, err := c.store.OpenVolume(ctx, exportNm)
		if err != nil {
			t.Fatal(err)
		}
		reader := *c.store
		reader.Known, reader.Views = nil, nil
		rep, err := reader.ReadAt(ctx, vol, make([]byte, vol.Object.Spec.SizeBytes), 0)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Stripes == 0 {
			t.Fatal("no stripe written: the destager never ran, so the crash did not hit it")
		}
		t.Logf("%d stripes on the placement groups' members before the last kill", rep.Stripes)
		addr, _ := start()
		verify(t, addr, state)
		return
	}
	if len(stripes) == 0 {
		t.Fatal("no ECStripe written: the destager never ran, so the crash did not hit it")
	}
	t.Logf("%d ECStripes written before the last kill", len(stripes))
	addr, _ := start()
	verify(t, addr, state)
}
