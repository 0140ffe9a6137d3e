package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/billyronks/couchestor/pkg/conversion"
	"github.com/billyronks/couchestor/pkg/mayastorrest"
	"github.com/billyronks/couchestor/tests/cluster/kit"
	"github.com/billyronks/couchestor/tests/mayastorsim/sim"
)

// The conversion story in the cluster: cold replicated Mayastor volumes
// become erasure-coded and come back (undo), driven by the operator pods
// against the REST double of Mayastor 2.x (tests/mayastorsim --api=rest)
// and a real Prometheus, with the bytes of the Mayastor volumes served by
// the Mayastor CSI stand-in (tests/mayastorsim/csistandin, a TEST DOUBLE of
// io.openebs.csi-mayastor's node plugin: a file per volume through a loop
// device), deployed as a pod and registered with the kubelet by
// node-driver-registrar. The Mayastor volumes' PVs are the double's (static,
// volume handle = the double's volume UUID), so the operator sees their
// replicas on cold pools through the REST API, their IOPS through
// Prometheus, and their bytes through the kubelet; the copy Job (the
// project's image) attaches the stand-in's volume and our CSI driver's
// ECVolume as raw block devices.

const (
	convNS       = "conv-apps"
	convStandNS  = "mayastor-csi"
	convPolicy   = "conversion-story"
	convSeed     = "couchestor-conversion"
	convSeedUndo = "couchestor-conversion-latest"
)

// The story's Mayastor volumes: archive (cold, unused: converts at once)
// and busy (cold, a pod holds it: waits, converts when the pod goes).
var (
	convArchive = convVolume("00000000-0000-4000-8000-000000000031", "archive", 128<<20)
	convBusy    = convVolume("00000000-0000-4000-8000-000000000032", "busy", 64<<20)
)

func convVolume(uuid, claim string, size int64) sim.VolumeSpec {
	return sim.VolumeSpec{Name: "pvc-" + uuid, UUID: uuid, SizeBytes: size, Replicas: []string{"sim-cold-1", "sim-cold-2"},
		Published: true, IOPS: 3, TargetNode: "sim-app",
		PVC: sim.PVCSpec{Namespace: convNS, Name: claim, Labels: map[string]string{"conversion": "on", "app": claim},
			Annotations: map[string]string{"example.com/owner": "team-" + claim}}}
}

// convStory is what the conversion steps share: the processes on the node,
// what was written, the measurements.
var convStory struct {
	mu      sync.Mutex
	procs   []*hostProcess
	written map[string]string // claim -> treeio output of what it holds
	figures []string
	// dir holds the story's files (Prometheus's TSDB, the double's
	// scenario): its processes outlive the step that starts them, so not
	// a step's t.TempDir (removed, under a running Prometheus, when that
	// step ends). Removed by stopConversionStory.
	dir string
	// heatedPV is the replicated PV the heat-up ended on.
	heatedPV string
}

func convFigure(t *testing.T, format string, a ...any) {
	s := fmt.Sprintf(format, a...)
	t.Log("FIGURE: " + s)
	convStory.mu.Lock()
	convStory.figures = append(convStory.figures, s)
	convStory.mu.Unlock()
}

// stopConversionStory stops the story's processes and removes what it
// made (TestCluster's cleanup, and the last conversion step).
func stopConversionStory() {
	convStory.mu.Lock()
	procs := convStory.procs
	convStory.procs = nil
	dir := convStory.dir
	convStory.dir = ""
	convStory.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].stop()
	}
	if dir != "" {
		_ = os.RemoveAll(dir)
	}
}

func startStoryProcess(t *testing.T, name, bin string, args ...string) *hostProcess {
	t.Helper()
	p := &hostProcess{name: name, cmd: exec.Command(bin, args...)}
	p.cmd.Stdout, p.cmd.Stderr = p, p
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	convStory.mu.Lock()
	convStory.procs = append(convStory.procs, p)
	convStory.mu.Unlock()
	return p
}

func standinDir() string { return filepath.Join(runDir, "mayastor-csi") }

// registrarImage is the chart's node-driver-registrar (imported by
// hack/cluster.sh csi-images).
func registrarImage(t *testing.T) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(root, "helm-charts", "couchestor", "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`image: (registry\.k8s\.io/sig-storage/csi-node-driver-registrar:\S+)`).FindSubmatch(raw)
	if m == nil {
		t.Fatal("values.yaml names no csi-node-driver-registrar image")
	}
	return string(m[1])
}

