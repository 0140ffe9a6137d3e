package packaging

import (
	"fmt"
	goruntime "runtime"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }

func unstructuredSlice(obj map[string]any, path ...string) ([]map[string]any, bool, error) {
	raw, ok, err := unstructured.NestedSlice(obj, path...)
	if !ok || err != nil {
		return nil, ok, err
	}
	out := make([]map[string]any, 0, len(raw))
	for _, r := range raw {
		if m, ok := r.(map[string]any); ok {
			out = append(out, m)
		}
	}
	return out, true, nil
}

func unstructuredStrings(obj map[string]any, path ...string) ([]string, bool, error) {
	return unstructured.NestedStringSlice(obj, path...)
}

func hostArch() string { return goruntime.GOARCH }
