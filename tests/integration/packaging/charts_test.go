package packaging

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	dataplanev1alpha1 "github.com/billyronks/couchestor/apis/dataplane/v1alpha1"
	"github.com/billyronks/couchestor/internal/helmhybrid"
	"github.com/billyronks/couchestor/tests/testenv"
)

const (
	installChart   = "couchestor"
	dataPlaneChart = "couchestor-dataplane"
)

var monitoringAPIs = []string{"monitoring.coreos.com/v1", "monitoring.coreos.com/v1/ServiceMonitor", "monitoring.coreos.com/v1/PrometheusRule"}

func chartDir(name string) string { return filepath.Join(testenv.Root(), "helm-charts", name) }

func loadChart(t *testing.T, name string) *chart.Chart {
	t.Helper()
	c, err := loader.Load(chartDir(name))
	if err != nil {
		t.Fatalf("load chart %s: %v", name, err)
	}
	return c
}

// render is `helm template` through the SDK: the values are checked against
// values.schema.json, apis are the extra API versions the "cluster" serves.
func render(c *chart.Chart, ns string, values map[string]any, apis ...string) (string, error) {
	cfg := &action.Configuration{}
	in := action.NewInstall(cfg)
	in.DryRun, in.ClientOnly, in.Replace = true, true, true
	in.ReleaseName, in.Namespace = "rel", ns
	in.KubeVersion = &chartutil.KubeVersion{Version: "v1.37.2", Major: "1", Minor: "37"}
	in.APIVersions = chartutil.VersionSet(apis)
	rel, err := in.Run(c, values)
	if err != nil {
		return "", err
	}
	return rel.Manifest, nil
}

