package v1

import (
	"encoding/json"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/utils/ptr"
)

var spec = field.NewPath("spec")

func errsContain(t *testing.T, errs field.ErrorList, want string) {
	t.Helper()
	if want == "" {
		if len(errs) != 0 {
			t.Fatalf("unexpected errors: %v", errs.ToAggregate())
		}
		return
	}
	if len(errs) == 0 {
		t.Fatalf("accepted; want an error containing %q", want)
	}
	if got := errs.ToAggregate().Error(); !strings.Contains(got, want) {
		t.Fatalf("errors %q do not contain %q", got, want)
	}
}

func TestStoragePolicyRules(t *testing.T) {
	hot := &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "hot"}}
	cold := &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "cold"}}
	cases := []struct {
		name string
		spec StoragePolicySpec
		err  string
		warn string
	}{
		{"defaults with two tiers", StoragePolicySpec{HotPoolSelector: hot, ColdPoolSelector: cold}, "", ""},
		{"only low set breaks warm > low", StoragePolicySpec{LowWatermarkIOPS: ptr.To[int64](3000), HotPoolSelector: hot, ColdPoolSelector: cold},
			"spec.warmWatermarkIOPS: Invalid value: 2000: must be greater than spec.lowWatermarkIOPS (3000)", ""},
		{"warm above high", StoragePolicySpec{WarmWatermarkIOPS: ptr.To[int64](6000), HotPoolSelector: hot, ColdPoolSelector: cold},
			"spec.highWatermarkIOPS: Invalid value: 5000: must be greater than spec.warmWatermarkIOPS (6000)", ""},
		{"negative", StoragePolicySpec{LowWatermarkIOPS: ptr.To[int64](-1), HotPoolSelector: hot, ColdPoolSelector: cold}, "spec.lowWatermarkIOPS: Invalid value: -1: must be greater than or equal to 0", ""},
		{"warm within 10% of high", StoragePolicySpec{WarmWatermarkIOPS: ptr.To[int64](4600), HotPoolSelector: hot, ColdPoolSelector: cold}, "", "within 10%"},
		{"bad duration", StoragePolicySpec{SamplingWindow: "fortnight", HotPoolSelector: hot, ColdPoolSelector: cold}, `spec.samplingWindow: Invalid value: "fortnight"`, ""},
		{"days", StoragePolicySpec{CooldownPeriod: "1d12h", HotPoolSelector: hot, ColdPoolSelector: cold}, "", ""},
		{"zero concurrency", StoragePolicySpec{MaxConcurrentMigrations: ptr.To[int32](0), HotPoolSelector: hot, ColdPoolSelector: cold},
			"spec.maxConcurrentMigrations: Invalid value: 0: must be greater than 0", ""},
		{"empty tier selector", StoragePolicySpec{HotPoolSelector: &metav1.LabelSelector{}, ColdPoolSelector: cold}, "spec.hotPoolSelector: Invalid value: \"{}\": must not be empty", ""},
		{"one tier", StoragePolicySpec{HotPoolSelector: hot}, "", "at least two tiers"},
		{"bad operator", StoragePolicySpec{HotPoolSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "tier", Operator: "Near"}}}, ColdPoolSelector: cold},
			"spec.hotPoolSelector.matchExpressions[0].operator", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			errs, warns := ValidateStoragePolicySpec(&c.spec, spec)
			errsContain(t, errs, c.err)
			joined := strings.Join(warns, "\n")
			if c.warn == "" && len(warns) != 0 {
				t.Fatalf("unexpected warnings %q", joined)
			}
			if !strings.Contains(joined, c.warn) {
				t.Fatalf("warnings %q do not contain %q", joined, c.warn)
			}
		})
	}
}

