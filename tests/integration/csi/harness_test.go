// Package csi_test runs the CSI driver (`couchestor csi`) as a process
// against a real control plane (envtest), shard servers as processes, real
// exports, nbdfuse, loop devices, mkfs and mounts. It needs root (loop
// devices, FUSE, mount) and the tools hack/nbd-clients.sh installs; without
// root every test here skips with a message that says it did NOT run.
package csi_test

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	mayastorv1beta2 "github.com/billyronks/couchestor/apis/mayastor/v1beta2"
	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/pkg/shardserver"
	"github.com/billyronks/couchestor/tests/testenv"
)

const (
	policyName = "rs-2-1"
	secretName = registry.DefaultShardSecret
)

// requireRoot skips, loudly, when the test cannot make loop devices, FUSE
// mounts and filesystems; and skips when a tool is missing.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("*** NOT RUN: the CSI node tests need root (loop devices, FUSE, mount, mkfs). " +
			"make test runs them as root in CI; run `sudo -E make test` or as root to check the driver. ***")
	}
	for _, tool := range []string{"nbdfuse", "fusermount3", "losetup", "mkfs.ext4", "mkfs.xfs", "blkid", "resize2fs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("*** NOT RUN: %s not in PATH: install the tools with hack/nbd-clients.sh (make test does) ***", tool)
		}
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("*** NOT RUN: /dev/fuse is missing (%v) ***", err)
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skipf("*** NOT RUN: /dev/loop-control is missing (%v) ***", err)
	}
}

// cluster is envtest, shard servers (one per node, processes of the real
// binary) and one ErasureCodingPolicy 2+1 with a 3-replica journal.
type cluster struct {
	t          testing.TB
	env        *testenv.Env
	bin, dir   string
	kubeconfig string
	shards     []*exec.Cmd
	cleaned    map[string]bool
}

func newCluster(t testing.TB, n int) *cluster {
	t.Helper()
	env := testenv.Start(t)
	c := &cluster{t: t, env: env, bin: testenv.OperatorBinary(t), dir: t.TempDir()}
	c.kubeconfig = env.WriteKubeconfig(t, c.dir)
	certs, err := shardserver.NewCertificates([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	const token = "csi-test-token"
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
	if err := env.Client.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: registry.DefaultNamespace, Name: secretName},
		Data: map[string][]byte{registry.SecretKeyCA: certs.CAPEM, registry.SecretKeyToken: []byte(token)}}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		pool, nodeName := "pool-"+strconv.Itoa(i), "node-"+strconv.Itoa(i)
		dp := &mayastorv1beta2.DiskPool{ObjectMeta: metav1.ObjectMeta{Namespace: "mayastor", Name: pool}, Spec: mayastorv1beta2.DiskPoolSpec{Node: nodeName, Disks: []string{"/dev/sdb"}}}
		if err := env.Client.Create(ctx, dp); err != nil {
			t.Fatal(err)
		}
		dp.Status = mayastorv1beta2.DiskPoolStatus{CRState: mayastorv1beta2.CRStateCreated, PoolStatus: mayastorv1beta2.PoolOnline, Capacity: 8 << 30, Available: 8 << 30}
		if err := env.Client.Status().Update(ctx, dp); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(c.bin, "shard-server", "--data-dir", filepath.Join(c.dir, pool), "--pool", pool, "--node", nodeName,
			"--listen", testenv.Addr(testenv.FreePort(t)), "--capacity-bytes", strconv.Itoa(2<<30),
			"--tls-cert-file", filepath.Join(c.dir, "tls.crt"), "--tls-key-file", filepath.Join(c.dir, "tls.key"),
			"--token-file", filepath.Join(c.dir, "token"), "--kubeconfig", c.kubeconfig, "--lease-duration", "6s")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		c.shards = append(c.shards, cmd)
	}
	t.Cleanup(func() {
		for _, cmd := range c.shards {
			stop(cmd, 20*time.Second)
		}
	})
	lookup := &registry.Lookup{Client: env.Client}
	deadline := time.Now().Add(90 * time.Second)
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
	pol := &storagev1.ErasureCodingPolicy{ObjectMeta: metav1.ObjectMeta{Name: policyName}, Spec: storagev1.ErasureCodingPolicySpec{
		DataShards: ptr.To(int32(2)), ParityShards: ptr.To(int32(1)), StripeSizeBytes: ptr.To(int64(1 << 20)),
		Algorithm: storagev1.ECAlgorithm("ReedSolomon"), MinHealthyShards: ptr.To(int32(2)),
		JournalConfig: &storagev1.JournalConfig{JournalSizeBytes: ptr.To(int64(32 << 20)), ReplicationFactor: ptr.To(int32(3)),
			DestageThresholdPercent: ptr.To(int32(50)), DestageInterval: "1s"}}}
	if err := env.Client.Create(ctx, pol); err != nil {
		t.Fatal(err)
	}
	return c
}

