package cluster

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/billyronks/couchestor/tests/cluster/kit"
)

// The erasure-coded data path in the cluster: four shard-server pods (the
// DataPlane's on the node, plus three the test runs with the DataPlane's
// Secret and ServiceAccount behind its headless Service), an ECVolume
// exported by `couchestor ec-volume serve` running in a pod, written and
// read over NBD from the host through the pod's address.
//
// One node only: the three extra servers register under the node names
// virtual-b/c/d, so the journal (3 replicas on distinct nodes) and the
// stripe placement treat them as separate nodes. Their data is an emptyDir:
// deleting such a pod loses its shards for good, which is what the rebuild
// step needs.
var extraShards = shardsOf(kit.ExtraShards)

type shard struct{ pod, node, pool string }

func shardsOf(l []kit.Shard) []shard {
	out := make([]shard, len(l))
	for i, s := range l {
		out[i] = shard{s.Pod, s.Node, s.Pool}
	}
	return out
}

const (
	ecVolume   = "ecv-cluster"
	imageBytes = 6<<20 + 4096
)

var ecImage []byte // what the host wrote through the export

func extraShardPod(pod, nodeName, pool string) string { return kit.ShardPod(pod, nodeName, pool) }

func diskPool(name, nodeName string) string { return kit.DiskPool(name, nodeName) }

// exportRBAC: what `ec-volume serve` reads and writes, and nothing else.
const exportRBAC = `apiVersion: v1
kind: ServiceAccount
metadata: {name: ecv-export, namespace: couchestor-data}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: couchestor-test-ecv-export}
rules:
- apiGroups: [storage.billyronks.io]
  resources: [ecvolumes, ecstripes, erasurecodingpolicies]
  verbs: [get, list, watch, create, update, patch]
- apiGroups: [storage.billyronks.io]
  resources: [ecvolumes/status, ecstripes/status]
  verbs: [get, update, patch]
- apiGroups: [openebs.io]
  resources: [diskpools]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: couchestor-test-ecv-export}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: couchestor-test-ecv-export}
subjects: [{kind: ServiceAccount, name: ecv-export, namespace: couchestor-data}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: ecv-export, namespace: couchestor-data}
rules:
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, list, watch, create, update, patch, delete]
- apiGroups: [""]
  resources: [secrets]
  resourceNames: [cold-shard-token]
  verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: ecv-export, namespace: couchestor-data}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: ecv-export}
subjects: [{kind: ServiceAccount, name: ecv-export, namespace: couchestor-data}]
`