// dataPlaneValues are the values the operator would pass for a DataPlane.
func dataPlaneValues(t *testing.T, spec dataplanev1alpha1.DataPlaneSpec) map[string]any {
	t.Helper()
	v, err := helmhybrid.DataPlaneValues(&dataplanev1alpha1.DataPlane{Spec: spec})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestChartsLint(t *testing.T) {
	cases := []struct {
		chart  string
		values map[string]any
	}{
		{installChart, map[string]any{}},
		{installChart, map[string]any{"webhook": map[string]any{"certMode": "cert-manager"}}},
		{installChart, csiValues(nil)},
		{dataPlaneChart, map[string]any{}}, // values.yaml alone: no shard servers yet
		{dataPlaneChart, dataPlaneValues(t, dataplanev1alpha1.DataPlaneSpec{ShardServers: []dataplanev1alpha1.ShardServer{{Node: "n1", DiskPool: "p1"}}})},
	}
	for _, c := range cases {
		l := lint.AllWithKubeVersion(chartDir(c.chart), c.values, "couchestor-system", &chartutil.KubeVersion{Version: "v1.37.2", Major: "1", Minor: "37"})
		for _, m := range l.Messages {
			if m.Severity >= support.WarningSev {
				t.Errorf("helm lint %s %v: %s", c.chart, c.values, m)
			}
		}
	}
}

type renderCase struct {
	name   string
	chart  string
	values map[string]any
	apis   []string
	// check inspects the rendered objects.
	check func(t *testing.T, objs []*unstructured.Unstructured)
}

func renderMatrix(t *testing.T) []renderCase {
	two := []dataplanev1alpha1.ShardServer{{Node: "node-a", DiskPool: "pool-a"}, {Node: "node-b.example.com", DiskPool: "pool-b"}}
	return []renderCase{
		{name: "install/defaults", chart: installChart, values: map[string]any{}, check: func(t *testing.T, objs []*unstructured.Unstructured) {
			k := kinds(objs)
			if k["CustomResourceDefinition"] != 6 || k["Deployment"] != 1 || k["PodDisruptionBudget"] != 1 || k["NetworkPolicy"] != 1 ||
				k["MutatingWebhookConfiguration"] != 1 || k["ValidatingWebhookConfiguration"] != 1 || k["ServiceMonitor"] != 0 || k["Certificate"] != 0 {
				t.Errorf("kinds %v", k)
			}
			for _, o := range objs {
				if o.GetKind() == "CustomResourceDefinition" && o.GetAnnotations()["helm.sh/resource-policy"] != "keep" {
					t.Errorf("CRD %s is not kept on uninstall", o.GetName())
				}
			}
			d := deployment(t, objs)
			if *d.Spec.Replicas != 2 {
				t.Errorf("replicas %d", *d.Spec.Replicas)
			}
			c := d.Spec.Template.Spec.Containers[0]
			sc := c.SecurityContext
			if sc == nil || !*sc.ReadOnlyRootFilesystem || *sc.AllowPrivilegeEscalation || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" {
				t.Errorf("container securityContext %+v", sc)
			}
			psc := d.Spec.Template.Spec.SecurityContext
			if !*psc.RunAsNonRoot || psc.SeccompProfile == nil || psc.SeccompProfile.Type != "RuntimeDefault" {
				t.Errorf("pod securityContext %+v", psc)
			}
			if c.Resources.Requests.Cpu().IsZero() || c.Resources.Limits.Memory().IsZero() {
				t.Errorf("resources %+v", c.Resources)
			}
			checkChartRBACIsGenerated(t, objs)
			checkNetworkPolicyAdmitsWebhook(t, objs)
			for _, want := range []string{"--leader-elect=true", "--webhook-cert-mode=self-signed", "--metrics-secure=true",
				"--mayastor-backend=rest", "--mayastor-api-url=http://mayastor-api-rest.mayastor.svc:8081"} {
				if !containsArg(c.Args, want) {
					t.Errorf("args %v lack %s", c.Args, want)
				}
			}
		}},
		{name: "install/cert-manager+monitoring", chart: installChart, apis: monitoringAPIs,
			values: map[string]any{"webhook": map[string]any{"certMode": "cert-manager"}},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				k := kinds(objs)
				if k["Certificate"] != 1 || k["Issuer"] != 1 || k["ServiceMonitor"] != 1 {
					t.Errorf("kinds %v", k)
				}
				for _, o := range objs {
					if strings.HasSuffix(o.GetKind(), "WebhookConfiguration") && o.GetAnnotations()["cert-manager.io/inject-ca-from"] != "couchestor-system/couchestor-serving-cert" {
						t.Errorf("%s not annotated for CA injection", o.GetKind())
					}
				}
				if !containsArg(deployment(t, objs).Spec.Template.Spec.Containers[0].Args, "--webhook-cert-mode=cert-manager") {
					t.Error("manager not in cert-manager mode")
				}
			}},
		{name: "install/mayastor-rest-token-ca-lever", chart: installChart,
			values: map[string]any{"mayastor": map[string]any{"apiUrl": "https://openebs-api-rest.openebs.svc:8080", "tokenSecret": "mayastor-token",
				"caSecret": "mayastor-ca", "placementLever": "cordon"}},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				spec := deployment(t, objs).Spec.Template.Spec
				for _, want := range []string{"--mayastor-backend=rest", "--mayastor-api-url=https://openebs-api-rest.openebs.svc:8080", "--mayastor-placement-lever=cordon",
					"--mayastor-api-token-file=/etc/couchestor/mayastor-token/token", "--mayastor-api-ca-file=/etc/couchestor/mayastor-ca/ca.crt"} {
					if !containsArg(spec.Containers[0].Args, want) {
						t.Errorf("args %v lack %s", spec.Containers[0].Args, want)
					}
				}
				secrets := map[string]string{}
				for _, v := range spec.Volumes {
					if v.Secret != nil {
						secrets[v.Name] = v.Secret.SecretName
					}
				}
				mounts := map[string]string{}
				for _, m := range spec.Containers[0].VolumeMounts {
					mounts[m.Name] = m.MountPath
				}
				if secrets["mayastor-token"] != "mayastor-token" || secrets["mayastor-ca"] != "mayastor-ca" ||
					mounts["mayastor-token"] != "/etc/couchestor/mayastor-token" || mounts["mayastor-ca"] != "/etc/couchestor/mayastor-ca" {
					t.Errorf("secret volumes %v, mounts %v", secrets, mounts)
				}
			}},
		{name: "install/mayastor-crd", chart: installChart, values: map[string]any{"mayastor": map[string]any{"backend": "crd"}},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				args := deployment(t, objs).Spec.Template.Spec.Containers[0].Args
				if !containsArg(args, "--mayastor-backend=crd") {
					t.Errorf("args %v lack --mayastor-backend=crd", args)
				}
				for _, a := range args {
					if strings.HasPrefix(a, "--mayastor-api-") {
						t.Errorf("crd backend with REST flag %s", a)
					}
				}
			}},
		{name: "install/csi", chart: installChart, values: csiValues(nil), check: func(t *testing.T, objs []*unstructured.Unstructured) {
			k := kinds(objs)
			if k["CSIDriver"] != 1 || k["StorageClass"] != 1 || k["DaemonSet"] != 1 || k["Deployment"] != 2 || k["Namespace"] != 1 {
				t.Errorf("kinds %v", k)
			}
			checkChartRBACIsGenerated(t, objs)
		}},
		{name: "install/defaults-without-csi", chart: installChart, values: map[string]any{}, check: func(t *testing.T, objs []*unstructured.Unstructured) {
			if k := kinds(objs); k["CSIDriver"] != 0 || k["DaemonSet"] != 0 || k["StorageClass"] != 0 {
				t.Errorf("csi.enabled defaults to false, yet kinds %v", k)
			}
		}},
		{name: "install/minimal", chart: installChart,
			values: map[string]any{"replicaCount": 1, "webhook": map[string]any{"enabled": false}, "metrics": map[string]any{"enabled": false},
				"networkPolicy": map[string]any{"enabled": false}, "crds": map[string]any{"install": false}, "leaderElection": map[string]any{"enabled": false}},
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				k := kinds(objs)
				if k["CustomResourceDefinition"] != 0 || k["PodDisruptionBudget"] != 0 || k["MutatingWebhookConfiguration"] != 0 || k["NetworkPolicy"] != 0 {
					t.Errorf("kinds %v", k)
				}
			}},
		{name: "dataplane/mayastor+monitoring", chart: dataPlaneChart, apis: monitoringAPIs,
			values: dataPlaneValues(t, dataplanev1alpha1.DataPlaneSpec{ShardServers: two, Port: ptr.To[int32](8000)}),
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				k := kinds(objs)
				if k["StatefulSet"] != 2 || k["StorageClass"] != 2 || k["ServiceMonitor"] != 1 || k["PrometheusRule"] != 1 || k["ConfigMap"] != 1 || k["Service"] != 1 {
					t.Errorf("kinds %v", k)
				}
				checkShardServerPrivileges(t, objs, false)
			}},
		{name: "dataplane/hostpath-no-monitoring", chart: dataPlaneChart,
			values: dataPlaneValues(t, dataplanev1alpha1.DataPlaneSpec{ShardServers: two,
				Storage:    dataplanev1alpha1.ShardStorage{Type: dataplanev1alpha1.StorageHostPath},
				Monitoring: dataplanev1alpha1.Monitoring{GrafanaDashboard: ptr.To(false)}}),
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				k := kinds(objs)
				if k["StatefulSet"] != 2 || k["StorageClass"] != 0 || k["ServiceMonitor"] != 0 || k["PrometheusRule"] != 0 || k["ConfigMap"] != 0 {
					t.Errorf("kinds %v", k)
				}
				checkShardServerPrivileges(t, objs, true)
			}},
		{name: "dataplane/monitoring-api-but-toggled-off", chart: dataPlaneChart, apis: monitoringAPIs,
			values: dataPlaneValues(t, dataplanev1alpha1.DataPlaneSpec{ShardServers: two,
				Monitoring: dataplanev1alpha1.Monitoring{ServiceMonitor: ptr.To(false), PrometheusRule: ptr.To(false)}}),
			check: func(t *testing.T, objs []*unstructured.Unstructured) {
				if k := kinds(objs); k["ServiceMonitor"] != 0 || k["PrometheusRule"] != 0 {
					t.Errorf("kinds %v", k)
				}
			}},
	}
}

