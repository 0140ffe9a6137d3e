package packaging

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/operator-framework/api/pkg/manifests"
	"github.com/operator-framework/api/pkg/validation"
	"github.com/operator-framework/api/pkg/validation/errors"
	"sigs.k8s.io/yaml"

	"github.com/billyronks/couchestor/hack/bundlegen/gen"
	"github.com/billyronks/couchestor/hack/bundlegen/scorecard"
	"github.com/billyronks/couchestor/tests/testenv"
)

// targetKubeVersion is the Kubernetes the deprecated-API check judges against
// (the version envtest runs).
const targetKubeVersion = "1.37"

func bundleDir() string { return filepath.Join(testenv.Root(), "bundle") }

// acceptedWarnings are validator warnings the README lists with the reason;
// any other warning fails the test.
// See hack/bundlegen/README.md for the reasons.
var acceptedWarnings = []string{
	// The rule grants events in "" and events.k8s.io (controller-runtime's
	// recorder writes events.k8s.io/v1); the validator flags any "events"
	// rule because RBAC rules carry no version.
	"Migrate the API(s) for events",
}

func TestBundleIsFresh(t *testing.T) {
	out := t.TempDir()
	if err := gen.Generate(testenv.Root(), out); err != nil {
		t.Fatalf("generate: %v", err)
	}
	for _, sub := range []string{"bundle", filepath.Join("helm-charts", "couchestor", "files"), filepath.Join("config", "csi")} {
		want := readTree(t, filepath.Join(out, sub))
		got := readTree(t, filepath.Join(testenv.Root(), sub))
		for name, w := range want {
			if g, ok := got[name]; !ok {
				t.Errorf("%s/%s is missing: run make bundle", sub, name)
			} else if !bytes.Equal(g, w) {
				t.Errorf("%s/%s is stale: run make bundle", sub, name)
			}
		}
		for name := range got {
			if _, ok := want[name]; !ok {
				t.Errorf("%s/%s is not generated any more: run make bundle", sub, name)
			}
		}
	}
	// Reproducible: a second run gives the same bytes.
	out2 := t.TempDir()
	if err := gen.Generate(testenv.Root(), out2); err != nil {
		t.Fatal(err)
	}
	a, b := readTree(t, filepath.Join(out, "bundle")), readTree(t, filepath.Join(out2, "bundle"))
	for name := range a {
		if !bytes.Equal(a[name], b[name]) {
			t.Errorf("bundle/%s differs between two runs", name)
		}
	}
}

func readTree(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		files[filepath.ToSlash(rel)], err = os.ReadFile(p)
		return err
	})
	if err != nil {
		t.Fatalf("read %s: %v", dir, err)
	}
	return files
}