// standinYAML deploys the Mayastor CSI stand-in: its CSIDriver (no attach),
// the StorageClass mayastor it provisions (heat-up's new volumes), RBAC for
// that, and the node plugin pod (the stand-in in the CSI node image, which
// carries losetup, blkid, mkfs.ext4 and mount; the binary from a hostPath)
// with node-driver-registrar.
func standinYAML(t *testing.T) string {
	kubelet := filepath.Join(runDir, "kubelet")
	plugin := filepath.Join(kubelet, "plugins", sim.CSIDriver)
	return fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata:
  name: %[1]s
  labels:
    pod-security.kubernetes.io/enforce: privileged
---
apiVersion: storage.k8s.io/v1
kind: CSIDriver
metadata: {name: %[2]s}
spec:
  attachRequired: false
  podInfoOnMount: false
  volumeLifecycleModes: [Persistent]
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: mayastor}
provisioner: %[2]s
reclaimPolicy: Delete
volumeBindingMode: Immediate
parameters: {repl: "2", protocol: nvmf, csi.storage.k8s.io/fstype: ext4}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: csistandin, namespace: %[1]s}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: mayastor-csi-standin}
rules:
- {apiGroups: [storage.k8s.io], resources: [storageclasses], verbs: [get, list]}
- {apiGroups: [""], resources: [persistentvolumeclaims], verbs: [list]}
- {apiGroups: [""], resources: [persistentvolumes], verbs: [list, create, delete]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: mayastor-csi-standin}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: mayastor-csi-standin}
subjects: [{kind: ServiceAccount, name: csistandin, namespace: %[1]s}]
---
apiVersion: v1
kind: Pod
metadata:
  name: mayastor-csi-node
  namespace: %[1]s
  labels: {app: mayastor-csi-standin}
spec:
  nodeName: %[3]s
  serviceAccountName: csistandin
  terminationGracePeriodSeconds: 10
  containers:
  - name: csistandin
    image: %[4]s
    imagePullPolicy: Never
    command: [/standin/csistandin]
    args: [--endpoint=/csi/csi.sock, --node-id=%[3]s, --data-dir=%[5]s/volumes, --provision]
    securityContext: {privileged: true, runAsUser: 0}
    volumeMounts:
    - {name: plugin-dir, mountPath: /csi}
    - {name: kubelet-dir, mountPath: %[6]s, mountPropagation: Bidirectional}
    - {name: dev, mountPath: /dev}
    - {name: data, mountPath: %[5]s/volumes}
    - {name: bin, mountPath: /standin, readOnly: true}
  - name: node-driver-registrar
    image: %[7]s
    imagePullPolicy: Never
    args: [--csi-address=/csi/csi.sock, --kubelet-registration-path=%[8]s/csi.sock, --v=2]
    securityContext: {runAsUser: 0}
    volumeMounts:
    - {name: plugin-dir, mountPath: /csi}
    - {name: registration-dir, mountPath: /registration}
  volumes:
  - {name: plugin-dir, hostPath: {path: %[8]s, type: DirectoryOrCreate}}
  - {name: registration-dir, hostPath: {path: %[6]s/plugins_registry, type: Directory}}
  - {name: kubelet-dir, hostPath: {path: %[6]s, type: Directory}}
  - {name: dev, hostPath: {path: /dev, type: Directory}}
  - {name: data, hostPath: {path: %[5]s/volumes, type: DirectoryOrCreate}}
  - {name: bin, hostPath: {path: %[5]s/bin, type: Directory}}
`, convStandNS, sim.CSIDriver, node, kit.CSINodeImage, standinDir(), kubelet, registrarImage(t), plugin)
}

func conversionPolicyYAML(minBytes int64) string {
	return fmt.Sprintf(`apiVersion: storage.billyronks.io/v1
kind: StoragePolicy
metadata:
  name: %s
spec:
  storageClassName: mayastor
  highWatermarkIOPS: 5000
  warmWatermarkIOPS: 2000
  lowWatermarkIOPS: 500
  samplingWindow: 30s
  cooldownPeriod: 1h
  hotPoolSelector: {matchLabels: {tier: hot}}
  warmPoolSelector: {matchLabels: {tier: warm}}
  coldPoolSelector: {matchLabels: {tier: cold}}
  volumeSelector: {matchLabels: {conversion: "on"}}
  ecPolicyRef: %s
  ecMinVolumeSizeBytes: %d
