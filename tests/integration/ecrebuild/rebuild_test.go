package ecrebuild

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mayastorv1beta2 "github.com/billyronks/couchestor/apis/mayastor/v1beta2"
	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/erasure"
	"github.com/billyronks/couchestor/pkg/rebuild"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/pkg/shardserver"
	"github.com/billyronks/couchestor/pkg/stripe"
	"github.com/billyronks/couchestor/tests/testenv"
)

// cluster is envtest, shard servers and the operator, all as processes of the real binary.
type cluster struct {
	t          *testing.T
	env        *testenv.Env
	bin, dir   string
	kubeconfig string
	servers    map[string]*server
	store      *stripe.Store
	operator   *exec.Cmd
	healthAddr string
}

type server struct {
	pool, node, dataDir string
	port                int
	cmd                 *exec.Cmd
}

const shardToken = "ecrebuild-token"

func newCluster(t *testing.T, n int) *cluster {
	env := testenv.Start(t)
	c := &cluster{t: t, env: env, bin: testenv.OperatorBinary(t), dir: t.TempDir(), servers: map[string]*server{}}
	c.kubeconfig = env.WriteKubeconfig(t, c.dir)
	certs, err := shardserver.NewCertificates([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"tls.crt": certs.CertPEM, "tls.key": certs.KeyPEM, "token": []byte(shardToken)} {
		if err := os.WriteFile(filepath.Join(c.dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	ensureNamespace(t, env.Client, registry.DefaultNamespace)
	ensureNamespace(t, env.Client, mayastorNS)
	if err := env.Client.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: registry.DefaultNamespace, Name: registry.DefaultShardSecret},
		Data: map[string][]byte{registry.SecretKeyCA: certs.CAPEM, registry.SecretKeyToken: []byte(shardToken)}}); err != nil {
		t.Fatal(err)
	}
	sc, err := shardserver.NewClient(shardserver.ClientConfig{CAPEM: certs.CAPEM, Token: shardToken, Retries: 1, Backoff: 50 * time.Millisecond, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		s := &server{pool: "pool-" + strconv.Itoa(i), node: "node-" + strconv.Itoa(i), dataDir: filepath.Join(c.dir, "pool-"+strconv.Itoa(i)), port: testenv.FreePort(t)}
		createDiskPool(t, env.Client, s.pool, s.node, mayastorv1beta2.PoolOnline)
		c.servers[s.pool] = s
		c.start(s)
	}
	c.waitServers(n)
	c.store = &stripe.Store{Client: env.Client, Shards: sc, Registry: &registry.Lookup{Client: env.Client}, MayastorNamespace: mayastorNS}
	t.Cleanup(func() {
		c.stopOperator(syscall.SIGTERM)
		for _, s := range c.servers {
			c.stop(s)
		}
	})
	return c
}

func (c *cluster) start(s *server) {
	c.t.Helper()
	cmd := exec.Command(c.bin, "shard-server", "--data-dir", s.dataDir, "--pool", s.pool, "--node", s.node,
		"--listen", testenv.Addr(s.port), "--capacity-bytes", strconv.Itoa(1<<30),
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

func (c *cluster) live() int {
	list, err := (&registry.Lookup{Client: c.env.Client}).Servers(context.Background())
	if err != nil {
		return -1
	}
	return len(list)
}

func (c *cluster) waitServers(n int) {
	c.t.Helper()
	eventually(c.t, 60*time.Second, fmt.Sprintf("%d shard servers registered", n), func() error {
		if got := c.live(); got != n {
			return fmt.Errorf("%d registered", got)
		}
		return nil
	})
}

// startOperator runs the couchestor operator as a process with short delays
// (down-out 4s, rebuilds at 256 KiB/s).
func (c *cluster) startOperator() { c.startOperatorWith(4*time.Second, 256<<10) }

// startOperatorWith runs the operator with the given down-out delay and
// rebuild bandwidth (bytes per second).
func (c *cluster) startOperatorWith(downOut time.Duration, rebuildBandwidth int) {
	c.t.Helper()
	if c.healthAddr == "" {
		c.healthAddr = testenv.Addr(testenv.FreePort(c.t))
	}
	args := []string{"--kubeconfig", c.kubeconfig, "--leader-elect=false", "--enable-webhooks=false",
		"--metrics-bind-address", "0", "--health-probe-bind-address", c.healthAddr,
		"--mayastor-namespace", mayastorNS, "--ec-down-out-delay", downOut.String(), "--ec-pool-probe-interval", "300ms",
		"--ec-scrub-tick", "500ms", "--ec-policy-validation-interval", "1s", "--shard-client-timeout", "5s",
		"--ec-rebuild-bandwidth-bytes", strconv.Itoa(rebuildBandwidth), "--zap-log-level", "error"}
	cmd := exec.Command(c.bin, args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.operator = cmd
}

func (c *cluster) stopOperator(sig syscall.Signal) {
	if c.operator == nil {
		return
	}
	_ = c.operator.Process.Signal(sig)
	done := make(chan struct{})
	go func() { _ = c.operator.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = c.operator.Process.Kill()
		<-done
	}
	c.operator = nil
}

func (c *cluster) stripes(volume string) []storagev1.ECStripe {
	c.t.Helper()
	var list storagev1.ECStripeList
	if err := c.env.Client.List(context.Background(), &list, client.MatchingLabels{stripe.LabelVolume: stripe.VolumeLabelValue(volume)}); err != nil {
		c.t.Fatal(err)
	}
	return list.Items
}

func (c *cluster) readAll(v *stripe.Volume, n int) ([]byte, error) {
	buf := make([]byte, n)
	_, err := c.store.ReadAt(context.Background(), v, buf, 0)
	return buf, err
}

func (c *cluster) mustReadExact(v *stripe.Volume, want []byte, when string) {
	c.t.Helper()
	got, err := c.readAll(v, len(want))
	if err != nil {
		c.t.Fatalf("%s: read: %v", when, err)
	}
	if !bytes.Equal(got, want) {
		c.t.Fatalf("%s: read back differs from what was written", when)
	}
}

func (c *cluster) waitStripes(volume, what string, cond func(s *storagev1.ECStripe) error) {
	c.t.Helper()
	eventually(c.t, 90*time.Second, what, func() error {
		for _, s := range c.stripes(volume) {
			if err := cond(&s); err != nil {
				return fmt.Errorf("%s: %w", s.Name, err)
			}
		}
		return nil
	})
}

func healthyAt(minGen int64, avoid ...string) func(s *storagev1.ECStripe) error {
	return func(s *storagev1.ECStripe) error {
		if s.Status.State != storagev1.StripeHealthy || s.Status.HealthyShards != 6 {
			return fmt.Errorf("state %s healthy %d shards %+v", s.Status.State, s.Status.HealthyShards, s.Status.ShardHealth)
		}
		if s.Spec.Generation < minGen {
			return fmt.Errorf("generation %d < %d", s.Spec.Generation, minGen)
		}
		if _, ok := s.Annotations[rebuild.AnnotationIntent]; ok {
			return errors.New("rebuild intent still recorded")
		}
		pools, nodes := map[string]bool{}, map[string]bool{}
		for _, l := range s.Spec.ShardLocations {
			for _, a := range avoid {
				if l.PoolName == a {
					return fmt.Errorf("shard %d still on stopped pool %s", l.ShardIndex, a)
				}
			}
			if pools[l.PoolName] || nodes[l.NodeName] {
				return fmt.Errorf("two shards on pool %s / node %s", l.PoolName, l.NodeName)
			}
			pools[l.PoolName], nodes[l.NodeName] = true, true
		}
		return nil
	}
}

func (c *cluster) policyStatus(name string) storagev1.ErasureCodingPolicyStatus {
	var p storagev1.ErasureCodingPolicy
	if err := c.env.Client.Get(context.Background(), client.ObjectKey{Name: name}, &p); err != nil {
		c.t.Fatal(err)
	}
	return p.Status
}

func (c *cluster) waitPolicy(name, what string, cond func(storagev1.ErasureCodingPolicyStatus) error) {
	c.t.Helper()
	eventually(c.t, 60*time.Second, what, func() error { return cond(c.policyStatus(name)) })
}

// poolsOf returns the pools holding shards of s, in shard order.
func poolsOf(s *storagev1.ECStripe) []string {
	out := make([]string, len(s.Spec.ShardLocations))
	for i, l := range s.Spec.ShardLocations {
		out[i] = l.PoolName
	}
	return out
}

func tamper(t *testing.T, dir string, l storagev1.ShardLocation) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(dir, l.PoolName, "shards.dat"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	pos := l.Offset + 4096 + 100
	if _, err := f.ReadAt(b, pos); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x5a
	if _, err := f.WriteAt(b, pos); err != nil {
		t.Fatal(err)
	}
}

// The scenarios, in order, over 8 shard servers (4+2: k+m+2) as
// processes and the operator as a process.
func TestRebuildScrubAndRecoveryWithShardServerProcesses(t *testing.T) {
	c := newCluster(t, 8)
	ctx := context.Background()
	const pol = "rs42"
	p := &storagev1.ErasureCodingPolicy{ObjectMeta: metav1.ObjectMeta{Name: pol}, Spec: storagev1.ErasureCodingPolicySpec{
		DataShards: ptr.To[int32](4), ParityShards: ptr.To[int32](2), StripeSizeBytes: ptr.To[int64](1 << 20),
		MinHealthyShards: ptr.To[int32](4), ScrubbingEnabled: ptr.To(true), ScrubInterval: "2s"}}
	if err := c.env.Client.Create(ctx, p); err != nil {
		t.Fatal(err)
	}
	vol := &storagev1.ECVolume{ObjectMeta: metav1.ObjectMeta{Name: "vol"}, Spec: storagev1.ECVolumeSpec{SizeBytes: 2 << 20, PolicyRef: pol}}
	if err := c.env.Client.Create(ctx, vol); err != nil {
		t.Fatal(err)
	}
	v, err := c.store.OpenVolume(ctx, "vol")
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 2<<20)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	if err := c.store.WriteAt(ctx, v, data, 0); err != nil {
		t.Fatal(err)
	}
	// Step 1 runs under a down-out delay no bounce on a loaded machine comes
	// near; the later steps under a short one.
	const bounceDelay = 2 * time.Minute
	c.startOperatorWith(bounceDelay, 256<<10)
	c.waitStripes("vol", "written stripes healthy and scrubbed", func(s *storagev1.ECStripe) error {
		if err := healthyAt(1)(s); err != nil {
			return err
		}
		if s.Status.LastVerificationTime == nil {
			return errors.New("not scrubbed yet")
		}
		return nil
	})
	c.waitPolicy(pol, "policy Active with 2 healthy stripes", func(s storagev1.ErasureCodingPolicyStatus) error {
		if s.Phase != storagev1.ECPolicyActive || s.HealthyStripes != 2 || s.TotalStripes != 2 || s.ActiveVolumes != 1 {
			return fmt.Errorf("%+v", s)
		}
		return nil
	})
	gen0 := map[string]int64{}
	for _, s := range c.stripes("vol") {
		gen0[s.Name] = s.Spec.Generation
	}
	s0 := c.stripes("vol")[0]

	// 1. Stop and restart a shard server within the down-out delay: no
	// rebuild. The operator is seen to notice the pool down (the shard's
	// note) and up again (the note cleared): from then on nothing of the
	// bounce remains that could start a rebuild. Nothing changes meanwhile.
	unchanged := func() {
		t.Helper()
		for _, s := range c.stripes("vol") {
			if s.Spec.Generation != gen0[s.Name] || s.Annotations[rebuild.AnnotationIntent] != "" || s.Status.State != storagev1.StripeHealthy {
				t.Fatalf("a bounce within the down-out delay changed stripe %s: generation %d→%d, state %s", s.Name, gen0[s.Name], s.Spec.Generation, s.Status.State)
			}
		}
	}
	bounce := c.servers[s0.Spec.ShardLocations[0].PoolName]
	note := func() (string, error) {
		var s storagev1.ECStripe
		if err := c.env.Client.Get(ctx, client.ObjectKey{Name: s0.Name}, &s); err != nil {
			return "", err
		}
		for _, h := range s.Status.ShardHealth {
			if h.ShardIndex == 0 {
				return h.Error, nil
			}
		}
		return "", errors.New("no health recorded for shard 0")
	}
	stopped := time.Now()
	c.stop(bounce)
	eventually(t, 60*time.Second, "the operator notes pool "+bounce.pool+" down", func() error {
		unchanged()
		n, err := note()
		if err == nil && !strings.Contains(n, "counted Missing at") {
			err = fmt.Errorf("shard 0 note %q", n)
		}
		return err
	})
	c.start(bounce)
	c.waitServers(8)
	eventually(t, 60*time.Second, "the operator sees pool "+bounce.pool+" up again", func() error {
		unchanged()
		n, err := note()
		if err == nil && n != "" {
			err = fmt.Errorf("shard 0 note %q", n)
		}
		return err
	})
	unchanged()
	if d := time.Since(stopped); d >= bounceDelay {
		t.Fatalf("the bounce took %s, not within the %s down-out delay: the step proved nothing", d, bounceDelay)
	}
	c.stopOperator(syscall.SIGTERM)
	c.startOperator()

	// 2. Stop one, then a second shard server past the delay: Degraded →
	// rebuilt elsewhere → Healthy, generation bumped, reads exact.
	first := c.servers[s0.Spec.ShardLocations[1].PoolName]
	c.stop(first)
	c.waitStripes("vol", "rebuilt off "+first.pool, healthyAt(0, first.pool))
	s0 = c.stripes("vol")[0]
	if s0.Spec.Generation <= gen0[s0.Name] {
		t.Fatalf("generation not bumped by the rebuild: %d", s0.Spec.Generation)
	}
	c.mustReadExact(v, data, "after the first rebuild")
	second := c.servers[s0.Spec.ShardLocations[2].PoolName]
	c.stop(second)
	c.waitStripes("vol", "rebuilt off "+second.pool, healthyAt(0, first.pool, second.pool))
	c.mustReadExact(v, data, "after the second rebuild")
	c.waitPolicy(pol, "policy counts back to 2 healthy", func(s storagev1.ErasureCodingPolicyStatus) error {
		if s.HealthyStripes != 2 || s.DegradedStripes != 0 || s.RebuildingStripes != 0 {
			return fmt.Errorf("%+v", s)
		}
		return nil
	})
	c.start(first)
	c.start(second)
	c.waitServers(8)

	// 3. Stop three pools of one stripe at once: Failed, reads fail clearly,
	// nothing overwritten; bring them back: re-evaluated, recovered.
	s0 = c.stripes("vol")[0]
	lost := poolsOf(&s0)[:3]
	before := s0.Spec.DeepCopy()
	for _, pl := range lost {
		c.stop(c.servers[pl])
	}
	eventually(t, 60*time.Second, "stripe Failed", func() error {
		var s storagev1.ECStripe
		if err := c.env.Client.Get(ctx, client.ObjectKey{Name: s0.Name}, &s); err != nil {
			return err
		}
		if s.Status.State != storagev1.StripeFailed {
			return fmt.Errorf("state %s", s.Status.State)
		}
		return nil
	})
	if _, err := c.readAll(v, len(data)); err == nil || !errors.Is(err, erasure.ErrNotDecodable) {
		t.Fatalf("read of a Failed stripe must fail with a not-decodable error, got %v", err)
	} else if !strings.Contains(err.Error(), "stripe 0") || !strings.Contains(err.Error(), "cannot recover") {
		t.Fatalf("unclear error: %v", err)
	}
	var failed storagev1.ECStripe
	if err := c.env.Client.Get(ctx, client.ObjectKey{Name: s0.Name}, &failed); err != nil {
		t.Fatal(err)
	}
	if failed.Spec.Generation != before.Generation || !equalLocations(failed.Spec.ShardLocations, before.ShardLocations) {
		t.Fatalf("a Failed stripe's record was changed: %+v", failed.Spec)
	}
	for _, pl := range lost {
		c.start(c.servers[pl])
	}
	c.waitServers(8)
	c.waitStripes("vol", "recovered after the pools came back", healthyAt(0))
	if countEvents(t, c.env.Client, s0.Name, "StripeRecovered") == 0 {
		t.Fatal("no StripeRecovered Event: recovery must not be silent")
	}
	c.mustReadExact(v, data, "after recovery")

	// 4. Corrupt bytes of a shard: the scrub finds them → Corrupted → rebuilt.
	s0 = c.stripes("vol")[0]
	genBefore := s0.Spec.Generation
	bad := s0.Spec.ShardLocations[3]
	tamper(t, c.dir, bad)
	eventually(t, 60*time.Second, "corruption found and rebuilt", func() error {
		var s storagev1.ECStripe
		if err := c.env.Client.Get(ctx, client.ObjectKey{Name: s0.Name}, &s); err != nil {
			return err
		}
		if err := healthyAt(genBefore + 1)(&s); err != nil {
			return err
		}
		if l := s.Spec.ShardLocations[3]; l.PoolName == bad.PoolName && l.Offset == bad.Offset {
			return errors.New("shard 3 still at the corrupt location")
		}
		return nil
	})
	c.mustReadExact(v, data, "after the scrub rebuild")

	// 5. SIGKILL the operator mid-rebuild: the rebuild completes after restart.
	// The rebuild runs at 4 KiB/s (over four minutes for its 1.25 MiB), so
	// the kill lands mid-way; the restarted operator runs at full speed.
	c.stopOperator(syscall.SIGTERM)
	c.startOperatorWith(4*time.Second, 4<<10)
	s0 = c.stripes("vol")[0]
	genBefore = s0.Spec.Generation
	victim := c.servers[s0.Spec.ShardLocations[0].PoolName]
	c.stop(victim)
	eventually(t, 60*time.Second, "rebuild intent recorded", func() error {
		var s storagev1.ECStripe
		if err := c.env.Client.Get(ctx, client.ObjectKey{Name: s0.Name}, &s); err != nil {
			return err
		}
		if s.Annotations[rebuild.AnnotationIntent] == "" {
			return fmt.Errorf("no intent yet, state %s", s.Status.State)
		}
		return nil
	})
	c.stopOperator(syscall.SIGKILL)
	var mid storagev1.ECStripe
	if err := c.env.Client.Get(ctx, client.ObjectKey{Name: s0.Name}, &mid); err != nil {
		t.Fatal(err)
	}
	if mid.Annotations[rebuild.AnnotationIntent] == "" || mid.Spec.Generation != genBefore {
		t.Fatalf("the rebuild finished before the operator was killed, at 4 KiB/s: the bandwidth bound is not kept (generation %d→%d)", genBefore, mid.Spec.Generation)
	}
	c.startOperator()
	c.waitStripes("vol", "rebuild resumed and completed after restart", healthyAt(0, victim.pool))
	c.mustReadExact(v, data, "after the resumed rebuild")
	c.waitPolicy(pol, "policy counts after everything", func(s storagev1.ErasureCodingPolicyStatus) error {
		if s.HealthyStripes != 2 || s.TotalStripes != 2 || s.Phase != storagev1.ECPolicyActive {
			return fmt.Errorf("%+v", s)
		}
		return nil
	})
}

func equalLocations(a, b []storagev1.ShardLocation) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
