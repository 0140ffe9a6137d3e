package packaging

import (
	"flag"
	"strings"
	"testing"

	"github.com/operator-framework/api/pkg/manifests"
	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chartutil"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	dataplanev1alpha1 "github.com/billyronks/couchestor/apis/dataplane/v1alpha1"
	"github.com/billyronks/couchestor/controllers"
	csicmd "github.com/billyronks/couchestor/internal/cmd/csi"
	"github.com/billyronks/couchestor/pkg/registry"
)

// dataPlaneSecret is the namespace/name of the Secret the data-plane
// chart's hook writes for a DataPlane of that name and namespace.
func dataPlaneSecret(t *testing.T, name, namespace string) string {
	t.Helper()
	in := action.NewInstall(&action.Configuration{})
	in.DryRun, in.ClientOnly, in.Replace = true, true, true
	in.ReleaseName, in.Namespace = name, namespace
	in.KubeVersion = &chartutil.KubeVersion{Version: "v1.37.2", Major: "1", Minor: "37"}
	rel, err := in.Run(loadChart(t, dataPlaneChart), dataPlaneValues(t, dataplanev1alpha1.DataPlaneSpec{ShardServers: []dataplanev1alpha1.ShardServer{{Node: "n1", DiskPool: "p1"}}}))
	if err != nil {
		t.Fatal(err)
	}
	var written []string
	for _, h := range rel.Hooks {
		for _, o := range decodeObjects(t, []byte(h.Manifest)) {
			if o.GetKind() == "Secret" {
				written = append(written, o.GetNamespace()+"/"+o.GetName())
			}
		}
	}
	if len(written) != 1 {
		t.Fatalf("the data-plane chart's hooks write Secrets %v, want exactly one", written)
	}
	return written[0]
}

// operatorSecretArg is the shard client Secret the operator container of
// a Deployment's args uses: its --shard-client-secret, else the default.
func operatorSecretArg(args []string, def string) string {
	got := def
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--shard-client-secret="); ok {
			got = v // the last one wins, as with the flag package
		}
	}
	return got
}

// csiSecretArgs are the --shard-secret values of every container of the
// Deployments and DaemonSets among objs, by "kind/name container".
func csiSecretArgs(objs []*unstructured.Unstructured) map[string]string {
	out := map[string]string{}
	for _, o := range objs {
		if o.GetKind() != "Deployment" && o.GetKind() != "DaemonSet" {
			continue
		}
		cs, _, _ := unstructuredSlice(o.Object, "spec", "template", "spec", "containers")
		for _, c := range cs {
			args, _ := c["args"].([]any)
			for _, a := range args {
				s, _ := a.(string)
				if v, ok := strings.CutPrefix(s, "--shard-secret="); ok {
					out[o.GetKind()+"/"+o.GetName()+" "+c["name"].(string)] = v
				}
			}
		}
	}
	return out
}

// TestShardClientSecretAgreesAcrossInstalls: with no value set, every way
// of installing the operator (the chart, kustomize's config/default, the
// OLM bundle) leaves its shard client reading the Secret that the
// data-plane chart writes for the DataPlane couchestor in
// couchestor-system, and so do the CSI objects of kustomize (config/csi)
// and the chart and `couchestor csi`'s own default: a DataPlane named
// couchestor needs no hand-made Secret whichever way the operator came.
// Each install's value is read from what it ships (args, else the binary's
// flag default), so changing any one of them alone fails here.
func TestShardClientSecretAgreesAcrossInstalls(t *testing.T) {
	want := dataPlaneSecret(t, "couchestor", registry.DefaultNamespace)
	if want != "couchestor-system/couchestor-shard-token" {
		t.Fatalf("the data-plane chart writes %s for the DataPlane couchestor/couchestor-system; the README names couchestor-system/couchestor-shard-token", want)
	}
	// The operator's flag default, as the binary registers it.
	fs := flag.NewFlagSet("operator", flag.ContinueOnError)
	(&controllers.ErasureCodingOptions{}).BindFlags(fs)
	opDefault := fs.Lookup("shard-client-secret").DefValue
	if opDefault != want {
		t.Errorf("the operator's --shard-client-secret defaults to %s; the DataPlane couchestor's Secret is %s", opDefault, want)
	}
	if got := registry.DefaultNamespace + "/" + csicmd.DefaultShardSecret; got != want {
		t.Errorf("couchestor csi --shard-secret defaults to %s, want %s", got, want)
	}

	got := map[string]string{}
	// The chart, default values and with the CSI driver on.
	for name, values := range map[string]map[string]any{"chart": nil, "chart csi.enabled": csiValues(nil)} {
		m, err := render(loadChart(t, installChart), registry.DefaultNamespace, values)
		if err != nil {
			t.Fatalf("%s: helm template: %v", name, err)
		}
		objs := decodeObjects(t, []byte(m))
		got[name+" operator"] = operatorSecretArg(containerArgs(find(t, objs, "Deployment", "couchestor-controller-manager", nil)), opDefault)
		for k, v := range csiSecretArgs(objs) {
			got[name+" "+k] = v
		}
	}
	// kustomize: the operator (config/default) and the CSI driver (config/csi).
	for _, o := range decodeObjects(t, kustomizeBuild(t, "default")) {
		if o.GetKind() == "Deployment" {
			got["kustomize config/default "+o.GetName()] = operatorSecretArg(containerArgs(o), opDefault)
		}
	}
	csiObjs := decodeObjects(t, kustomizeBuild(t, "csi"))
	for k, v := range csiSecretArgs(csiObjs) {
		got["kustomize config/csi "+k] = v
	}
	// The CSI Roles of kustomize grant exactly that Secret.
	for _, o := range csiObjs {
		if o.GetKind() != "Role" {
			continue
		}
		rules, _, _ := unstructuredSlice(o.Object, "rules")
		for _, r := range rules {
			if res, _ := r["resources"].([]any); len(res) == 1 && res[0] == "secrets" {
				names, _ := r["resourceNames"].([]any)
				if len(names) == 1 {
					got["kustomize config/csi Role/"+o.GetName()] = o.GetNamespace() + "/" + names[0].(string)
				} else {
					t.Errorf("config/csi Role %s/%s grants secrets %v, want exactly %s", o.GetNamespace(), o.GetName(), names, want)
				}
			}
		}
	}
	// OLM: the CSV's Deployment.
	b, err := manifests.GetBundleFromDir(bundleDir())
	if err != nil {
		t.Fatalf("load bundle: %v", err)
	}
	for _, d := range b.CSV.Spec.InstallStrategy.StrategySpec.DeploymentSpecs {
		got["OLM bundle "+d.Name] = operatorSecretArg(d.Spec.Template.Spec.Containers[0].Args, opDefault)
	}

	for _, must := range []string{"chart operator", "chart csi.enabled operator", "kustomize config/default couchestor-controller-manager", "OLM bundle couchestor-controller-manager"} {
		if _, ok := got[must]; !ok {
			t.Errorf("no %q among the installs read: %v", must, got)
		}
	}
	csiSeen := 0
	for where, v := range got {
		if strings.Contains(where, "csi") && where != "chart csi.enabled operator" {
			csiSeen++
		}
		if v != want {
			t.Errorf("%s reads the shard client Secret %s; the DataPlane couchestor writes %s", where, v, want)
		}
	}
	// chart: controller + node; kustomize: controller + node + their Roles.
	if csiSeen < 4 {
		t.Errorf("only %d CSI places read (%v): want the chart's and kustomize's controller and node", csiSeen, got)
	}
	t.Logf("%d places agree on %s: %v", len(got), want, got)
}
