package ecstripes

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

// cluster is envtest plus shard servers running as processes of the real binary.
type cluster struct {
	t          testing.TB
	env        *testenv.Env
	bin, dir   string
	kubeconfig string
	certs      *shardserver.Certificates
	token      string
	servers    []*server
	store      *stripe.Store
	client     *shardserver.Client
}

type server struct {
	pool, node, dataDir string
	port                int
	cmd                 *exec.Cmd
}

const token = "integration-token"

func newCluster(t *testing.T, n int) *cluster { return newClusterTB(t, n) }

func newClusterTB(t testing.TB, n int) *cluster {
	t.Helper()
	env := testenv.Start(t)
	c := &cluster{t: t, env: env, bin: testenv.OperatorBinary(t), dir: t.TempDir(), token: token}
	c.kubeconfig = env.WriteKubeconfig(t, c.dir)
	var err error
	if c.certs, err = shardserver.NewCertificates([]string{"127.0.0.1"}, time.Hour); err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"tls.crt": c.certs.CertPEM, "tls.key": c.certs.KeyPEM, "ca.crt": c.certs.CAPEM, "token": []byte(token)} {
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
	// The shard clients' CA and token come from a Secret, as in a cluster.
	if err := env.Client.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: registry.DefaultNamespace, Name: registry.DefaultShardSecret},
		Data: map[string][]byte{registry.SecretKeyCA: c.certs.CAPEM, registry.SecretKeyToken: []byte(token)}}); err != nil {
		t.Fatal(err)
	}
	cc, err := registry.ClientConfigFromSecret(ctx, env.Client, registry.DefaultNamespace, registry.DefaultShardSecret)
	if err != nil {
		t.Fatal(err)
	}
	cc.Retries, cc.Backoff, cc.Timeout = 1, 50*time.Millisecond, 20*time.Second
	if c.client, err = shardserver.NewClient(cc); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		s := &server{pool: "pool-" + strconv.Itoa(i), node: "node-" + strconv.Itoa(i), dataDir: filepath.Join(c.dir, "pool-"+strconv.Itoa(i)), port: testenv.FreePort(t)}
		dp := &mayastorv1beta2.DiskPool{ObjectMeta: metav1.ObjectMeta{Namespace: "mayastor", Name: s.pool}, Spec: mayastorv1beta2.DiskPoolSpec{Node: s.node, Disks: []string{"/dev/sdb"}}}
		if err := env.Client.Create(ctx, dp); err != nil {
			t.Fatal(err)
		}
		dp.Status = mayastorv1beta2.DiskPoolStatus{CRState: mayastorv1beta2.CRStateCreated, PoolStatus: mayastorv1beta2.PoolOnline, Capacity: 8 << 30, Available: 8 << 30}
		if err := env.Client.Status().Update(ctx, dp); err != nil {
			t.Fatal(err)
		}
		c.servers = append(c.servers, s)
		c.start(s)
	}
	c.waitServers(n)
	c.store = &stripe.Store{Client: env.Client, Shards: c.client, Registry: &registry.Lookup{Client: env.Client}, MayastorNamespace: "mayastor"}
	t.Cleanup(func() {
		for _, s := range c.servers {
			c.stop(s)
		}
	})
	return c
}

func (c *cluster) start(s *server) {
	c.t.Helper()
	cmd := exec.Command(c.bin, "shard-server", "--data-dir", s.dataDir, "--pool", s.pool, "--node", s.node,
		"--listen", testenv.Addr(s.port), "--capacity-bytes", strconv.Itoa(4<<30),
		"--tls-cert-file", filepath.Join(c.dir, "tls.crt"), "--tls-key-file", filepath.Join(c.dir, "tls.key"),
		"--token-file", filepath.Join(c.dir, "token"), "--kubeconfig", c.kubeconfig, "--lease-duration", "6s")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	s.cmd = cmd
}

// stop ends a shard server with SIGTERM (it releases its Lease) and waits.
func (c *cluster) stop(s *server) {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = s.cmd.Process.Kill()
		<-done
	}
	s.cmd = nil
}

func (c *cluster) waitServers(n int) {
	c.t.Helper()
	lookup := &registry.Lookup{Client: c.env.Client}
	deadline := time.Now().Add(60 * time.Second)
	for {
		list, err := lookup.Servers(context.Background())
		if err == nil && len(list) == n {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("want %d registered shard servers, have %d (%v)", n, len(list), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (c *cluster) policy(name string, alg storagev1.ECAlgorithm, k, m int32, stripeSize int64) {
	c.t.Helper()
	p := &storagev1.ErasureCodingPolicy{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: storagev1.ErasureCodingPolicySpec{
		DataShards: ptr.To(k), ParityShards: ptr.To(m), StripeSizeBytes: ptr.To(stripeSize), Algorithm: alg, MinHealthyShards: ptr.To(k)}}
	if err := c.env.Client.Create(context.Background(), p); err != nil {
		c.t.Fatal(err)
	}
}

func (c *cluster) volume(name, policy string, size int64) *stripe.Volume {
	c.t.Helper()
	v := &storagev1.ECVolume{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: storagev1.ECVolumeSpec{SizeBytes: size, PolicyRef: policy}}
	if err := c.env.Client.Create(context.Background(), v); err != nil {
		c.t.Fatal(err)
	}
	vol, err := c.store.OpenVolume(context.Background(), name)
	if err != nil {
		c.t.Fatal(err)
	}
	return vol
}

// usedBytes sums the used bytes reported by every running server.
func (c *cluster) usedBytes() int64 {
	c.t.Helper()
	var total int64
	for _, s := range c.servers {
		sp, err := c.client.Space(context.Background(), testenv.Addr(s.port))
		if err != nil {
			c.t.Fatal(err)
		}
		total += sp.UsedBytes
	}
	return total
}
