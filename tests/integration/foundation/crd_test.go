// Package foundation checks, against a real kube-apiserver and etcd, what the
// CRDs themselves promise: installation and short names, the schema's
// defaults, the static rules the API server enforces without any webhook, and
// the status subresource.
package foundation

import (
	"context"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/controller-runtime/pkg/client"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/tests/testenv"
)

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestCRDsInstallAndShortNamesResolve(t *testing.T) {
	env := testenv.Start(t)
	dc, err := discovery.NewDiscoveryClientForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewShortcutExpander(restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc)), dc, nil)
	want := map[string]string{
		"sp":                    "storagepolicies",
		"spolicy":               "storagepolicies",
		"ecp":                   "erasurecodingpolicies",
		"ecs":                   "ecstripes",
		"dsp":                   "diskpools",
		"msv":                   "mayastorvolumes",
		"storagepolicies":       "storagepolicies",
		"erasurecodingpolicies": "erasurecodingpolicies",
	}
	for short, plural := range want {
		gvr, err := mapper.ResourceFor(schema.GroupVersionResource{Resource: short})
		if err != nil {
			t.Errorf("resolve %q: %v", short, err)
			continue
		}
		if gvr.Resource != plural {
			t.Errorf("%q resolved to %v, want resource %s", short, gvr, plural)
		}
	}
	// The couchestor category groups our three kinds (kubectl get couchestor).
	_, lists, err := dc.ServerGroupsAndResources()
	if err != nil {
		t.Fatal(err)
	}
	inCategory := map[string]bool{}
	for _, l := range lists {
		for _, r := range l.APIResources {
			for _, c := range r.Categories {
				if c == "couchestor" {
					inCategory[r.Name] = true
				}
			}
			if l.GroupVersion == "storage.billyronks.io/v1" && !strings.Contains(r.Name, "/") && r.Namespaced {
				t.Errorf("%s is namespaced; the schema says cluster scope", r.Name)
			}
			if l.GroupVersion == "openebs.io/v1beta2" && r.Name == "diskpools" && !r.Namespaced {
				t.Errorf("DiskPool must be namespaced like real Mayastor 2.x")
			}
		}
	}
	for _, r := range []string{"storagepolicies", "erasurecodingpolicies", "ecstripes"} {
		if !inCategory[r] {
			t.Errorf("%s is not in the couchestor category", r)
		}
	}
}

