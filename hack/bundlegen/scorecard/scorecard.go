// Package scorecard re-implements operator-sdk's six static scorecard tests
// (suites basic and olm) in Go over a bundle directory, because the
// operator-sdk CLI is not available to this project's CI. Each check returns
// the reasons it fails; none needs a cluster.
//
// The checks follow operator-sdk's internal/scorecard/tests: the CRs are the
// CSV's alm-examples, the CRDs the bundle's owned CRDs.
package scorecard

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/operator-framework/api/pkg/manifests"
	"github.com/operator-framework/api/pkg/operators/v1alpha1"
	"github.com/operator-framework/api/pkg/validation"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

// Test names, as in bundle/tests/scorecard/config.yaml.
const (
	BasicCheckSpec          = "basic-check-spec"
	OLMBundleValidation     = "olm-bundle-validation"
	OLMCRDsHaveValidation   = "olm-crds-have-validation"
	OLMCRDsHaveResources    = "olm-crds-have-resources"
	OLMSpecDescriptors      = "olm-spec-descriptors"
	OLMStatusDescriptors    = "olm-status-descriptors"
	maxCompressedBundleSize = 1 << 20
)

// Tests lists the six tests in a fixed order.
var Tests = []string{BasicCheckSpec, OLMBundleValidation, OLMCRDsHaveValidation, OLMCRDsHaveResources, OLMSpecDescriptors, OLMStatusDescriptors}

// Result of one test: passed when Errors is empty.
type Result struct {
	Test   string
	Errors []string
}

// Passed reports whether the test passed.
func (r Result) Passed() bool { return len(r.Errors) == 0 }

// Run runs every test over the bundle in dir.
func Run(dir string) []Result {
	out := make([]Result, 0, len(Tests))
	b, crs, err := load(dir)
	for _, t := range Tests {
		if err != nil {
			out = append(out, Result{Test: t, Errors: []string{err.Error()}})
			continue
		}
		out = append(out, run(t, dir, b, crs))
	}
	return out
}

// RunOne runs the named test.
func RunOne(dir, test string) Result {
	b, crs, err := load(dir)
	if err != nil {
		return Result{Test: test, Errors: []string{err.Error()}}
	}
	return run(test, dir, b, crs)
}

func load(dir string) (*manifests.Bundle, []unstructured.Unstructured, error) {
	b, err := manifests.GetBundleFromDir(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("load bundle %s: %w", dir, err)
	}
	if b.CSV == nil {
		return nil, nil, fmt.Errorf("bundle %s has no ClusterServiceVersion", dir)
	}
	var crs []unstructured.Unstructured
	if raw := b.CSV.GetAnnotations()["alm-examples"]; raw != "" {
		var objs []map[string]any
		if err := json.Unmarshal([]byte(raw), &objs); err != nil {
			return nil, nil, fmt.Errorf("CSV annotation alm-examples is not a JSON array of objects: %w", err)
		}
		for _, o := range objs {
			crs = append(crs, unstructured.Unstructured{Object: o})
		}
	}
	return b, crs, nil
}

