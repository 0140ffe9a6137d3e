// Package kit holds what the real-cluster story (tests/cluster) and `make
// demo`'s CSI step (hack/demo) install into the single-node cluster of
// hack/cluster.sh, so both run the same objects: the install chart's helm
// arguments (with and without the CSI driver), the DataPlane and the extra
// shard-server pods behind its Service, the DiskPools they stand for, the
// ErasureCodingPolicy of the CSI StorageClass, PVCs and the treeio workload
// pods (hack/cluster/treeio). It only builds text; running it is the
// caller's.
package kit

import (
	"fmt"
	"path/filepath"
	"strings"
)

const (
	// OperatorNS is where the install chart goes.
	OperatorNS = "couchestor-system"
	// Node is the cluster's one node (hack/cluster.sh NODE).
	Node = "couchestor-node"
	// Image is the project's image (make image), imported, never pulled.
	Image = "ghcr.io/billyronks/couchestor:v0.1.0"
	// DataNS is the DataPlane's namespace; DataPlane its name; ShardSecret
	// the Secret its chart writes (<name>-shard-token).
	DataNS      = "couchestor-data"
	DataPlane   = "cold"
	ShardSecret = DataPlane + "-shard-token"
	// DataPlanePods selects the DataPlane's own shard-server pods (not the
	// extra ones of ShardPod).
	DataPlanePods = "app.kubernetes.io/component=shard-server,couchestor.billyronks.io/node=" + Node

	CSIClass     = "couchestor-ec"
	CSIDriver    = "ec.csi.storage.billyronks.io"
	CSINodeNS    = "couchestor-csi"
	TreeioImage  = "couchestor.local/treeio:1"
	CSINodeImage = "couchestor.local/couchestor-csi-node:dev"
	// ECPolicy is the CSI StorageClass's erasureCodingPolicy (ECPolicyYAML).
	ECPolicy = "rs-2-1"

	// DiskPoolOnline is the status patch that makes a DiskPool usable (no
	// Mayastor runs in this cluster; the pools stand for the shard servers').
	DiskPoolOnline = `{"status":{"cr_state":"Created","pool_status":"Online","capacity":8589934592,"used":0,"available":8589934592}}`
)

// Shard is a shard-server pod beside the DataPlane's, under a virtual node
// name so that placement (distinct nodes) sees separate nodes.
type Shard struct{ Pod, Node, Pool string }

// ExtraShards are the three extra shard servers of the story; with the
// DataPlane's (pool-cold-1) there are four pools, RS 2+1 plus a spare.
var ExtraShards = []Shard{
	{"cold-shard-b", "virtual-b", "pool-cold-2"},
	{"cold-shard-c", "virtual-c", "pool-cold-3"},
	{"cold-shard-d", "virtual-d", "pool-cold-4"},
}

// DataPlanePool is the pool of the DataPlane's own shard server.
const DataPlanePool = "pool-cold-1"

// ShardHostPath is the DataPlane's hostPath, under the cluster's run
// directory (the chart's dataPlanePolicy allows only it).
func ShardHostPath(runDir string) string { return filepath.Join(runDir, "shards") }

// CSIStateDir is the node plugin's state directory, under the run directory.
func CSIStateDir(runDir string) string { return filepath.Join(runDir, "csi-state") }

// InstallArgs are `helm install` arguments (after the helm binary) of the
// install chart in self-signed webhook mode with the images imported, the
// DataPlane's namespace, hostPath and shard Secret, and no Prometheus;
// extraArgs go to the operator after those.
func InstallArgs(root, runDir string, extraArgs ...string) []string {
	ea := []string{"--shard-registry-namespace=" + DataNS, "--shard-client-secret=" + DataNS + "/" + ShardSecret}
	q := make([]string, 0, len(ea)+len(extraArgs))
	for _, a := range append(ea, extraArgs...) {
		q = append(q, fmt.Sprintf("%q", a))
	}
	return []string{"install", "couchestor", filepath.Join(root, "helm-charts", "couchestor"),
		"--namespace", OperatorNS, "--create-namespace",
		"--set", "webhook.certMode=self-signed",
		"--set", "image.pullPolicy=Never",
		// The DataPlane's namespace and its hostPath under the cluster's
		// run directory (the policy refuses others).
		"--set-json", `dataPlaneNamespaces=["` + DataNS + `"]`,
		"--set-json", `dataPlanePolicy.allowedHostPathPrefixes=["` + ShardHostPath(runDir) + `/"]`,
		// No Prometheus in this cluster; the operator must start regardless.
		"--set", "prometheusURL=http://127.0.0.1:9",
		"--set-json", "extraArgs=[" + strings.Join(q, ",") + "]",
	}
}

// CSIValues are the helm --set arguments that turn the chart's CSI driver
// on for this cluster: the DataPlane's namespace and name (its Secret
// follows from them), the kubelet's root and the plugin's state under the
// run directory, the imported images, the nbdfuse attach (no nbd module
// here), one controller and the StorageClass's policy ECPolicy.
func CSIValues(runDir string) []string {
	return []string{
		"--set", "csi.enabled=true",
		"--set", "csi.registryNamespace=" + DataNS, "--set", "csi.dataPlane=" + DataPlane,
		"--set", "csi.kubeletDir=" + filepath.Join(runDir, "kubelet"),
		"--set", "csi.stateDir=" + CSIStateDir(runDir),
		"--set", "csi.node.image=" + CSINodeImage, "--set", "csi.node.attach=nbdfuse",
		"--set-json", `csi.node.exportArgs=["--cache-memory-bytes=8388608","--cache-disk-bytes=16777216"]`,
		"--set", "csi.sidecars.pullPolicy=Never",
		"--set", "csi.controller.replicas=1",
		"--set", "csi.storageClass.erasureCodingPolicy=" + ECPolicy,
	}
}