func TestEmptySpecsComeBackWithSchemaDefaults(t *testing.T) {
	env := testenv.Start(t)
	c := env.Client
	sp := &storagev1.StoragePolicy{ObjectMeta: metav1.ObjectMeta{Name: "defaults"}}
	if err := c.Create(ctx(t), sp); err != nil {
		t.Fatalf("create empty StoragePolicy: %v", err)
	}
	got := &storagev1.StoragePolicy{}
	if err := c.Get(ctx(t), client.ObjectKey{Name: "defaults"}, got); err != nil {
		t.Fatal(err)
	}
	s := got.Spec
	check := func(field string, ok bool, have any) {
		t.Helper()
		if !ok {
			t.Errorf("%s: got %v, not the schema default", field, have)
		}
	}
	check("highWatermarkIOPS", s.HighWatermarkIOPS != nil && *s.HighWatermarkIOPS == 5000, s.HighWatermarkIOPS)
	check("warmWatermarkIOPS", s.WarmWatermarkIOPS != nil && *s.WarmWatermarkIOPS == 2000, s.WarmWatermarkIOPS)
	check("lowWatermarkIOPS", s.LowWatermarkIOPS != nil && *s.LowWatermarkIOPS == 500, s.LowWatermarkIOPS)
	check("samplingWindow", s.SamplingWindow == "1h", s.SamplingWindow)
	check("cooldownPeriod", s.CooldownPeriod == "24h", s.CooldownPeriod)
	check("storageClassName", s.StorageClassName == "mayastor", s.StorageClassName)
	check("maxConcurrentMigrations", s.MaxConcurrentMigrations != nil && *s.MaxConcurrentMigrations == 2, s.MaxConcurrentMigrations)
	check("migrationTimeout", s.MigrationTimeout == "30m", s.MigrationTimeout)
	check("enabled", s.Enabled != nil && *s.Enabled, s.Enabled)
	check("dryRun", s.DryRun != nil && !*s.DryRun, s.DryRun)
	check("ecMinVolumeSizeBytes", s.ECMinVolumeSizeBytes != nil && *s.ECMinVolumeSizeBytes == 10737418240, s.ECMinVolumeSizeBytes)
	check("selectors absent", s.HotPoolSelector == nil && s.WarmPoolSelector == nil && s.ColdPoolSelector == nil && s.VolumeSelector == nil, s.HotPoolSelector)

	ecp := &storagev1.ErasureCodingPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "defaults"},
		Spec:       storagev1.ErasureCodingPolicySpec{JournalConfig: &storagev1.JournalConfig{}},
	}
	if err := c.Create(ctx(t), ecp); err != nil {
		t.Fatalf("create ErasureCodingPolicy with empty journalConfig: %v", err)
	}
	gotE := &storagev1.ErasureCodingPolicy{}
	if err := c.Get(ctx(t), client.ObjectKey{Name: "defaults"}, gotE); err != nil {
		t.Fatal(err)
	}
	e := gotE.Spec
	check("dataShards", e.DataShards != nil && *e.DataShards == 4, e.DataShards)
	check("parityShards", e.ParityShards != nil && *e.ParityShards == 2, e.ParityShards)
	check("stripeSizeBytes", e.StripeSizeBytes != nil && *e.StripeSizeBytes == 1048576, e.StripeSizeBytes)
	check("algorithm", e.Algorithm == storagev1.AlgorithmReedSolomon, e.Algorithm)
	check("scrubbingEnabled", e.ScrubbingEnabled != nil && !*e.ScrubbingEnabled, e.ScrubbingEnabled)
	check("scrubInterval", e.ScrubInterval == "7d", e.ScrubInterval)
	j := e.JournalConfig
	if j == nil {
		t.Fatal("journalConfig vanished")
	}
	check("journalSizeBytes", j.JournalSizeBytes != nil && *j.JournalSizeBytes == 10737418240, j.JournalSizeBytes)
	check("replicationFactor", j.ReplicationFactor != nil && *j.ReplicationFactor == 3, j.ReplicationFactor)
	check("destageThresholdPercent", j.DestageThresholdPercent != nil && *j.DestageThresholdPercent == 80, j.DestageThresholdPercent)
	check("destageInterval", j.DestageInterval == "30s", j.DestageInterval)

	// A policy created with no spec at all is defaulted too.
	u := &unstructured.Unstructured{}
	u.SetAPIVersion("storage.billyronks.io/v1")
	u.SetKind("ErasureCodingPolicy")
	u.SetName("nospec")
	if err := c.Create(ctx(t), u); err != nil {
		t.Fatal(err)
	}
	if err := c.Get(ctx(t), client.ObjectKey{Name: "nospec"}, gotE); err != nil {
		t.Fatal(err)
	}
	check("dataShards without spec", gotE.Spec.DataShards != nil && *gotE.Spec.DataShards == 4, gotE.Spec.DataShards)
	check("journalConfig stays absent", gotE.Spec.JournalConfig == nil, gotE.Spec.JournalConfig)
}

// create sends an object as raw JSON-like content so that values a typed
// client could not express (or would drop) reach the API server unchanged.
func create(t *testing.T, c client.Client, kind, name string, spec map[string]any) error {
	t.Helper()
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "storage.billyronks.io/v1",
		"kind":       kind,
		"metadata":   map[string]any{"name": name},
		"spec":       spec,
	}}
	return c.Create(ctx(t), u)
}

func stripeSpec(start, end int64) map[string]any {
	return map[string]any{
		"volumeRef": "vol-a", "stripeId": int64(1), "policyRef": "p",
		"lbaRange":       map[string]any{"startLba": start, "endLba": end},
		"shardLocations": []any{map[string]any{"shardIndex": int64(0), "isDataShard": true, "poolName": "p1", "nodeName": "n1", "offset": int64(0), "sizeBytes": int64(4096)}},
	}
}