// checkShardServerPrivileges: the shard server runs as 65532 with no
// capability; on HostPath storage (the kubelet makes the directory root's
// 0755, and fsGroup does not apply to hostPath) one init container hands it
// over as root with CAP_CHOWN only; on MayastorVolume storage there is none.
func checkShardServerPrivileges(t *testing.T, objs []*unstructured.Unstructured, hostPath bool) {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() != "StatefulSet" {
			continue
		}
		sts := &appsv1.StatefulSet{}
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, sts); err != nil {
			t.Fatal(err)
		}
		ps := sts.Spec.Template.Spec
		if ps.SecurityContext == nil || !*ps.SecurityContext.RunAsNonRoot || *ps.SecurityContext.RunAsUser != 65532 {
			t.Errorf("%s: pod securityContext %+v", sts.Name, ps.SecurityContext)
		}
		for _, c := range ps.Containers {
			if sc := c.SecurityContext; sc == nil || len(sc.Capabilities.Add) != 0 || *sc.AllowPrivilegeEscalation || !*sc.ReadOnlyRootFilesystem {
				t.Errorf("%s: container %s securityContext %+v", sts.Name, c.Name, sc)
			}
		}
		if !hostPath {
			if len(ps.InitContainers) != 0 {
				t.Errorf("%s: init containers %v on MayastorVolume storage", sts.Name, ps.InitContainers)
			}
			continue
		}
		if len(ps.InitContainers) != 1 {
			t.Fatalf("%s: want the data-dir-owner init container, have %d", sts.Name, len(ps.InitContainers))
		}
		ic := ps.InitContainers[0]
		sc := ic.SecurityContext
		if ic.Args[0] != "shard-server-init" || sc == nil || *sc.RunAsUser != 0 || *sc.AllowPrivilegeEscalation || !*sc.ReadOnlyRootFilesystem ||
			len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" || len(sc.Capabilities.Add) != 1 || sc.Capabilities.Add[0] != "CHOWN" {
			t.Errorf("%s: init container %v securityContext %+v", sts.Name, ic.Args, sc)
		}
	}
}