func TestBundlePassesOperatorFrameworkValidators(t *testing.T) {
	b, err := manifests.GetBundleFromDir(bundleDir())
	if err != nil {
		t.Fatalf("load bundle: %v", err)
	}
	validators := validation.DefaultBundleValidators.WithValidators(
		validation.GoodPracticesValidator,
		validation.OperatorHubV2Validator,
		validation.AlphaDeprecatedAPIsValidator,
	)
	objs := append(b.ObjectsToValidate(), map[string]string{"k8s-version": targetKubeVersion})
	var warnings []string
	for _, res := range validators.Validate(objs...) {
		for _, e := range res.Errors {
			t.Errorf("%s: error: %v", res.Name, e)
		}
		for _, w := range res.Warnings {
			warnings = append(warnings, describe(res, w))
		}
	}
	sort.Strings(warnings)
	for _, w := range warnings {
		accepted := false
		for _, a := range acceptedWarnings {
			if strings.Contains(w, a) {
				accepted = true
			}
		}
		if !accepted {
			t.Errorf("unlisted validator warning: %s", w)
		}
	}

	// The CSV says what the issue requires.
	csv := b.CSV
	if csv.Name != "couchestor.v0.1.0" {
		t.Errorf("CSV name %q", csv.Name)
	}
	owned := map[string]bool{}
	for _, d := range csv.Spec.CustomResourceDefinitions.Owned {
		owned[d.Kind] = true
		if d.DisplayName == "" || d.Description == "" {
			t.Errorf("owned %s lacks displayName/description", d.Kind)
		}
	}
	for _, k := range []string{"StoragePolicy", "ErasureCodingPolicy", "ECStripe", "ECVolume", "DataPlane"} {
		if !owned[k] {
			t.Errorf("CSV does not own %s", k)
		}
	}
	var modes []string
	for _, m := range csv.Spec.InstallModes {
		if m.Supported {
			modes = append(modes, string(m.Type))
		}
	}
	if strings.Join(modes, ",") != "AllNamespaces" {
		t.Errorf("supported install modes %v, want AllNamespaces only", modes)
	}
	if len(csv.Spec.WebhookDefinitions) == 0 || len(csv.Spec.RelatedImages) == 0 || csv.Spec.MinKubeVersion == "" {
		t.Errorf("webhookdefinitions %d, relatedImages %d, minKubeVersion %q", len(csv.Spec.WebhookDefinitions), len(csv.Spec.RelatedImages), csv.Spec.MinKubeVersion)
	}
	hooks := countWebhooks(t)
	if len(csv.Spec.WebhookDefinitions) != hooks {
		t.Errorf("%d webhookdefinitions, config/webhook has %d webhooks", len(csv.Spec.WebhookDefinitions), hooks)
	}
	if a := csv.Annotations; a["capabilities"] == "" || a["categories"] == "" || a["createdAt"] == "" {
		t.Errorf("CSV annotations capabilities/categories/createdAt missing: %v", a)
	}
	dep := csv.Spec.InstallStrategy.StrategySpec.DeploymentSpecs
	if len(dep) != 1 || *dep[0].Spec.Replicas != 2 || !containsArg(dep[0].Spec.Template.Spec.Containers[0].Args, "--webhook-cert-mode=olm") {
		t.Errorf("install deployment %+v", dep)
	}
	if len(csv.Spec.InstallStrategy.StrategySpec.ClusterPermissions) != 1 || len(csv.Spec.InstallStrategy.StrategySpec.Permissions) != 1 {
		t.Errorf("permissions/clusterPermissions missing")
	}
}

func containsArg(args []string, a string) bool {
	for _, x := range args {
		if x == a {
			return true
		}
	}
	return false
}

