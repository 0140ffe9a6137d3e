package packaging

import (
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/billyronks/couchestor/tests/testenv"
)

// kustomizeBuild is `kustomize build config/<dir>` through the kustomize API.
func kustomizeBuild(t *testing.T, dir string) []byte {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), filepath.Join(testenv.Root(), "config", dir))
	if err != nil {
		t.Fatalf("kustomize build config/%s: %v", dir, err)
	}
	y, err := m.AsYaml()
	if err != nil {
		t.Fatal(err)
	}
	return y
}

func TestKustomizeBuildsAreAcceptedByTheAPIServer(t *testing.T) {
	builds := map[string][]byte{}
	for _, dir := range []string{"default", "manifests", "olm", "samples", "prometheus", "scorecard", "crd", "rbac", "manager", "csi"} {
		builds[dir] = kustomizeBuild(t, dir)
	}

	// Shape checks that need no API server.
	def := decodeObjects(t, builds["default"])
	k := kinds(def)
	for kind, want := range map[string]int{
		"CustomResourceDefinition": 6, "Deployment": 1, "PodDisruptionBudget": 1, "NetworkPolicy": 1,
		"MutatingWebhookConfiguration": 1, "ValidatingWebhookConfiguration": 1, "Certificate": 1, "Issuer": 1,
		"Namespace": 1, "ServiceAccount": 1,
	} {
		if k[kind] != want {
			t.Errorf("config/default: %d %s, want %d (kinds %v)", k[kind], kind, want, k)
		}
	}
	for _, o := range def {
		switch o.GetKind() {
		case "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration":
			if got := o.GetAnnotations()["cert-manager.io/inject-ca-from"]; got != "couchestor-system/couchestor-serving-cert" {
				t.Errorf("%s inject-ca-from %q", o.GetKind(), got)
			}
			hooks, _, _ := unstructuredSlice(o.Object, "webhooks")
			for _, h := range hooks {
				svc := h["clientConfig"].(map[string]any)["service"].(map[string]any)
				if svc["name"] != "couchestor-webhook-service" || svc["namespace"] != "couchestor-system" {
					t.Errorf("%s webhook %v calls service %v", o.GetKind(), h["name"], svc)
				}
			}
		case "Certificate":
			names, _, _ := unstructuredStrings(o.Object, "spec", "dnsNames")
			if len(names) == 0 || names[0] != "couchestor-webhook-service.couchestor-system.svc" {
				t.Errorf("Certificate dnsNames %v", names)
			}
		case "Deployment":
			args := containerArgs(o)
			if !contains(args, "--webhook-cert-mode=cert-manager") {
				t.Errorf("config/default manager args %v lack --webhook-cert-mode=cert-manager", args)
			}
		}
	}
	for _, o := range decodeObjects(t, builds["manifests"]) {
		if o.GetKind() == "Deployment" && !contains(containerArgs(o), "--webhook-cert-mode=olm") {
			t.Errorf("config/manifests manager args %v lack --webhook-cert-mode=olm", containerArgs(o))
		}
		if o.GetKind() == "Certificate" || o.GetKind() == "Issuer" {
			t.Errorf("config/manifests contains a cert-manager %s; OLM provides the certificates", o.GetKind())
		}
	}
	// config/csi: the chart's CSI objects, for `kubectl apply -k` after
	// config/default; the controller in the operator's namespace, the node
	// plugin in its privileged one.
	csiObjs := decodeObjects(t, builds["csi"])
	if k := kinds(csiObjs); k["CSIDriver"] != 1 || k["StorageClass"] != 1 || k["Deployment"] != 1 || k["DaemonSet"] != 1 || k["Namespace"] != 1 {
		t.Errorf("config/csi kinds %v", k)
	}
	for _, o := range csiObjs {
		switch o.GetKind() {
		case "Deployment":
			if o.GetNamespace() != "couchestor-system" || o.GetName() != "couchestor-csi-controller" {
				t.Errorf("config/csi Deployment %s/%s", o.GetNamespace(), o.GetName())
			}
		case "DaemonSet":
			if o.GetNamespace() != "couchestor-csi" {
				t.Errorf("config/csi DaemonSet in %s, not the privileged couchestor-csi", o.GetNamespace())
			}
		}
		if o.GetLabels()["app.kubernetes.io/managed-by"] == "Helm" {
			t.Errorf("config/csi %s %s says it is managed by Helm", o.GetKind(), o.GetName())
		}
	}
	for _, v := range rbacViolations(csiObjs) {
		t.Error("config/csi: " + v)
	}
	if !strings.Contains(string(builds["scorecard"]), "olm-status-descriptors") {
		t.Error("config/scorecard lacks the olm-status-descriptors test")
	}

	env := testenv.Start(t, withMonitoringCRDs, withCertManagerCRDs)
	for _, dir := range []string{"default", "manifests", "prometheus", "csi"} {
		objs := decodeObjects(t, builds[dir])
		for _, err := range dryRunApply(t, env.Client, objs) {
			t.Errorf("config/%s: API server rejects %v", dir, err)
		}
	}
}

func containerArgs(o interface{ UnstructuredContent() map[string]any }) []string {
	cs, _, _ := unstructuredSlice(o.UnstructuredContent(), "spec", "template", "spec", "containers")
	if len(cs) == 0 {
		return nil
	}
	var out []string
	for _, a := range cs[0]["args"].([]any) {
		out = append(out, a.(string))
	}
	return out
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}