func stop(cmd *exec.Cmd, timeout time.Duration) {
	if cmd.Process == nil || cmd.ProcessState != nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		_ = cmd.Process.Kill()
		<-done
	}
}

// plugin is one `couchestor csi --controller --node` process.
type plugin struct {
	cmd      *exec.Cmd
	socket   string
	stateDir string
	done     chan struct{}
}

// startPlugin starts the driver with its socket and state under dir.
func (c *cluster) startPlugin(dir string) *plugin {
	c.t.Helper()
	if _, ok := c.cleaned[dir]; !ok {
		// Whatever a failed test leaves (mounts, loop devices, exports)
		// is removed so the machine stays usable; a passing test leaves
		// nothing, which each test checks itself with leftovers.
		c.t.Cleanup(func() { forceClean(filepath.Join(dir, "state"), dir) })
		if c.cleaned == nil {
			c.cleaned = map[string]bool{}
		}
		c.cleaned[dir] = true
	}
	p := &plugin{socket: filepath.Join(dir, "csi.sock"), stateDir: filepath.Join(dir, "state"), done: make(chan struct{})}
	p.cmd = exec.Command(c.bin, "csi", "--controller", "--node", "--node-id", "test-node",
		"--endpoint", "unix://"+p.socket, "--state-dir", p.stateDir, "--attach", "nbdfuse",
		"--kubeconfig", c.kubeconfig, "--shard-secret", registry.DefaultNamespace+"/"+secretName,
		"--export-arg=--cache-memory-bytes=8388608", "--export-arg=--cache-disk-bytes=16777216")
	p.cmd.Stdout, p.cmd.Stderr = os.Stderr, os.Stderr
	if err := p.cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if conn, err := net.Dial("unix", p.socket); err == nil {
			conn.Close()
			break
		}
		select {
		case <-p.done:
			c.t.Fatalf("couchestor csi exited before listening: %v", p.cmd.ProcessState)
		default:
		}
		if time.Now().After(deadline) {
			c.t.Fatal("couchestor csi did not listen within 60s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	return p
}

// stop ends the plugin with SIGTERM (its children, in their own session,
// keep running, as they would when a plugin container restarts).
func (p *plugin) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// kill SIGKILLs the plugin.
func (p *plugin) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

func (p *plugin) conn(t *testing.T) *grpc.ClientConn {
	t.Helper()
	cc, err := grpcConn(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func grpcConn(p *plugin) (*grpc.ClientConn, error) {
	return grpc.NewClient("unix://"+p.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
}

// leftovers lists what a fully unstaged driver must not leave behind:
// processes of its state dir (exports, nbdfuse), loop devices over its
// files, mounts under its state dir or dir.
func leftovers(stateDir string, dirs ...string) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		cl := strings.ReplaceAll(strings.TrimRight(string(b), "\x00"), "\x00", " ")
		if strings.Contains(cl, stateDir) && !strings.Contains(cl, " csi ") {
			out = append(out, "process "+e.Name()+": "+cl)
		}
	}
	if b, err := exec.Command("losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE").Output(); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, stateDir) {
				out = append(out, "loop "+strings.TrimSpace(l))
			}
		}
	}
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			f := strings.Fields(l)
			if len(f) < 5 {
				continue
			}
			for _, d := range append([]string{stateDir}, dirs...) {
				if strings.HasPrefix(f[4], d) {
					out = append(out, "mount "+f[4])
				}
			}
		}
	}
	return out
}

func mountCap(fs string) *csipb.VolumeCapability {
	return &csipb.VolumeCapability{AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{FsType: fs}}}
}

func blockCap() *csipb.VolumeCapability {
	return &csipb.VolumeCapability{AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		AccessType: &csipb.VolumeCapability_Block{Block: &csipb.VolumeCapability_BlockVolume{}}}
}

func check(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// forceClean removes, by force, what leftovers reports: loop devices
// first (while their backing paths still resolve; a busy one is detached
// when its filesystem goes), then mounts (lazily), then processes.
func forceClean(stateDir string, dirs ...string) {
	for _, kind := range []string{"loop", "mount", "process"} {
		for _, l := range leftovers(stateDir, dirs...) {
			k, rest, _ := strings.Cut(l, " ")
			if k != kind {
				continue
			}
			switch kind {
			case "loop":
				_ = exec.Command("losetup", "--detach", strings.Fields(rest)[0]).Run()
			case "mount":
				_ = exec.Command("umount", "-l", rest).Run()
			case "process":
				pidStr, _, _ := strings.Cut(rest, ":")
				if pid, err := strconv.Atoi(pidStr); err == nil {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
	}
}
