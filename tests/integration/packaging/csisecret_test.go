package packaging

import (
	"slices"
	"strings"
	"testing"

	csicmd "github.com/billyronks/couchestor/internal/cmd/csi"
	"github.com/billyronks/couchestor/pkg/registry"
)

// TestCSIDefaultShardSecretIsTheDataPlanes: with csi.enabled=true and no
// other value, the CSI pods, their RBAC, the operator and `couchestor csi`'s
// own flag default all name the Secret that the data-plane chart's hook
// writes for a DataPlane named couchestor in couchestor-system: installing
// the driver next to such a DataPlane needs no hand-made Secret. Another
// DataPlane is one value (csi.dataPlane), another Secret another
// (csi.shardSecret).
func TestCSIDefaultShardSecretIsTheDataPlanes(t *testing.T) {
	// What the data-plane chart writes for the DataPlane couchestor.
	written := dataPlaneSecret(t, "couchestor", registry.DefaultNamespace)
	if written != registry.DefaultNamespace+"/"+csicmd.DefaultShardSecret {
		t.Fatalf("the data-plane chart writes %q for the DataPlane couchestor; couchestor csi defaults to %s/%s", written, registry.DefaultNamespace, csicmd.DefaultShardSecret)
	}
	for _, c := range []struct {
		name   string
		values map[string]any
		secret string
	}{
		{"defaults", csiValues(nil), written},
		{"dataPlane cold in couchestor-data", csiValues(map[string]any{"registryNamespace": "couchestor-data", "dataPlane": "cold"}), "couchestor-data/cold-shard-token"},
		{"shardSecret", csiValues(map[string]any{"shardSecret": "mine"}), registry.DefaultNamespace + "/mine"},
	} {
		t.Run(c.name, func(t *testing.T) {
			objs := renderCSI(t, c.values)
			var seen []string
			for _, o := range objs {
				switch o.GetKind() {
				case "Deployment", "DaemonSet":
					cs, _, _ := unstructuredSlice(o.Object, "spec", "template", "spec", "containers")
					for _, cm := range cs {
						args, _ := cm["args"].([]any)
						for _, a := range args {
							s, _ := a.(string)
							for _, f := range []string{"--shard-secret=", "--shard-client-secret="} {
								if v, ok := strings.CutPrefix(s, f); ok {
									seen = append(seen, o.GetName()+" "+f)
									if v != c.secret {
										t.Errorf("%s %s container %v: %s%s, want %s", o.GetKind(), o.GetName(), cm["name"], f, v, c.secret)
									}
								}
							}
						}
					}
				case "Role":
					if !strings.HasPrefix(o.GetName(), "couchestor-csi-") {
						continue // the operator's own Roles (helm releases: every Secret)
					}
					rules, _, _ := unstructuredSlice(o.Object, "rules")
					for _, rm := range rules {
						res, _ := rm["resources"].([]any)
						if slices.Contains(res, any("secrets")) {
							names, _ := rm["resourceNames"].([]any)
							ns, name, _ := strings.Cut(c.secret, "/")
							if o.GetNamespace() != ns || len(names) != 1 || names[0] != name {
								t.Errorf("Role %s/%s grants secrets %v, want exactly %s", o.GetNamespace(), o.GetName(), names, c.secret)
							}
						}
					}
				}
			}
			for _, want := range []string{"couchestor-controller-manager --shard-client-secret=", "couchestor-csi-controller --shard-secret=", "couchestor-csi-node --shard-secret="} {
				if !slices.Contains(seen, want) {
					t.Errorf("no %s in the rendered chart (saw %v)", want, seen)
				}
			}
		})
	}
}
