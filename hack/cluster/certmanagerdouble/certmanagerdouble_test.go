package certmanagerdouble

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	"github.com/billyronks/couchestor/tests/testenv"
)

// The double issues a selfSigned Issuer's Certificate into its Secret for
// its DNS names, marks it Ready, injects the CA into an annotated webhook
// configuration (and leaves an unannotated one alone), and reports a
// non-selfSigned Issuer as unsupported instead of issuing.
func TestIssuesAndInjects(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "crds.yaml"), []byte(CRDs), 0o600); err != nil {
		t.Fatal(err)
	}
	env := testenv.Start(t, func(e *envtest.Environment) { e.CRDDirectoryPaths = append(e.CRDDirectoryPaths, dir) })
	c := env.Client
	ctx := context.Background()
	apply := func(y string) {
		t.Helper()
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal([]byte(y), &u.Object); err != nil {
			t.Fatal(err)
		}
		if err := c.Create(ctx, u); err != nil {
			t.Fatal(err)
		}
	}
	apply("{apiVersion: cert-manager.io/v1, kind: Issuer, metadata: {name: self, namespace: default}, spec: {selfSigned: {}}}")
	apply("{apiVersion: cert-manager.io/v1, kind: Issuer, metadata: {name: ca, namespace: default}, spec: {ca: {secretName: x}}}")
	apply("{apiVersion: cert-manager.io/v1, kind: Certificate, metadata: {name: serving, namespace: default}, spec: {dnsNames: [svc.default.svc, svc.default.svc.cluster.local], issuerRef: {kind: Issuer, name: self}, secretName: serving-tls}}")
	apply("{apiVersion: cert-manager.io/v1, kind: Certificate, metadata: {name: other, namespace: default}, spec: {dnsNames: [x.default.svc], issuerRef: {name: ca}, secretName: other-tls}}")
	hook := func(name string, annotated bool) *admissionregistrationv1.ValidatingWebhookConfiguration {
		w := &admissionregistrationv1.ValidatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: name},
			Webhooks: []admissionregistrationv1.ValidatingWebhook{{Name: "v.example.io", SideEffects: ptr.To(admissionregistrationv1.SideEffectClassNone),
				AdmissionReviewVersions: []string{"v1"}, ClientConfig: admissionregistrationv1.WebhookClientConfig{
					Service: &admissionregistrationv1.ServiceReference{Namespace: "default", Name: "svc", Path: ptr.To("/v")}},
				// Nothing matches: the API server never calls it.
				Rules: []admissionregistrationv1.RuleWithOperations{{Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
					Rule: admissionregistrationv1.Rule{APIGroups: []string{"example.io"}, APIVersions: []string{"v1"}, Resources: []string{"nothing"}}}}}}}
		if annotated {
			w.Annotations = map[string]string{InjectAnnotation: "default/serving"}
		}
		if err := c.Create(ctx, w); err != nil {
			t.Fatal(err)
		}
		return w
	}
	// A leftover Secret of the same name that the double did not issue
	// (the operator's self-signed one) is replaced.
	if err := c.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "serving-tls"},
		Data: map[string][]byte{"tls.crt": []byte("left over")}}); err != nil {
		t.Fatal(err)
	}
	hook("injected", true)
	hook("plain", false)

	d, err := New(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	var sec corev1.Secret
	if err := c.Get(ctx, client.ObjectKey{Namespace: "default", Name: "serving-tls"}, &sec); err != nil {
		t.Fatalf("the Certificate's Secret: %v", err)
	}
	if sec.Type != corev1.SecretTypeTLS {
		t.Errorf("Secret type %q, want %q", sec.Type, corev1.SecretTypeTLS)
	}
	blk, _ := pem.Decode(sec.Data["tls.crt"])
	if blk == nil {
		t.Fatal("tls.crt is not PEM")
	}
	crt, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(sec.Data["ca.crt"]) {
		t.Fatal("ca.crt is not PEM")
	}
	for _, n := range []string{"svc.default.svc", "svc.default.svc.cluster.local"} {
		if _, err := crt.Verify(x509.VerifyOptions{DNSName: n, Roots: roots}); err != nil {
			t.Errorf("certificate for %s: %v", n, err)
		}
	}
	ready := func(name string) string {
		u := &unstructured.Unstructured{}
		u.SetAPIVersion("cert-manager.io/v1")
		u.SetKind("Certificate")
		if err := c.Get(ctx, client.ObjectKey{Namespace: "default", Name: name}, u); err != nil {
			t.Fatal(err)
		}
		cs, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		if len(cs) != 1 {
			return ""
		}
		m := cs[0].(map[string]any)
		return m["status"].(string) + "/" + m["reason"].(string) + "/" + m["message"].(string)
	}
	if got := ready("serving"); !strings.HasPrefix(got, "True/Issued") {
		t.Errorf("Certificate serving condition %q", got)
	}
	if got := ready("other"); !strings.HasPrefix(got, "False/UnsupportedIssuer") || !strings.Contains(got, "not selfSigned") {
		t.Errorf("Certificate other condition %q", got)
	}
	if err := c.Get(ctx, client.ObjectKey{Namespace: "default", Name: "other-tls"}, &corev1.Secret{}); err == nil {
		t.Error("a Certificate of an unsupported Issuer was issued")
	}
	var w admissionregistrationv1.ValidatingWebhookConfiguration
	if err := c.Get(ctx, client.ObjectKey{Name: "injected"}, &w); err != nil {
		t.Fatal(err)
	}
	if string(w.Webhooks[0].ClientConfig.CABundle) != string(sec.Data["ca.crt"]) {
		t.Error("the annotated webhook configuration did not get the Certificate's CA")
	}
	if err := c.Get(ctx, client.ObjectKey{Name: "plain"}, &w); err != nil {
		t.Fatal(err)
	}
	if len(w.Webhooks[0].ClientConfig.CABundle) != 0 {
		t.Error("an unannotated webhook configuration got a caBundle")
	}
	// A second pass keeps the issued certificate (no re-issue).
	if err := d.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	var again corev1.Secret
	if err := c.Get(ctx, client.ObjectKey{Namespace: "default", Name: "serving-tls"}, &again); err != nil {
		t.Fatal(err)
	}
	if string(again.Data["tls.crt"]) != string(sec.Data["tls.crt"]) {
		t.Error("the double re-issued a certificate that still covers its names")
	}
}