func TestAPIServerRefusesOutOfRangeValuesNamingTheField(t *testing.T) {
	env := testenv.Start(t)
	c := env.Client
	cases := []struct {
		name, kind string
		spec       map[string]any
		wantInMsg  []string
	}{
		{"stripe-too-small", "ErasureCodingPolicy", map[string]any{"stripeSizeBytes": int64(65535)}, []string{"spec.stripeSizeBytes", "65536"}},
		{"stripe-too-big", "ErasureCodingPolicy", map[string]any{"stripeSizeBytes": int64(67108865)}, []string{"spec.stripeSizeBytes", "67108864"}},
		{"stripe-unaligned", "ErasureCodingPolicy", map[string]any{"stripeSizeBytes": int64(65536 + 512)}, []string{"spec.stripeSizeBytes", "multiple of 4096"}},
		{"destage-101", "ErasureCodingPolicy", map[string]any{"journalConfig": map[string]any{"destageThresholdPercent": int64(101)}}, []string{"spec.journalConfig.destageThresholdPercent", "100"}},
		{"replication-0", "ErasureCodingPolicy", map[string]any{"journalConfig": map[string]any{"replicationFactor": int64(0)}}, []string{"spec.journalConfig.replicationFactor", "1"}},
		{"shards-0", "ErasureCodingPolicy", map[string]any{"dataShards": int64(0)}, []string{"spec.dataShards"}},
		{"shards-sum-256", "ErasureCodingPolicy", map[string]any{"dataShards": int64(200), "parityShards": int64(56)}, []string{"spec.dataShards + spec.parityShards", "255"}},
		{"algorithm-unknown", "ErasureCodingPolicy", map[string]any{"algorithm": "XOR"}, []string{"spec.algorithm", "ReedSolomon", "LRC"}},
		{"high-equals-warm", "StoragePolicy", map[string]any{"highWatermarkIOPS": int64(1000), "warmWatermarkIOPS": int64(1000), "lowWatermarkIOPS": int64(500)}, []string{"spec.highWatermarkIOPS", "greater than spec.warmWatermarkIOPS"}},
		{"warm-below-low", "StoragePolicy", map[string]any{"lowWatermarkIOPS": int64(3000)}, []string{"spec.warmWatermarkIOPS", "greater than spec.lowWatermarkIOPS"}},
		{"negative-watermark", "StoragePolicy", map[string]any{"lowWatermarkIOPS": int64(-1)}, []string{"spec.lowWatermarkIOPS"}},
		{"zero-concurrency", "StoragePolicy", map[string]any{"maxConcurrentMigrations": int64(0)}, []string{"spec.maxConcurrentMigrations"}},
		{"empty-lba-range", "ECStripe", stripeSpec(100, 100), []string{"spec.lbaRange", "startLba must be less than", "endLba"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := create(t, c, tc.kind, tc.name, tc.spec)
			if err == nil {
				t.Fatalf("API server accepted %s %v", tc.kind, tc.spec)
			}
			if !apierrors.IsInvalid(err) {
				t.Fatalf("want an Invalid error, got %v", err)
			}
			for _, w := range tc.wantInMsg {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("message %q does not mention %q", err.Error(), w)
				}
			}
		})
	}
	// The boundaries themselves are accepted.
	for i, spec := range []map[string]any{
		{"stripeSizeBytes": int64(65536)},
		{"stripeSizeBytes": int64(67108864)},
		{"journalConfig": map[string]any{"destageThresholdPercent": int64(100)}},
	} {
		if err := create(t, c, "ErasureCodingPolicy", "ok-"+string(rune('a'+i)), spec); err != nil {
			t.Errorf("boundary %v refused: %v", spec, err)
		}
	}
	if err := create(t, c, "ECStripe", "ok-stripe", stripeSpec(0, 1)); err != nil {
		t.Errorf("one-block stripe refused: %v", err)
	}
}

func TestStatusSubresourceKeepsSpecAndStatusApart(t *testing.T) {
	env := testenv.Start(t)
	c := env.Client
	sp := &storagev1.StoragePolicy{ObjectMeta: metav1.ObjectMeta{Name: "split"}}
	if err := c.Create(ctx(t), sp); err != nil {
		t.Fatal(err)
	}
	// A status write that also carries a spec change: the spec change is dropped.
	sp.Status.Phase = storagev1.StoragePolicyActive
	sp.Status.TotalMigrations = 7
	high := int64(9000)
	sp.Spec.HighWatermarkIOPS = &high
	if err := c.Status().Update(ctx(t), sp); err != nil {
		t.Fatalf("status update: %v", err)
	}
	got := &storagev1.StoragePolicy{}
	if err := c.Get(ctx(t), client.ObjectKey{Name: "split"}, got); err != nil {
		t.Fatal(err)
	}
	if *got.Spec.HighWatermarkIOPS != 5000 {
		t.Errorf("status update changed spec.highWatermarkIOPS to %d", *got.Spec.HighWatermarkIOPS)
	}
	if got.Status.TotalMigrations != 7 || got.Status.Phase != storagev1.StoragePolicyActive {
		t.Errorf("status not stored: %+v", got.Status)
	}
	// A spec write that carries a status change: the status change is dropped.
	got.Status.TotalMigrations = 0
	got.Status.Phase = storagev1.StoragePolicyError
	got.Spec.HighWatermarkIOPS = &high
	if err := c.Update(ctx(t), got); err != nil {
		t.Fatalf("spec update: %v", err)
	}
	again := &storagev1.StoragePolicy{}
	if err := c.Get(ctx(t), client.ObjectKey{Name: "split"}, again); err != nil {
		t.Fatal(err)
	}
	if again.Status.TotalMigrations != 7 || again.Status.Phase != storagev1.StoragePolicyActive {
		t.Errorf("spec update touched status: %+v", again.Status)
	}
	if *again.Spec.HighWatermarkIOPS != 9000 {
		t.Errorf("spec update lost: %d", *again.Spec.HighWatermarkIOPS)
	}
	if again.Generation != 2 {
		t.Errorf("generation %d after one spec change, want 2 (status writes must not bump it)", again.Generation)
	}
}