func countWebhooks(t *testing.T) int {
	raw, err := os.ReadFile(filepath.Join(testenv.Root(), "config", "webhook", "manifests.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, o := range decodeObjects(t, raw) {
		hooks, _, _ := unstructuredSlice(o.Object, "webhooks")
		n += len(hooks)
	}
	return n
}

func describe(res errors.ManifestResult, e errors.Error) string {
	return res.Name + ": " + e.Error()
}

func TestScorecardChecksPass(t *testing.T) {
	for _, r := range scorecard.Run(bundleDir()) {
		if !r.Passed() {
			t.Errorf("%s fails: %v", r.Test, r.Errors)
		}
	}
	if got := len(scorecard.Run(bundleDir())); got != 6 {
		t.Errorf("%d scorecard tests, want 6", got)
	}
	// The shipped scorecard configuration lists the same six tests.
	raw, err := os.ReadFile(filepath.Join(bundleDir(), "tests", "scorecard", "config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range scorecard.Tests {
		if !bytes.Contains(raw, []byte("- "+name+"\n")) {
			t.Errorf("bundle/tests/scorecard/config.yaml does not run %s", name)
		}
	}
}

// brokenBundle copies bundle/ into a temp dir and lets break edit the CSV (as
// a map) and the other files.
func brokenBundle(t *testing.T, breakCSV func(csv map[string]any), breakFiles func(dir string)) string {
	t.Helper()
	dir := t.TempDir()
	for name, data := range readTree(t, bundleDir()) {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if breakCSV != nil {
		p := filepath.Join(dir, "manifests", "couchestor.clusterserviceversion.yaml")
		raw, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		var csv map[string]any
		if err := yaml.Unmarshal(raw, &csv); err != nil {
			t.Fatal(err)
		}
		breakCSV(csv)
		out, err := yaml.Marshal(csv)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, out, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if breakFiles != nil {
		breakFiles(dir)
	}
	return dir
}

func editExamples(t *testing.T, csv map[string]any, edit func(ex []map[string]any)) {
	t.Helper()
	ann := csv["metadata"].(map[string]any)["annotations"].(map[string]any)
	var ex []map[string]any
	if err := json.Unmarshal([]byte(ann["alm-examples"].(string)), &ex); err != nil {
		t.Fatal(err)
	}
	edit(ex)
	b, _ := json.Marshal(ex)
	ann["alm-examples"] = string(b)
}

func ownedList(csv map[string]any) []any {
	return csv["spec"].(map[string]any)["customresourcedefinitions"].(map[string]any)["owned"].([]any)
}

func TestScorecardChecksFailOnBrokenBundles(t *testing.T) {
	cases := []struct {
		test       string
		breakCSV   func(t *testing.T, csv map[string]any)
		breakFiles func(t *testing.T, dir string)
	}{
		{test: scorecard.BasicCheckSpec, breakCSV: func(t *testing.T, csv map[string]any) {
			editExamples(t, csv, func(ex []map[string]any) { delete(ex[0], "spec") })
		}},
		{test: scorecard.OLMBundleValidation, breakFiles: func(t *testing.T, dir string) {
			p := filepath.Join(dir, "bundle.Dockerfile")
			raw, _ := os.ReadFile(p)
			raw = bytes.Replace(raw, []byte("bundle.package.v1=couchestor"), []byte("bundle.package.v1=other"), 1)
			if err := os.WriteFile(p, raw, 0o644); err != nil {
				t.Fatal(err)
			}
		}},
		{test: scorecard.OLMBundleValidation, breakFiles: func(t *testing.T, dir string) {
			p := filepath.Join(dir, "metadata", "annotations.yaml")
			raw, _ := os.ReadFile(p)
			raw = bytes.Replace(raw, []byte("registry+v1"), []byte("plain+v0"), 1)
			if err := os.WriteFile(p, raw, 0o644); err != nil {
				t.Fatal(err)
			}
		}},
		{test: scorecard.OLMBundleValidation, breakCSV: func(t *testing.T, csv map[string]any) {
			// A CSV owning a CRD the bundle does not ship.
			o := ownedList(csv)
			extra := map[string]any{"name": "ghosts.storage.billyronks.io", "version": "v1", "kind": "Ghost"}
			csv["spec"].(map[string]any)["customresourcedefinitions"].(map[string]any)["owned"] = append(o, extra)
		}},
		{test: scorecard.OLMCRDsHaveValidation, breakCSV: func(t *testing.T, csv map[string]any) {
			editExamples(t, csv, func(ex []map[string]any) { ex[0]["spec"].(map[string]any)["notInTheSchema"] = 1 })
		}},
		{test: scorecard.OLMCRDsHaveResources, breakCSV: func(t *testing.T, csv map[string]any) {
			delete(ownedList(csv)[0].(map[string]any), "resources")
		}},
		{test: scorecard.OLMSpecDescriptors, breakCSV: func(t *testing.T, csv map[string]any) {
			for _, o := range ownedList(csv) {
				d := o.(map[string]any)
				if d["kind"] == "StoragePolicy" {
					sds := d["specDescriptors"].([]any)
					d["specDescriptors"] = sds[1:]
				}
			}
		}},
		{test: scorecard.OLMStatusDescriptors, breakCSV: func(t *testing.T, csv map[string]any) {
			delete(ownedList(csv)[1].(map[string]any), "statusDescriptors")
		}},
	}
	for _, c := range cases {
		t.Run(c.test, func(t *testing.T) {
			var bc func(map[string]any)
			if c.breakCSV != nil {
				bc = func(m map[string]any) { c.breakCSV(t, m) }
			}
			var bf func(string)
			if c.breakFiles != nil {
				bf = func(d string) { c.breakFiles(t, d) }
			}
			dir := brokenBundle(t, bc, bf)
			r := scorecard.RunOne(dir, c.test)
			if r.Passed() {
				t.Fatalf("%s passes on a broken bundle", c.test)
			}
			t.Logf("%s fails as it should: %v", c.test, r.Errors)
			// An unbroken copy passes, so the failure is the edit's.
			if r := scorecard.RunOne(brokenBundle(t, nil, nil), c.test); !r.Passed() {
				t.Fatalf("%s fails on an intact copy: %v", c.test, r.Errors)
			}
		})
	}
}
