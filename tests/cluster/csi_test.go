package cluster

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/billyronks/couchestor/tests/cluster/kit"
)

// Erasure-coded volumes for pods: the install chart's CSI driver (helm
// upgrade with csi.enabled), its StorageClass, PVCs and pods on the one
// node. The node plugin attaches through nbdfuse and a loop device (no nbd
// module here) and its image is hack/csi-node-image.sh's, built from Debian
// packages; the sidecars are built from source (hack/cluster.sh
// csi-images). The workload is hack/cluster/treeio.
//
// "Another attach" on one node: the kubelet stages a volume once per node
// and lets any number of pods of that node use it (ReadWriteOnce is per
// node), and a second node would need a second kubelet. What another node
// would run to attach the volume is the volume's export (`couchestor
// ec-volume serve`, the process a node plugin starts at NodeStageVolume):
// the steps run it as a pod of its own host name, which is the holder a
// second node's plugin would be, and check both directions of the fence.
const (
	csiNS      = "couchestor-csi-test"
	csiDriver  = kit.CSIDriver
	csiNodeNS  = kit.CSINodeNS
	blockBytes = 8 << 20
)

// A fifth shard server (the earlier rebuild step deleted one of four): RS
// 2+1 then has a spare pool again for the rebuild of the CSI steps.
var csiSpare = shard{"cold-shard-e", "virtual-e", "pool-cold-5"}

func csiStateDir() string { return kit.CSIStateDir(runDir) }

func csiDiagnose(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, args := range [][]string{
		{"-n", csiNS, "get", "pods,pvc", "-o", "wide"},
		{"get", "pv"},
		{"-n", csiNS, "get", "events", "--sort-by=.lastTimestamp"},
		{"-n", csiNodeNS, "get", "pods", "-o", "wide"},
		{"-n", csiNodeNS, "logs", "-l", "app.kubernetes.io/component=csi-node", "--all-containers", "--tail=60", "--prefix"},
		{"-n", ns, "logs", "-l", "app.kubernetes.io/component=csi-controller", "--all-containers", "--tail=40", "--prefix"},
	} {
		out, _ := kubectl(t, "", args...)
		fmt.Fprintf(&b, "\n$ kubectl %s\n%s", strings.Join(args, " "), out)
	}
	for _, f := range []string{"export.log", "nbdfuse.log"} {
		m, _ := filepath.Glob(filepath.Join(csiStateDir(), "run", "*", f))
		for _, p := range m {
			if raw, err := os.ReadFile(p); err == nil {
				s := string(raw)
				if len(s) > 3000 {
					s = s[len(s)-3000:]
				}
				fmt.Fprintf(&b, "\n--- %s\n%s", p, s)
			}
		}
	}
	return b.String()
}

func csiCleanupOnFailure(t *testing.T) {
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(csiDiagnose(t))
		}
	})
}

// testCSIInstall turns the chart's CSI driver on with helm upgrade: the
// DataPlane cold's namespace and name are the only shard-client settings
// (its cold-shard-token Secret follows from them), the kubelet's root and
// the plugin's state live under the run directory, the images are the
// imported ones. The controller and the node plugin become Ready, and the
// kubelet registers the driver (CSINode).
func testCSIInstall(t *testing.T) {
	csiCleanupOnFailure(t)
	mustKubectl(t, diskPool(csiSpare.pool, csiSpare.node), "apply", "-f", "-")
	mustKubectl(t, "", "-n", "mayastor", "patch", "diskpool", csiSpare.pool, "--subresource=status", "--type=merge",
		"-p", kit.DiskPoolOnline)
	mustKubectl(t, extraShardPod(csiSpare.pod, csiSpare.node, csiSpare.pool), "apply", "-f", "-")
	start := time.Now()
	args := append([]string{"upgrade", "couchestor", filepath.Join(root, "helm-charts", "couchestor"), "--namespace", ns, "--reuse-values"},
		kit.CSIValues(runDir)...)
	out, err := helm(t, append(args, "--wait", "--timeout", "5m")...)
	if err != nil {
		t.Fatalf("helm upgrade with csi.enabled: %v\n%s", err, out)
	}
	podReady(t, dpns, csiSpare.pod)
	eventually(t, "the CSI controller and node plugin Ready", podsBound, func() (bool, string) {
		c, err1 := kubectl(t, "", "-n", ns, "get", "pods", "-l", "app.kubernetes.io/component=csi-controller",
			"-o", `jsonpath={range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{end}`)
		n, err2 := kubectl(t, "", "-n", csiNodeNS, "get", "pods", "-l", "app.kubernetes.io/component=csi-node",
			"-o", `jsonpath={range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{end}`)
		return err1 == nil && err2 == nil && c == "True" && n == "True", c + " / " + n
	})
	eventually(t, "the kubelet registers the driver", 2*time.Minute, func() (bool, string) {
		out, err := kubectl(t, "", "get", "csinode", node, "-o", "jsonpath={.spec.drivers[*].name}")
		return err == nil && strings.Contains(out, csiDriver), out
	})
	t.Logf("helm upgrade --set csi.enabled=true → driver registered in %s", time.Since(start).Round(time.Second))
	mustKubectl(t, "", "create", "namespace", csiNS)
}

