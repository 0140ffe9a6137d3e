package packaging

import (
	"context"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mayastorv1beta2 "github.com/billyronks/couchestor/apis/mayastor/v1beta2"
	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/pkg/shardserver"
	"github.com/billyronks/couchestor/tests/testenv"
)

// requireNodeTools skips, loudly, where the node plugin cannot run: it
// needs root (loop devices, FUSE, mount) and the tools hack/nbd-clients.sh
// installs.
func requireNodeTools(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("*** NOT RUN: the CSI node plugin needs root (loop devices, FUSE, mount, mkfs); make test runs it as root ***")
	}
	for _, tool := range []string{"nbdfuse", "fusermount3", "losetup", "mkfs.ext4", "blkid"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("*** NOT RUN: %s not in PATH: install the tools with hack/nbd-clients.sh (make test does) ***", tool)
		}
	}
	for _, dev := range []string{"/dev/fuse", "/dev/loop-control"} {
		if _, err := os.Stat(dev); err != nil {
			t.Skipf("*** NOT RUN: %s is missing (%v) ***", dev, err)
		}
	}
}

// startShippedPlugin runs `couchestor csi` with the arguments of the
// rendered container named csi-plugin of objs' kind/name, its endpoint and
// state directory moved under dir, as the ServiceAccount saNS/sa.
func startShippedPlugin(t *testing.T, env *testenv.Env, podSpec corev1.PodSpec, saNS, sa, dir string, extra ...string) (string, chan error) {
	t.Helper()
	sock := filepath.Join(dir, "csi.sock")
	var args []string
	for _, c := range podSpec.Containers {
		if c.Name != "csi-plugin" {
			continue
		}
		for _, a := range c.Args {
			switch {
			case strings.HasPrefix(a, "--endpoint="):
				a = "--endpoint=unix://" + sock
			case strings.HasPrefix(a, "--state-dir="):
				a = "--state-dir=" + filepath.Join(dir, "state")
			case a == "--node-id=$(NODE_NAME)":
				a = "--node-id=node-a"
			}
			args = append(args, a)
		}
	}
	args = append(append(args, "--kubeconfig", impersonatingKubeconfig(t, env, saNS, sa)), extra...)
	cmd := exec.Command(testenv.OperatorBinary(t), args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	return sock, exited
}

// TestCSINodeRunsWithTheChartRBAC stages, publishes, writes, unpublishes
// and unstages a real volume through `couchestor csi` run with the node
// DaemonSet's own arguments as the node plugin's ServiceAccount
// (impersonated, RBAC-authorized) — its exports run as that ServiceAccount
// too — on a volume the controller created with the Deployment's own
// arguments as its ServiceAccount, over three shard servers. The export's
// API calls (writer Lease, journal placement, conditions, destaged
// ECStripes) must all be allowed by the chart's RBAC: nothing in its log is
// forbidden, the ECVolume shows Exported=True and the journal-pools
// annotation, and the volume's ECStripes exist.
func TestCSINodeRunsWithTheChartRBAC(t *testing.T) {
	requireNodeTools(t)
	objs := renderCSI(t, csiValues(map[string]any{"node": map[string]any{"attach": "nbdfuse",
		"exportArgs": []any{"--cache-memory-bytes=8388608", "--cache-disk-bytes=16777216"}}}))
	env := testenv.Start(t)
	ctx := context.Background()
	applyRBAC(t, env.Client, objs)
	dir := t.TempDir()
	admin := env.WriteKubeconfig(t, dir)

	certs, err := shardserver.NewCertificates([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	const token = "packaging-csi-token"
	for name, b := range map[string][]byte{"tls.crt": certs.CertPEM, "tls.key": certs.KeyPEM, "token": []byte(token)} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := env.Client.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "couchestor-system", Name: "couchestor-shard-token"},
		Data: map[string][]byte{registry.SecretKeyCA: certs.CAPEM, registry.SecretKeyToken: []byte(token)}}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		pool, node := "pool-"+strconv.Itoa(i), "node-"+strconv.Itoa(i)
		dp := &mayastorv1beta2.DiskPool{ObjectMeta: metav1.ObjectMeta{Namespace: "mayastor", Name: pool}, Spec: mayastorv1beta2.DiskPoolSpec{Node: node, Disks: []string{"/dev/sdb"}}}
		if err := env.Client.Create(ctx, dp); err != nil {
			t.Fatal(err)
		}
		dp.Status = mayastorv1beta2.DiskPoolStatus{CRState: mayastorv1beta2.CRStateCreated, PoolStatus: mayastorv1beta2.PoolOnline, Capacity: 8 << 30, Available: 8 << 30}
		if err := env.Client.Status().Update(ctx, dp); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(testenv.OperatorBinary(t), "shard-server", "--data-dir", filepath.Join(dir, pool), "--pool", pool, "--node", node,
			"--listen", testenv.Addr(testenv.FreePort(t)), "--capacity-bytes", strconv.Itoa(1<<30),
			"--tls-cert-file", filepath.Join(dir, "tls.crt"), "--tls-key-file", filepath.Join(dir, "tls.key"),
			"--token-file", filepath.Join(dir, "token"), "--kubeconfig", admin, "--lease-duration", "6s")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { _ = cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				_ = cmd.Process.Kill()
				<-done
			}
		})
	}
	eventually(t, "three registered shard servers", func() error {
		l, err := (&registry.Lookup{Client: env.Client}).Servers(ctx)
		if err == nil && len(l) != 3 {
			return errorf("%d registered", len(l))
		}
		return err
	})
	if err := env.Client.Create(ctx, &storagev1.ErasureCodingPolicy{ObjectMeta: metav1.ObjectMeta{Name: "cold-4-2"}, Spec: storagev1.ErasureCodingPolicySpec{
		DataShards: ptr.To(int32(2)), ParityShards: ptr.To(int32(1)), StripeSizeBytes: ptr.To(int64(1 << 20)), MinHealthyShards: ptr.To(int32(2)),
		JournalConfig: &storagev1.JournalConfig{JournalSizeBytes: ptr.To(int64(32 << 20)), ReplicationFactor: ptr.To(int32(3)),
			DestageThresholdPercent: ptr.To(int32(50)), DestageInterval: "1s"}}}); err != nil {
		t.Fatal(err)
	}

	var dep appsv1.Deployment
	var ds appsv1.DaemonSet
	find(t, objs, "Deployment", "couchestor-csi-controller", &dep)
	nodeNS := find(t, objs, "DaemonSet", "couchestor-csi-node", &ds).GetNamespace()
	ctlDir, nodeDir := filepath.Join(dir, "controller"), filepath.Join(dir, "node")
	for _, d := range []string{ctlDir, nodeDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	stateDir := filepath.Join(nodeDir, "state")
	t.Cleanup(func() { csiForceClean(stateDir, nodeDir) })
	ctlSock, ctlExited := startShippedPlugin(t, env, dep.Spec.Template.Spec, "couchestor-system", "couchestor-csi-controller", ctlDir)
	nodeSock, nodeExited := startShippedPlugin(t, env, ds.Spec.Template.Spec, nodeNS, "couchestor-csi-node", nodeDir)
	ctl := csipb.NewControllerClient(dialSocket(t, ctlSock, ctlExited))
	nd := csipb.NewNodeClient(dialSocket(t, nodeSock, nodeExited))

	capab := &csipb.VolumeCapability{AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{FsType: "ext4"}}}
	cr, err := ctl.CreateVolume(ctx, &csipb.CreateVolumeRequest{Name: "pvc-packaging-node", CapacityRange: &csipb.CapacityRange{RequiredBytes: 64 << 20},
		VolumeCapabilities: []*csipb.VolumeCapability{capab}, Parameters: map[string]string{"erasureCodingPolicy": "cold-4-2"}})
	if err != nil {
		t.Fatalf("CreateVolume as the controller's ServiceAccount: %v", err)
	}
	id := cr.GetVolume().GetVolumeId()
	staging, target := filepath.Join(nodeDir, "staging"), filepath.Join(nodeDir, "target")
	sctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
	defer cancel()
	if _, err := nd.NodeStageVolume(sctx, &csipb.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: capab}); err != nil {
		t.Fatalf("NodeStageVolume as the node plugin's ServiceAccount: %v", err)
	}
	if _, err := nd.NodePublishVolume(ctx, &csipb.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: capab}); err != nil {
		t.Fatalf("NodePublishVolume: %v", err)
	}
	data := make([]byte, 3<<20)
	_, _ = rand.Read(data)
	f := filepath.Join(target, "data.bin")
	if err := os.WriteFile(f, data, 0o600); err != nil {
		t.Fatal(err)
	}
	fh, err := os.Open(f)
	if err != nil {
		t.Fatal(err)
	}
	if err := fh.Sync(); err != nil {
		t.Fatal(err)
	}
	fh.Close()
	waitFor(t, 3*time.Minute, "the export's conditions, journal placement and destaged ECStripes, written as the node's ServiceAccount", func() error {
		var ev storagev1.ECVolume
		if err := env.Client.Get(ctx, client.ObjectKey{Name: id}, &ev); err != nil {
			return err
		}
		if c := meta.FindStatusCondition(ev.Status.Conditions, "Exported"); c == nil || c.Status != metav1.ConditionTrue {
			return errorf("ECVolume %s Exported condition %v", id, c)
		}
		if ev.Annotations["storage.billyronks.io/journal-pools"] == "" {
			return errorf("ECVolume %s has no journal-pools annotation: %v", id, ev.Annotations)
		}
		var es storagev1.ECStripeList
		if err := env.Client.List(ctx, &es); err != nil {
			return err
		}
		n := 0
		for _, s := range es.Items {
			if s.Spec.VolumeRef == id && len(s.Spec.ShardLocations) > 0 {
				n++
			}
		}
		if n == 0 {
			return errorf("no destaged ECStripe of %s yet", id)
		}
		return nil
	})
	logs, _ := filepath.Glob(filepath.Join(stateDir, "volumes", "*", "export.log"))
	for _, l := range logs {
		if b, err := os.ReadFile(l); err == nil && strings.Contains(strings.ToLower(string(b)), "forbidden") {
			t.Errorf("the export, as the node's ServiceAccount, was refused by RBAC (%s):\n%s", l, b)
		}
	}
	if _, err := nd.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
		t.Errorf("NodeUnpublishVolume: %v", err)
	}
	if _, err := nd.NodeUnstageVolume(sctx, &csipb.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
		t.Errorf("NodeUnstageVolume: %v", err)
	}
	if left := csiLeftovers(stateDir, nodeDir); len(left) != 0 {
		t.Errorf("unstage left %v", left)
	}
	if _, err := ctl.DeleteVolume(ctx, &csipb.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Errorf("DeleteVolume after unstage: %v", err)
	}
}

// waitFor polls cond until it holds or bound passes (a generous bound on
// this loaded machine, never a skip).
func waitFor(t *testing.T, bound time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after %s: %v", what, bound, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// csiLeftovers lists what this test's node plugin left: processes naming
// its state directory (exports, nbdfuse), loop devices over its files,
// mounts under its directories.
func csiLeftovers(stateDir string, dirs ...string) []string {
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

// csiForceClean removes what a failed run left (loop devices, then mounts
// lazily, then the processes this test's plugin started, by PID).
func csiForceClean(stateDir string, dirs ...string) {
	for _, kind := range []string{"loop", "mount", "process"} {
		for _, l := range csiLeftovers(stateDir, dirs...) {
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