func TestDefaultsFillEverySchemaDefault(t *testing.T) {
	var sp StoragePolicy
	DefaultStoragePolicy(&sp)
	b, _ := json.Marshal(sp.Spec)
	want := `{"highWatermarkIOPS":5000,"warmWatermarkIOPS":2000,"lowWatermarkIOPS":500,"samplingWindow":"1h","cooldownPeriod":"24h","storageClassName":"mayastor","maxConcurrentMigrations":2,"migrationTimeout":"30m","enabled":true,"dryRun":false,"ecMinVolumeSizeBytes":10737418240}`
	if string(b) != want {
		t.Fatalf("defaulted StoragePolicy spec\n got %s\nwant %s", b, want)
	}
	ecp := ErasureCodingPolicy{Spec: ErasureCodingPolicySpec{DataShards: ptr.To[int32](8), JournalConfig: &JournalConfig{}}}
	DefaultErasureCodingPolicy(&ecp)
	b, _ = json.Marshal(ecp.Spec)
	want = `{"dataShards":8,"parityShards":2,"stripeSizeBytes":1048576,"algorithm":"ReedSolomon","journalConfig":{"journalSizeBytes":10737418240,"replicationFactor":3,"destageThresholdPercent":80,"destageInterval":"30s"},"minHealthyShards":8,"scrubbingEnabled":false,"scrubInterval":"7d"}`
	if string(b) != want {
		t.Fatalf("defaulted ErasureCodingPolicy spec\n got %s\nwant %s", b, want)
	}
}

func TestErasureCodingPolicyRules(t *testing.T) {
	cases := []struct {
		name string
		spec ErasureCodingPolicySpec
		err  string
		warn string
	}{
		{"defaults", ErasureCodingPolicySpec{}, "", ""},
		{"sum over 255", ErasureCodingPolicySpec{DataShards: ptr.To[int32](200), ParityShards: ptr.To[int32](56)}, "(200 + 56 = 256) must not exceed 255", ""},
		{"sum exactly 255", ErasureCodingPolicySpec{DataShards: ptr.To[int32](200), ParityShards: ptr.To[int32](55)}, "", ""},
		{"stripe not aligned", ErasureCodingPolicySpec{StripeSizeBytes: ptr.To[int64](65536 + 512)}, "spec.stripeSizeBytes: Invalid value: 66048: must be a multiple of 4096", ""},
		{"stripe too small", ErasureCodingPolicySpec{StripeSizeBytes: ptr.To[int64](4096)}, "must be between 65536", ""},
		{"LRC fits", ErasureCodingPolicySpec{Algorithm: AlgorithmLRC, DataShards: ptr.To[int32](12), ParityShards: ptr.To[int32](4)}, "", ""},
		{"LRC k not divisible", ErasureCodingPolicySpec{Algorithm: AlgorithmLRC, DataShards: ptr.To[int32](5), ParityShards: ptr.To[int32](4)}, "spec.algorithm: Invalid value: \"LRC\"", ""},
		{"LRC m=1", ErasureCodingPolicySpec{Algorithm: AlgorithmLRC, ParityShards: ptr.To[int32](1)}, "parityShards >= 2", ""},
		{"unknown algorithm", ErasureCodingPolicySpec{Algorithm: "XOR"}, "spec.algorithm: Unsupported value: \"XOR\"", ""},
		{"minHealthy below k", ErasureCodingPolicySpec{MinHealthyShards: ptr.To[int32](3)}, "spec.minHealthyShards: Invalid value: 3: must lie in [spec.dataShards, spec.dataShards + spec.parityShards] = [4, 6]", ""},
		{"minHealthy above k+m", ErasureCodingPolicySpec{MinHealthyShards: ptr.To[int32](7)}, "= [4, 6]", ""},
		{"minHealthy k+m", ErasureCodingPolicySpec{MinHealthyShards: ptr.To[int32](6)}, "", ""},
		{"parity > data", ErasureCodingPolicySpec{DataShards: ptr.To[int32](2), ParityShards: ptr.To[int32](3)}, "", "greater than spec.dataShards"},
		{"journal replication 0", ErasureCodingPolicySpec{JournalConfig: &JournalConfig{ReplicationFactor: ptr.To[int32](0)}}, "spec.journalConfig.replicationFactor: Invalid value: 0", ""},
		{"journal threshold 101", ErasureCodingPolicySpec{JournalConfig: &JournalConfig{DestageThresholdPercent: ptr.To[int32](101)}}, "spec.journalConfig.destageThresholdPercent: Invalid value: 101", ""},
		{"journal interval zero", ErasureCodingPolicySpec{JournalConfig: &JournalConfig{DestageInterval: "0s"}}, "spec.journalConfig.destageInterval", ""},
		{"scrub interval negative", ErasureCodingPolicySpec{ScrubInterval: "-7d"}, "spec.scrubInterval: Invalid value: \"-7d\"", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			errs, warns := ValidateErasureCodingPolicySpec(&c.spec, spec)
			errsContain(t, errs, c.err)
			joined := strings.Join(warns, "\n")
			if (c.warn == "") != (len(warns) == 0) || !strings.Contains(joined, c.warn) {
				t.Fatalf("warnings %q, want %q", joined, c.warn)
			}
		})
	}
}