// DataPlaneYAML is the DataPlane cold: one shard server on the node, on
// hostPath storage.
func DataPlaneYAML(runDir string) string {
	return fmt.Sprintf(`apiVersion: storage.billyronks.io/v1alpha1
kind: DataPlane
metadata:
  name: %s
  namespace: %s
spec:
  image: %s
  imagePullPolicy: Never
  shardServers:
  - node: %s
    diskPool: %s
  storage:
    type: HostPath
    hostPath: %s
  monitoring:
    serviceMonitor: false
    prometheusRule: false
    grafanaDashboard: false
`, DataPlane, DataNS, Image, Node, DataPlanePool, ShardHostPath(runDir))
}

// DiskPool is a Mayastor DiskPool of that name on that node (status:
// DiskPoolOnline).
func DiskPool(name, nodeName string) string {
	return fmt.Sprintf(`apiVersion: openebs.io/v1beta2
kind: DiskPool
metadata: {name: %s, namespace: mayastor}
spec: {node: %s, disks: ["/dev/sdb"]}
`, name, nodeName)
}

// ShardPod is a shard-server pod of the DataPlane (its Secret,
// ServiceAccount and headless Service) registering under nodeName and
// pool, its data an emptyDir: deleting the pod loses its shards for good.
func ShardPod(pod, nodeName, pool string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %[1]s
  namespace: %[4]s
  labels:
    app.kubernetes.io/name: couchestor-dataplane
    app.kubernetes.io/instance: %[6]s
    app.kubernetes.io/component: shard-server
    couchestor.billyronks.io/node: %[2]s
    couchestor.billyronks.io/pool: %[3]s
spec:
  hostname: %[1]s
  subdomain: %[6]s-shards
  serviceAccountName: %[6]s-shard-server
  enableServiceLinks: false
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
    fsGroup: 65532
    seccompProfile: {type: RuntimeDefault}
  containers:
  - name: shard-server
    image: %[5]s
    imagePullPolicy: Never
    args:
    - shard-server
    - --listen=:7443
    - --advertise-address=%[1]s.%[6]s-shards.%[4]s.svc:7443
    - --data-dir=/data
    - --node=%[2]s
    - --pool=%[3]s
    - --capacity-bytes=1073741824
    - --tls-cert-file=/etc/couchestor/shard/tls.crt
    - --tls-key-file=/etc/couchestor/shard/tls.key
    - --token-file=/etc/couchestor/shard/token
    - --registry-namespace=%[4]s
    ports: [{name: shards, containerPort: 7443}]
    readinessProbe:
      httpGet: {scheme: HTTPS, path: /healthz, port: shards}
      periodSeconds: 2
    securityContext:
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {drop: ["ALL"]}
    volumeMounts:
    - {name: data, mountPath: /data}
    - {name: shard-secret, mountPath: /etc/couchestor/shard, readOnly: true}
  volumes:
  - name: data
    emptyDir: {sizeLimit: 1Gi}
  - name: shard-secret
    secret: {secretName: %[7]s, defaultMode: 0400}
`, pod, nodeName, pool, DataNS, Image, DataPlane, ShardSecret)
}

// ECPolicyYAML is the ErasureCodingPolicy ECPolicy: RS 2+1, 1 MiB stripes,
// a 16 MiB journal on 3 shard servers destaged every second.
const ECPolicyYAML = `apiVersion: storage.billyronks.io/v1
kind: ErasureCodingPolicy
metadata: {name: ` + ECPolicy + `}
spec:
  dataShards: 2
  parityShards: 1
  stripeSizeBytes: 1048576
  algorithm: ReedSolomon
  minHealthyShards: 2
  journalConfig:
    journalSizeBytes: 16777216
    replicationFactor: 3
    destageThresholdPercent: 50
    destageInterval: 1s
`

// PVC is a ReadWriteOnce claim of the CSI StorageClass; mode Filesystem or
// Block.
func PVC(namespace, name, size, mode string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: %s, namespace: %s}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: %s
  volumeMode: %s
  resources: {requests: {storage: %s}}
`, name, namespace, CSIClass, mode, size)
}

// TreeioPod runs treeio ARGS once with the claim mounted at /data (or, raw,
// as the device /dev/xvda).
func TreeioPod(namespace, name, claim string, raw bool, args ...string) string {
	vol := "    volumeMounts: [{name: v, mountPath: /data}]"
	if raw {
		vol = "    volumeDevices: [{name: v, devicePath: /dev/xvda}]"
	}
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = fmt.Sprintf("%q", a)
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: %s, namespace: %s}
spec:
  restartPolicy: Never
  enableServiceLinks: false
  terminationGracePeriodSeconds: 5
  containers:
  - name: treeio
    image: %s
    imagePullPolicy: Never
    args: [%s]
%s
  volumes:
  - name: v
    persistentVolumeClaim: {claimName: %s}
`, name, namespace, TreeioImage, strings.Join(q, ", "), vol, claim)
}

// TreeFiles is how many files `treeio write` writes (its last line says
// "files 48").
const TreeFiles = 48
