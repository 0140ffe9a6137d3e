package helmhybrid

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"testing/fstest"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"

	dataplanev1alpha1 "github.com/billyronks/couchestor/apis/dataplane/v1alpha1"
)

func repoRoot() string {
	_, f, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(f), "..", "..")
}

func TestLoadWatchesFromTheRepository(t *testing.T) {
	ws, err := LoadWatches(os.DirFS(repoRoot()))
	if err != nil {
		t.Fatal(err)
	}
	if len(ws) != 1 || ws[0].GroupVersionKind != dataPlaneGVK || ws[0].Chart == nil || ws[0].Chart.Name() != "couchestor-dataplane" {
		t.Fatalf("watches %+v", ws)
	}
	if ws[0].Chart.Schema == nil {
		t.Error("the chart's values.schema.json was not loaded")
	}
	for _, w := range ws {
		if _, ok := Translators[w.GroupVersionKind]; !ok {
			t.Errorf("%s has no translator", w.GroupVersionKind)
		}
	}
}

func TestLoadWatchesRejects(t *testing.T) {
	chart := fstest.MapFS{
		"c/Chart.yaml":        {Data: []byte("apiVersion: v2\nname: c\nversion: 0.1.0\n")},
		"c/templates/cm.yaml": {Data: []byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")},
	}
	with := func(watches string) fstest.MapFS {
		fs := fstest.MapFS{WatchesFile: {Data: []byte(watches)}}
		for k, v := range chart {
			fs[k] = v
		}
		return fs
	}
	cases := map[string]struct {
		fs   fstest.MapFS
		want string
	}{
		"no file":       {chart, "read watches.yaml"},
		"empty":         {with("[]"), "no watches"},
		"unknown field": {with("- {group: g, version: v1, kind: K, chart: c, colour: red}"), "colour"},
		"no kind":       {with("- {group: g, version: v1, chart: c}"), "version and kind must not be empty"},
		"duplicate":     {with("- {group: g, version: v1, kind: K, chart: c}\n- {group: g, version: v1, kind: K, chart: c}"), "duplicate kind"},
		"overrides":     {with("- {group: g, version: v1, kind: K, chart: c, overrideValues: {a: b}}"), "overrideValues are not supported"},
		"missing chart": {with("- {group: g, version: v1, kind: K, chart: nope}"), "nope"},
	}
	for name, c := range cases {
		_, err := LoadWatches(c.fs)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", name, err, c.want)
		}
	}
	if ws, err := LoadWatches(with("- {group: g, version: v1, kind: K, chart: c}")); err != nil || !*ws[0].WatchDependentResources {
		t.Errorf("valid watches: %v %+v", err, ws)
	}
}

func TestTranslateDataPlane(t *testing.T) {
	size := resource.MustParse("1Ti")
	dp := &dataplanev1alpha1.DataPlane{
		Spec: dataplanev1alpha1.DataPlaneSpec{
			Image:        "img:1",
			ShardServers: []dataplanev1alpha1.ShardServer{{Node: "n1", DiskPool: "p1"}},
			Port:         ptr.To[int32](9000),
			Storage:      dataplanev1alpha1.ShardStorage{Size: &size},
			Resources:    corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("1Gi")}},
			Monitoring:   dataplanev1alpha1.Monitoring{PrometheusRule: ptr.To(false)},
		},
	}
	dp.APIVersion, dp.Kind, dp.Name, dp.UID = "storage.billyronks.io/v1alpha1", "DataPlane", "x", "uid-1"
	obj, err := k8sruntime.DefaultUnstructuredConverter.ToUnstructured(dp)
	if err != nil {
		t.Fatal(err)
	}
	v, err := TranslateDataPlane(context.Background(), &unstructured.Unstructured{Object: obj})
	if err != nil {
		t.Fatal(err)
	}
	if v["image"] != "img:1" || v["port"] != int64(9000) || v["storage"].(map[string]any)["size"] != "1Ti" {
		t.Errorf("values %v", v)
	}
	if v["monitoring"].(map[string]any)["prometheusRule"] != false {
		t.Errorf("monitoring %v", v["monitoring"])
	}
	// Spec resources replace the chart's default requests (null deletes them in Helm).
	res := v["resources"].(map[string]any)
	if r, ok := res["requests"]; !ok || r != nil {
		t.Errorf("resources.requests %v, want an explicit null", res["requests"])
	}
	if v["owner"].(map[string]any)["uid"] != "uid-1" {
		t.Errorf("owner %v", v["owner"])
	}
	if _, ok := v["tolerations"]; ok {
		t.Error("unset tolerations must not be emitted")
	}
	// Unknown spec fields are rejected, not passed through.
	unstructured.SetNestedField(obj, "x", "spec", "unknownField")
	if _, err := TranslateDataPlane(context.Background(), &unstructured.Unstructured{Object: obj}); err == nil {
		t.Error("unknown spec field accepted")
	}
}
