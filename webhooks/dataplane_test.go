package webhooks

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	dataplanev1alpha1 "github.com/billyronks/couchestor/apis/dataplane/v1alpha1"
)

// TestDataPlaneAdmission: through the real API server, a DataPlane asking
// for a namespace, image, host directory or toleration the operator does not
// allow is refused with a message naming the field, the value and the flag;
// one within the policy is admitted, and metadata-only updates of an object
// admitted before a policy change still pass.
func TestDataPlaneAdmission(t *testing.T) {
	env, cfg := startAPIServer(t, true)
	wio := env.WebhookInstallOptions
	policy := dataplanev1alpha1.DefaultPolicy("storage")
	policy.TolerationKeys = []string{"storage-node"}
	startManager(t, cfg, ctrl.Options{WebhookServer: webhook.NewServer(webhook.Options{
		Host: wio.LocalServingHost, Port: wio.LocalServingPort, CertDir: wio.LocalServingCertDir})},
		Options{CertMode: CertModeOLM, CertDir: wio.LocalServingCertDir, DataPlanePolicy: &policy})
	c, _ := newClient(t, cfg)
	ctx := context.Background()
	for _, ns := range []string{"storage", "elsewhere"} {
		wantAccepted(t, c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}))
	}
	dp := func(ns, name string, mut func(*dataplanev1alpha1.DataPlaneSpec)) *dataplanev1alpha1.DataPlane {
		d := &dataplanev1alpha1.DataPlane{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: dataplanev1alpha1.DataPlaneSpec{ShardServers: []dataplanev1alpha1.ShardServer{{Node: "n1", DiskPool: "p1"}}}}
		if mut != nil {
			mut(&d.Spec)
		}
		return d
	}
	wantRefused(t, c.Create(ctx, dp("elsewhere", "a", nil)), "metadata.namespace", `"elsewhere"`, "--dataplane-namespaces")
	wantRefused(t, c.Create(ctx, dp("storage", "b", func(s *dataplanev1alpha1.DataPlaneSpec) { s.Image = "evil.example/miner:1" })),
		"spec.image", `"evil.example/miner:1"`, "--dataplane-allowed-images")
	wantRefused(t, c.Create(ctx, dp("storage", "c", func(s *dataplanev1alpha1.DataPlaneSpec) {
		s.Storage = dataplanev1alpha1.ShardStorage{Type: dataplanev1alpha1.StorageHostPath, HostPath: "/etc"}
	})), "spec.storage.hostPath", `"/etc"`, "--dataplane-allowed-host-path-prefixes")
	wantRefused(t, c.Create(ctx, dp("storage", "d", func(s *dataplanev1alpha1.DataPlaneSpec) {
		s.Tolerations = []corev1.Toleration{{Key: "node-role.kubernetes.io/control-plane", Operator: corev1.TolerationOpExists}}
	})), "spec.tolerations[0].key", "node-role.kubernetes.io/control-plane", "--dataplane-allowed-toleration-keys")
	wantRefused(t, c.Create(ctx, dp("storage", "e", func(s *dataplanev1alpha1.DataPlaneSpec) {
		s.Tolerations = []corev1.Toleration{{Operator: corev1.TolerationOpExists}}
	})), "spec.tolerations[0].key", "every taint")

	ok := dp("storage", "ok", func(s *dataplanev1alpha1.DataPlaneSpec) {
		s.Storage = dataplanev1alpha1.ShardStorage{Type: dataplanev1alpha1.StorageHostPath, HostPath: "/var/lib/couchestor/shards"}
		s.Tolerations = []corev1.Toleration{{Key: "storage-node", Operator: corev1.TolerationOpExists}}
	})
	wantAccepted(t, c.Create(ctx, ok))
	// Updates are judged too: an image change is refused...
	ok.Spec.Image = "evil.example/miner:1"
	wantRefused(t, c.Update(ctx, ok), "spec.image")
	// ...a metadata-only update is not.
	wantAccepted(t, c.Get(ctx, client.ObjectKeyFromObject(ok), ok))
	ok.Labels = map[string]string{"team": "storage"}
	wantAccepted(t, c.Update(ctx, ok))
}