func pvc(name, size, mode string) string { return kit.PVC(csiNS, name, size, mode) }

func treeioPod(name, claim string, raw bool, args ...string) string {
	return kit.TreeioPod(csiNS, name, claim, raw, args...)
}

// runTreeio runs a treeio pod to completion and returns its output.
func runTreeio(t *testing.T, name, claim string, raw bool, args ...string) string {
	t.Helper()
	start := time.Now()
	mustKubectl(t, treeioPod(name, claim, raw, args...), "apply", "-f", "-")
	eventually(t, "pod "+name+" Succeeded", podsBound, func() (bool, string) {
		out, err := kubectl(t, "", "-n", csiNS, "get", "pod", name, "-o", "jsonpath={.status.phase}")
		if strings.TrimSpace(out) == "Failed" {
			logs, _ := kubectl(t, "", "-n", csiNS, "logs", name)
			t.Fatalf("pod %s failed:\n%s", name, logs)
		}
		return err == nil && strings.TrimSpace(out) == "Succeeded", out
	})
	out := mustKubectl(t, "", "-n", csiNS, "logs", name)
	t.Logf("pod %s (%s) done in %s", name, strings.Join(args, " "), time.Since(start).Round(time.Second))
	mustKubectl(t, "", "-n", csiNS, "delete", "pod", name, "--wait=true", "--timeout=120s")
	return out
}

// volumeOf is the ECVolume (the PV's volume handle) of a bound claim.
func volumeOf(t *testing.T, claim string) string {
	t.Helper()
	var pv string
	eventually(t, "PVC "+claim+" Bound", 3*time.Minute, func() (bool, string) {
		out, err := kubectl(t, "", "-n", csiNS, "get", "pvc", claim, "-o", "jsonpath={.status.phase}/{.spec.volumeName}")
		ph, name, _ := strings.Cut(strings.TrimSpace(out), "/")
		pv = name
		return err == nil && ph == "Bound", out
	})
	return strings.TrimSpace(mustKubectl(t, "", "get", "pv", pv, "-o", "jsonpath={.spec.csi.volumeHandle}"))
}

// unstaged waits until the node plugin has torn the volume down (its state
// record gone, its writer Lease released): the next pod's stage starts a
// fresh export with a cold cache, reading from the shard servers.
func unstaged(t *testing.T, vol string) {
	t.Helper()
	eventually(t, "volume "+vol+" unstaged", 3*time.Minute, func() (bool, string) {
		_, err := os.Stat(filepath.Join(csiStateDir(), "volumes", vol+".json"))
		h, _ := kubectl(t, "", "-n", dpns, "get", "lease", "-o", "jsonpath={range .items[*]}{.metadata.name}={.spec.holderIdentity}{\"\\n\"}{end}")
		held := false
		for _, l := range strings.Split(h, "\n") {
			n, holder, _ := strings.Cut(l, "=")
			held = held || (strings.Contains(n, vol) && holder != "")
		}
		return os.IsNotExist(err) && !held, fmt.Sprintf("state: %v; leases: %s", err, h)
	})
}

