package main

// The CSI step: a pod on an erasure-coded PVC needs a kubelet, which the
// demo's control plane (kube-apiserver + etcd) does not have. The demo says
// so in one line and why: where this machine can run the real single-node
// cluster (hack/cluster.sh can), it also says what that pod would need; it
// never fakes one.

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"

	"helm.sh/helm/v3/pkg/chart/loader"
)

// csiSidecarImages are the CSI sidecar images the install chart pulls
// (csi.sidecars.*.image), in a fixed order.
func csiSidecarImages(root string) ([]string, error) {
	ch, err := loader.Load(filepath.Join(root, "helm-charts", "couchestor"))
	if err != nil {
		return nil, err
	}
	csi, _ := ch.Values["csi"].(map[string]any)
	sidecars, _ := csi["sidecars"].(map[string]any)
	var out []string
	for _, k := range []string{"provisioner", "resizer", "livenessProbe", "nodeDriverRegistrar"} {
		s, _ := sidecars[k].(map[string]any)
		img, _ := s["image"].(string)
		if img == "" {
			return nil, fmt.Errorf("helm-charts/couchestor values: csi.sidecars.%s.image is empty", k)
		}
		out = append(out, img)
	}
	return out, nil
}

// csiStepLines is what the demo prints about the CSI pod step: canErr is
// `hack/cluster.sh can`'s failure (nil when the machine can run the real
// cluster) and why its output.
func csiStepLines(canErr error, why string, images []string) []string {
	why = strings.TrimSpace(why)
	if canErr != nil {
		if why == "" {
			why = canErr.Error()
		}
		return []string{fmt.Sprintf("CSI pod step skipped: a pod on an erasure-coded PVC needs a kubelet, and this machine cannot run the real cluster (hack/cluster.sh can: %s)", why)}
	}
	return []string{
		"CSI pod step not run here: a pod on an erasure-coded PVC needs a kubelet, which this demo's control plane does not have.",
		"  This machine can run the real single-node cluster; the pod would need:",
		"  1. make cluster-up (kubelet + containerd, no image registry: images are imported, never pulled);",
		"  2. the CSI sidecar images imported into its containerd: " + strings.Join(images, ", ") + ";",
		"  3. a node-plugin image with nbdfuse, fusermount3, losetup, blkid, mkfs.ext4 (csi.node.image; make image builds the binary alone);",
		"  4. the operator chart with --set csi.enabled=true, a DataPlane (shard servers; csi.shardSecret set to its <release>-shard-token Secret) and the ErasureCodingPolicy cold-4-2;",
		"  5. a PVC of StorageClass couchestor-ec and a pod mounting it.",
	}
}

// csiStep runs `hack/cluster.sh can` and returns the lines to print.
func csiStep(root string) []string {
	cmd := exec.Command(filepath.Join(root, "hack", "cluster.sh"), "can")
	cmd.Dir = root
	out, err := cmd.Output()
	images, ierr := csiSidecarImages(root)
	if ierr != nil {
		images = []string{"(" + ierr.Error() + ")"}
	}
	return csiStepLines(err, string(out), images)
}
