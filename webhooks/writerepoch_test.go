package webhooks

import (
	"context"
	"testing"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/fence"
	"github.com/billyronks/couchestor/pkg/registry"
)

// TestECStripeWriterEpochIsFenced: through a real API server, an ECStripe
// write that stamps a writer epoch below the one on its volume's writer
// Lease is refused; the current epoch, writes that keep the stored epoch
// (rebuild) and writes without one pass; a malformed epoch is refused naming
// the annotation.
func TestECStripeWriterEpochIsFenced(t *testing.T) {
	env, cfg := startAPIServer(t, true)
	wio := env.WebhookInstallOptions
	startManager(t, cfg, ctrl.Options{WebhookServer: webhook.NewServer(webhook.Options{
		Host: wio.LocalServingHost, Port: wio.LocalServingPort, CertDir: wio.LocalServingCertDir})},
		Options{CertMode: CertModeOLM, CertDir: wio.LocalServingCertDir})
	c, _ := newClient(t, cfg)
	ctx := context.Background()
	wantAccepted(t, c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: registry.DefaultNamespace}}))
	lease := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: registry.DefaultNamespace, Name: fence.LeaseName("vol-f")}}
	fence.SetEpoch(lease, 2)
	wantAccepted(t, c.Create(ctx, lease))
	wantAccepted(t, c.Create(ctx, ecp("ec-f", storagev1.ErasureCodingPolicySpec{}))) // 4+2, 1 MiB = 2048 LBAs

	stamped := func(s *storagev1.ECStripe, epoch uint64) *storagev1.ECStripe {
		fence.SetEpoch(s, epoch)
		return s
	}
	waitFor(t, func() bool { // the webhook's stripe index syncs first
		return c.Create(ctx, stamped(ecs("vol-f-0", "vol-f", "ec-f", 0, 0, 2048, 4, 2), 2), client.DryRunAll) == nil
	})
	wantRefused(t, c.Create(ctx, stamped(ecs("vol-f-0", "vol-f", "ec-f", 0, 0, 2048, 4, 2), 1)),
		`metadata.annotations[storage.billyronks.io/writer-epoch]: writer epoch 1 is below epoch 2 of ECVolume vol-f's writer Lease couchestor-system/ecvolume-vol-f`, "this writer is fenced")
	s0 := stamped(ecs("vol-f-0", "vol-f", "ec-f", 0, 0, 2048, 4, 2), 2)
	s0.Spec.Generation = 1
	wantAccepted(t, c.Create(ctx, s0))

	// A newer export takes the volume over (epoch 3).
	wantAccepted(t, c.Get(ctx, types.NamespacedName{Namespace: registry.DefaultNamespace, Name: lease.Name}, lease))
	fence.SetEpoch(lease, 3)
	wantAccepted(t, c.Update(ctx, lease))

	// A rebuild (new generation, the stored epoch kept) is not an export's write.
	wantAccepted(t, c.Get(ctx, types.NamespacedName{Name: "vol-f-0"}, s0))
	s0.Spec.Generation = 2
	wantAccepted(t, c.Update(ctx, s0))
	// The newer export stamps epoch 3; the old one (2) can no longer change it.
	wantAccepted(t, c.Get(ctx, types.NamespacedName{Name: "vol-f-0"}, s0))
	s0.Spec.Generation = 3
	wantAccepted(t, c.Update(ctx, stamped(s0, 3)))
	wantAccepted(t, c.Get(ctx, types.NamespacedName{Name: "vol-f-0"}, s0))
	s0.Spec.Generation = 4
	wantRefused(t, c.Update(ctx, stamped(s0, 2)), "writer epoch 2 is below epoch 3", `(held by "")`)

	wantRefused(t, c.Create(ctx, stamped(ecs("vol-f-1", "vol-f", "ec-f", 1, 2048, 4096, 4, 2), 0)),
		`metadata.annotations[storage.billyronks.io/writer-epoch]: Invalid value: "0": must be a positive integer`)
	wantAccepted(t, c.Create(ctx, ecs("vol-f-1", "vol-f", "ec-f", 1, 2048, 4096, 4, 2)))
	// A volume whose export never held a Lease is not fenced.
	wantAccepted(t, c.Create(ctx, stamped(ecs("vol-g-0", "vol-g", "ec-f", 0, 0, 2048, 4, 2), 1)))
}
