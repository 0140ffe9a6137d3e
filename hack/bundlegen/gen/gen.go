// Package gen generates CoucheStor's OLM bundle and the install chart's
// generated files. Inputs: `kustomize build config/manifests` (CRDs, roles,
// the manager Deployment, webhook configurations, samples), `kustomize build
// config/scorecard`, config/crd/bases, config/rbac/role.yaml,
// config/webhook/manifests.yaml and hack/bundlegen/release.yaml. Output is a
// pure function of those files: no clock, no environment, sorted keys — so a
// stale bundle is a diff.
package gen

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// Release is hack/bundlegen/release.yaml.
type Release struct {
	Version        string `json:"version"`
	CreatedAt      string `json:"createdAt"`
	Image          string `json:"image"`
	Channel        string `json:"channel"`
	MinKubeVersion string `json:"minKubeVersion"`
}

// PackageName is the OLM package.
const PackageName = "couchestor"

// Generate reads inputs below root and writes bundle/,
// helm-charts/couchestor/files/ and config/csi/ (the chart's CSI templates
// as kustomize resources) below out (which may equal root).
func Generate(root, out string) error {
	rel, err := LoadRelease(root)
	if err != nil {
		return err
	}
	objs, err := KustomizeBuild(filepath.Join(root, "config", "manifests"))
	if err != nil {
		return err
	}
	files, err := Bundle(rel, objs)
	if err != nil {
		return err
	}
	sc, err := KustomizeBuild(filepath.Join(root, "config", "scorecard"))
	if err != nil {
		return err
	}
	if len(sc) != 1 {
		return fmt.Errorf("config/scorecard: want one Configuration, got %d objects", len(sc))
	}
	if files["tests/scorecard/config.yaml"], err = marshal(sc[0].Object); err != nil {
		return err
	}
	if err := writeTree(filepath.Join(out, "bundle"), files); err != nil {
		return err
	}
	chartFiles, err := ChartFiles(root)
	if err != nil {
		return err
	}
	if err := writeTree(filepath.Join(out, "helm-charts", "couchestor", "files"), chartFiles); err != nil {
		return err
	}
	csiFiles, err := CSIFiles(root)
	if err != nil {
		return err
	}
	return writeTree(filepath.Join(out, "config", "csi"), csiFiles)
}

// LoadRelease reads hack/bundlegen/release.yaml.
func LoadRelease(root string) (Release, error) {
	var r Release
	raw, err := os.ReadFile(filepath.Join(root, "hack", "bundlegen", "release.yaml"))
	if err != nil {
		return r, fmt.Errorf("read release: %w", err)
	}
	if err := yaml.UnmarshalStrict(raw, &r); err != nil {
		return r, fmt.Errorf("parse hack/bundlegen/release.yaml: %w", err)
	}
	for k, v := range map[string]string{"version": r.Version, "createdAt": r.CreatedAt, "image": r.Image, "channel": r.Channel, "minKubeVersion": r.MinKubeVersion} {
		if v == "" {
			return r, fmt.Errorf("hack/bundlegen/release.yaml: %s must be set", k)
		}
	}
	return r, nil
}

// KustomizeBuild is `kustomize build dir`, as objects.
func KustomizeBuild(dir string) ([]*unstructured.Unstructured, error) {
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, fmt.Errorf("kustomize build %s: %w", dir, err)
	}
	y, err := m.AsYaml()
	if err != nil {
		return nil, fmt.Errorf("kustomize build %s: %w", dir, err)
	}
	return DecodeYAML(y)
}

// DecodeYAML splits a multi-document YAML stream into objects.
func DecodeYAML(y []byte) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(y), 4096)
	var out []*unstructured.Unstructured
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); err != nil {
			if err.Error() == "EOF" {
				return out, nil
			}
			return nil, fmt.Errorf("decode YAML: %w", err)
		}
		if len(u.Object) > 0 {
			out = append(out, u)
		}
	}
}

// ChartFiles are the install chart's generated files: the CRDs with
// helm.sh/resource-policy: keep, the generated role and webhook manifests.
func ChartFiles(root string) (map[string][]byte, error) {
	files := map[string][]byte{}
	crds, err := filepath.Glob(filepath.Join(root, "config", "crd", "bases", "*.yaml"))
	if err != nil {
		return nil, err
	}
	for _, p := range crds {
		raw, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		objs, err := DecodeYAML(raw)
		if err != nil || len(objs) != 1 {
			return nil, fmt.Errorf("%s: want one CRD (err %v)", p, err)
		}
		crd := objs[0]
		ann := crd.GetAnnotations()
		if ann == nil {
			ann = map[string]string{}
		}
		// Deleting a CRD deletes every object of it: helm uninstall must not.
		ann["helm.sh/resource-policy"] = "keep"
		crd.SetAnnotations(ann)
		if files["crds/"+filepath.Base(p)], err = marshal(crd.Object); err != nil {
			return nil, err
		}
	}
	for dst, src := range map[string]string{
		"rbac/role.yaml":         filepath.Join(root, "config", "rbac", "role.yaml"),
		"webhook/manifests.yaml": filepath.Join(root, "config", "webhook", "manifests.yaml"),
	} {
		raw, err := os.ReadFile(src)
		if err != nil {
			return nil, err
		}
		files[dst] = raw
	}
	return files, nil
}

func marshal(v any) ([]byte, error) {
	// Through JSON first so typed objects drop their omitempty zero values
	// and map keys come out sorted.
	j, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return yaml.JSONToYAML(j)
}

// writeTree replaces dir with exactly files (relative paths).
func writeTree(dir string, files map[string][]byte) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		p := filepath.Join(dir, filepath.FromSlash(n))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, files[n], 0o644); err != nil {
			return fmt.Errorf("write %s: %w", p, err)
		}
	}
	return nil
}

// humanize turns a camelCase or PascalCase name into words:
// "highWatermarkIOPS" → "High Watermark IOPS", "ECStripe" → "EC Stripe".
func humanize(s string) string {
	var words []string
	r := []rune(s)
	start := 0
	for i := 1; i < len(r); i++ {
		lower := func(c rune) bool { return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' }
		upper := func(c rune) bool { return c >= 'A' && c <= 'Z' }
		if (lower(r[i-1]) && upper(r[i])) || (upper(r[i-1]) && upper(r[i]) && i+1 < len(r) && lower(r[i+1])) {
			words = append(words, string(r[start:i]))
			start = i
		}
	}
	words = append(words, string(r[start:]))
	for i, w := range words {
		words[i] = strings.ToUpper(w[:1]) + w[1:]
	}
	return strings.Join(words, " ")
}

// firstSentence is a description's first sentence (OLM shows it in lists).
func firstSentence(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if i := strings.Index(s, ". "); i >= 0 {
		return s[:i+1]
	}
	return s
}