func TestErasureCodingPolicyUpdateWithStripes(t *testing.T) {
	old := ErasureCodingPolicySpec{}
	changed := ErasureCodingPolicySpec{DataShards: ptr.To[int32](6)}
	if errs := ValidateErasureCodingPolicyUpdate(&old, &changed, 0, spec); len(errs) != 0 {
		t.Fatalf("refused without stripes: %v", errs)
	}
	errsContain(t, ValidateErasureCodingPolicyUpdate(&old, &changed, 3, spec), "spec.dataShards: Invalid value: 6: is immutable while ECStripes use this policy (3 exist; was 4)")
	scrub := ErasureCodingPolicySpec{ScrubbingEnabled: ptr.To(true)}
	errsContain(t, ValidateErasureCodingPolicyUpdate(&old, &scrub, 3, spec), "")
}

func TestDeleteRefusalNamesReferrers(t *testing.T) {
	if s := ErasureCodingPolicyDeleteRefusal("ec", Referrers{}); s != "" {
		t.Fatalf("refused without referrers: %s", s)
	}
	s := ErasureCodingPolicyDeleteRefusal("ec", Referrers{StoragePolicies: []string{"gold"}, TotalStoragePolicies: 1, ECStripes: []string{"s1", "s2"}, TotalECStripes: 7})
	for _, want := range []string{"gold", "s1, s2, and 5 more", "7 ECStripes"} {
		if !strings.Contains(s, want) {
			t.Errorf("%q does not contain %q", s, want)
		}
	}
}

func stripe(k, m int) ECStripeSpec {
	s := ECStripeSpec{VolumeRef: "v", StripeID: 1, PolicyRef: "ec", LbaRange: LbaRange{StartLba: 0, EndLba: 2048}}
	for i := 0; i < k+m; i++ {
		s.ShardLocations = append(s.ShardLocations, ShardLocation{ShardIndex: int32(i), IsDataShard: i < k, PoolName: "p", NodeName: "n"})
	}
	return s
}

