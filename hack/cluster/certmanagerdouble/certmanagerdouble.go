// Package certmanagerdouble is a TEST DOUBLE of cert-manager for the
// real-cluster suite (tests/cluster): just enough of cert-manager's
// controller and CA injector for the operator's cert-manager mode
// (helm-charts/couchestor webhook.certMode=cert-manager, config/default).
//
// Why a double and not cert-manager: cert-manager's binaries cannot be built
// from the Go module proxy — their main packages live in nested modules
// (github.com/cert-manager/cert-manager/cmd/controller, cmd/cainjector, ...)
// that exist only in the repository, wired with replace directives; the
// proxy serves the root module (v1.21.2, no cmd/) and answers 404 for
// .../cmd/controller/@v/list. Its images are on quay.io, which the cluster
// cannot pull (no packet leaves the machine).
//
// What it does, polling (it is a test double, not a controller):
//   - a Certificate whose issuerRef names an Issuer with spec.selfSigned in
//     its namespace gets its spec.secretName Secret (kubernetes.io/tls:
//     tls.crt, tls.key, ca.crt = the self-signed certificate itself, as
//     cert-manager's SelfSigned issuer does) for spec.dnsNames, and status
//     condition Ready=True; other issuers are reported Ready=False;
//   - a Validating/MutatingWebhookConfiguration annotated
//     cert-manager.io/inject-ca-from: <namespace>/<certificate> gets that
//     Certificate's Secret's ca.crt as every webhook's caBundle.
//
// Nothing else: no renewal, no ACME, no CA or cluster issuers.
package certmanagerdouble

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	_ "embed"
	"encoding/pem"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// CRDs are the Certificate and Issuer CRDs the double serves.
//
//go:embed crds.yaml
var CRDs string

// InjectAnnotation is cert-manager's CA injector annotation.
const InjectAnnotation = "cert-manager.io/inject-ca-from"

// certificateNameAnnotation marks the Secrets the double issued, as
// cert-manager does.
const certificateNameAnnotation = "cert-manager.io/certificate-name"

var (
	certificates = schema.GroupVersionResource{Group: "cert-manager.io", Version: "v1", Resource: "certificates"}
	issuers      = schema.GroupVersionResource{Group: "cert-manager.io", Version: "v1", Resource: "issuers"}
)

// Double is the running stand-in.
type Double struct {
	kube kubernetes.Interface
	dyn  dynamic.Interface
	// Logf hears what it issued and injected (may be nil).
	Logf func(format string, args ...any)
}

// New connects to the cluster of cfg.
func New(cfg *rest.Config) (*Double, error) {
	k, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	d, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &Double{kube: k, dyn: d}, nil
}

func (d *Double) logf(format string, args ...any) {
	if d.Logf != nil {
		d.Logf(format, args...)
	}
}