func sameLines(t *testing.T, what, want, got string) {
	t.Helper()
	if strings.TrimSpace(want) != strings.TrimSpace(got) || !strings.Contains(got, "files 48") && !strings.Contains(got, "/dev/xvda") {
		t.Fatalf("%s: read back differs from what was written\nwritten:\n%s\nread:\n%s", what, want, got)
	}
}

// stripeCount counts the volume's ECStripes and those with a shard on pool.
func stripeCount(t *testing.T, vol, pool string) (n, on int, bad []string) {
	t.Helper()
	l, err := stripes(t)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range l.Items {
		if s.Spec.VolumeRef != vol {
			continue
		}
		n++
		for _, loc := range s.Spec.ShardLocations {
			if loc.PoolName == pool {
				on++
				break
			}
		}
		if s.Status.State != "Healthy" {
			bad = append(bad, s.Metadata.Name+"="+s.Status.State)
		}
	}
	return n, on, bad
}

var treeWritten string

// testCSIPodsWriteAndReadBack: a PVC of the StorageClass, a pod writes a
// tree of 48 files and exits, a second pod reads them back with the same
// sha256 each; then a shard-server pod holding shards of the volume is
// deleted and a third pod reads the tree back at once (degraded: a shard of
// each affected stripe is gone); once the operator has rebuilt the stripes
// off the lost pool, a fourth pod reads it back again.
func testCSIPodsWriteAndReadBack(t *testing.T) {
	csiCleanupOnFailure(t)
	mustKubectl(t, pvc("tree", "64Mi", "Filesystem"), "apply", "-f", "-")
	vol := volumeOf(t, "tree")
	treeWritten = runTreeio(t, "tree-writer", "tree", false, "write", "/data", "couchestor-csi")
	if !strings.Contains(treeWritten, "files 48") {
		t.Fatalf("the writer wrote no tree:\n%s", treeWritten)
	}
	unstaged(t, vol)
	sameLines(t, "second pod", treeWritten, runTreeio(t, "tree-reader-1", "tree", false, "read", "/data"))
	unstaged(t, vol)

	// The destager has stored (part of) the volume as stripes: lose the
	// extra shard server holding most of them.
	var lost, lostPod string
	eventually(t, "the volume's stripes are on the shard servers", 3*time.Minute, func() (bool, string) {
		l, err := stripes(t)
		if err != nil {
			return false, err.Error()
		}
		count := map[string]int{}
		for _, s := range l.Items {
			if s.Spec.VolumeRef == vol {
				for _, loc := range s.Spec.ShardLocations {
					count[loc.PoolName]++
				}
			}
		}
		pods := mustKubectl(t, "", "-n", dpns, "get", "pods", "-o", "jsonpath={.items[*].metadata.name}")
		lost, lostPod = "", ""
		for _, s := range append(extraShards, csiSpare) {
			if strings.Contains(" "+pods+" ", " "+s.pod+" ") && count[s.pool] > count[lost] {
				lost, lostPod = s.pool, s.pod
			}
		}
		return lost != "", fmt.Sprintf("shards per pool %v", count)
	})
	mustKubectl(t, "", "-n", dpns, "delete", "pod", lostPod, "--wait=true", "--timeout=120s")
	got := runTreeio(t, "tree-reader-degraded", "tree", false, "read", "/data")
	n, on, _ := stripeCount(t, vol, lost)
	t.Logf("read back with the shard server of %s deleted; when it ended %d of the volume's %d stripes still had a shard there (degraded reads)", lost, on, n)
	sameLines(t, "pod reading with a shard server lost", treeWritten, got)
	unstaged(t, vol)
	start := time.Now()
	eventually(t, "no ECStripe keeps a shard on the lost pool, all Healthy", 6*time.Minute, func() (bool, string) {
		l, err := stripes(t)
		if err != nil {
			return false, err.Error()
		}
		var bad []string
		for _, s := range l.Items {
			on := false
			for _, loc := range s.Spec.ShardLocations {
				on = on || loc.PoolName == lost
			}
			if on || s.Status.State != "Healthy" {
				bad = append(bad, s.Metadata.Name+"="+s.Status.State)
			}
		}
		return len(bad) == 0, strings.Join(bad, " ")
	})
	t.Logf("stripes rebuilt off %s in %s", lost, time.Since(start).Round(time.Second))
	sameLines(t, "pod reading after the rebuild", treeWritten, runTreeio(t, "tree-reader-rebuilt", "tree", false, "read", "/data"))
	unstaged(t, vol)
}

