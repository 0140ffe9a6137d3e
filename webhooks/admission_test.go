package webhooks

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/registry"
)

var (
	hotSel  = &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "hot"}}
	coldSel = &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "cold"}}
)

func sp(name string, spec storagev1.StoragePolicySpec) *storagev1.StoragePolicy {
	return &storagev1.StoragePolicy{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: spec}
}

func ecp(name string, spec storagev1.ErasureCodingPolicySpec) *storagev1.ErasureCodingPolicy {
	return &storagev1.ErasureCodingPolicy{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: spec}
}

func ecs(name, vol, policy string, id, start, end int64, k, m int) *storagev1.ECStripe {
	s := &storagev1.ECStripe{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: storagev1.ECStripeSpec{
		VolumeRef: vol, StripeID: id, PolicyRef: policy, LbaRange: storagev1.LbaRange{StartLba: start, EndLba: end}}}
	for i := k + m - 1; i >= 0; i-- { // reverse order: the defaulter sorts
		s.Spec.ShardLocations = append(s.Spec.ShardLocations, storagev1.ShardLocation{
			ShardIndex: int32(i), IsDataShard: i < k, PoolName: fmt.Sprintf("pool-%d", i), NodeName: fmt.Sprintf("node-%d", i), SizeBytes: 262144})
	}
	return s
}