// Run syncs every interval until ctx ends; sync errors are logged and retried.
func (d *Double) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if err := d.Sync(ctx); err != nil && ctx.Err() == nil {
			d.logf("cert-manager double: %v", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Sync issues missing Certificates and injects CA bundles once.
func (d *Double) Sync(ctx context.Context) error {
	certs, err := d.dyn.Resource(certificates).Namespace("").List(ctx, metav1.ListOptions{})
	if err != nil {
		if apierrors.IsNotFound(err) {
			return nil // the CRDs are not installed (yet)
		}
		return fmt.Errorf("list Certificates: %w", err)
	}
	for i := range certs.Items {
		if err := d.issue(ctx, &certs.Items[i]); err != nil {
			return err
		}
	}
	return d.inject(ctx)
}

func (d *Double) issue(ctx context.Context, c *unstructured.Unstructured) error {
	ns, name := c.GetNamespace(), c.GetName()
	secretName, _, _ := unstructured.NestedString(c.Object, "spec", "secretName")
	dnsNames, _, _ := unstructured.NestedStringSlice(c.Object, "spec", "dnsNames")
	issuerName, _, _ := unstructured.NestedString(c.Object, "spec", "issuerRef", "name")
	issuerKind, _, _ := unstructured.NestedString(c.Object, "spec", "issuerRef", "kind")
	if secretName == "" || len(dnsNames) == 0 {
		return d.setReady(ctx, c, false, "Invalid", "spec.secretName and spec.dnsNames are required")
	}
	if issuerKind != "" && issuerKind != "Issuer" {
		return d.setReady(ctx, c, false, "UnsupportedIssuer", fmt.Sprintf("the cert-manager test double serves kind Issuer only, not %q", issuerKind))
	}
	iss, err := d.dyn.Resource(issuers).Namespace(ns).Get(ctx, issuerName, metav1.GetOptions{})
	if err != nil {
		return d.setReady(ctx, c, false, "IssuerNotFound", fmt.Sprintf("Issuer %s/%s: %v", ns, issuerName, err))
	}
	if _, ok, _ := unstructured.NestedMap(iss.Object, "spec", "selfSigned"); !ok {
		return d.setReady(ctx, c, false, "UnsupportedIssuer", fmt.Sprintf("Issuer %s/%s is not selfSigned; the cert-manager test double issues self-signed certificates only", ns, issuerName))
	}
	sec, err := d.kube.CoreV1().Secrets(ns).Get(ctx, secretName, metav1.GetOptions{})
	missing := apierrors.IsNotFound(err)
	// Only a Secret it issued for this Certificate counts (as cert-manager
	// checks its own annotations): a leftover one, e.g. the operator's
	// self-signed certificate of an earlier install, is replaced.
	if err == nil && sec.Annotations[certificateNameAnnotation] == name && covers(sec.Data[corev1.TLSCertKey], dnsNames) {
		return d.setReady(ctx, c, true, "Issued", "Certificate is up to date and has not expired")
	}
	if err != nil && !missing {
		return fmt.Errorf("get Secret %s/%s: %w", ns, secretName, err)
	}
	crt, key, err := selfSigned(dnsNames)
	if err != nil {
		return err
	}
	data := map[string][]byte{corev1.TLSCertKey: crt, corev1.TLSPrivateKeyKey: key, "ca.crt": crt}
	if !missing {
		// Replaced whole: a Secret's type cannot change.
		if err := d.kube.CoreV1().Secrets(ns).Delete(ctx, secretName, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("replace Secret %s/%s: %w", ns, secretName, err)
		}
	}
	sec = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: secretName,
		Annotations: map[string]string{certificateNameAnnotation: name}},
		Type: corev1.SecretTypeTLS, Data: data}
	if _, err := d.kube.CoreV1().Secrets(ns).Create(ctx, sec, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create Secret %s/%s: %w", ns, secretName, err)
	}
	d.logf("cert-manager double: issued Certificate %s/%s into Secret %s for %v", ns, name, secretName, dnsNames)
	return d.setReady(ctx, c, true, "Issued", "Certificate is up to date and has not expired")
}

func (d *Double) setReady(ctx context.Context, c *unstructured.Unstructured, ready bool, reason, msg string) error {
	st := "False"
	if ready {
		st = "True"
	}
	conds, _, _ := unstructured.NestedSlice(c.Object, "status", "conditions")
	if len(conds) == 1 {
		if m, ok := conds[0].(map[string]any); ok && m["status"] == st && m["reason"] == reason {
			return nil
		}
	}
	_ = unstructured.SetNestedSlice(c.Object, []any{map[string]any{
		"type": "Ready", "status": st, "reason": reason, "message": msg,
		"lastTransitionTime": time.Now().UTC().Format(time.RFC3339),
	}}, "status", "conditions")
	if _, err := d.dyn.Resource(certificates).Namespace(c.GetNamespace()).UpdateStatus(ctx, c, metav1.UpdateOptions{}); err != nil && !apierrors.IsConflict(err) {
		return fmt.Errorf("update status of Certificate %s/%s: %w", c.GetNamespace(), c.GetName(), err)
	}
	return nil
}