func run(test, dir string, b *manifests.Bundle, crs []unstructured.Unstructured) Result {
	r := Result{Test: test}
	fail := func(format string, a ...any) { r.Errors = append(r.Errors, fmt.Sprintf(format, a...)) }
	switch test {
	case BasicCheckSpec:
		if len(crs) == 0 {
			fail("alm-examples is empty: no custom resource to check")
		}
		for _, cr := range crs {
			spec, ok := cr.Object["spec"].(map[string]any)
			if !ok || len(spec) == 0 {
				fail("%s %s: spec is missing or empty", cr.GetKind(), cr.GetName())
			}
		}
	case OLMBundleValidation:
		for _, res := range validation.DefaultBundleValidators.Validate(b.ObjectsToValidate()...) {
			for _, e := range res.Errors {
				fail("%s: %s", res.Name, e.Error())
			}
		}
		if b.CompressedSize > maxCompressedBundleSize {
			fail("bundle is %d bytes gzipped, more than %d", b.CompressedSize, maxCompressedBundleSize)
		}
		for _, e := range checkMetadata(dir) {
			fail("%s", e)
		}
	case OLMCRDsHaveValidation:
		for _, cr := range crs {
			crd := findCRD(b, cr)
			if crd == nil {
				fail("%s: no CRD in the bundle for %s", cr.GetKind(), cr.GetAPIVersion())
				continue
			}
			ver := crdVersion(crd, cr)
			if ver == nil || ver.Schema == nil || ver.Schema.OpenAPIV3Schema == nil {
				fail("CRD %s has no openAPIV3Schema for %s", crd.Name, cr.GetAPIVersion())
				continue
			}
			specSchema, ok := ver.Schema.OpenAPIV3Schema.Properties["spec"]
			if !ok || len(specSchema.Properties) == 0 {
				fail("CRD %s: spec has no properties to validate against", crd.Name)
				continue
			}
			spec, _ := cr.Object["spec"].(map[string]any)
			for _, k := range sortedKeys(spec) {
				if _, ok := specSchema.Properties[k]; !ok {
					fail("%s %s: spec.%s is not in CRD %s's schema", cr.GetKind(), cr.GetName(), k, crd.Name)
				}
			}
		}
	case OLMCRDsHaveResources:
		if len(b.CSV.Spec.CustomResourceDefinitions.Owned) == 0 {
			fail("the CSV owns no CRDs")
		}
		for _, d := range b.CSV.Spec.CustomResourceDefinitions.Owned {
			if len(d.Resources) == 0 {
				fail("owned CRD %s (%s) lists no resources", d.Name, d.Version)
			}
		}
	case OLMSpecDescriptors:
		for _, cr := range crs {
			d := ownedDescription(b.CSV, cr)
			if d == nil {
				fail("%s %s: not an owned CRD of the CSV", cr.GetKind(), cr.GetAPIVersion())
				continue
			}
			paths := map[string]bool{}
			for _, sd := range d.SpecDescriptors {
				paths[sd.Path] = true
			}
			spec, _ := cr.Object["spec"].(map[string]any)
			for _, k := range sortedKeys(spec) {
				if !paths[k] {
					fail("%s: spec.%s has no specDescriptor", cr.GetKind(), k)
				}
			}
		}
	case OLMStatusDescriptors:
		for _, cr := range crs {
			d := ownedDescription(b.CSV, cr)
			if d == nil {
				fail("%s %s: not an owned CRD of the CSV", cr.GetKind(), cr.GetAPIVersion())
				continue
			}
			if len(d.StatusDescriptors) == 0 {
				fail("%s: owned CRD %s has no statusDescriptors", cr.GetKind(), d.Name)
				continue
			}
			paths := map[string]bool{}
			for _, sd := range d.StatusDescriptors {
				paths[sd.Path] = true
			}
			status, _ := cr.Object["status"].(map[string]any)
			for _, k := range sortedKeys(status) {
				if !paths[k] {
					fail("%s: status.%s has no statusDescriptor", cr.GetKind(), k)
				}
			}
			// Every descriptor must name a real status field.
			if crd := findCRD(b, cr); crd != nil {
				if v := crdVersion(crd, cr); v != nil && v.Schema != nil && v.Schema.OpenAPIV3Schema != nil {
					st := v.Schema.OpenAPIV3Schema.Properties["status"]
					for _, sd := range d.StatusDescriptors {
						top := strings.SplitN(sd.Path, ".", 2)[0]
						if _, ok := st.Properties[top]; !ok {
							fail("%s: statusDescriptor %q names no field of the CRD's status", cr.GetKind(), sd.Path)
						}
					}
				}
			}
		}
	default:
		fail("unknown test %q", test)
	}
	return r
}

