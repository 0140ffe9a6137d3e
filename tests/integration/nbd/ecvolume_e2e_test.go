package nbd_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	mayastorv1beta2 "github.com/billyronks/couchestor/apis/mayastor/v1beta2"
	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/pkg/shardserver"
	"github.com/billyronks/couchestor/pkg/stripe"
	"github.com/billyronks/couchestor/tests/testenv"
)

// ecCluster is envtest plus shard servers, each a process of the real
// couchestor binary registering through its Lease, as in the stripe tests.
type ecCluster struct {
	t          *testing.T
	env        *testenv.Env
	bin, dir   string
	kubeconfig string
	shards     []*exec.Cmd
	shardArgs  [][]string // each server's command line, to restart it as it was
	store      *stripe.Store
}

func newECCluster(t *testing.T, n int) *ecCluster {
	t.Helper()
	env := testenv.Start(t)
	c := &ecCluster{t: t, env: env, bin: testenv.OperatorBinary(t), dir: t.TempDir()}
	c.kubeconfig = env.WriteKubeconfig(t, c.dir)
	certs, err := shardserver.NewCertificates([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	const token = "nbd-e2e-token"
	for name, b := range map[string][]byte{"tls.crt": certs.CertPEM, "tls.key": certs.KeyPEM, "token": []byte(token)} {
		if err := os.WriteFile(filepath.Join(c.dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	for _, ns := range []string{registry.DefaultNamespace, "mayastor"} {
		if err := env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := env.Client.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: registry.DefaultNamespace, Name: registry.DefaultShardSecret},
		Data: map[string][]byte{registry.SecretKeyCA: certs.CAPEM, registry.SecretKeyToken: []byte(token)}}); err != nil {
		t.Fatal(err)
	}
	cc, err := registry.ClientConfigFromSecret(ctx, env.Client, registry.DefaultNamespace, registry.DefaultShardSecret)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := shardserver.NewClient(cc)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		pool, node := "pool-"+strconv.Itoa(i), "node-"+strconv.Itoa(i)
		dp := &mayastorv1beta2.DiskPool{ObjectMeta: metav1.ObjectMeta{Namespace: "mayastor", Name: pool}, Spec: mayastorv1beta2.DiskPoolSpec{Node: node, Disks: []string{"/dev/sdb"}}}
		if err := env.Client.Create(ctx, dp); err != nil {
			t.Fatal(err)
		}
		dp.Status = mayastorv1beta2.DiskPoolStatus{CRState: mayastorv1beta2.CRStateCreated, PoolStatus: mayastorv1beta2.PoolOnline, Capacity: 8 << 30, Available: 8 << 30}
		if err := env.Client.Status().Update(ctx, dp); err != nil {
			t.Fatal(err)
		}
		c.shardArgs = append(c.shardArgs, []string{"shard-server", "--data-dir", filepath.Join(c.dir, pool), "--pool", pool, "--node", node,
			"--listen", testenv.Addr(testenv.FreePort(t)), "--capacity-bytes", strconv.Itoa(2 << 30),
			"--tls-cert-file", filepath.Join(c.dir, "tls.crt"), "--tls-key-file", filepath.Join(c.dir, "tls.key"),
			"--token-file", filepath.Join(c.dir, "token"), "--kubeconfig", c.kubeconfig, "--lease-duration", "6s"})
		c.shards = append(c.shards, nil)
		c.startShard(i)
	}
	t.Cleanup(func() {
		for i := range c.shards {
			c.stopShard(i)
		}
	})
	lookup := &registry.Lookup{Client: env.Client}
	deadline := time.Now().Add(60 * time.Second)
	for {
		list, err := lookup.Servers(ctx)
		if err == nil && len(list) == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("want %d registered shard servers, have %d (%v)", n, len(list), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.store = &stripe.Store{Client: env.Client, Shards: sc, Registry: lookup, MayastorNamespace: "mayastor"}
	return c
}

// startShard starts shard server i (again) with its original command line:
// the same data directory and listen address.
func (c *ecCluster) startShard(i int) {
	cmd := exec.Command(c.bin, c.shardArgs[i]...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.shards[i] = cmd
}

// restartShard stops shard server i with SIGTERM, leaves it down for
// `down` (a pod being replaced: longer than the shard client's retries),
// starts it again and waits until it is registered (what a rolling chart
// upgrade does to one pod).
func (c *ecCluster) restartShard(i int, down time.Duration) {
	c.t.Helper()
	c.stopShard(i)
	time.Sleep(down)
	c.startShard(i)
	pool := "pool-" + strconv.Itoa(i)
	deadline := time.Now().Add(60 * time.Second)
	for {
		byPool, err := c.store.Registry.ByPool(context.Background())
		if _, ok := byPool[pool]; err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("restarted shard server of %s not registered after 60s (%v)", pool, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stopShard ends shard server i with SIGTERM (it releases its Lease).
func (c *ecCluster) stopShard(i int) {
	cmd := c.shards[i]
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
	c.shards[i] = nil
}

// serve starts `couchestor ec-volume serve` for volume with its journal in
// local directories (--journal-dir) and returns its NBD URI.
func (c *ecCluster) serve(volume, cacheDir string) (uri string, stop func()) {
	c.t.Helper()
	return c.serveWith(volume, cacheDir, "--journal-dir", filepath.Join(c.dir, "journal"))
}

// serveWith starts `couchestor ec-volume serve` for volume with extra flags
// (none: the journal replicas go to shard servers, the default).
func (c *ecCluster) serveWith(volume, cacheDir string, extra ...string) (uri string, stop func()) {
	c.t.Helper()
	port := testenv.FreePort(c.t)
	args := append([]string{"ec-volume", "serve", "--volume", volume, "--listen", testenv.Addr(port),
		"--cache-dir", cacheDir,
		"--cache-memory-bytes", strconv.Itoa(8 << 20), "--cache-disk-bytes", strconv.Itoa(16 << 20),
		"--kubeconfig", c.kubeconfig, "--shard-secret", registry.DefaultNamespace + "/" + registry.DefaultShardSecret}, extra...)
	cmd := exec.Command(c.bin, args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	stop = func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			c.t.Errorf("ec-volume serve ignored SIGTERM for 30s")
		}
	}
	c.t.Cleanup(stop)
	waitListening(c.t, testenv.Addr(port))
	return "nbd://" + testenv.Addr(port) + "/" + volume, stop
}

// TestECVolumeServeWithShardServers exports an ECVolume (4+2 Reed-Solomon,
// 1 MiB stripes, a 16 MiB journal destaging every second) with `couchestor
// ec-volume serve` over six shard-server processes: an image written with
// qemu-img is destaged into ECStripes, and reads back exactly through a
// restarted export with a cold cache, also with one and then two shard
// servers stopped (degraded reads).
func TestECVolumeServeWithShardServers(t *testing.T) {
	need(t, "qemu-img", "nbdcopy", "qemu-io")
	c := newECCluster(t, 6)
	ctx := context.Background()
	pol := &storagev1.ErasureCodingPolicy{ObjectMeta: metav1.ObjectMeta{Name: "rs-4-2"}, Spec: storagev1.ErasureCodingPolicySpec{
		DataShards: ptr.To(int32(4)), ParityShards: ptr.To(int32(2)), StripeSizeBytes: ptr.To(int64(1 << 20)),
		Algorithm: storagev1.ECAlgorithm("ReedSolomon"), MinHealthyShards: ptr.To(int32(4)),
		JournalConfig: &storagev1.JournalConfig{JournalSizeBytes: ptr.To(int64(16 << 20)), ReplicationFactor: ptr.To(int32(3)),
			DestageThresholdPercent: ptr.To(int32(50)), DestageInterval: "1s"}}}
	if err := c.env.Client.Create(ctx, pol); err != nil {
		t.Fatal(err)
	}
	const volSize = 64 << 20
	if err := c.env.Client.Create(ctx, &storagev1.ECVolume{ObjectMeta: metav1.ObjectMeta{Name: "ecv-nbd"},
		Spec: storagev1.ECVolumeSpec{SizeBytes: volSize, PolicyRef: "rs-4-2"}}); err != nil {
		t.Fatal(err)
	}

	const n = 24<<20 + 4096
	in, _ := randomImage(t, n)
	uri, stop := c.serve("ecv-nbd", filepath.Join(c.dir, "cache-1"))
	run(t, 5*time.Minute, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", in, uri)
	run(t, 5*time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 40000000 3000", uri)

	// The destager turns the journal into ECStripes (25 stripes hold the image).
	deadline := time.Now().Add(2 * time.Minute)
	for {
		stripes, err := c.store.ListStripes(ctx, "ecv-nbd")
		if err == nil && len(stripes) >= 26 {
			t.Logf("%d ECStripes written by the destager", len(stripes))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("destager wrote %d ECStripes in 2 minutes, want >= 26 (%v)", len(stripes), err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	stop()

	for round, down := range []int{0, 1, 2} {
		if down > 0 {
			c.stopShard(down - 1)
		}
		uri, stop := c.serve("ecv-nbd", filepath.Join(c.dir, "cache-cold-"+strconv.Itoa(round)))
		run(t, 5*time.Minute, "qemu-io", "-f", "raw", "-r", "-c", "read -P 0x5a 40000000 3000", "-c", "read -P 0 40003000 4096", uri)
		out := filepath.Join(t.TempDir(), "out.raw")
		run(t, 5*time.Minute, "nbdcopy", uri, out)
		got, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		want, err := os.ReadFile(in)
		if err != nil {
			t.Fatal(err)
		}
		if string(got[:n]) != string(want) {
			t.Fatalf("%d shard servers down: the image read back through the export differs", down)
		}
		t.Logf("%d shard servers down: image read back exactly", down)
		stop()
	}
}
