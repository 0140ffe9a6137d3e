package v1alpha1

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestPolicyValidate(t *testing.T) {
	p := DefaultPolicy("couchestor-system")
	p.TolerationKeys = []string{"storage-node"}
	base := func(mut func(*DataPlane)) *DataPlane {
		dp := &DataPlane{ObjectMeta: metav1.ObjectMeta{Namespace: "couchestor-system", Name: "cold"},
			Spec: DataPlaneSpec{Image: "ghcr.io/billyronks/couchestor:v0.1.0", ShardServers: []ShardServer{{Node: "n", DiskPool: "p"}}}}
		if mut != nil {
			mut(dp)
		}
		return dp
	}
	cases := map[string]struct {
		dp   *DataPlane
		want []string // substrings of the one error, "" when valid
	}{
		"defaults":                          {base(nil), nil},
		"empty image (CRD default applies)": {base(func(d *DataPlane) { d.Spec.Image = "" }), nil},
		"own image by digest":               {base(func(d *DataPlane) { d.Spec.Image = "ghcr.io/billyronks/couchestor:v1@sha256:abc" }), nil},
		"other namespace":                   {base(func(d *DataPlane) { d.Namespace = "team-a" }), []string{"metadata.namespace", `"team-a"`, "--dataplane-namespaces", "couchestor-system"}},
		"foreign image":                     {base(func(d *DataPlane) { d.Spec.Image = "evil.io/miner:latest" }), []string{"spec.image", `"evil.io/miner:latest"`, "--dataplane-allowed-images"}},
		"look-alike repository":             {base(func(d *DataPlane) { d.Spec.Image = "ghcr.io/billyronks/couchestor-evil:v1" }), []string{"spec.image"}},
		"tag smuggling a path":              {base(func(d *DataPlane) { d.Spec.Image = "ghcr.io/billyronks/couchestor:x/../../evil" }), []string{"spec.image"}},
		"hostPath default":                  {base(func(d *DataPlane) { d.Spec.Storage.Type = StorageHostPath }), nil},
		"hostPath below prefix": {base(func(d *DataPlane) {
			d.Spec.Storage = ShardStorage{Type: StorageHostPath, HostPath: "/var/lib/couchestor/x"}
		}), nil},
		"hostPath root": {base(func(d *DataPlane) { d.Spec.Storage = ShardStorage{Type: StorageHostPath, HostPath: "/"} }), []string{"spec.storage.hostPath", `"/"`, "--dataplane-allowed-host-path-prefixes"}},
		"hostPath etc":  {base(func(d *DataPlane) { d.Spec.Storage = ShardStorage{Type: StorageHostPath, HostPath: "/etc"} }), []string{"spec.storage.hostPath"}},
		"hostPath dot-dot": {base(func(d *DataPlane) {
			d.Spec.Storage = ShardStorage{Type: StorageHostPath, HostPath: "/var/lib/couchestor/../../../etc"}
		}), []string{"spec.storage.hostPath"}},
		"hostPath look-alike": {base(func(d *DataPlane) {
			d.Spec.Storage = ShardStorage{Type: StorageHostPath, HostPath: "/var/lib/couchestor-evil"}
		}), []string{"spec.storage.hostPath"}},
		"hostPath ignored for Mayastor volumes": {base(func(d *DataPlane) { d.Spec.Storage = ShardStorage{Type: StorageMayastorVolume, HostPath: "/"} }), nil},
		"allowed toleration": {base(func(d *DataPlane) {
			d.Spec.Tolerations = []corev1.Toleration{{Key: "storage-node", Operator: corev1.TolerationOpExists}}
		}), nil},
		"foreign toleration": {base(func(d *DataPlane) {
			d.Spec.Tolerations = []corev1.Toleration{{Key: "node-role.kubernetes.io/control-plane"}}
		}), []string{"spec.tolerations[0].key", "control-plane", "--dataplane-allowed-toleration-keys"}},
		"tolerate everything": {base(func(d *DataPlane) { d.Spec.Tolerations = []corev1.Toleration{{Operator: corev1.TolerationOpExists}} }), []string{"spec.tolerations[0].key", "every taint"}},
	}
	for name, c := range cases {
		errs := p.Validate(c.dp)
		if c.want == nil {
			if len(errs) != 0 {
				t.Errorf("%s: refused: %v", name, errs)
			}
			continue
		}
		if len(errs) != 1 {
			t.Errorf("%s: %d errors %v, want 1", name, len(errs), errs)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(errs[0].Error(), w) {
				t.Errorf("%s: %q does not name %q", name, errs[0].Error(), w)
			}
		}
	}
	// Nothing configured: nothing but the operator's defaults.
	if errs := (Policy{}).Validate(base(nil)); len(errs) != 2 {
		t.Errorf("empty policy: %v, want the namespace and the image refused", errs)
	}
}