func TestECStripeRules(t *testing.T) {
	pol := &ErasureCodingPolicySpec{}
	mod := func(f func(*ECStripeSpec)) ECStripeSpec { s := stripe(4, 2); f(&s); return s }
	cases := []struct {
		name   string
		spec   ECStripeSpec
		policy *ErasureCodingPolicySpec
		err    string
	}{
		{"valid", stripe(4, 2), pol, ""},
		{"policy missing", stripe(4, 2), nil, "spec.policyRef: Not found: \"ec (no ErasureCodingPolicy of that name exists)\""},
		{"too few shards", stripe(4, 1), pol, "spec.shardLocations: Invalid value: 5: must have exactly dataShards + parityShards = 4 + 2 = 6 entries"},
		{"index out of range", mod(func(s *ECStripeSpec) { s.ShardLocations[5].ShardIndex = 6 }), pol, "spec.shardLocations[5].shardIndex: Invalid value: 6: must be in [0, 6)"},
		{"duplicate index", mod(func(s *ECStripeSpec) { s.ShardLocations[5].ShardIndex = 4 }), pol, "spec.shardLocations[5].shardIndex: Duplicate value"},
		{"parity marked data", mod(func(s *ECStripeSpec) { s.ShardLocations[4].IsDataShard = true }), pol, "spec.shardLocations[4].isDataShard: Invalid value: true: must be false for shardIndex 4"},
		{"empty range", mod(func(s *ECStripeSpec) { s.LbaRange = LbaRange{StartLba: 10, EndLba: 10} }), pol, "spec.lbaRange.endLba: Invalid value: 10: must be greater than spec.lbaRange.startLba (10)"},
		{"span too long", mod(func(s *ECStripeSpec) { s.LbaRange = LbaRange{StartLba: 0, EndLba: 2049} }), pol, "at most stripeSizeBytes / 512 = 2048"},
		{"short last stripe", mod(func(s *ECStripeSpec) { s.LbaRange = LbaRange{StartLba: 2048, EndLba: 2050} }), pol, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			errs, _ := ValidateECStripeSpec(&c.spec, c.policy, spec)
			errsContain(t, errs, c.err)
		})
	}
}

type fakeNeighbours struct{ stripes map[string]ECStripeSpec }

func (f fakeNeighbours) StripeWithID(vol string, id int64, self string) (StripeRef, bool) {
	for n, s := range f.stripes {
		if n != self && s.VolumeRef == vol && s.StripeID == id {
			return StripeRef{Name: n, StripeID: id, LbaRange: s.LbaRange}, true
		}
	}
	return StripeRef{}, false
}

func (f fakeNeighbours) Overlapping(vol string, start, end int64, self string) (StripeRef, bool) {
	for n, s := range f.stripes {
		if n != self && s.VolumeRef == vol && s.LbaRange.StartLba < end && start < s.LbaRange.EndLba {
			return StripeRef{Name: n, StripeID: s.StripeID, LbaRange: s.LbaRange}, true
		}
	}
	return StripeRef{}, false
}

func TestECStripeNeighbours(t *testing.T) {
	a := stripe(4, 2)
	n := fakeNeighbours{map[string]ECStripeSpec{"a": a}}
	errsContain(t, ValidateECStripeNeighbours("a", &a, n, spec), "") // never conflicts with itself
	b := stripe(4, 2)
	b.StripeID = 2
	b.LbaRange = LbaRange{StartLba: 2048, EndLba: 4096} // adjacent, endLba exclusive
	errsContain(t, ValidateECStripeNeighbours("b", &b, n, spec), "")
	b.LbaRange.StartLba = 2047
	errsContain(t, ValidateECStripeNeighbours("b", &b, n, spec), "spec.lbaRange: Invalid value: \"[2047, 4096)\": overlaps ECStripe a of volume v, which holds [0, 2048)")
	b.LbaRange.StartLba, b.StripeID = 2048, 1
	errsContain(t, ValidateECStripeNeighbours("b", &b, n, spec), "spec.stripeId: Duplicate value: \"1 (ECStripe a of volume v has it")
	b.VolumeRef = "w"
	b.LbaRange.StartLba = 0
	errsContain(t, ValidateECStripeNeighbours("b", &b, n, spec), "")
}

func TestSelectorsMayOverlap(t *testing.T) {
	sel := func(kv ...string) *metav1.LabelSelector {
		m := map[string]string{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return &metav1.LabelSelector{MatchLabels: m}
	}
	notIn := &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "app", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"db"}}}}
	for _, c := range []struct {
		a, b *metav1.LabelSelector
		want bool
	}{
		{nil, sel("app", "db"), true},
		{sel("app", "db"), sel("app", "web"), false},
		{sel("app", "db"), sel("team", "x"), true},
		{sel("app", "db"), notIn, false},
		{sel("app", "web"), notIn, true},
	} {
		if got := SelectorsMayOverlap(c.a, c.b); got != c.want {
			t.Errorf("SelectorsMayOverlap(%v, %v) = %v", c.a, c.b, got)
		}
	}
}
