package nbd_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/tests/testenv"
)

// TestECVolumeInUseThroughOutageAndRebuild uses an erasure-coded volume the
// way a user would while its storage breaks: unmodified qemu-img, qemu-io
// and nbdcopy against `couchestor ec-volume serve` (journal on shard
// servers), eight shard-server processes, and the operator as a process
// (short down-out delay) doing what it does in a cluster. Writes and
// verified reads go on with one and then two shard servers stopped; the
// operator rebuilds the lost shards onto the remaining pools; a fresh
// export with a cold cache then reads everything back exactly.
//
// The two stopped servers hold no journal replica: the journal (three
// replicas) tolerates one lost replica, the stripes (4+2) two lost shards;
// losing two journal replicas stops writes (no quorum) by design.
func TestECVolumeInUseThroughOutageAndRebuild(t *testing.T) {
	need(t, "qemu-img", "qemu-io", "nbdcopy")
	c := newECCluster(t, 8)
	ctx := context.Background()
	pol := &storagev1.ErasureCodingPolicy{ObjectMeta: metav1.ObjectMeta{Name: "rs-inuse"}, Spec: storagev1.ErasureCodingPolicySpec{
		DataShards: ptr.To(int32(4)), ParityShards: ptr.To(int32(2)), StripeSizeBytes: ptr.To(int64(1 << 20)),
		Algorithm: storagev1.ECAlgorithm("ReedSolomon"), MinHealthyShards: ptr.To(int32(4)),
		JournalConfig: &storagev1.JournalConfig{JournalSizeBytes: ptr.To(int64(16 << 20)), ReplicationFactor: ptr.To(int32(3)),
			DestageThresholdPercent: ptr.To(int32(50)), DestageInterval: "1s"}}}
	if err := c.env.Client.Create(ctx, pol); err != nil {
		t.Fatal(err)
	}
	const vol, volSize = "ecv-inuse", 32 << 20
	if err := c.env.Client.Create(ctx, &storagev1.ECVolume{ObjectMeta: metav1.ObjectMeta{Name: vol},
		Spec: storagev1.ECVolumeSpec{SizeBytes: volSize, PolicyRef: "rs-inuse"}}); err != nil {
		t.Fatal(err)
	}

	op := exec.Command(c.bin, "--kubeconfig", c.kubeconfig, "--leader-elect=false", "--enable-webhooks=false",
		"--metrics-bind-address", "0", "--health-probe-bind-address", testenv.Addr(testenv.FreePort(t)),
		"--mayastor-namespace", "mayastor", "--ec-down-out-delay", "4s", "--ec-pool-probe-interval", "300ms",
		"--ec-scrub-tick", "500ms", "--ec-policy-validation-interval", "1s", "--shard-client-timeout", "5s",
		"--zap-log-level", "error")
	op.Stdout, op.Stderr = os.Stderr, os.Stderr
	if err := op.Start(); err != nil {
		t.Fatal(err)
	}
	opDone := make(chan struct{})
	go func() { _ = op.Wait(); close(opDone) }()
	t.Cleanup(func() {
		_ = op.Process.Signal(syscall.SIGTERM)
		select {
		case <-opDone:
		case <-time.After(30 * time.Second):
			_ = op.Process.Kill()
			<-opDone
		}
	})

	// want is the volume as the client wrote it.
	want := make([]byte, volSize)
	write := func(uri string, pattern byte, off, n int) {
		t.Helper()
		run(t, 5*time.Minute, "qemu-io", "-f", "raw", "-c", fmt.Sprintf("write -P 0x%02x %d %d", pattern, off, n), uri)
		for i := off; i < off+n; i++ {
			want[i] = pattern
		}
	}
	check := func(uri, when string) {
		t.Helper()
		out := filepath.Join(t.TempDir(), "out.raw")
		run(t, 5*time.Minute, "nbdcopy", uri, out)
		got, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			i := 0
			for i < len(got) && i < len(want) && got[i] == want[i] {
				i++
			}
			t.Fatalf("%s: the volume read back through nbdcopy differs from what was written (first difference at byte %d, %d bytes read)", when, i, len(got))
		}
		t.Logf("%s: %d MiB read back exactly", when, len(got)>>20)
	}

	uri, stop := c.serveWith(vol, filepath.Join(c.dir, "inuse-cache-1"))
	in, _ := randomImage(t, 12<<20)
	run(t, 5*time.Minute, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", in, uri)
	img, err := os.ReadFile(in)
	if err != nil {
		t.Fatal(err)
	}
	copy(want, img)
	write(uri, 0x5a, 20<<20, 3<<20+4096)
	waitStripes := func(what string, ok func(map[int64]*storagev1.ECStripe) error) {
		t.Helper()
		deadline := time.Now().Add(4 * time.Minute)
		for {
			stripes, err := c.store.ListStripes(ctx, vol)
			if err == nil {
				if err = ok(stripes); err == nil {
					return
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("timed out after 4m waiting until %s: %v", what, err)
			}
			time.Sleep(300 * time.Millisecond)
		}
	}
	waitStripes("the writes are destaged into ECStripes", func(s map[int64]*storagev1.ECStripe) error {
		if len(s) < 16 {
			return fmt.Errorf("%d ECStripes", len(s))
		}
		return nil
	})
	check(uri, "all pools up")

	// Stop two shard servers that hold no journal replica, one at a time;
	// the volume stays writable and readable.
	cur := &storagev1.ECVolume{}
	if err := c.env.Client.Get(ctx, client.ObjectKey{Name: vol}, cur); err != nil {
		t.Fatal(err)
	}
	journalPools := strings.Split(cur.Annotations[storagev1.ECVolumeAnnotationJournalPools], ",")
	var victims []int
	for i := 0; i < 8 && len(victims) < 2; i++ {
		if !slices.Contains(journalPools, "pool-"+strconv.Itoa(i)) {
			victims = append(victims, i)
		}
	}
	for n, v := range victims {
		c.stopShard(v)
		write(uri, byte(0x61+n), (4+n*8)<<20+512, 1<<20+8192)
		run(t, 5*time.Minute, "qemu-io", "-f", "raw", "-r", "-c",
			fmt.Sprintf("read -P 0x%02x %d %d", 0x61+n, (4+n*8)<<20+512, 1<<20+8192), uri)
		check(uri, fmt.Sprintf("%d shard server(s) stopped", n+1))
	}

	// The operator rebuilds every stripe's lost shards onto the six pools left.
	stopped := map[string]bool{}
	for _, v := range victims {
		stopped["pool-"+strconv.Itoa(v)] = true
	}
	waitStripes("every stripe is rebuilt off the stopped pools and Healthy", func(stripes map[int64]*storagev1.ECStripe) error {
		rebuilt := 0
		for _, s := range stripes {
			if s.Status.State != storagev1.StripeHealthy || s.Status.HealthyShards != 6 {
				return fmt.Errorf("%s: state %s, %d healthy shards", s.Name, s.Status.State, s.Status.HealthyShards)
			}
			for _, l := range s.Spec.ShardLocations {
				if stopped[l.PoolName] {
					return fmt.Errorf("%s: shard %d still on stopped pool %s", s.Name, l.ShardIndex, l.PoolName)
				}
			}
			if s.Spec.Generation > 1 {
				rebuilt++
			}
		}
		if rebuilt == 0 {
			return fmt.Errorf("no stripe has a new generation")
		}
		return nil
	})
	stop()

	// A fresh export with a cold cache reads from the rebuilt stripes.
	uri, _ = c.serveWith(vol, filepath.Join(c.dir, "inuse-cache-2"))
	check(uri, "after the rebuild, cold cache")
	write(uri, 0x7e, 30<<20, 64<<10)
	run(t, 5*time.Minute, "qemu-io", "-f", "raw", "-r", "-c", fmt.Sprintf("read -P 0x7e %d %d", 30<<20, 64<<10), uri)
	check(uri, "after the rebuild, written again")
}
