package webhooks

import (
	"context"
	"fmt"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
)

// identityChanges are the updates of one stripe the identity tests try, each
// applied to a copy of the stored stripe (volume "v", stripeId 3, policy
// "p", LBAs [384, 512), labelled with its volume).
var identityChanges = []struct {
	name   string
	change func(*storagev1.ECStripe)
}{
	{"nothing", func(*storagev1.ECStripe) {}},
	{"generation and checksum", func(s *storagev1.ECStripe) { s.Spec.Generation++; s.Spec.Checksum = "abc" }},
	{"a shard moves", func(s *storagev1.ECStripe) { s.Spec.ShardLocations[0].PoolName = "pool-9" }},
	{"volumeRef", func(s *storagev1.ECStripe) { s.Spec.VolumeRef = "other" }},
	{"stripeId", func(s *storagev1.ECStripe) { s.Spec.StripeID = 4 }},
	{"policyRef", func(s *storagev1.ECStripe) { s.Spec.PolicyRef = "q" }},
	{"startLba", func(s *storagev1.ECStripe) { s.Spec.LbaRange.StartLba = 256 }},
	{"endLba shrinks", func(s *storagev1.ECStripe) { s.Spec.LbaRange.EndLba = 500 }},
	{"endLba grows", func(s *storagev1.ECStripe) { s.Spec.LbaRange.EndLba = 520 }},
	{"range moves", func(s *storagev1.ECStripe) { s.Spec.LbaRange = storagev1.LbaRange{StartLba: 0, EndLba: 128} }},
	{"volumeRef and stripeId", func(s *storagev1.ECStripe) { s.Spec.VolumeRef, s.Spec.StripeID = "other", 0 }},
	{"another label", func(s *storagev1.ECStripe) { s.Labels["team"] = "a" }},
	{"volume label removed", func(s *storagev1.ECStripe) { delete(s.Labels, storagev1.ECStripeVolumeLabel) }},
	{"volume label changed", func(s *storagev1.ECStripe) { s.Labels[storagev1.ECStripeVolumeLabel] = "other" }},
}

func identityStripe(name string) *storagev1.ECStripe {
	s := ecs(name, "v", "p", 3, 384, 512, 2, 1)
	storagev1.DefaultECStripe(s)
	s.Labels = map[string]string{storagev1.ECStripeVolumeLabel: "v"}
	return s
}

// TestECStripeIdentityCELAgreesWithGo sends every identity change to an API
// server WITHOUT the webhooks (only the CRD's CEL transition rules judge)
// and to storagev1.ValidateECStripeUpdate, and requires the same verdict on
// every spec change. The volume label is the webhook's alone (CEL cannot see
// metadata.labels): the API server accepts those changes, the Go rule
// refuses them (TestECStripeIdentityIsImmutable shows the webhook does).
func TestECStripeIdentityCELAgreesWithGo(t *testing.T) {
	_, cfg := startAPIServer(t, false)
	c, _ := newClient(t, cfg)
	ctx := context.Background()
	stored := identityStripe("ecs-identity")
	if err := c.Create(ctx, stored); err != nil {
		t.Fatal(err)
	}
	for _, tc := range identityChanges {
		upd := stored.DeepCopy()
		tc.change(upd)
		goErrs := storagev1.ValidateECStripeUpdate(stored, upd)
		labelOnly := len(goErrs) > 0 && strings.HasPrefix(goErrs[0].Field, "metadata.labels")
		err := c.Update(ctx, upd, client.DryRunAll)
		switch {
		case labelOnly && err != nil:
			t.Errorf("%s: the API server refused a label change CEL cannot see: %v", tc.name, err)
		case !labelOnly && (err != nil) != (len(goErrs) > 0):
			t.Errorf("%s: API server (CEL) refused=%v (%v), Go refused=%v (%v)", tc.name, err != nil, err, len(goErrs) > 0, goErrs)
		case err != nil:
			// Both refuse: CEL's message names the same field as Go's.
			if f := goErrs[0].Field; !strings.Contains(err.Error(), f) {
				t.Errorf("%s: the API server's refusal does not name %s: %v", tc.name, f, err)
			}
		}
	}
}

