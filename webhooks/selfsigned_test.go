package webhooks

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
)

// TestSelfSignedEndToEnd: a manager in self-signed mode, outside the cluster
// (LocalURL), installs the webhook configurations, rotates its own CA and
// serving certificate, injects the caBundle, and only then serves; the real
// kube-apiserver calls it over TLS and trusts it (a rule only the webhook
// judges is refused with the webhook's message).
func TestSelfSignedEndToEnd(t *testing.T) {
	_, cfg := startAPIServer(t, false)
	c, _ := newClient(t, cfg)
	ctx := context.Background()
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: DefaultNamespace}}); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	certDir := t.TempDir()
	startManager(t, cfg, ctrl.Options{WebhookServer: webhook.NewServer(webhook.Options{Host: "127.0.0.1", Port: port, CertDir: certDir})},
		Options{CertMode: CertModeSelfSigned, CertDir: certDir, LocalURL: fmt.Sprintf("https://localhost:%d", port)})

	var vwc admissionregistrationv1.ValidatingWebhookConfiguration
	if err := c.Get(ctx, types.NamespacedName{Name: DefaultValidatingConfigurationName}, &vwc); err != nil {
		t.Fatal(err)
	}
	for _, w := range vwc.Webhooks {
		if !strings.Contains(string(w.ClientConfig.CABundle), "BEGIN CERTIFICATE") {
			t.Fatalf("webhook %s has no injected caBundle", w.Name)
		}
	}
	var secret corev1.Secret
	if err := c.Get(ctx, types.NamespacedName{Namespace: DefaultNamespace, Name: DefaultSecretName}, &secret); err != nil || len(secret.Data["tls.crt"]) == 0 {
		t.Fatalf("certificate Secret: %v (keys %d)", err, len(secret.Data))
	}
	err = c.Create(ctx, ecp("via-tls", storagev1.ErasureCodingPolicySpec{ScrubInterval: "-7d"}))
	wantRefused(t, err, `spec.scrubInterval: Invalid value: "-7d"`, "is negative")
	wantAccepted(t, c.Create(ctx, ecp("via-tls", storagev1.ErasureCodingPolicySpec{})))
	var got storagev1.ErasureCodingPolicy
	wantAccepted(t, c.Get(ctx, types.NamespacedName{Name: "via-tls"}, &got))
	if got.Spec.MinHealthyShards == nil || *got.Spec.MinHealthyShards != 4 {
		t.Fatalf("the mutating webhook did not default minHealthyShards: %+v", got.Spec)
	}
}
