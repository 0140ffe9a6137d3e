package packaging

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	dataplanev1alpha1 "github.com/billyronks/couchestor/apis/dataplane/v1alpha1"
	"github.com/billyronks/couchestor/tests/testenv"
)

var operatorMetric = regexp.MustCompile(`couchestor_[a-z_]+`)

// TestDataPlaneMonitoringContent checks the PrometheusRule with promtool
// (syntax, types) and that every operator metric the rules and the dashboard
// query is registered by the operator's code, and the dashboard is JSON.
func TestDataPlaneMonitoringContent(t *testing.T) {
	m, err := render(loadChart(t, dataPlaneChart), "couchestor-system",
		dataPlaneValues(t, dataplanev1alpha1.DataPlaneSpec{ShardServers: []dataplanev1alpha1.ShardServer{{Node: "n", DiskPool: "p"}}}), monitoringAPIs...)
	if err != nil {
		t.Fatal(err)
	}
	var rules, dashboard string
	for _, o := range decodeObjects(t, []byte(m)) {
		switch o.GetKind() {
		case "PrometheusRule":
			b, err := yaml.Marshal(o.Object["spec"])
			if err != nil {
				t.Fatal(err)
			}
			rules = string(b)
		case "ConfigMap":
			data, _ := o.Object["data"].(map[string]any)
			dashboard, _ = data["couchestor-dataplane.json"].(string)
		}
	}
	if rules == "" || dashboard == "" {
		t.Fatal("PrometheusRule or dashboard not rendered")
	}
	var dash map[string]any
	if err := json.Unmarshal([]byte(dashboard), &dash); err != nil {
		t.Errorf("dashboard is not JSON: %v", err)
	}
	registered := registeredMetrics(t)
	for _, name := range operatorMetric.FindAllString(rules+dashboard, -1) {
		if !registered[name] {
			t.Errorf("monitoring queries %s, which the operator does not register", name)
		}
	}

	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if p := os.Getenv("COUCHESTOR_PROMETHEUS"); p != "" {
			promtool = filepath.Join(filepath.Dir(p), "promtool")
		}
	}
	if _, err := os.Stat(promtool); promtool == "" || err != nil {
		t.Skip("promtool not found (apt-get install prometheus): rule syntax not checked")
	}
	f := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(f, []byte(rules), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(promtool, "check", "rules", f).CombinedOutput()
	if err != nil {
		t.Errorf("promtool check rules: %v\n%s", err, out)
	}
}

// registeredMetrics are the couchestor_ metric names in the operator's
// non-test Go sources.
func registeredMetrics(t *testing.T) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	for _, dir := range []string{"controllers", "pkg", "internal", "webhooks"} {
		_ = filepath.WalkDir(filepath.Join(testenv.Root(), dir), func(p string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
				return nil
			}
			b, err := os.ReadFile(p)
			if err == nil {
				for _, n := range regexp.MustCompile(`"(couchestor_[a-z_]+)"`).FindAllStringSubmatch(string(b), -1) {
					names[n[1]] = true
				}
			}
			return nil
		})
	}
	return names
}