// testCSIRawBlock: a volumeMode Block PVC is a device in the pod; 8 MiB
// written by one pod read back with the same sha256 by the next.
func testCSIRawBlock(t *testing.T) {
	csiCleanupOnFailure(t)
	mustKubectl(t, pvc("raw", "32Mi", "Block"), "apply", "-f", "-")
	vol := volumeOf(t, "raw")
	w := runTreeio(t, "raw-writer", "raw", true, "write-block", "/dev/xvda", fmt.Sprint(blockBytes), "couchestor-raw")
	unstaged(t, vol)
	sameLines(t, "raw block", w, runTreeio(t, "raw-reader", "raw", true, "read-block", "/dev/xvda", fmt.Sprint(blockBytes)))
	unstaged(t, vol)
	mustKubectl(t, "", "-n", csiNS, "delete", "pvc", "raw", "--wait=true", "--timeout=120s")
	eventually(t, "the raw volume's ECVolume is deleted", 3*time.Minute, func() (bool, string) {
		out, err := kubectl(t, "", "get", "ecvolume", vol)
		return err != nil && strings.Contains(out, "NotFound"), out
	})
}

// testCSIExpand grows the filesystem PVC from 64 Mi to 128 Mi: the
// controller grows the ECVolume, the node grows ext4 at the next stage; a
// pod sees the larger filesystem and the tree unchanged.
func testCSIExpand(t *testing.T) {
	csiCleanupOnFailure(t)
	vol := volumeOf(t, "tree")
	mustKubectl(t, "", "-n", csiNS, "patch", "pvc", "tree", "--type=merge", "-p", `{"spec":{"resources":{"requests":{"storage":"128Mi"}}}}`)
	eventually(t, "the ECVolume is grown to 128 MiB", 3*time.Minute, func() (bool, string) {
		out, err := kubectl(t, "", "get", "ecvolume", vol, "-o", "jsonpath={.spec.sizeBytes}")
		return err == nil && strings.TrimSpace(out) == fmt.Sprint(128<<20), out
	})
	size := runTreeio(t, "tree-statfs", "tree", false, "statfs", "/data")
	var b int64
	if _, err := fmt.Sscan(size, &b); err != nil || b < 100<<20 {
		t.Fatalf("the filesystem after expansion has %q bytes, want > 100 MiB of 128 MiB", size)
	}
	eventually(t, "the PVC reports 128Mi", 3*time.Minute, func() (bool, string) {
		out, err := kubectl(t, "", "-n", csiNS, "get", "pvc", "tree", "-o", "jsonpath={.status.capacity.storage}")
		return err == nil && strings.TrimSpace(out) == "128Mi", out
	})
	t.Logf("filesystem after expansion: %d bytes", b)
	unstaged(t, vol)
	sameLines(t, "tree after expansion", treeWritten, runTreeio(t, "tree-reader-expanded", "tree", false, "read", "/data"))
	unstaged(t, vol)
}

// elsewherePod is the volume's export under its own host name: what the
// node plugin of another node runs to attach it.
func elsewherePod(vol string) string {
	return strings.NewReplacer("--volume="+ecVolume, "--volume="+vol, "app: ecv-export", "app: attach-elsewhere").
		Replace(exportPod("attach-elsewhere"))
}

type event struct {
	Reason, Message string
	InvolvedObject  struct{ Name string } `json:"involvedObject"`
}

