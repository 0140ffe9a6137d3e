package packaging

import (
	"os/exec"
	"regexp"
	"sort"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	dataplanev1alpha1 "github.com/billyronks/couchestor/apis/dataplane/v1alpha1"
	"github.com/billyronks/couchestor/tests/testenv"
)

var flagName = regexp.MustCompile(`^--([a-z0-9-]+)`)

// TestShippedArgsAreFlagsOfTheBinary: every flag the charts and the kustomize
// tree pass to the operator or the shard server is a flag of the binary, so
// no shipped manifest crash-loops on "flag provided but not defined".
func TestShippedArgsAreFlagsOfTheBinary(t *testing.T) {
	operator := map[string]bool{}
	shard := map[string]bool{}
	csiFlags := map[string]bool{}
	collect := func(objs []*unstructured.Unstructured) {
		for _, o := range objs {
			if o.GetKind() != "Deployment" && o.GetKind() != "StatefulSet" && o.GetKind() != "DaemonSet" {
				continue
			}
			args := containerArgs(o)
			into := operator
			if len(args) > 0 && args[0] == "shard-server" {
				into, args = shard, args[1:]
			}
			if len(args) > 0 && args[0] == "csi" {
				into, args = csiFlags, args[1:]
			}
			for _, a := range args {
				if m := flagName.FindStringSubmatch(a); m != nil {
					into[m[1]] = true
				}
			}
		}
	}
	for _, dir := range []string{"default", "manifests", "csi"} {
		collect(decodeObjects(t, kustomizeBuild(t, dir)))
	}
	for _, values := range []map[string]any{{}, {"webhook": map[string]any{"certMode": "cert-manager"}},
		csiValues(map[string]any{"node": map[string]any{"attach": "nbdfuse", "exportArgs": []any{"--cache-memory-bytes=1"}}})} {
		m, err := render(loadChart(t, installChart), "couchestor-system", values)
		if err != nil {
			t.Fatal(err)
		}
		collect(decodeObjects(t, []byte(m)))
	}
	m, err := render(loadChart(t, dataPlaneChart), "couchestor-system",
		dataPlaneValues(t, dataplanev1alpha1.DataPlaneSpec{ShardServers: []dataplanev1alpha1.ShardServer{{Node: "n", DiskPool: "p"}}}))
	if err != nil {
		t.Fatal(err)
	}
	collect(decodeObjects(t, []byte(m)))
	if len(shard) == 0 || len(operator) == 0 || len(csiFlags) == 0 {
		t.Fatalf("no args collected: operator %v shard %v csi %v", operator, shard, csiFlags)
	}

	bin := testenv.OperatorBinary(t)
	check := func(what string, want map[string]bool, args ...string) {
		out, _ := exec.Command(bin, args...).CombinedOutput()
		var missing []string
		for f := range want {
			if !strings.Contains(string(out), "-"+f+" ") && !strings.Contains(string(out), "-"+f+"\n") {
				missing = append(missing, "--"+f)
			}
		}
		sort.Strings(missing)
		if len(missing) > 0 {
			t.Errorf("%s: the shipped manifests pass %v, which `couchestor %s` does not define", what, missing, strings.Join(args, " "))
		}
	}
	check("operator", operator, "--help")
	check("shard server", shard, "shard-server", "--help")
	check("CSI driver", csiFlags, "csi", "--help")
}