// deployment is the operator's Deployment (the CSI controller, with
// csi.enabled, is another).
func deployment(t *testing.T, objs []*unstructured.Unstructured) *appsv1.Deployment {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == "Deployment" && o.GetName() == "couchestor-controller-manager" {
			d := &appsv1.Deployment{}
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, d); err != nil {
				t.Fatal(err)
			}
			return d
		}
	}
	t.Fatal("no Deployment rendered")
	return nil
}

func TestChartsRenderValuesMatrixAcceptedByAPIServer(t *testing.T) {
	charts := map[string]*chart.Chart{installChart: loadChart(t, installChart), dataPlaneChart: loadChart(t, dataPlaneChart)}
	rendered := map[string][]*unstructured.Unstructured{}
	for _, c := range renderMatrix(t) {
		t.Run(c.name, func(t *testing.T) {
			m, err := render(charts[c.chart], "couchestor-system", c.values, c.apis...)
			if err != nil {
				t.Fatalf("helm template: %v", err)
			}
			objs := decodeObjects(t, []byte(m))
			c.check(t, objs)
			rendered[c.name] = objs
		})
	}
	testenv.RequireAssets(t)
	// The install chart brings its own CRDs: an API server without them.
	env := testenv.Start(t, func(e *envtest.Environment) {
		e.CRDDirectoryPaths = []string{filepath.Join("testdata", "monitoring-crds"), filepath.Join("testdata", "certmanager-crds")}
	})
	for _, c := range renderMatrix(t) {
		for _, err := range dryRunApply(t, env.Client, rendered[c.name]) {
			t.Errorf("%s: API server rejects %v", c.name, err)
		}
	}
}

