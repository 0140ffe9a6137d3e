package packaging

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// withCertManagerCRDs installs the minimal cert-manager CRDs of testdata.
func withCertManagerCRDs(e *envtest.Environment) {
	e.CRDDirectoryPaths = append(e.CRDDirectoryPaths, filepath.Join("testdata", "certmanager-crds"))
}

// decodeObjects splits a multi-document YAML stream into objects.
func decodeObjects(t *testing.T, manifest []byte) []*unstructured.Unstructured {
	t.Helper()
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(manifest), 4096)
	var out []*unstructured.Unstructured
	for {
		u := &unstructured.Unstructured{}
		err := dec.Decode(&u.Object)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("decode manifest: %v", err)
		}
		if len(u.Object) == 0 {
			continue
		}
		out = append(out, u)
	}
}

// dryRunApply asks the API server to accept every object (server-side
// apply, dry run) and returns one error per rejected object. Namespaces the
// objects name are created for real first, since a dry run cannot create
// objects inside a namespace that does not exist.
func dryRunApply(t *testing.T, c client.Client, objs []*unstructured.Unstructured) []error {
	t.Helper()
	ctx := context.Background()
	for _, o := range objs {
		ns := o.GetNamespace()
		if o.GetKind() == "Namespace" {
			ns = o.GetName()
		}
		if ns == "" {
			continue
		}
		err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("create namespace %s: %v", ns, err)
		}
	}
	var errs []error
	for _, o := range objs {
		o = o.DeepCopy()
		//nolint:staticcheck // Patch with client.Apply is the unstructured way to dry-run server-side apply.
		err := c.Patch(ctx, o, client.Apply, client.FieldOwner("packaging-test"), client.ForceOwnership, client.DryRunAll)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s %s/%s: %w", o.GetKind(), o.GetNamespace(), o.GetName(), err))
		}
	}
	return errs
}

func kinds(objs []*unstructured.Unstructured) map[string]int {
	m := map[string]int{}
	for _, o := range objs {
		m[o.GetKind()]++
	}
	return m
}