// TestECStripeIdentityIsImmutable: through the API server and the webhooks,
// an ECStripe's volumeRef, stripeId, policyRef, lbaRange.startLba and volume
// label cannot change (the refusal names the field and the old value), a
// shrinking endLba is refused, and the changes a writer makes (generation,
// checksum, shard locations, a grown endLba) still pass.
func TestECStripeIdentityIsImmutable(t *testing.T) {
	env, cfg := startAPIServer(t, true)
	wio := env.WebhookInstallOptions
	startManager(t, cfg, ctrl.Options{WebhookServer: webhook.NewServer(webhook.Options{
		Host: wio.LocalServingHost, Port: wio.LocalServingPort, CertDir: wio.LocalServingCertDir})},
		Options{CertMode: CertModeOLM, CertDir: wio.LocalServingCertDir})
	c, _ := newClient(t, cfg)
	ctx := context.Background()
	wantAccepted(t, c.Create(ctx, ecp("p", storagev1.ErasureCodingPolicySpec{DataShards: ptr.To[int32](2), ParityShards: ptr.To[int32](1), StripeSizeBytes: ptr.To[int64](128 << 10)})))
	wantAccepted(t, c.Create(ctx, ecp("q", storagev1.ErasureCodingPolicySpec{DataShards: ptr.To[int32](2), ParityShards: ptr.To[int32](1), StripeSizeBytes: ptr.To[int64](128 << 10)})))
	waitFor(t, func() bool { return c.Create(ctx, identityStripe("ecs-identity"), client.DryRunAll) == nil })
	wantAccepted(t, c.Create(ctx, identityStripe("ecs-identity")))
	// Spec changes are refused by the CRD's CEL rules before the webhook
	// is called (TestECStripeIdentityCELAgreesWithGo holds the webhook's Go
	// rule to them); the label is refused by the webhook.
	want := map[string]string{
		"volumeRef":              `spec.volumeRef: Invalid value: "other": spec.volumeRef is immutable`,
		"stripeId":               "spec.stripeId: Invalid value: 4: spec.stripeId is immutable",
		"policyRef":              `spec.policyRef: Invalid value: "q": spec.policyRef is immutable`,
		"startLba":               "spec.lbaRange.startLba: Invalid value: spec.lbaRange.startLba is immutable",
		"endLba shrinks":         "spec.lbaRange.endLba: Invalid value: spec.lbaRange.endLba may only grow",
		"range moves":            "spec.lbaRange.startLba: Invalid value: spec.lbaRange.startLba is immutable",
		"volumeRef and stripeId": `spec.volumeRef: Invalid value: "other": spec.volumeRef is immutable`,
		"volume label removed":   `metadata.labels[storage.billyronks.io/volume]: Required value: is immutable (was "v")`,
		"volume label changed":   `metadata.labels[storage.billyronks.io/volume]: Invalid value: "other": is immutable (was "v")`,
	}
	for _, tc := range identityChanges {
		t.Run(tc.name, func(t *testing.T) {
			var cur storagev1.ECStripe
			wantAccepted(t, c.Get(ctx, types.NamespacedName{Name: "ecs-identity"}, &cur))
			tc.change(&cur)
			err := c.Update(ctx, &cur, client.DryRunAll)
			if msg, refused := want[tc.name]; refused {
				wantRefused(t, err, msg)
			} else {
				wantAccepted(t, err)
			}
		})
	}
	t.Run("a JSON merge patch of volumeRef, as kubectl patch sends", func(t *testing.T) {
		cur := &storagev1.ECStripe{ObjectMeta: metav1.ObjectMeta{Name: "ecs-identity"}}
		wantRefused(t, c.Patch(ctx, cur, client.RawPatch(types.MergePatchType, []byte(`{"spec":{"volumeRef":"missing"}}`))),
			`spec.volumeRef: Invalid value: "missing": spec.volumeRef is immutable`)
		wantRefused(t, c.Patch(ctx, cur, client.RawPatch(types.MergePatchType, []byte(fmt.Sprintf(`{"metadata":{"labels":{%q:null}}}`, storagev1.ECStripeVolumeLabel)))),
			"metadata.labels[storage.billyronks.io/volume]: Required value: is immutable")
	})
	t.Run("a stripe without the label may gain its volume's value only", func(t *testing.T) {
		s := identityStripe("ecs-unlabelled")
		s.Spec.StripeID, s.Spec.LbaRange = 9, storagev1.LbaRange{StartLba: 9 * 256, EndLba: 10 * 256}
		s.Labels = nil
		wantAccepted(t, c.Create(ctx, s))
		var cur storagev1.ECStripe
		wantAccepted(t, c.Get(ctx, types.NamespacedName{Name: s.Name}, &cur))
		cur.Labels = map[string]string{storagev1.ECStripeVolumeLabel: "w"}
		wantRefused(t, c.Update(ctx, cur.DeepCopy(), client.DryRunAll),
			`metadata.labels[storage.billyronks.io/volume]: Invalid value: "w": must be "v", the label value of spec.volumeRef v, when added`)
		cur.Labels[storagev1.ECStripeVolumeLabel] = "v"
		wantAccepted(t, c.Update(ctx, &cur))
	})
}