func TestChartsRejectBadValues(t *testing.T) {
	charts := map[string]*chart.Chart{installChart: loadChart(t, installChart), dataPlaneChart: loadChart(t, dataPlaneChart)}
	okServers := []any{map[string]any{"node": "n1", "diskPool": "p1"}}
	cases := []struct {
		chart  string
		values map[string]any
		want   string // part of the error: the field
	}{
		{installChart, map[string]any{"replicaCount": 0}, "replicaCount"},
		{installChart, map[string]any{"webhook": map[string]any{"certMode": "letsencrypt"}}, "certMode"},
		{installChart, map[string]any{"image": map[string]any{"pullPolicy": "Sometimes"}}, "pullPolicy"},
		{installChart, map[string]any{"resources": map[string]any{"limits": map[string]any{"memory": 512}}}, "memory"},
		{installChart, map[string]any{"replicas": 3}, "replicas"},
		{installChart, map[string]any{"mayastor": map[string]any{"backend": "moac"}}, "backend"},
		{installChart, map[string]any{"mayastor": map[string]any{"placementLever": "drain"}}, "placementLever"},
		{installChart, map[string]any{"mayastor": map[string]any{"apiUrl": "mayastor-api-rest:8081"}}, "apiUrl"},
		{installChart, map[string]any{"extraArgs": []any{"leader-elect=false"}}, "extraArgs"},
		{installChart, csiValues(map[string]any{"node": map[string]any{"attach": "loop"}}), "attach"},
		{installChart, csiValues(map[string]any{"storageClass": map[string]any{"fsType": "btrfs"}}), "fsType"},
		{installChart, csiValues(map[string]any{"kubeletDir": "var/lib/kubelet"}), "kubeletDir"},
		{installChart, csiValues(map[string]any{"sidecars": map[string]any{"provisioner": map[string]any{"image": ""}}}), "image"},
		{installChart, csiValues(map[string]any{"controller": map[string]any{"replicas": 0}}), "replicas"},
		{dataPlaneChart, map[string]any{"shardServers": []any{map[string]any{"node": "Bad_Node", "diskPool": "p"}}}, "node"},
		{dataPlaneChart, map[string]any{"shardServers": okServers, "port": 80}, "port"},
		{dataPlaneChart, map[string]any{"shardServers": okServers, "storage": map[string]any{"type": "NFS"}}, "type"},
		{dataPlaneChart, map[string]any{"shardServers": okServers, "monitoring": map[string]any{"scrapeInterval": "often"}}, "scrapeInterval"},
	}
	for _, c := range cases {
		_, err := render(charts[c.chart], "couchestor-system", c.values)
		if err == nil {
			t.Errorf("%s with %v: rendered, want a schema error", c.chart, c.values)
			continue
		}
		if !strings.Contains(err.Error(), "values don't meet the specifications of the schema") || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s with %v: error %q does not name %s", c.chart, c.values, err, c.want)
		}
	}
}

// checkChartRBACIsGenerated: the chart's manager ClusterRole and Role carry
// exactly the rules controller-gen generated from the markers.
func checkChartRBACIsGenerated(t *testing.T, objs []*unstructured.Unstructured) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(testenv.Root(), "config", "rbac", "role.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{}
	for _, o := range decodeObjects(t, raw) {
		want[o.GetKind()] = o.Object["rules"]
	}
	got := map[string]any{}
	for _, o := range objs {
		if (o.GetKind() == "ClusterRole" || o.GetKind() == "Role") && o.GetName() == "couchestor-manager" {
			got[o.GetKind()] = o.Object["rules"]
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("chart manager rules differ from config/rbac/role.yaml (run make bundle):\n got %v\nwant %v", got, want)
	}
}

// checkNetworkPolicyAdmitsWebhook: the API server (any source) reaches the
// webhook port; the metrics port is restricted.
func checkNetworkPolicyAdmitsWebhook(t *testing.T, objs []*unstructured.Unstructured) {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() != "NetworkPolicy" {
			continue
		}
		rules, _, _ := unstructuredSlice(o.Object, "spec", "ingress")
		webhookOpen, metricsRestricted := false, false
		for _, r := range rules {
			ports := r["ports"].([]any)
			port := fmt.Sprint(ports[0].(map[string]any)["port"])
			_, hasFrom := r["from"]
			switch port {
			case "9443":
				webhookOpen = !hasFrom
			case "8443":
				metricsRestricted = hasFrom
			}
		}
		if !webhookOpen || !metricsRestricted {
			t.Errorf("NetworkPolicy ingress %v: webhook open %v, metrics restricted %v", rules, webhookOpen, metricsRestricted)
		}
		return
	}
	t.Error("no NetworkPolicy rendered")
}

// TestChartDefaultImageIsTheReleaseImage: with default values the operator
// chart runs the image `make image` builds and the release publishes
// (hack/bundlegen/release.yaml, v<appVersion>), the same one a DataPlane's
// shard servers default to. It rendered ":0.1.0" before, a tag nobody
// publishes: found installing the chart into tests/cluster's cluster, whose only
// operator image is the one make image builds.
func TestChartDefaultImageIsTheReleaseImage(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(testenv.Root(), "hack", "bundlegen", "release.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^image:\s*(\S+)\s*$`).FindSubmatch(raw)
	if m == nil {
		t.Fatal("hack/bundlegen/release.yaml: no image line")
	}
	manifest, err := render(loadChart(t, "couchestor"), "couchestor-system", nil)
	if err != nil {
		t.Fatal(err)
	}
	d := deployment(t, decodeObjects(t, []byte(manifest)))
	if got := d.Spec.Template.Spec.Containers[0].Image; got != string(m[1]) {
		t.Errorf("default image %q, want the release image %q", got, m[1])
	}
}