// checkMetadata checks metadata/annotations.yaml and, where present,
// bundle.Dockerfile's labels (which must repeat the annotations exactly).
func checkMetadata(dir string) []string {
	var errs []string
	raw, err := os.ReadFile(filepath.Join(dir, "metadata", "annotations.yaml"))
	if err != nil {
		return []string{fmt.Sprintf("metadata/annotations.yaml: %v", err)}
	}
	var ann struct {
		Annotations map[string]string `json:"annotations"`
	}
	if err := yaml.UnmarshalStrict(raw, &ann); err != nil {
		return []string{fmt.Sprintf("metadata/annotations.yaml: %v", err)}
	}
	want := map[string]string{
		"operators.operatorframework.io.bundle.mediatype.v1": "registry+v1",
		"operators.operatorframework.io.bundle.manifests.v1": "manifests/",
		"operators.operatorframework.io.bundle.metadata.v1":  "metadata/",
	}
	for _, k := range sortedKeys(want) {
		if ann.Annotations[k] != want[k] {
			errs = append(errs, fmt.Sprintf("metadata/annotations.yaml: %s is %q, want %q", k, ann.Annotations[k], want[k]))
		}
	}
	for _, k := range []string{"operators.operatorframework.io.bundle.package.v1", "operators.operatorframework.io.bundle.channels.v1"} {
		if ann.Annotations[k] == "" {
			errs = append(errs, fmt.Sprintf("metadata/annotations.yaml: %s must be set", k))
		}
	}
	if def := ann.Annotations["operators.operatorframework.io.bundle.channel.default.v1"]; def != "" {
		if !contains(strings.Split(ann.Annotations["operators.operatorframework.io.bundle.channels.v1"], ","), def) {
			errs = append(errs, fmt.Sprintf("metadata/annotations.yaml: default channel %q is not among the channels", def))
		}
	}
	df, err := os.ReadFile(filepath.Join(dir, "bundle.Dockerfile"))
	if os.IsNotExist(err) {
		return errs
	}
	if err != nil {
		return append(errs, fmt.Sprintf("bundle.Dockerfile: %v", err))
	}
	labels := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(df))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if !strings.HasPrefix(line, "LABEL ") {
			continue
		}
		k, v, ok := strings.Cut(strings.TrimPrefix(line, "LABEL "), "=")
		if !ok {
			errs = append(errs, fmt.Sprintf("bundle.Dockerfile: malformed label line %q", line))
			continue
		}
		labels[k] = v
	}
	for _, k := range sortedKeys(ann.Annotations) {
		if labels[k] != ann.Annotations[k] {
			errs = append(errs, fmt.Sprintf("bundle.Dockerfile: label %s is %q, metadata/annotations.yaml says %q", k, labels[k], ann.Annotations[k]))
		}
	}
	for _, k := range sortedKeys(labels) {
		if _, ok := ann.Annotations[k]; !ok && strings.HasPrefix(k, "operators.operatorframework.io.") {
			errs = append(errs, fmt.Sprintf("bundle.Dockerfile: label %s is not in metadata/annotations.yaml", k))
		}
	}
	return errs
}

func findCRD(b *manifests.Bundle, cr unstructured.Unstructured) *apiextensionsv1.CustomResourceDefinition {
	gvk := cr.GroupVersionKind()
	for _, c := range b.V1CRDs {
		if c.Spec.Group == gvk.Group && c.Spec.Names.Kind == gvk.Kind {
			return c
		}
	}
	return nil
}

func crdVersion(crd *apiextensionsv1.CustomResourceDefinition, cr unstructured.Unstructured) *apiextensionsv1.CustomResourceDefinitionVersion {
	for i := range crd.Spec.Versions {
		if crd.Spec.Versions[i].Name == cr.GroupVersionKind().Version {
			return &crd.Spec.Versions[i]
		}
	}
	return nil
}

func ownedDescription(csv *v1alpha1.ClusterServiceVersion, cr unstructured.Unstructured) *v1alpha1.CRDDescription {
	gvk := cr.GroupVersionKind()
	for i, d := range csv.Spec.CustomResourceDefinitions.Owned {
		if d.Kind == gvk.Kind && d.Version == gvk.Version && strings.HasSuffix(d.Name, "."+gvk.Group) {
			return &csv.Spec.CustomResourceDefinitions.Owned[i]
		}
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if strings.TrimSpace(x) == s {
			return true
		}
	}
	return false
}