`, convPolicy, kit.ECPolicy, minBytes)
}

// convTreeio runs a treeio pod in convNS to completion and returns its
// output (the pod is deleted).
func convTreeio(t *testing.T, name, claim string, args ...string) string {
	t.Helper()
	mustKubectl(t, kit.TreeioPod(convNS, name, claim, false, args...), "apply", "-f", "-")
	eventually(t, "pod "+name+" Succeeded", podsBound, func() (bool, string) {
		out, err := kubectl(t, "", "-n", convNS, "get", "pod", name, "-o", "jsonpath={.status.phase}")
		if strings.TrimSpace(out) == "Failed" {
			logs, _ := kubectl(t, "", "-n", convNS, "logs", name)
			t.Fatalf("pod %s failed:\n%s", name, logs)
		}
		ev, _ := kubectl(t, "", "-n", convNS, "get", "events", "--field-selector", "involvedObject.name="+name, "-o", `jsonpath={range .items[*]}{.reason}: {.message}{"\n"}{end}`)
		return err == nil && strings.TrimSpace(out) == "Succeeded", out + "\n" + ev
	})
	out := mustKubectl(t, "", "-n", convNS, "logs", name)
	mustKubectl(t, "", "-n", convNS, "delete", "pod", name, "--wait=true", "--timeout=120s")
	return out
}

// pvRecord is the conversion record on a PV (nil: none).
func pvRecord(t *testing.T, pv string) *conversion.Record {
	t.Helper()
	out, err := kubectl(t, "", "get", "pv", pv, "-o", "json")
	if err != nil {
		return nil
	}
	var obj corev1.PersistentVolume
	if err := json.Unmarshal([]byte(out), &obj); err != nil {
		t.Fatalf("PV %s: %v", pv, err)
	}
	raw := obj.Annotations[conversion.AnnotationConversion]
	if raw == "" {
		return nil
	}
	rec, err := conversion.Parse(raw)
	if err != nil {
		t.Fatalf("PV %s: conversion record: %v", pv, err)
	}
	return rec
}

func claimBinding(t *testing.T, claim string) (phase, volume string) {
	out, _ := kubectl(t, "", "-n", convNS, "get", "pvc", claim, "-o", "jsonpath={.status.phase}/{.spec.volumeName}")
	phase, volume, _ = strings.Cut(strings.TrimSpace(out), "/")
	return phase, volume
}

func convDiagnose(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, args := range [][]string{
		{"-n", convNS, "get", "pods,pvc", "-o", "wide"},
		{"get", "pv"},
		{"-n", ns, "get", "jobs,pods,pvc", "-o", "wide"},
		{"-n", convNS, "get", "events", "--sort-by=.lastTimestamp"},
		{"-n", ns, "get", "events", "--sort-by=.lastTimestamp"},
		{"get", "storagepolicy", convPolicy, "-o", "jsonpath={.status.conditions}"},
		{"-n", convStandNS, "logs", "mayastor-csi-node", "--all-containers", "--tail=60", "--prefix"},
		{"-n", ns, "logs", "-l", "control-plane=controller-manager", "--tail=60", "--prefix"},
	} {
		out, _ := kubectl(t, "", args...)
		fmt.Fprintf(&b, "\n$ kubectl %s\n%s", strings.Join(args, " "), out)
	}
	convStory.mu.Lock()
	for _, p := range convStory.procs {
		fmt.Fprintf(&b, "\n--- %s\n%s", p.name, p.output())
	}
	convStory.mu.Unlock()
	return b.String()
}

func convCleanupOnFailure(t *testing.T) {
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(convDiagnose(t))
		}
	})
}

// swapWatch records, from a watch on the PVC, when it disappeared (its
// deletion began) and when the recreated PVC of that name was first Bound:
// the time a workload naming it could not start.
type swapWatch struct {
	mu            sync.Mutex
	gone, rebound time.Time
	cancel        context.CancelFunc
}

func watchSwap(t *testing.T, claim string) *swapWatch {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &swapWatch{cancel: cancel}
	t.Cleanup(cancel)
	var firstUID string
	go func() {
		for ctx.Err() == nil {
			w, err := c.CoreV1().PersistentVolumeClaims(convNS).Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + claim})
			if err != nil {
				time.Sleep(200 * time.Millisecond)
				continue
			}
			for ev := range w.ResultChan() {
				pvc, ok := ev.Object.(*corev1.PersistentVolumeClaim)
				if !ok {
					continue
				}
				now := time.Now()
				s.mu.Lock()
				if firstUID == "" {
					firstUID = string(pvc.UID)
				}
				switch {
				case s.gone.IsZero() && string(pvc.UID) == firstUID && (ev.Type == watch.Deleted || pvc.DeletionTimestamp != nil):
					s.gone = now
				case !s.gone.IsZero() && s.rebound.IsZero() && string(pvc.UID) != firstUID && pvc.Status.Phase == corev1.ClaimBound:
					s.rebound = now
				}
				s.mu.Unlock()
			}
		}
	}()
	return s
}

func (s *swapWatch) unavailable() (time.Duration, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gone.IsZero() || s.rebound.IsZero() {
		return 0, false
	}
	return s.rebound.Sub(s.gone), true
}

// testConversionToErasureCoding: the stand-in serves two Mayastor volumes
// of the REST double (replicas on the cold pools, a few IOPS in
// Prometheus); a pod writes a tree on each; a StoragePolicy with
// ecPolicyRef makes the operator pods convert the unused one (copy Job in
// the cluster), whose PVC ends bound to an erasure-coded PV of our driver
// with its name, labels and annotations, and a pod restarted on it reads the
// same sha256s; the other, held by a running pod, waits with the
// ErasureCoding condition and a ConversionWaiting Event naming the pod, and
// converts once the pod is gone.
func testConversionToErasureCoding(t *testing.T) {
	convCleanupOnFailure(t)
	convStory.written = map[string]string{}
	dir, err := os.MkdirTemp("", "couchestor-conversion-story-")
	if err != nil {
		t.Fatal(err)
	}
	convStory.mu.Lock()
	convStory.dir = dir
	convStory.mu.Unlock()
	// The stand-in (static: it runs in the CSI node image) and the double.
	if err := os.MkdirAll(filepath.Join(standinDir(), "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(standinDir(), "volumes"), 0o700); err != nil {
		t.Fatal(err)
	}
	build := exec.Command("go", "build", "-o", filepath.Join(standinDir(), "bin", "csistandin"), "./tests/mayastorsim/csistandin")
	build.Dir, build.Env = root, append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the Mayastor CSI stand-in: %v\n%s", err, out)
	}
	simBin := filepath.Join(dir, "mayastorsim")
	if out, err := exec.Command("go", "build", "-o", simBin, filepath.Join(root, "tests", "mayastorsim")).CombinedOutput(); err != nil {
		t.Fatalf("build the Mayastor double: %v\n%s", err, out)
	}
	for _, v := range []sim.VolumeSpec{convArchive, convBusy} {
		f, err := os.OpenFile(filepath.Join(standinDir(), "volumes", v.UUID+".img"), os.O_CREATE|os.O_RDWR|os.O_TRUNC, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(v.SizeBytes); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	start := time.Now()
	mustKubectl(t, standinYAML(t), "apply", "-f", "-")
	podReady(t, convStandNS, "mayastor-csi-node")
	eventually(t, "the kubelet registers "+sim.CSIDriver, 2*time.Minute, func() (bool, string) {
		out, err := kubectl(t, "", "get", "csinode", node, "-o", "jsonpath={.spec.drivers[*].name}")
		return err == nil && strings.Contains(out, sim.CSIDriver), out
	})
	t.Logf("Mayastor CSI stand-in registered in %s", time.Since(start).Round(time.Second))

	pool := func(name, node, tier string) sim.PoolSpec {
		return sim.PoolSpec{Name: name, Node: node, Labels: map[string]string{"tier": tier}, CapacityBytes: 1 << 40}
	}
	sc := sim.Scenario{Pools: []sim.PoolSpec{pool("sim-cold-1", "sim-n1", "cold"), pool("sim-cold-2", "sim-n2", "cold"),
		pool("sim-hot-3", "sim-n3", "hot"), pool("sim-hot-4", "sim-n4", "hot"), pool("sim-warm-5", "sim-n5", "warm")},
		Volumes: []sim.VolumeSpec{convArchive, convBusy}}
	raw, err := json.Marshal(sc)
	if err != nil {
		t.Fatal(err)
	}
	scenario := filepath.Join(dir, "scenario.json")
	if err := os.WriteFile(scenario, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	simProc := startStoryProcess(t, "mayastorsim", simBin, "--kubeconfig", kubeconfig, "--scenario", scenario, "--api=rest", "--listen", simAddr)
	eventually(t, "the Mayastor double ready", 2*time.Minute, func() (bool, string) {
		return strings.Contains(simProc.output(), "mayastorsim ready"), simProc.output()
	})
	promDir := filepath.Join(dir, "prometheus")
	if err := os.Mkdir(promDir, 0o700); err != nil {
		t.Fatal(err)
	}
	startStoryPrometheus(t, promDir)

	// The workloads write, as they would on Mayastor.
	for _, v := range []sim.VolumeSpec{convArchive, convBusy} {
		eventually(t, "PVC "+v.PVC.Name+" Bound to "+v.Name, 2*time.Minute, func() (bool, string) {
			ph, vol := claimBinding(t, v.PVC.Name)
			return ph == "Bound" && vol == v.Name, ph + "/" + vol
		})
		w := convTreeio(t, v.PVC.Name+"-writer", v.PVC.Name, "write", "/data", convSeed+"-"+v.PVC.Name)
		if !strings.Contains(w, "files 48") {
			t.Fatalf("the writer of %s wrote no tree:\n%s", v.PVC.Name, w)
		}
		convStory.written[v.PVC.Name] = w
	}
	mustKubectl(t, kit.TreeioPod(convNS, "busy-holder", "busy", false, "hold", "/data"), "apply", "-f", "-")
	eventually(t, "the holder pod runs", podsBound, func() (bool, string) {
		out, err := kubectl(t, "", "-n", convNS, "get", "pod", "busy-holder", "-o", "jsonpath={.status.phase}")
		return err == nil && strings.TrimSpace(out) == "Running", out
	})

	swap := watchSwap(t, "archive")
	start = time.Now()
	mustKubectl(t, conversionPolicyYAML(32<<20), "apply", "-f", "-")
	target := "ec-" + convArchive.Name
	eventually(t, "PVC archive bound to the erasure-coded PV "+target+", the source retained", 8*time.Minute, func() (bool, string) {
		ph, vol := claimBinding(t, "archive")
		rec := pvRecord(t, convArchive.Name)
		step := "none"
		if rec != nil {
			step = string(rec.Step)
		}
		return ph == "Bound" && vol == target && rec != nil && rec.Step == conversion.StepRetaining,
			fmt.Sprintf("PVC %s/%s, record step %s\nevents:\n%s", ph, vol, step, policyEventsOf(t, convPolicy))
	})
	t.Logf("cold unused PVC converted to erasure coding by the operator pods in %s", time.Since(start).Round(time.Second))
	rec := pvRecord(t, convArchive.Name)
	checkConverted(t, "archive", convArchive, rec)
	if d, ok := swap.unavailable(); ok {
		convFigure(t, "PVC conv-apps/archive unavailable during the swap (deletion seen → recreated PVC Bound, from a watch): %s", d.Round(10*time.Millisecond))
	} else {
		t.Errorf("the watch on PVC archive did not see the swap (gone %v, rebound %v)", swap.gone, swap.rebound)
	}
	convThroughput(t, rec)
	convBytesSaved(t, rec)
	sameLines(t, "pod on the converted PVC", convStory.written["archive"], convTreeio(t, "archive-reader-ec", "archive", "read", "/data"))

	// The held one waits, said by the condition and an Event.
	eventually(t, "the in-use PVC waits, the condition and an Event naming its pod", 3*time.Minute, func() (bool, string) {
		cond, _ := kubectl(t, "", "get", "storagepolicy", convPolicy, "-o", `jsonpath={.status.conditions[?(@.type=="ErasureCoding")].message}`)
		ev := policyEventsOf(t, convPolicy)
		want := "in use by pod " + convNS + "/busy-holder"
		return strings.Contains(cond, convBusy.Name+" ("+want) && strings.Contains(ev, "ConversionWaiting: PV "+convBusy.Name+" (cold → erasure-coded) waits: "+want),
			"condition: " + cond + "\nevents:\n" + ev
	})
	if r := pvRecord(t, convBusy.Name); r != nil {
		t.Fatalf("the in-use volume has a conversion record while its pod runs: %+v", r)
	}
	mustKubectl(t, "", "-n", convNS, "delete", "pod", "busy-holder", "--wait=true", "--timeout=120s")
	start = time.Now()
	// The operator is killed at every step it is seen at: the leader pod is
	// deleted when the record shows a step not killed at yet, and the
	// other replica (or the Deployment's new pod) resumes from the record.
	killed := map[conversion.Step]string{}
	var order []string
	eventually(t, "PVC busy converted once its pod is gone, the leader killed at each step seen", 12*time.Minute, func() (bool, string) {
		ph, vol := claimBinding(t, "busy")
		rec := pvRecord(t, convBusy.Name)
		if rec != nil && rec.Step != conversion.StepRetaining && rec.Step != conversion.StepRollingBack && killed[rec.Step] == "" {
			if leader := leaderPod(t); leader != "" {
				if _, err := kubectl(t, "", "-n", ns, "delete", "pod", leader, "--wait=false"); err == nil {
					killed[rec.Step] = leader
					order = append(order, fmt.Sprintf("%s (leader %s)", rec.Step, leader))
					t.Logf("conversion of %s at step %s: leader pod %s deleted", convBusy.Name, rec.Step, leader)
				}
			}
		}
		if rec != nil && rec.Step == conversion.StepRollingBack {
			t.Fatalf("the conversion rolls back after an operator kill: %s", rec.Failure)
		}
		step := "none"
		if rec != nil {
			step = string(rec.Step)
		}
		return ph == "Bound" && vol == "ec-"+convBusy.Name && rec != nil && rec.Step == conversion.StepRetaining, ph + "/" + vol + " step " + step
	})
	t.Logf("the in-use PVC converted %s after its pod was deleted; the leader was killed at: %s", time.Since(start).Round(time.Second), strings.Join(order, ", "))
	if killed[conversion.StepCopying] == "" || killed[conversion.StepRebinding] == "" {
		t.Errorf("the leader was not killed at both Copying and Rebinding (killed at %v): the resume of those steps is unproven", order)
	}
	eventually(t, "2 operator pods Ready again", podsBound, func() (bool, string) {
		out, _ := kubectl(t, "", "-n", ns, "get", "pods", "-l", "control-plane=controller-manager",
			"-o", `jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}`)
		return strings.Count(out, "=True") == 2, out
	})
	checkConverted(t, "busy", convBusy, pvRecord(t, convBusy.Name))
	sameLines(t, "pod on the converted busy PVC", convStory.written["busy"], convTreeio(t, "busy-reader-ec", "busy", "read", "/data"))
	hist := mustKubectl(t, "", "get", "storagepolicy", convPolicy, "-o", "jsonpath={.status.migrationHistory}")
	if strings.Count(hist, `"toTier":"erasure-coded"`) != 2 || strings.Count(hist, `"success":true`) != 2 {
		t.Errorf("history should hold two successful cold → erasure-coded entries: %s", hist)
	}
}

// checkConverted: the recreated PVC kept name, labels, annotations, access
// modes, size; the final PV is our driver's; the source PV retained.
func checkConverted(t *testing.T, claim string, v sim.VolumeSpec, rec *conversion.Record) {
	t.Helper()
	out := mustKubectl(t, "", "-n", convNS, "get", "pvc", claim, "-o", "json")
	var pvc corev1.PersistentVolumeClaim
	if err := json.Unmarshal([]byte(out), &pvc); err != nil {
		t.Fatal(err)
	}
	for k, want := range v.PVC.Labels {
		if pvc.Labels[k] != want {
			t.Errorf("PVC %s: label %s=%q, want %q", claim, k, pvc.Labels[k], want)
		}
	}
	for k, want := range v.PVC.Annotations {
		if pvc.Annotations[k] != want {
			t.Errorf("PVC %s: annotation %s=%q, want %q", claim, k, pvc.Annotations[k], want)
		}
	}
	if q := pvc.Spec.Resources.Requests[corev1.ResourceStorage]; q.Value() != v.SizeBytes || len(pvc.Spec.AccessModes) != 1 || pvc.Spec.AccessModes[0] != corev1.ReadWriteOnce {
		t.Errorf("PVC %s: request %s, access modes %v; want %d bytes, ReadWriteOnce", claim, q.String(), pvc.Spec.AccessModes, v.SizeBytes)
	}
	drv := mustKubectl(t, "", "get", "pv", "ec-"+v.Name, "-o", "jsonpath={.spec.csi.driver}/{.spec.csi.volumeHandle}")
	if strings.TrimSpace(drv) != kit.CSIDriver+"/ec-"+v.Name {
		t.Errorf("PV ec-%s: CSI %q, want our driver and the ECVolume", v.Name, drv)
	}
	if _, err := kubectl(t, "", "get", "ecvolume", "ec-"+v.Name); err != nil {
		t.Errorf("ECVolume ec-%s: %v", v.Name, err)
	}
	if src := mustKubectl(t, "", "get", "pv", v.Name, "-o", "jsonpath={.spec.persistentVolumeReclaimPolicy}"); strings.TrimSpace(src) != "Retain" {
		t.Errorf("source PV %s: reclaim policy %q while retained, want Retain", v.Name, src)
	}
	if rec == nil || rec.Copy == nil || rec.Copy.SourceDigest != rec.Copy.TargetDigest || rec.Copy.SizeBytes != v.SizeBytes {
		t.Errorf("record of %s: copy result %+v, want both digests equal over %d bytes", v.Name, rec, v.SizeBytes)
	}
}

// convThroughput: the copy Job's figure (bytes / seconds of copy and
// verify) against dd with fdatasync on the disk the volumes' files and the
// shard servers' hostPath live on.
func convThroughput(t *testing.T, rec *conversion.Record) {
	t.Helper()
	if rec == nil || rec.Copy == nil || rec.Copy.Seconds <= 0 {
		t.Errorf("no copy result to measure: %+v", rec)
		return
	}
	mib := float64(rec.Copy.SizeBytes) / (1 << 20)
	convFigure(t, "copy Job in the cluster (stand-in loop device → ECVolume through our CSI driver, RS %s, bandwidth limit %d MiB/s): %.0f MiB in %.2f s = %.1f MiB/s (copy and verify pass)",
		kit.ECPolicy, conversion.DefaultBandwidth>>20, mib, rec.Copy.Seconds, mib/rec.Copy.Seconds)
	f := filepath.Join(standinDir(), "dd.test")
	defer os.Remove(f)
	out, err := exec.Command("dd", "if=/dev/zero", "of="+f, "bs=1M", "count=256", "conv=fdatasync").CombinedOutput()
	if err != nil {
		t.Errorf("dd: %v\n%s", err, out)
		return
	}
	m := regexp.MustCompile(`(\d+) bytes .* copied, ([0-9.,]+) s`).FindStringSubmatch(string(out))
	if m == nil {
		t.Errorf("dd output not understood: %s", out)
		return
	}
	b, _ := strconv.ParseFloat(m[1], 64)
	s, _ := strconv.ParseFloat(strings.ReplaceAll(m[2], ",", "."), 64)
	convFigure(t, "dd if=/dev/zero bs=1M count=256 conv=fdatasync on the same disk (%s): %.1f MiB/s", standinDir(), b/(1<<20)/s)
}

// convBytesSaved: the source's replica count (the REST double's volume)
// against the ECVolume's policy (k+m over k), per converted TiB.
func convBytesSaved(t *testing.T, rec *conversion.Record) {
	t.Helper()
	api, err := mayastorrest.New(mayastorrest.Config{URL: "http://" + simAddr})
	if err != nil {
		t.Fatal(err)
	}
	v, err := api.GetVolume(context.Background(), rec.SourceHandle)
	if err != nil {
		t.Errorf("the source's Mayastor volume: %v", err)
		return
	}
	replicas := int64(v.Spec.NumReplicas)
	pol := mustKubectl(t, "", "get", "ecvolume", rec.Target, "-o", "jsonpath={.spec.policyRef}")
	km := mustKubectl(t, "", "get", "erasurecodingpolicy", strings.TrimSpace(pol), "-o", "jsonpath={.spec.dataShards} {.spec.parityShards}")
	var k, m int64
	if _, err := fmt.Sscan(km, &k, &m); err != nil || k <= 0 {
		t.Errorf("ErasureCodingPolicy %s: shards %q", pol, km)
		return
	}
	const tib = int64(1) << 40
	saved := replicas*tib - tib*(k+m)/k
	convFigure(t, "bytes saved per converted TiB: %d replicas (%d TiB raw) → RS %d+%d (%.2f TiB raw): %d bytes = %.2f TiB saved",
		replicas, replicas, k, m, float64(k+m)/float64(k), saved, float64(saved)/float64(tib))
}

// leaderPod is the operator pod holding the leader Lease ("" if none).
func leaderPod(t *testing.T) string {
	out, err := kubectl(t, "", "-n", ns, "get", "lease", "couchestor.storage.billyronks.io", "-o", "jsonpath={.spec.holderIdentity}")
	if err != nil {
		return ""
	}
	pod, _, _ := strings.Cut(strings.TrimSpace(out), "_")
	return pod
}

func policyEventsOf(t *testing.T, name string) string {
	out, _ := kubectl(t, "", "get", "events", "-A", "--field-selector", "involvedObject.name="+name, "-o",
		`jsonpath={range .items[*]}{.reason}: {.message}{"\n"}{end}`)
	return out
}

// startStoryPrometheus: a real Prometheus on promAddr scraping the
// double's exporter (Mayastor's io-engine counters).
func startStoryPrometheus(t *testing.T, dir string) *hostProcess {
	t.Helper()
	bin := os.Getenv("COUCHESTOR_PROMETHEUS")
	if bin == "" {
		t.Fatal("COUCHESTOR_PROMETHEUS is not set: `make test-cluster` sets it (hack/prometheus.sh)")
	}
	// The CSI node plugin's /metrics (every export's op counters, which
	// heat-up reads): its pods' prometheus.io annotations name the port, as
	// a Prometheus with Kubernetes discovery would read them; this one
	// (maybe built without discovery plugins) is given them by a file.
	targets := csiNodeTargets(t)
	if err := os.WriteFile(filepath.Join(dir, "csi-node.json"), []byte(targets), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`global:
  scrape_interval: %[1]s
  evaluation_interval: %[1]s
