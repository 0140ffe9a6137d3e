package main

// The CSI step: a pod on an erasure-coded PVC needs a kubelet, which the
// demo's control plane (kube-apiserver + etcd) does not have. The demo says
// so and why, in one line where this machine cannot run the real
// single-node cluster (hack/cluster.sh can) or has not built its binaries
// (hack/cluster.sh cached: about 20 min once), naming the command that
// does; where both hold, what `make test-cluster` runs. It never fakes a
// pod, and it does not start the real cluster itself: that is one per
// machine, and the demo cannot know whether another run is using it.

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
// cluster) and why its output; cachedWhy is `hack/cluster.sh cached`'s
// output when the cluster's binaries are not all built yet ("" when they
// are).
func csiStepLines(canErr error, why, cachedWhy string, images []string) []string {
	why = strings.TrimSpace(why)
	if canErr != nil {
		if why == "" {
			why = canErr.Error()
		}
		return []string{fmt.Sprintf("CSI pod step skipped: a pod on an erasure-coded PVC needs a kubelet, and this machine cannot run the real cluster (hack/cluster.sh can: %s)", why)}
	}
	if cachedWhy = strings.TrimSpace(cachedWhy); cachedWhy != "" {
		return []string{fmt.Sprintf("CSI pod step not run: a pod on an erasure-coded PVC needs the real single-node cluster, whose binaries are not built on this machine (%s; about 20 min once on 2 cores, then cached): `make test-cluster` builds them and runs the pod steps", cachedWhy)}
	}
	return []string{
		"CSI pod step not run here: a pod on an erasure-coded PVC needs a kubelet, which this demo's control plane does not have.",
		"  This machine has the real single-node cluster built: `make test-cluster` (a few minutes) runs it:",
		"  make cluster-up (kubelet + containerd, no image registry: images are imported, never pulled), the CSI sidecar images",
		"  " + strings.Join(images, ", ") + " and the node-plugin image (make csi-node-image) imported,",
		"  the operator chart with --set csi.enabled=true next to a DataPlane, a PVC of StorageClass couchestor-ec, pods writing",
		"  and reading back a tree of files (also with a shard server lost and after its rebuild), a raw-block PVC, an expansion",
		"  and an attach refused while another holds the volume.",
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
	cached := ""
	if err == nil {
		c := exec.Command(filepath.Join(root, "hack", "cluster.sh"), "cached")
		c.Dir = root
		if o, cerr := c.Output(); cerr != nil {
			cached = strings.TrimSpace(string(o))
			if cached == "" {
				cached = cerr.Error()
			}
		}
	}
	return csiStepLines(err, string(out), cached, images)
}