// covers reports whether PEM certificate crt is valid now for every name.
func covers(crt []byte, names []string) bool {
	b, _ := pem.Decode(crt)
	if b == nil {
		return false
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil || time.Now().After(c.NotAfter) {
		return false
	}
	for _, n := range names {
		if !slices.Contains(c.DNSNames, n) {
			return false
		}
	}
	return true
}

func selfSigned(dnsNames []string) (crt, key []byte, err error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: dnsNames[0]},
		DNSNames:     dnsNames,
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		// Self-signed: it is its own CA (ca.crt), as with cert-manager.
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		return nil, nil, err
	}
	kd, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd}), nil
}

// caFrom returns the ca.crt of the Secret of Certificate "ns/name".
func (d *Double) caFrom(ctx context.Context, ref string) ([]byte, error) {
	ns, name, ok := strings.Cut(ref, "/")
	if !ok {
		return nil, fmt.Errorf("annotation %s=%q: want <namespace>/<certificate>", InjectAnnotation, ref)
	}
	c, err := d.dyn.Resource(certificates).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	secretName, _, _ := unstructured.NestedString(c.Object, "spec", "secretName")
	sec, err := d.kube.CoreV1().Secrets(ns).Get(ctx, secretName, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	return sec.Data["ca.crt"], nil
}

func (d *Double) inject(ctx context.Context) error {
	vs, err := d.kube.AdmissionregistrationV1().ValidatingWebhookConfigurations().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list ValidatingWebhookConfigurations: %w", err)
	}
	for i := range vs.Items {
		w := &vs.Items[i]
		ref := w.Annotations[InjectAnnotation]
		if ref == "" {
			continue
		}
		ca, err := d.caFrom(ctx, ref)
		if err != nil || len(ca) == 0 {
			continue // not issued yet
		}
		changed := false
		for j := range w.Webhooks {
			if !bytes.Equal(w.Webhooks[j].ClientConfig.CABundle, ca) {
				w.Webhooks[j].ClientConfig.CABundle, changed = ca, true
			}
		}
		if changed {
			if _, err := d.kube.AdmissionregistrationV1().ValidatingWebhookConfigurations().Update(ctx, w, metav1.UpdateOptions{}); err != nil && !apierrors.IsConflict(err) {
				return fmt.Errorf("inject caBundle into ValidatingWebhookConfiguration %s: %w", w.Name, err)
			}
			d.logf("cert-manager double: injected the CA of %s into ValidatingWebhookConfiguration %s", ref, w.Name)
		}
	}
	ms, err := d.kube.AdmissionregistrationV1().MutatingWebhookConfigurations().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list MutatingWebhookConfigurations: %w", err)
	}
	for i := range ms.Items {
		w := &ms.Items[i]
		ref := w.Annotations[InjectAnnotation]
		if ref == "" {
			continue
		}
		ca, err := d.caFrom(ctx, ref)
		if err != nil || len(ca) == 0 {
			continue
		}
		changed := false
		for j := range w.Webhooks {
			if !bytes.Equal(w.Webhooks[j].ClientConfig.CABundle, ca) {
				w.Webhooks[j].ClientConfig.CABundle, changed = ca, true
			}
		}
		if changed {
			if _, err := d.kube.AdmissionregistrationV1().MutatingWebhookConfigurations().Update(ctx, w, metav1.UpdateOptions{}); err != nil && !apierrors.IsConflict(err) {
				return fmt.Errorf("inject caBundle into MutatingWebhookConfiguration %s: %w", w.Name, err)
			}
			d.logf("cert-manager double: injected the CA of %s into MutatingWebhookConfiguration %s", ref, w.Name)
		}
	}
	return nil
}