scrape_configs:
  - job_name: mayastor-io-engine
    static_configs:
      - targets: [%[2]q]
  - job_name: couchestor-csi-node
    file_sd_configs:
      - files: [%[3]q]
`, tieringScrape, simAddr, filepath.Join(dir, "csi-node.json"))
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startStoryProcess(t, "prometheus", bin, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+promAddr, "--storage.tsdb.retention.time=1h")
	eventually(t, "Prometheus ready", 2*time.Minute, func() (bool, string) {
		out, err := httpGet("http://" + promAddr + "/-/ready")
		return err == nil, fmt.Sprintf("%v %s\n%s", err, out, p.output())
	})
	return p
}

// csiNodeTargets are the CSI node pods that ask to be scraped
// (prometheus.io/scrape), as file_sd JSON: pod IP and the annotated port.
func csiNodeTargets(t *testing.T) string {
	t.Helper()
	out := mustKubectl(t, "", "-n", csiNodeNS, "get", "pods", "-l", "app.kubernetes.io/component=csi-node", "-o",
		`jsonpath={range .items[*]}{.metadata.annotations.prometheus\.io/scrape} {.status.podIP} {.metadata.annotations.prometheus\.io/port} {.metadata.name}{"\n"}{end}`)
	type group struct {
		Targets []string          `json:"targets"`
		Labels  map[string]string `json:"labels"`
	}
	var groups []group
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 4 && f[0] == "true" {
			groups = append(groups, group{Targets: []string{f[1] + ":" + f[2]}, Labels: map[string]string{"pod": f[3]}})
		}
	}
	if len(groups) == 0 {
		t.Fatalf("no CSI node pod asks to be scraped (prometheus.io/scrape, podIP, port):\n%s", out)
	}
	b, err := json.Marshal(groups)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// testConversionUndo: within the retention, a pod writes new data on the
// erasure-coded volume, the PVC is annotated undo-conversion, the operator
// copies the ECVolume back onto the retained source PV and rebinds the PVC
// to it; a pod reads the latest sha256s; the erasure-coded PV and ECVolume
// are gone. Then the story is cleaned up.
func testConversionUndo(t *testing.T) {
	convCleanupOnFailure(t)
	defer cleanupConversion(t)
	latest := convTreeio(t, "archive-writer-ec", "archive", "write", "/data", convSeedUndo)
	if !strings.Contains(latest, "files 48") || strings.TrimSpace(latest) == strings.TrimSpace(convStory.written["archive"]) {
		t.Fatalf("the second writer wrote no new tree:\n%s", latest)
	}
	start := time.Now()
	mustKubectl(t, "", "-n", convNS, "annotate", "pvc", "archive", conversion.AnnotationUndoConversion+"=true")
	eventually(t, "PVC archive back on its retained source PV", 8*time.Minute, func() (bool, string) {
		ph, vol := claimBinding(t, "archive")
		fwd := pvRecord(t, convArchive.Name)
		return ph == "Bound" && vol == convArchive.Name && fwd == nil, fmt.Sprintf("PVC %s/%s, source record %+v\nevents:\n%s", ph, vol, fwd, policyEventsOf(t, convPolicy))
	})
	t.Logf("undo within retention: PVC back on the source in %s", time.Since(start).Round(time.Second))
	sameLines(t, "pod after the undo reads the latest data", latest, convTreeio(t, "archive-reader-undone", "archive", "read", "/data"))
	eventually(t, "the erasure-coded PV and its ECVolume are deleted", 3*time.Minute, func() (bool, string) {
		pv, err1 := kubectl(t, "", "get", "pv", "ec-"+convArchive.Name)
		ev, err2 := kubectl(t, "", "get", "ecvolume", "ec-"+convArchive.Name)
		return err1 != nil && strings.Contains(pv, "NotFound") && err2 != nil && strings.Contains(ev, "NotFound"), pv + ev
	})
	convStory.mu.Lock()
	for _, f := range convStory.figures {
		t.Log("FIGURES: " + f)
	}
	convStory.mu.Unlock()
}

// cleanupConversion removes what the conversion steps made, so the later
// steps see the cluster as before them.
func cleanupConversion(t *testing.T) {
	_, _ = kubectl(t, "", "delete", "storagepolicy", convPolicy, "--ignore-not-found", "--wait=false")
	_, _ = kubectl(t, "", "delete", "namespace", convNS, "--ignore-not-found", "--wait=true", "--timeout=180s")
	if convStory.heatedPV != "" {
		_, _ = kubectl(t, "", "delete", "pv", convStory.heatedPV, "--ignore-not-found", "--wait=false")
	}
	for _, v := range []sim.VolumeSpec{convArchive, convBusy} {
		_, _ = kubectl(t, "", "delete", "pv", v.Name, "ec-"+v.Name, "--ignore-not-found", "--wait=false")
		_, _ = kubectl(t, "", "delete", "ecvolume", "ec-"+v.Name, "--ignore-not-found", "--wait=false")
	}
	for _, p := range []string{"sim-cold-1", "sim-cold-2", "sim-hot-3", "sim-hot-4", "sim-warm-5"} {
		_, _ = kubectl(t, "", "-n", "mayastor", "delete", "diskpool", p, "--ignore-not-found", "--wait=false")
	}
	stopConversionStory()
	_, _ = kubectl(t, "", "-n", convStandNS, "delete", "pod", "mayastor-csi-node", "--ignore-not-found", "--wait=true", "--timeout=120s")
	_, _ = kubectl(t, "", "delete", "namespace", convStandNS, "--ignore-not-found", "--wait=false")
	_ = os.RemoveAll(filepath.Join(standinDir(), "volumes"))
}
