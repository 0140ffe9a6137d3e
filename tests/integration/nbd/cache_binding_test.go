package nbd_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/controllers"
	"github.com/billyronks/couchestor/tests/testenv"
)

// scrapeMetric reads one sample of name from a /metrics URL.
func scrapeMetric(url, name string) (float64, bool) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if line := sc.Text(); strings.HasPrefix(line, name+"{") || strings.HasPrefix(line, name+" ") {
			f := strings.Fields(line)
			v, err := strconv.ParseFloat(f[len(f)-1], 64)
			return v, err == nil
		}
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	return 0, false
}

// diskEntries counts the L2 cache's entry files under dir.
func diskEntries(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(d.Name(), ".ent") {
			n++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestDiskCacheIsBoundToTheVolumeAndItsWriter runs `ec-volume serve` as a
// process over shard-server processes, always on the same cache directory
// A, and requires reads to return the volume's current data:
//   - a restart with no other writer in between keeps A's entries;
//   - after an export on another node (cache directory B) rewrote the data,
//     the export on A serves the new bytes, not A's old entries;
//   - after the ECVolume is deleted and recreated under the same name, the
//     export on A serves the new volume's data (zeros), not the old one's.
//
// On the old code (entries keyed by volume name and block only) both of the
// last two read the old bytes.
func TestDiskCacheIsBoundToTheVolumeAndItsWriter(t *testing.T) {
	need(t, "qemu-io")
	c := newECCluster(t, 3)
	ctx := context.Background()
	pol := &storagev1.ErasureCodingPolicy{ObjectMeta: metav1.ObjectMeta{Name: "rs-2-1-cache"}, Spec: storagev1.ErasureCodingPolicySpec{
		DataShards: ptr.To(int32(2)), ParityShards: ptr.To(int32(1)), StripeSizeBytes: ptr.To(int64(1 << 20)),
		Algorithm: storagev1.AlgorithmReedSolomon, MinHealthyShards: ptr.To(int32(2)),
		JournalConfig: &storagev1.JournalConfig{JournalSizeBytes: ptr.To(int64(16 << 20)), ReplicationFactor: ptr.To(int32(3)),
			DestageThresholdPercent: ptr.To(int32(50)), DestageInterval: "1s"}}}
	if err := c.env.Client.Create(ctx, pol); err != nil {
		t.Fatal(err)
	}
	// The ECVolume controller (its finalizer deletes stripes and journal
	// replicas with the volume), in-process.
	mctx, stopMgr := context.WithCancel(ctx)
	defer stopMgr()
	mgr, err := ctrl.NewManager(c.env.Config, ctrl.Options{Scheme: c.env.Scheme, Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0"})
	if err != nil {
		t.Fatal(err)
	}
	if err := (&controllers.ECVolumeReconciler{Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("test"), MayastorNamespace: "mayastor"}).SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	go func() { _ = mgr.Start(mctx) }()
	wait := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(3 * time.Minute)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting until %s", what)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	const vol = "ecv-recycled"
	create := func() {
		t.Helper()
		if err := c.env.Client.Create(ctx, &storagev1.ECVolume{ObjectMeta: metav1.ObjectMeta{Name: vol},
			Spec: storagev1.ECVolumeSpec{SizeBytes: 4 << 20, PolicyRef: pol.Name}}); err != nil {
			t.Fatal(err)
		}
		wait("the ECVolume has its finalizer", func() bool {
			v := &storagev1.ECVolume{}
			return c.env.Client.Get(ctx, client.ObjectKey{Name: vol}, v) == nil && len(v.Finalizers) == 1
		})
	}
	create()

	cacheA, cacheB := filepath.Join(c.dir, "cache-a"), filepath.Join(c.dir, "cache-b")
	entriesA := func() int { return diskEntries(t, filepath.Join(cacheA, vol)) }
	// export serves vol on cacheDir with a 2 MiB L1 (four 512 KiB blocks, so
	// blocks reach L2) and its metrics on a port of its own.
	export := func(cacheDir string) (uri, metrics string, stop func()) {
		port := testenv.FreePort(t)
		uri, stop = c.serveWith(vol, cacheDir, "--cache-memory-bytes", strconv.Itoa(2<<20), "--metrics-bind-address", testenv.Addr(port))
		return uri, "http://" + testenv.Addr(port) + "/metrics", stop
	}
	// writeDestaged writes pattern over the first 2 MiB and waits until the
	// destager has written it to ECStripes and emptied the journal.
	writeDestaged := func(uri, metrics string, pattern byte) {
		t.Helper()
		run(t, 2*time.Minute, "qemu-io", "-f", "raw", "-c", fmt.Sprintf("write -P 0x%02x 0 2M", pattern), uri)
		wait(fmt.Sprintf("pattern 0x%02x is destaged and the journal empty", pattern), func() bool {
			used, ok := scrapeMetric(metrics, "couchestor_ecvolume_journal_used_bytes")
			return ok && used == 0
		})
	}
	// fillL2 reads each block of the first 2 MiB twice (a block read once is
	// not demoted to L2), then the rest of the volume to evict them from L1,
	// until A's L2 holds entries.
	fillL2 := func(uri string, pattern byte) {
		t.Helper()
		args := []string{"-f", "raw", "-r"}
		for off := 0; off < 2<<20; off += 512 << 10 {
			for range 2 {
				args = append(args, "-c", fmt.Sprintf("read -P 0x%02x %d 512k", pattern, off))
			}
		}
		args = append(args, "-c", "read 2M 2M", uri)
		wait("the export's L2 holds entries", func() bool {
			run(t, 2*time.Minute, "qemu-io", args...)
			return entriesA() > 0
		})
	}
	// readBack fails the test (qemu-io exits non-zero on a pattern mismatch)
	// unless the first 2 MiB read as pattern.
	readBack := func(uri string, pattern byte, when string) {
		t.Helper()
		t.Logf("%s: reading pattern 0x%02x through the export on cache directory A", when, pattern)
		run(t, 2*time.Minute, "qemu-io", "-f", "raw", "-r", "-c", fmt.Sprintf("read -P 0x%02x 0 2M", pattern), uri)
	}

	// 1. Write, destage and cache the first 2 MiB on A.
	uri, metrics, stop := export(cacheA)
	writeDestaged(uri, metrics, 0x5a)
	fillL2(uri, 0x5a)
	stop()
	n := entriesA()

	// 2. A restart with nobody else writing keeps A's entries.
	uri, _, stop = export(cacheA)
	if got := entriesA(); got < n {
		t.Fatalf("a restart with no other writer dropped the L2 (%d entries, %d before)", got, n)
	}
	readBack(uri, 0x5a, "restart")
	stop()

	// 3. An export on another node rewrites the data; back on A, the new bytes.
	uri, metrics, stop = export(cacheB)
	writeDestaged(uri, metrics, 0x77)
	stop()
	uri, _, stop = export(cacheA)
	readBack(uri, 0x77, "after another writer")
	fillL2(uri, 0x77)
	stop()

	// 4. The volume is deleted and recreated under the same name: its data is
	// zeros, whatever A holds.
	cur := &storagev1.ECVolume{}
	if err := c.env.Client.Get(ctx, client.ObjectKey{Name: vol}, cur); err != nil {
		t.Fatal(err)
	}
	if err := c.env.Client.Delete(ctx, cur); err != nil {
		t.Fatal(err)
	}
	wait("the ECVolume is gone", func() bool {
		return apierrors.IsNotFound(c.env.Client.Get(ctx, client.ObjectKey{Name: vol}, &storagev1.ECVolume{}))
	})
	create()
	uri, _, stop = export(cacheA)
	readBack(uri, 0, "after the volume was recreated")
	stop()
}