// TestAdmission sends every rule through a real API server that calls the
// webhooks (OLM mode: the certificate envtest generated is "mounted").
func TestAdmission(t *testing.T) {
	env, cfg := startAPIServer(t, true)
	wio := env.WebhookInstallOptions
	startManager(t, cfg, ctrl.Options{WebhookServer: webhook.NewServer(webhook.Options{
		Host: wio.LocalServingHost, Port: wio.LocalServingPort, CertDir: wio.LocalServingCertDir})},
		Options{CertMode: CertModeOLM, CertDir: wio.LocalServingCertDir})
	c, warns := newClient(t, cfg)
	ctx := context.Background()

	t.Run("StoragePolicy defaults are filled", func(t *testing.T) {
		wantAccepted(t, c.Create(ctx, sp("defaults", storagev1.StoragePolicySpec{StorageClassName: "sc-defaults", HotPoolSelector: hotSel, ColdPoolSelector: coldSel})))
		var got storagev1.StoragePolicy
		wantAccepted(t, c.Get(ctx, types.NamespacedName{Name: "defaults"}, &got))
		want := storagev1.StoragePolicySpec{StorageClassName: "sc-defaults", HotPoolSelector: hotSel, ColdPoolSelector: coldSel}
		storagev1.DefaultStoragePolicySpec(&want)
		if fmt.Sprint(got.Spec.HighWatermarkIOPS != nil && *got.Spec.HighWatermarkIOPS == 5000, *got.Spec.MaxConcurrentMigrations, got.Spec.SamplingWindow, *got.Spec.Enabled, *got.Spec.ECMinVolumeSizeBytes) !=
			fmt.Sprint(true, int32(2), "1h", true, int64(10737418240)) {
			t.Fatalf("read back %+v", got.Spec)
		}
		if w := warns.take(); w != "" {
			t.Fatalf("unexpected warnings %q", w)
		}
	})
	t.Run("watermarks ordered after defaulting", func(t *testing.T) {
		wantRefused(t, c.Create(ctx, sp("low-only", storagev1.StoragePolicySpec{StorageClassName: "sc-1", LowWatermarkIOPS: ptr.To[int64](3000), HotPoolSelector: hotSel, ColdPoolSelector: coldSel})),
			`StoragePolicy.storage.billyronks.io "low-only" is invalid`, "spec.warmWatermarkIOPS: Invalid value: 2000: must be greater than spec.lowWatermarkIOPS (3000)")
		wantRefused(t, c.Create(ctx, sp("neg", storagev1.StoragePolicySpec{StorageClassName: "sc-1", LowWatermarkIOPS: ptr.To[int64](-5), HotPoolSelector: hotSel, ColdPoolSelector: coldSel})),
			"spec.lowWatermarkIOPS: Invalid value: -5: must be greater than or equal to 0")
		wantAccepted(t, c.Create(ctx, sp("ordered", storagev1.StoragePolicySpec{StorageClassName: "sc-1", LowWatermarkIOPS: ptr.To[int64](0), HotPoolSelector: hotSel, ColdPoolSelector: coldSel})))
	})
	t.Run("warm within 10% of high is a warning", func(t *testing.T) {
		warns.take()
		wantAccepted(t, c.Create(ctx, sp("close", storagev1.StoragePolicySpec{StorageClassName: "sc-2", WarmWatermarkIOPS: ptr.To[int64](4600), HotPoolSelector: hotSel, ColdPoolSelector: coldSel})))
		if w := warns.take(); !strings.Contains(w, "spec.warmWatermarkIOPS (4600) is within 10% of spec.highWatermarkIOPS (5000)") {
			t.Fatalf("warnings %q", w)
		}
	})
	t.Run("durations", func(t *testing.T) {
		wantRefused(t, c.Create(ctx, sp("dur", storagev1.StoragePolicySpec{StorageClassName: "sc-3", CooldownPeriod: "0s", HotPoolSelector: hotSel, ColdPoolSelector: coldSel})),
			`spec.cooldownPeriod: Invalid value: "0s": must be a positive duration`, "is zero")
		wantRefused(t, c.Create(ctx, sp("dur", storagev1.StoragePolicySpec{StorageClassName: "sc-3", MigrationTimeout: "-30m", HotPoolSelector: hotSel, ColdPoolSelector: coldSel})),
			`spec.migrationTimeout: Invalid value: "-30m"`, "is negative")
		wantRefused(t, c.Create(ctx, sp("dur", storagev1.StoragePolicySpec{StorageClassName: "sc-3", SamplingWindow: "an hour", HotPoolSelector: hotSel, ColdPoolSelector: coldSel})),
			`spec.samplingWindow: Invalid value: "an hour"`)
		wantAccepted(t, c.Create(ctx, sp("dur", storagev1.StoragePolicySpec{StorageClassName: "sc-3", SamplingWindow: "1d12h", CooldownPeriod: "7d", HotPoolSelector: hotSel, ColdPoolSelector: coldSel})))
	})
	t.Run("maxConcurrentMigrations > 0", func(t *testing.T) {
		wantRefused(t, c.Create(ctx, sp("conc", storagev1.StoragePolicySpec{StorageClassName: "sc-4", MaxConcurrentMigrations: ptr.To[int32](0), HotPoolSelector: hotSel, ColdPoolSelector: coldSel})),
			"spec.maxConcurrentMigrations: Invalid value: 0: must be greater than 0")
	})
	t.Run("tier selectors", func(t *testing.T) {
		wantRefused(t, c.Create(ctx, sp("empty-sel", storagev1.StoragePolicySpec{StorageClassName: "sc-5", HotPoolSelector: &metav1.LabelSelector{}, ColdPoolSelector: coldSel})),
			`spec.hotPoolSelector: Invalid value: "{}": must not be empty`)
		warns.take()
		wantAccepted(t, c.Create(ctx, sp("one-tier", storagev1.StoragePolicySpec{StorageClassName: "sc-5", HotPoolSelector: hotSel})))
		if w := warns.take(); !strings.Contains(w, "only 1 of spec.hotPoolSelector") || !strings.Contains(w, "at least two tiers") {
			t.Fatalf("warnings %q", w)
		}
	})
	t.Run("overlapping StoragePolicies warn", func(t *testing.T) {
		a := sp("team-a", storagev1.StoragePolicySpec{StorageClassName: "shared", VolumeSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "a"}}, HotPoolSelector: hotSel, ColdPoolSelector: coldSel})
		wantAccepted(t, c.Create(ctx, a))
		warns.take()
		wantAccepted(t, c.Create(ctx, sp("team-b", storagev1.StoragePolicySpec{StorageClassName: "shared", VolumeSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "b"}}, HotPoolSelector: hotSel, ColdPoolSelector: coldSel})))
		if w := warns.take(); w != "" {
			t.Fatalf("disjoint selectors warned: %q", w)
		}
		// The cache must see team-a before an overlapping policy can be judged against it.
		waitFor(t, func() bool {
			err := c.Create(ctx, sp("everyone", storagev1.StoragePolicySpec{StorageClassName: "shared", HotPoolSelector: hotSel, ColdPoolSelector: coldSel}), client.DryRunAll)
			return err == nil && strings.Contains(warns.take(), "may select the same volumes as StoragePolicy team-a, team-b")
		})
	})
	t.Run("ecPolicyRef must exist", func(t *testing.T) {
		wantRefused(t, c.Create(ctx, sp("ref", storagev1.StoragePolicySpec{StorageClassName: "sc-6", ECPolicyRef: "missing", HotPoolSelector: hotSel, ColdPoolSelector: coldSel})),
			`spec.ecPolicyRef: Not found: "missing (no ErasureCodingPolicy of that name exists; apply it before this StoragePolicy)"`)
		wantAccepted(t, c.Create(ctx, ecp("cold-ec", storagev1.ErasureCodingPolicySpec{})))
		// Right after the policy: the live read covers a cache that lags.
		wantAccepted(t, c.Create(ctx, sp("ref", storagev1.StoragePolicySpec{StorageClassName: "sc-6", ECPolicyRef: "cold-ec", HotPoolSelector: hotSel, ColdPoolSelector: coldSel})))
	})

	t.Run("ErasureCodingPolicy defaults, minHealthyShards := dataShards", func(t *testing.T) {
		wantAccepted(t, c.Create(ctx, ecp("k8", storagev1.ErasureCodingPolicySpec{DataShards: ptr.To[int32](8), ParityShards: ptr.To[int32](3), JournalConfig: &storagev1.JournalConfig{}})))
		var got storagev1.ErasureCodingPolicy
		wantAccepted(t, c.Get(ctx, types.NamespacedName{Name: "k8"}, &got))
		j := got.Spec.JournalConfig
		if *got.Spec.MinHealthyShards != 8 || *got.Spec.StripeSizeBytes != 1048576 || got.Spec.Algorithm != storagev1.AlgorithmReedSolomon ||
			got.Spec.ScrubInterval != "7d" || *got.Spec.ScrubbingEnabled || *j.ReplicationFactor != 3 || *j.DestageThresholdPercent != 80 || j.DestageInterval != "30s" || *j.JournalSizeBytes != 10737418240 {
			t.Fatalf("read back %+v journal %+v", got.Spec, *j)
		}
	})
	t.Run("ErasureCodingPolicy rules", func(t *testing.T) {
		wantRefused(t, c.Create(ctx, ecp("mh", storagev1.ErasureCodingPolicySpec{MinHealthyShards: ptr.To[int32](7)})),
			"spec.minHealthyShards: Invalid value: 7: must lie in [spec.dataShards, spec.dataShards + spec.parityShards] = [4, 6]")
		wantAccepted(t, c.Create(ctx, ecp("mh", storagev1.ErasureCodingPolicySpec{MinHealthyShards: ptr.To[int32](6)})))
		wantRefused(t, c.Create(ctx, ecp("big", storagev1.ErasureCodingPolicySpec{DataShards: ptr.To[int32](250), ParityShards: ptr.To[int32](6)})),
			"spec.parityShards: Invalid value: 6: spec.dataShards + spec.parityShards (250 + 6 = 256) must not exceed 255")
		wantAccepted(t, c.Create(ctx, ecp("big", storagev1.ErasureCodingPolicySpec{DataShards: ptr.To[int32](250), ParityShards: ptr.To[int32](5)})))
		wantRefused(t, c.Create(ctx, ecp("stripe", storagev1.ErasureCodingPolicySpec{StripeSizeBytes: ptr.To[int64](65536 + 2048)})),
			"spec.stripeSizeBytes: Invalid value: 67584: must be a multiple of 4096")
		wantRefused(t, c.Create(ctx, ecp("stripe", storagev1.ErasureCodingPolicySpec{StripeSizeBytes: ptr.To[int64](128 << 20)})),
			"spec.stripeSizeBytes: Invalid value: 134217728: must be between 65536 (64 KiB) and 67108864 (64 MiB)")
		wantRefused(t, c.Create(ctx, ecp("lrc", storagev1.ErasureCodingPolicySpec{Algorithm: storagev1.AlgorithmLRC, DataShards: ptr.To[int32](5), ParityShards: ptr.To[int32](4)})),
			`spec.algorithm: Invalid value: "LRC": LRC with parityShards 4 uses 2 local groups; dataShards 5 is not divisible by 2`)
		wantAccepted(t, c.Create(ctx, ecp("lrc", storagev1.ErasureCodingPolicySpec{Algorithm: storagev1.AlgorithmLRC, DataShards: ptr.To[int32](12), ParityShards: ptr.To[int32](4)})))
		wantRefused(t, c.Create(ctx, ecp("journal", storagev1.ErasureCodingPolicySpec{JournalConfig: &storagev1.JournalConfig{DestageInterval: "soon"}})),
			`spec.journalConfig.destageInterval: Invalid value: "soon"`)
		wantRefused(t, c.Create(ctx, ecp("journal", storagev1.ErasureCodingPolicySpec{JournalConfig: &storagev1.JournalConfig{DestageThresholdPercent: ptr.To[int32](101)}})),
			"spec.journalConfig.destageThresholdPercent: Invalid value: 101: must be between 0 and 100")
		wantRefused(t, c.Create(ctx, ecp("journal", storagev1.ErasureCodingPolicySpec{ScrubInterval: "1.5d"})),
			`spec.scrubInterval: Invalid value: "1.5d"`, "days must be a whole number")
		wantAccepted(t, c.Create(ctx, ecp("journal", storagev1.ErasureCodingPolicySpec{ScrubInterval: "1d12h", JournalConfig: &storagev1.JournalConfig{DestageInterval: "1m"}})))
		warns.take()
		wantAccepted(t, c.Create(ctx, ecp("wide", storagev1.ErasureCodingPolicySpec{DataShards: ptr.To[int32](2), ParityShards: ptr.To[int32](3)})))
		if w := warns.take(); !strings.Contains(w, "spec.parityShards (3) is greater than spec.dataShards (2)") {
			t.Fatalf("warnings %q", w)
		}
	})

	t.Run("ErasureCodingPolicy wider than the registered shard servers warns", func(t *testing.T) {
		warns.take()
		wantAccepted(t, c.Create(ctx, ecp("cap", storagev1.ErasureCodingPolicySpec{})))
		if w := warns.take(); !strings.Contains(w, "spec.dataShards + spec.parityShards = 6, but only 0 shard servers (0 nodes) are registered") {
			t.Fatalf("warnings %q", w)
		}
		if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: registry.DefaultNamespace}}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
		register := func(pool, node string) {
			r := &registry.Registrar{Client: c, Pool: pool, Node: node, Address: "127.0.0.1:1", LeaseDuration: time.Hour}
			if err := r.Register(ctx); err != nil {
				t.Fatal(err)
			}
		}
		for i := 0; i < 6; i++ { // six pools on three nodes
			register(fmt.Sprintf("cap-pool-%d", i), fmt.Sprintf("cap-node-%d", i/2))
		}
		wantAccepted(t, c.Create(ctx, ecp("cap-nodes", storagev1.ErasureCodingPolicySpec{})))
		if w := warns.take(); !strings.Contains(w, "the registered shard servers span only 3 nodes") {
			t.Fatalf("warnings %q", w)
		}
		for i := 6; i < 9; i++ { // three more pools on three more nodes
			register(fmt.Sprintf("cap-pool-%d", i), fmt.Sprintf("cap-node-%d", i-3))
		}
		wantAccepted(t, c.Create(ctx, ecp("cap-ok", storagev1.ErasureCodingPolicySpec{})))
		if w := warns.take(); w != "" {
			t.Fatalf("6 nodes hold a 4+2 stripe, yet: %q", w)
		}
	})

	// ECStripes under "cold-ec" (4+2, 1 MiB = 2048 LBAs).
	t.Run("ECStripe shape", func(t *testing.T) {
		s := ecs("s0", "vol-a", "cold-ec", 0, 0, 2048, 4, 2)
		wantAccepted(t, c.Create(ctx, s))
		var got storagev1.ECStripe
		wantAccepted(t, c.Get(ctx, types.NamespacedName{Name: "s0"}, &got))
		for i, l := range got.Spec.ShardLocations {
			if int(l.ShardIndex) != i {
				t.Fatalf("shardLocations not sorted by shardIndex: %+v", got.Spec.ShardLocations)
			}
		}
		wantRefused(t, c.Create(ctx, ecs("bad", "vol-a", "cold-ec", 1, 2048, 4096, 4, 1)),
			`ECStripe.storage.billyronks.io "bad" is invalid`, "spec.shardLocations: Invalid value: 5: must have exactly dataShards + parityShards = 4 + 2 = 6 entries for ErasureCodingPolicy cold-ec")
		b := ecs("bad", "vol-a", "cold-ec", 1, 2048, 4096, 4, 2)
		b.Spec.ShardLocations[0].ShardIndex = 1                                 // duplicates index 1 (the list is built in reverse)
		wantRefused(t, c.Create(ctx, b), "Duplicate value", `{"shardIndex":1}`) // listType=map: the API server itself refuses
		b = ecs("bad", "vol-a", "cold-ec", 1, 2048, 4096, 4, 2)
		b.Spec.ShardLocations[0].ShardIndex = 9
		wantRefused(t, c.Create(ctx, b), "shardIndex: Invalid value: 9: must be in [0, 6)")
		b = ecs("bad", "vol-a", "cold-ec", 1, 2048, 4096, 4, 2)
		b.Spec.ShardLocations[0].IsDataShard = true // index 5
		wantRefused(t, c.Create(ctx, b), "isDataShard: Invalid value: true: must be false for shardIndex 5")
		wantRefused(t, c.Create(ctx, ecs("bad", "vol-a", "cold-ec", 1, 2048, 4097, 4, 2)),
			"spec.lbaRange.endLba: Invalid value: 4097: the stripe spans 2049 LBAs (4097 - 2048); ErasureCodingPolicy cold-ec allows at most stripeSizeBytes / 512 = 2048")
		wantRefused(t, c.Create(ctx, ecs("bad", "vol-a", "no-such-policy", 1, 2048, 4096, 4, 2)),
			`spec.policyRef: Not found: "no-such-policy (no ErasureCodingPolicy of that name exists)"`)
		wantRefused(t, c.Create(ctx, ecs("bad", "vol-a", "cold-ec", 1, 4096, 4096, 4, 2)), "spec.lbaRange")
	})
	t.Run("ECStripe uniqueness and overlap", func(t *testing.T) {
		waitFor(t, func() bool {
			return c.Create(ctx, ecs("probe", "vol-a", "cold-ec", 0, 9000, 9001, 4, 2), client.DryRunAll) != nil
		})
		wantRefused(t, c.Create(ctx, ecs("s1", "vol-a", "cold-ec", 0, 2048, 4096, 4, 2)),
			`spec.stripeId: Duplicate value: "0 (ECStripe s0 of volume vol-a has it; stripeId must be unique within the volume)"`)
		wantRefused(t, c.Create(ctx, ecs("s1", "vol-a", "cold-ec", 1, 2047, 4095, 4, 2)),
			`spec.lbaRange: Invalid value: "[2047, 4095)": overlaps ECStripe s0 of volume vol-a, which holds [0, 2048)`)
		wantAccepted(t, c.Create(ctx, ecs("s1", "vol-a", "cold-ec", 1, 2048, 4096, 4, 2)))     // adjacent: endLba is exclusive
		wantAccepted(t, c.Create(ctx, ecs("other-vol", "vol-b", "cold-ec", 0, 0, 2048, 4, 2))) // other volume
		// Update: the stripe never conflicts with itself, and may not move
		// (onto a neighbour or anywhere: its identity is immutable, issue 17).
		waitFor(t, func() bool {
			return c.Create(ctx, ecs("probe", "vol-a", "cold-ec", 7, 2048, 2049, 4, 2), client.DryRunAll) != nil
		})
		var s1 storagev1.ECStripe
		wantAccepted(t, c.Get(ctx, types.NamespacedName{Name: "s1"}, &s1))
		s1.Spec.Generation = 2
		wantAccepted(t, c.Update(ctx, &s1))
		patch := client.MergeFrom(s1.DeepCopy())
		s1.Spec.LbaRange = storagev1.LbaRange{StartLba: 1024, EndLba: 3072}
		wantRefused(t, c.Patch(ctx, &s1, patch), "spec.lbaRange.startLba: Invalid value: spec.lbaRange.startLba is immutable")
		wantAccepted(t, c.Get(ctx, types.NamespacedName{Name: "s1"}, &s1))
		s1.Spec.StripeID = 0
		wantRefused(t, c.Update(ctx, &s1), "spec.stripeId: Invalid value: 0: spec.stripeId is immutable")
	})
	t.Run("ErasureCodingPolicy with stripes keeps its encoding", func(t *testing.T) {
		var p storagev1.ErasureCodingPolicy
		wantAccepted(t, c.Get(ctx, types.NamespacedName{Name: "cold-ec"}, &p))
		p.Spec.DataShards, p.Spec.MinHealthyShards = ptr.To[int32](6), ptr.To[int32](6)
		wantRefused(t, c.Update(ctx, &p), "spec.dataShards: Invalid value: 6: is immutable while ECStripes use this policy (3 exist; was 4)")
		wantAccepted(t, c.Get(ctx, types.NamespacedName{Name: "cold-ec"}, &p))
		p.Spec.ScrubbingEnabled = ptr.To(true)
		wantAccepted(t, c.Update(ctx, &p))
		var free storagev1.ErasureCodingPolicy
		wantAccepted(t, c.Get(ctx, types.NamespacedName{Name: "mh"}, &free))
		free.Spec.StripeSizeBytes = ptr.To[int64](65536)
		wantAccepted(t, c.Update(ctx, &free))
	})
	t.Run("an ECStripe goes only with its ECVolume", func(t *testing.T) {
		vol := &storagev1.ECVolume{ObjectMeta: metav1.ObjectMeta{Name: "vol-a", Finalizers: []string{"test.couchestor/hold"}},
			Spec: storagev1.ECVolumeSpec{SizeBytes: 1 << 30, PolicyRef: "cold-ec"}}
		wantAccepted(t, c.Create(ctx, vol))
		wantRefused(t, c.Delete(ctx, &storagev1.ECStripe{ObjectMeta: metav1.ObjectMeta{Name: "s0"}}),
			`ecstripes.storage.billyronks.io "s0" is forbidden`, "holds data of ECVolume vol-a (spec.volumeRef)", "kubectl delete ecvolume vol-a")
		// Once the volume is being deleted, its finalizer may remove the stripes.
		wantAccepted(t, c.Delete(ctx, vol))
		wantAccepted(t, c.Delete(ctx, &storagev1.ECStripe{ObjectMeta: metav1.ObjectMeta{Name: "s0"}}, client.DryRunAll))
		wantAccepted(t, c.Get(ctx, types.NamespacedName{Name: "vol-a"}, vol))
		vol.Finalizers = nil
		wantAccepted(t, c.Update(ctx, vol))
	})
	t.Run("referenced ErasureCodingPolicy cannot be deleted", func(t *testing.T) {
		wantRefused(t, c.Delete(ctx, ecp("cold-ec", storagev1.ErasureCodingPolicySpec{})),
			"ErasureCodingPolicy cold-ec is still referenced by 1 StoragePolicies (spec.ecPolicyRef of ref) and 3 ECStripes (spec.policyRef of ")
		wantAccepted(t, c.Delete(ctx, sp("ref", storagev1.StoragePolicySpec{})))
		for _, n := range []string{"s0", "s1", "other-vol"} {
			wantAccepted(t, c.Delete(ctx, &storagev1.ECStripe{ObjectMeta: metav1.ObjectMeta{Name: n}}))
		}
		waitFor(t, func() bool {
			return c.Delete(ctx, ecp("cold-ec", storagev1.ErasureCodingPolicySpec{}), client.DryRunAll) == nil
		})
		wantAccepted(t, c.Delete(ctx, ecp("cold-ec", storagev1.ErasureCodingPolicySpec{})))
	})
}

// waitFor polls cond (the cache follows the API server within moments).
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