// testCSIAttachElsewhereRefused: while a pod of this node holds the volume,
// the other attach (the volume's export elsewhere) waits and says who holds
// it; once that one holds it, a pod here is refused: the kubelet's
// FailedMount event names the holder. When the holder lets go, the pod
// starts.
func testCSIAttachElsewhereRefused(t *testing.T) {
	csiCleanupOnFailure(t)
	vol := volumeOf(t, "tree")
	mustKubectl(t, treeioPod("holder", "tree", false, "hold", "/data"), "apply", "-f", "-")
	podRunning := func(name string) func() (bool, string) {
		return func() (bool, string) {
			out, err := kubectl(t, "", "-n", csiNS, "get", "pod", name, "-o", "jsonpath={.status.phase}")
			return err == nil && strings.TrimSpace(out) == "Running", out
		}
	}
	eventually(t, "the holder pod runs", podsBound, podRunning("holder"))
	nodePlugin := strings.TrimSpace(mustKubectl(t, "", "-n", csiNodeNS, "get", "pods", "-l", "app.kubernetes.io/component=csi-node", "-o", "jsonpath={.items[0].metadata.name}"))

	mustKubectl(t, elsewherePod(vol), "apply", "-f", "-")
	eventually(t, "the other attach waits, naming the node plugin's export as the holder", 2*time.Minute, func() (bool, string) {
		out, _ := kubectl(t, "", "-n", dpns, "logs", "attach-elsewhere")
		return strings.Contains(out, "is held by") && strings.Contains(out, nodePlugin+"/"), out
	})
	if out, _ := kubectl(t, "", "-n", dpns, "get", "pod", "attach-elsewhere", "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`); strings.TrimSpace(out) == "True" {
		t.Fatal("the other attach serves the volume while this node's pod holds it")
	}
	mustKubectl(t, "", "-n", csiNS, "delete", "pod", "holder", "--wait=true", "--timeout=120s")
	unstaged(t, vol)
	podReady(t, dpns, "attach-elsewhere") // it holds the writer Lease now

	mustKubectl(t, treeioPod("refused", "tree", false, "read", "/data"), "apply", "-f", "-")
	var msg string
	eventually(t, "the pod is refused with an event naming the holder", 3*time.Minute, func() (bool, string) {
		out, err := kubectl(t, "", "-n", csiNS, "get", "events", "--field-selector", "involvedObject.name=refused", "-o", "json")
		if err != nil {
			return false, out
		}
		var l struct{ Items []event }
		if err := json.Unmarshal([]byte(out), &l); err != nil {
			return false, err.Error()
		}
		for _, e := range l.Items {
			if e.Reason == "FailedMount" && strings.Contains(e.Message, "attached elsewhere") && strings.Contains(e.Message, `"attach-elsewhere/`) {
				msg = e.Message
				return true, ""
			}
		}
		return false, fmt.Sprintf("%+v", l.Items)
	})
	t.Logf("refused: %s", msg)
	if out, _ := kubectl(t, "", "-n", csiNS, "get", "pod", "refused", "-o", "jsonpath={.status.phase}"); strings.TrimSpace(out) != "Pending" {
		t.Fatalf("the refused pod is %s, want Pending", out)
	}
	stopExport(t, "attach-elsewhere")
	eventually(t, "the pod starts once the other attach let go", 4*time.Minute, func() (bool, string) {
		out, err := kubectl(t, "", "-n", csiNS, "get", "pod", "refused", "-o", "jsonpath={.status.phase}")
		return err == nil && strings.TrimSpace(out) == "Succeeded", out
	})
	sameLines(t, "pod after the other attach let go", treeWritten, mustKubectl(t, "", "-n", csiNS, "logs", "refused"))
	mustKubectl(t, "", "-n", csiNS, "delete", "pod", "refused", "--wait=true", "--timeout=120s")
	unstaged(t, vol)
	mustKubectl(t, "", "-n", csiNS, "delete", "pvc", "tree", "--wait=true", "--timeout=120s")
	eventually(t, "the volume's ECVolume is deleted (DeleteVolume)", 3*time.Minute, func() (bool, string) {
		out, err := kubectl(t, "", "get", "ecvolume", vol)
		return err != nil && strings.Contains(out, "NotFound"), out
	})
}
