package webhooks

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
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

// TestSelfSignedOnlyTheLeaderRotates: a replica that is not the leader
// neither creates nor injects the certificate (the Secret stays empty and
// the replica unready while no leader exists); once a leader has done both,
// the follower copies the Secret's certificate into its cert dir and becomes
// ready, and the API server trusts it.
func TestSelfSignedOnlyTheLeaderRotates(t *testing.T) {
	_, cfg := startAPIServer(t, false)
	c, _ := newClient(t, cfg)
	ctx := context.Background()
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: DefaultNamespace}}); err != nil {
		t.Fatal(err)
	}
	// Someone else holds the leader Lease for a long time.
	const leaseName = "couchestor-webhook-test-leader"
	if err := c.Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: DefaultNamespace, Name: leaseName},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To("another-replica"), LeaseDurationSeconds: ptr.To(int32(3600)),
			AcquireTime: &metav1.MicroTime{Time: time.Now()}, RenewTime: &metav1.MicroTime{Time: time.Now()}}}); err != nil {
		t.Fatal(err)
	}
	freePort := func() int {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port
	}
	followerPort, followerDir := freePort(), t.TempDir()
	follower := startManagerAsync(t, cfg, ctrl.Options{
		LeaderElection: true, LeaderElectionID: leaseName, LeaderElectionNamespace: DefaultNamespace,
		WebhookServer: webhook.NewServer(webhook.Options{Host: "127.0.0.1", Port: followerPort, CertDir: followerDir})},
		Options{CertMode: CertModeSelfSigned, CertDir: followerDir, LocalURL: fmt.Sprintf("https://localhost:%d", followerPort), rotatorName: "follower-rotator"})

	// Without a leader nothing creates the certificate. (With every replica
	// rotating, as before, the Secret held one about a second after start.)
	key := types.NamespacedName{Namespace: DefaultNamespace, Name: DefaultSecretName}
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		var s corev1.Secret
		if err := c.Get(ctx, key, &s); err == nil && len(s.Data["tls.crt"]) > 0 {
			t.Fatal("a replica that is not the leader created the webhook certificate")
		}
		if follower.ready(httptest.NewRequest("GET", "/readyz", nil)) == nil {
			t.Fatal("a replica was ready before any certificate existed")
		}
	}

	// A leader (leader election off: it leads) creates and injects it.
	leaderPort, leaderDir := freePort(), t.TempDir()
	startManager(t, cfg, ctrl.Options{WebhookServer: webhook.NewServer(webhook.Options{Host: "127.0.0.1", Port: leaderPort, CertDir: leaderDir})},
		Options{CertMode: CertModeSelfSigned, CertDir: leaderDir, LocalURL: fmt.Sprintf("https://localhost:%d", leaderPort), rotatorName: "leader-rotator"})
	waitReady(t, follower.ready, follower.done)
	var s corev1.Secret
	if err := c.Get(ctx, key, &s); err != nil {
		t.Fatal(err)
	}
	onDisk, err := os.ReadFile(filepath.Join(followerDir, "tls.crt"))
	if err != nil || !bytes.Equal(onDisk, s.Data["tls.crt"]) {
		t.Fatalf("the follower's cert dir does not hold the Secret's certificate: %v", err)
	}
	// The follower serves with it: point the configurations at the follower
	// (as a Service would route to it) and be judged by it.
	if err := installLocalConfigurations(ctx, c, withDefaults(Options{}), fmt.Sprintf("https://localhost:%d", followerPort)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := c.Create(ctx, ecp("via-follower", storagev1.ErasureCodingPolicySpec{ScrubInterval: "-7d"}))
		if err != nil && strings.Contains(err.Error(), "is negative") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the follower's webhook did not judge the request: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func withDefaults(o Options) Options {
	o.applyDefaults()
	return o
}