func exportPod(name string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %[1]s
  namespace: %[2]s
  # Admitted by the data-plane chart's NetworkPolicy on the shard port.
  labels: {app: ecv-export, couchestor.billyronks.io/shard-client: "true"}
spec:
  serviceAccountName: ecv-export
  enableServiceLinks: false
  terminationGracePeriodSeconds: 30
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
    fsGroup: 65532
    seccompProfile: {type: RuntimeDefault}
  containers:
  - name: export
    image: %[3]s
    imagePullPolicy: Never
    args:
    - ec-volume
    - serve
    - --volume=%[4]s
    - --listen=0.0.0.0:10809
    - --cache-dir=/cache
    - --cache-memory-bytes=8388608
    - --cache-disk-bytes=16777216
    - --shard-secret=%[2]s/cold-shard-token
    - --registry-namespace=%[2]s
    - --mayastor-namespace=mayastor
    ports: [{name: nbd, containerPort: 10809}]
    readinessProbe:
      tcpSocket: {port: nbd}
      periodSeconds: 2
    securityContext:
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {drop: ["ALL"]}
    volumeMounts: [{name: cache, mountPath: /cache}]
  volumes:
  - name: cache
    emptyDir: {sizeLimit: 64Mi}
`, name, dpns, image, ecVolume)
}

func podReady(t *testing.T, namespace, name string) {
	t.Helper()
	eventually(t, "pod "+name+" Ready", podsBound, func() (bool, string) {
		out, err := kubectl(t, "", "-n", namespace, "get", "pod", name, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
		return err == nil && strings.TrimSpace(out) == "True", out
	})
}

func podIP(t *testing.T, namespace, name string) string {
	t.Helper()
	return strings.TrimSpace(mustKubectl(t, "", "-n", namespace, "get", "pod", name, "-o", "jsonpath={.status.podIP}"))
}

// startExport runs an export pod and returns its NBD URI once it listens.
func startExport(t *testing.T, name string) string {
	t.Helper()
	mustKubectl(t, exportPod(name), "apply", "-f", "-")
	podReady(t, dpns, name)
	return fmt.Sprintf("nbd://%s:10809/%s", podIP(t, dpns, name), ecVolume)
}

func stopExport(t *testing.T, name string) {
	t.Helper()
	mustKubectl(t, "", "-n", dpns, "delete", "pod", name, "--wait=true", "--timeout=120s")
}

func hostTool(t *testing.T, bound time.Duration, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(bound):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("%s %v: still running after %s\n%s", name, args, bound, out)
	}
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

type stripeList struct {
	Items []struct {
		Metadata struct{ Name string }
		Spec     struct {
			VolumeRef      string `json:"volumeRef"`
			ShardLocations []struct {
				PoolName string `json:"poolName"`
			} `json:"shardLocations"`
		}
		Status struct {
			State string `json:"state"`
		}
	}
}

func stripes(t *testing.T) (stripeList, error) {
	var l stripeList
	out, err := kubectl(t, "", "get", "ecstripes", "-o", "json")
	if err != nil {
		return l, fmt.Errorf("%v: %s", err, out)
	}
	return l, json.Unmarshal([]byte(out), &l)
}

// readBack copies the volume out through a fresh export pod (cold cache)
// and compares it with what was written.
func readBack(t *testing.T, pod string) {
	t.Helper()
	uri := startExport(t, pod)
	out := filepath.Join(t.TempDir(), "out.raw")
	hostTool(t, 5*time.Minute, "nbdcopy", uri, out)
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) < len(ecImage) || !bytes.Equal(got[:len(ecImage)], ecImage) {
		t.Fatalf("the image read back through export pod %s differs from what was written", pod)
	}
	stopExport(t, pod)
}

// testECVolumeThroughExportPod writes an image into an ECVolume (RS 2+1,
// 1 MiB stripes, journal on 3 shard servers) through an export pod, waits
// until the destager stored it as ECStripes on the shard-server pods, and
// reads it back exactly through a second export pod with a cold cache.
func testECVolumeThroughExportPod(t *testing.T) {
	for _, p := range []string{"qemu-img", "nbdcopy"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Fatalf("%s is needed (hack/nbd-clients.sh installs it): %v", p, err)
		}
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(diagnoseNS(t, dpns))
			out, _ := kubectl(t, "", "-n", dpns, "logs", "-l", "app=ecv-export", "--tail=60", "--prefix")
			t.Log(out)
		}
	})
	if _, err := kubectl(t, "", "get", "namespace", "mayastor"); err != nil {
		mustKubectl(t, "", "create", "namespace", "mayastor")
	}
	pools := map[string]string{kit.DataPlanePool: node}
	for _, s := range extraShards {
		pools[s.pool] = s.node
	}
	for pool, n := range pools {
		mustKubectl(t, diskPool(pool, n), "apply", "-f", "-")
		mustKubectl(t, "", "-n", "mayastor", "patch", "diskpool", pool, "--subresource=status", "--type=merge",
			"-p", kit.DiskPoolOnline)
	}
	for _, s := range extraShards {
		mustKubectl(t, extraShardPod(s.pod, s.node, s.pool), "apply", "-f", "-")
	}
	for _, s := range extraShards {
		podReady(t, dpns, s.pod)
	}
	eventually(t, "4 shard servers registered", 2*time.Minute, func() (bool, string) {
		out, err := kubectl(t, "", "-n", dpns, "get", "leases", "-o", "jsonpath={.items[*].metadata.name}")
		n := 0
		for p := range pools {
			if strings.Contains(out, p) {
				n++
			}
		}
		return err == nil && n == 4, out
	})
	logFigures(t, "idle (operator installed, 4 shard servers, no volume)")
	mustKubectl(t, exportRBAC, "apply", "-f", "-")
	mustKubectl(t, kit.ECPolicyYAML+`---
apiVersion: storage.billyronks.io/v1
kind: ECVolume
metadata: {name: `+ecVolume+`}
spec:
  sizeBytes: 67108864
  policyRef: `+kit.ECPolicy+`
`, "apply", "-f", "-")

	ecImage = make([]byte, imageBytes)
	if _, err := rand.Read(ecImage); err != nil {
		t.Fatal(err)
	}
	in := filepath.Join(t.TempDir(), "in.raw")
	if err := os.WriteFile(in, ecImage, 0o600); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	uri := startExport(t, "ecv-export-1")
	hostTool(t, 5*time.Minute, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", in, uri)
	t.Logf("%d bytes written through the export pod in %s", imageBytes, time.Since(start).Round(time.Second))
	// 7 stripes of 1 MiB hold the image.
	eventually(t, "the destager stores the image as ECStripes", 3*time.Minute, func() (bool, string) {
		l, err := stripes(t)
		if err != nil {
			return false, err.Error()
		}
		n := 0
		for _, s := range l.Items {
			if s.Spec.VolumeRef == ecVolume {
				n++
			}
		}
		return n >= 7, fmt.Sprintf("%d stripes", n)
	})
	stopExport(t, "ecv-export-1")
	readBack(t, "ecv-export-2")
}

// testShardServerPodLostAndRebuilt deletes a shard-server pod for good (its
// emptyDir goes with it): after the operator's down-out delay (20 s here)
// the stripes that had a shard there are rebuilt onto the spare pool, no
// stripe references the lost pool any more, and the image reads back
// exactly.
func testShardServerPodLostAndRebuilt(t *testing.T) {
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(diagnose(t))
		}
	})
	lost := ""
	if l, err := stripes(t); err == nil {
		// The pool holding the most shards of the volume.
		count := map[string]int{}
		for _, s := range l.Items {
			for _, loc := range s.Spec.ShardLocations {
				count[loc.PoolName]++
			}
		}
		for _, s := range extraShards {
			if lost == "" || count[s.pool] > count[lost] {
				lost = s.pool
			}
		}
		if count[lost] == 0 {
			t.Fatalf("no stripe has a shard on the extra pools: %v", count)
		}
		t.Logf("shards per pool before: %v; deleting the server of %s", count, lost)
	} else {
		t.Fatal(err)
	}
	for _, s := range extraShards {
		if s.pool == lost {
			mustKubectl(t, "", "-n", dpns, "delete", "pod", s.pod, "--wait=true", "--timeout=120s")
		}
	}
	start := time.Now()
	logged := false
	eventually(t, "no ECStripe keeps a shard on the lost pool, all Healthy", 6*time.Minute, func() (bool, string) {
		l, err := stripes(t)
		if err != nil {
			return false, err.Error()
		}
		var bad []string
		for _, s := range l.Items {
			if s.Status.State == "Rebuilding" && !logged {
				logFigures(t, "during a rebuild")
				logged = true
			}
		}
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
	readBack(t, "ecv-export-3")
}
