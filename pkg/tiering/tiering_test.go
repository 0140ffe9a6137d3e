package tiering

import (
	"math"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/billyronks/couchestor/pkg/iops"
)

var wm = Watermarks{High: 5000, Warm: 2000, Low: 500}

func TestClassify(t *testing.T) {
	cases := []struct {
		iops     float64
		warmTier bool
		want     Tier
		ok       bool
	}{
		{5000, true, Hot, true}, // high is inclusive
		{4999.9, true, Warm, true},
		{2000, true, Warm, true}, // warm is inclusive
		{1999.9, true, None, false},
		{500.1, true, None, false},
		{500, true, Cold, true}, // low is inclusive
		{0, true, Cold, true},
		{1e9, true, Hot, true},
		// without a warm tier, everything strictly between low and high is the dead band
		{4999.9, false, None, false},
		{2000, false, None, false},
		{5000, false, Hot, true},
		{500, false, Cold, true},
	}
	for _, c := range cases {
		got, ok := Classify(c.iops, wm, c.warmTier)
		if got != c.want || ok != c.ok {
			t.Errorf("Classify(%v, warm tier %v) = %q,%v want %q,%v", c.iops, c.warmTier, got, ok, c.want, c.ok)
		}
	}
}

func sel(ml map[string]string, exprs ...metav1.LabelSelectorRequirement) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchLabels: ml, MatchExpressions: exprs}
}

func TestSelectorSemantics(t *testing.T) {
	s, err := CompileSelectors(
		sel(map[string]string{"tier": "hot"}),
		sel(nil, metav1.LabelSelectorRequirement{Key: "media", Operator: metav1.LabelSelectorOpIn, Values: []string{"ssd", "sata-ssd"}}),
		nil, // no cold tier
	)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		labels    map[string]string
		want      Tier
		ambiguous bool
	}{
		{map[string]string{"tier": "hot", "zone": "a"}, Hot, false}, // matchLabels is a subset match
		{map[string]string{"media": "sata-ssd"}, Warm, false},       // matchExpressions In
		{map[string]string{"media": "hdd"}, None, false},
		{nil, None, false},
		{map[string]string{"tier": "hot", "media": "ssd"}, None, true}, // both tiers: ambiguous, does not vote
	}
	for _, c := range cases {
		got, amb := s.PoolTier(c.labels)
		if got != c.want || amb != c.ambiguous {
			t.Errorf("PoolTier(%v) = %q,%v want %q,%v", c.labels, got, amb, c.want, c.ambiguous)
		}
	}
	if s.Has(Cold) || !s.Has(Hot) {
		t.Error("a nil selector must mean the tier is absent")
	}
	// matchExpressions and matchLabels are ANDed.
	both, _ := CompileSelectors(sel(map[string]string{"tier": "hot"}, metav1.LabelSelectorRequirement{Key: "zone", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"b"}}), nil, nil)
	if tt, _ := both.PoolTier(map[string]string{"tier": "hot", "zone": "b"}); tt != None {
		t.Error("NotIn must exclude zone b")
	}
	if _, err := CompileSelectors(sel(nil, metav1.LabelSelectorRequirement{Key: "x", Operator: "Bogus"}), nil, nil); err == nil {
		t.Error("an invalid operator was accepted")
	}
	// volumeSelector: nil selects every volume; a PV without PVC matches only that.
	all, _ := VolumeSelector(nil)
	some, _ := VolumeSelector(sel(map[string]string{"app": "db"}))
	p := PolicyRef{Name: "p", StorageClass: "mayastor", VolumeSelector: all}
	q := PolicyRef{Name: "q", StorageClass: "mayastor", VolumeSelector: some}
	db := VolumeRef{StorageClass: "mayastor", CSIDriver: MayastorCSIDriver, HasPVC: true, PVCLabels: map[string]string{"app": "db"}}
	orphan := VolumeRef{StorageClass: "mayastor", CSIDriver: MayastorCSIDriver}
	other := db
	other.CSIDriver = "ebs.csi.aws.com"
	class := db
	class.StorageClass = "fast"
	for _, c := range []struct {
		p    PolicyRef
		v    VolumeRef
		want bool
	}{{p, db, true}, {q, db, true}, {p, orphan, true}, {q, orphan, false}, {p, other, false}, {p, class, false}} {
		if got := c.p.Selects(c.v); got != c.want {
			t.Errorf("%s selects %+v = %v want %v", c.p.Name, c.v, got, c.want)
		}
	}
}

func TestCurrentTier(t *testing.T) {
	pools := map[string]Tier{"n1-hot": Hot, "n2-hot": Hot, "n1-warm": Warm, "n1-cold": Cold, "n2-cold": Cold}
	cases := []struct {
		name  string
		pools []string
		tier  Tier
		mixed bool
		str   string
	}{
		{"single", []string{"n1-hot"}, Hot, false, "hot"},
		{"all cold", []string{"n1-cold", "n2-cold"}, Cold, false, "cold"},
		{"majority hot", []string{"n1-hot", "n2-hot", "n1-cold"}, Hot, true, "mixed (2 hot, 1 cold)"},
		{"tie goes slower", []string{"n1-hot", "n1-cold"}, Cold, true, "mixed (1 hot, 1 cold)"},
		{"three-way tie goes slowest", []string{"n1-hot", "n1-warm", "n1-cold"}, Cold, true, "mixed (1 hot, 1 warm, 1 cold)"},
		{"untiered replicas do not vote", []string{"n1-warm", "elsewhere", "gone"}, Warm, false, "warm"},
		{"untiered next to tiered", []string{"n1-hot", "n2-hot", "elsewhere"}, Hot, false, "hot"},
		{"nothing tiered", []string{"elsewhere"}, None, false, "no tier"},
		{"no replicas", nil, None, false, "no tier"},
	}
	for _, c := range cases {
		p := CurrentTier(c.pools, pools)
		if p.Tier != c.tier || p.Mixed != c.mixed || p.String() != c.str {
			t.Errorf("%s: %+v (%s), want %q mixed=%v %q", c.name, p, p, c.tier, c.mixed, c.str)
		}
	}
}

func TestCooldownAndBackoff(t *testing.T) {
	last := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	ann := func(kv ...string) map[string]string {
		m := map[string]string{AnnotationLastMigration: last.Format(time.RFC3339)}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	h := time.Hour
	for _, c := range []struct {
		a    map[string]string
		want time.Time
		err  bool
	}{
		{nil, time.Time{}, false},
		{ann(), last.Add(h), false},
		{ann(AnnotationMigrationFailures, "0"), last.Add(h), false},
		{ann(AnnotationMigrationFailures, "1"), last.Add(2 * h), false},
		{ann(AnnotationMigrationFailures, "3"), last.Add(8 * h), false},
		{ann(AnnotationMigrationFailures, "40"), last.Add(16 * h), false}, // capped
		{ann(AnnotationMigrationFailures, "x"), time.Time{}, true},
		{map[string]string{AnnotationLastMigration: "yesterday"}, time.Time{}, true},
	} {
		got, err := Cooldown(c.a, h)
		if (err != nil) != c.err || !got.Equal(c.want) {
			t.Errorf("Cooldown(%v) = %v,%v want %v err=%v", c.a, got, err, c.want, c.err)
		}
	}
}

// A very long cooldown doubled by failures does not overflow time.Duration
// into a past (or near) time: the back-off saturates, it never shortens.
func TestCooldownBackoffDoesNotOverflow(t *testing.T) {
	last := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	const year = 365 * 24 * time.Hour
	for _, c := range []struct {
		cooldown time.Duration
		failures string
		want     time.Time
	}{
		{100 * year, "0", last.Add(100 * year)},
		{18 * year, "4", last.Add(16 * 18 * year)},               // fits: 288 years
		{19 * year, "4", last.Add(time.Duration(math.MaxInt64))}, // 304 years saturate
		{100 * year, "1", last.Add(200 * year)},
		{time.Duration(math.MaxInt64), "4", last.Add(time.Duration(math.MaxInt64))}, // the longest cooldown
	} {
		got, err := Cooldown(map[string]string{AnnotationLastMigration: last.Format(time.RFC3339), AnnotationMigrationFailures: c.failures}, c.cooldown)
		if err != nil {
			t.Fatal(err)
		}
		if !got.Equal(c.want) {
			t.Errorf("cooldown %v after %s failures: may move at %v, want %v", c.cooldown, c.failures, got, c.want)
		}
		if !got.After(last) {
			t.Errorf("cooldown %v after %s failures: may move at %v, not after the last migration %v (overflow)", c.cooldown, c.failures, got, last)
		}
	}
}

func TestPolicyConflictOldestOwns(t *testing.T) {
	all, _ := VolumeSelector(nil)
	db, _ := VolumeSelector(sel(map[string]string{"app": "db"}))
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	young := PolicyRef{Name: "a-young", Created: t0.Add(time.Hour), StorageClass: "mayastor", VolumeSelector: all}
	old := PolicyRef{Name: "z-old", Created: t0, StorageClass: "mayastor", VolumeSelector: db}
	twin := PolicyRef{Name: "b-twin", Created: t0, StorageClass: "mayastor", VolumeSelector: all}
	v := VolumeRef{StorageClass: "mayastor", CSIDriver: MayastorCSIDriver, HasPVC: true, PVCLabels: map[string]string{"app": "db"}}
	web := VolumeRef{StorageClass: "mayastor", CSIDriver: MayastorCSIDriver, HasPVC: true, PVCLabels: map[string]string{"app": "web"}}
	if got := Owner([]PolicyRef{young, old}, v); got != "z-old" {
		t.Errorf("owner %q, want the older z-old", got)
	}
	if got := Owner([]PolicyRef{young, old}, web); got != "a-young" {
		t.Errorf("owner of web %q, want a-young (z-old does not select it)", got)
	}
	if got := Owner([]PolicyRef{young, old, twin}, v); got != "b-twin" {
		t.Errorf("same creation time: owner %q, want the first name b-twin", got)
	}
	if got := Owner(nil, v); got != "" {
		t.Errorf("no policy: owner %q", got)
	}
}

func testPolicy() Policy {
	s, _ := CompileSelectors(sel(map[string]string{"tier": "hot"}), sel(map[string]string{"tier": "warm"}), sel(map[string]string{"tier": "cold"}))
	return Policy{Watermarks: wm, Selectors: s, Cooldown: time.Hour, ECEnabled: true, ECMinVolumeSizeBytes: 100}
}

var poolTiers = map[string]Tier{"hot-1": Hot, "hot-2": Hot, "warm-1": Warm, "cold-1": Cold, "cold-2": Cold}

func known(x float64) iops.Measurement { return iops.Measurement{IOPS: x, Known: true, Coverage: 1} }

func TestDecide(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	p := testPolicy()
	noWarm := testPolicy()
	delete(noWarm.Selectors, Warm)
	noHot := testPolicy()
	delete(noHot.Selectors, Hot)
	vol := func(pools ...string) Volume {
		return Volume{Name: "pv", MayastorVolume: true, Published: true, ReplicaPools: pools}
	}
	withPV := func(v Volume, kv ...string) Volume {
		v.PVAnnotations = map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			v.PVAnnotations[kv[i]] = kv[i+1]
		}
		return v
	}
	withPVC := func(v Volume, k, val string) Volume { v.PVCAnnotations = map[string]string{k: val}; return v }
	unknown := iops.Measurement{Reason: iops.ReasonPrometheusUnavailable}
	recent := now.Add(-30 * time.Minute).Format(time.RFC3339)
	old := now.Add(-90 * time.Minute).Format(time.RFC3339) // past 1h, not past 2h

	cases := []struct {
		name   string
		p      Policy
		v      Volume
		m      iops.Measurement
		action Action
		code   string
		from   Tier
		to     Tier
	}{
		{"warm heats up", p, vol("warm-1"), known(4800 + 200), Move, CodeMove, Warm, Hot},
		{"hot cools", p, vol("hot-1", "hot-2"), known(12), Move, CodeMove, Hot, Cold},
		{"hot stays hot", p, vol("hot-1"), known(9000), Stay, CodeOnTier, Hot, Hot},
		{"cold to warm", p, vol("cold-1"), known(2500), Move, CodeMove, Cold, Warm},
		{"dead band holds", p, vol("hot-1"), known(1000), Stay, CodeDeadBand, Hot, None},
		{"dead band without warm tier", noWarm, vol("hot-1"), known(3000), Stay, CodeDeadBand, Hot, None},
		{"no hot tier to go to", noHot, vol("warm-1"), known(6000), Stay, CodeNoTargetTier, Warm, Hot},
		{"unknown is never cold", p, vol("hot-1"), unknown, Skip, CodeIOPSUnknown, Hot, None},
		{"no series is unknown", p, vol("warm-1"), iops.Measurement{Reason: iops.ReasonNoSeries}, Skip, CodeIOPSUnknown, Warm, None},
		{"unpublished is 0 and known: cold", p, vol("warm-1"), known(0), Move, CodeMove, Warm, Cold},
		{"mixed majority on target stays", p, vol("hot-1", "hot-2", "cold-1"), known(9000), Stay, CodeOnTier, Hot, Hot},
		{"mixed tie counts slower, so hot IOPS moves it", p, vol("hot-1", "cold-1"), known(9000), Move, CodeMove, Cold, Hot},
		{"no tiered replica", p, vol("elsewhere"), known(9000), Skip, CodeNoCurrentTier, None, Hot},
		{"no MayastorVolume", p, Volume{Name: "pv"}, known(9000), Skip, CodeNoMayastorVolume, None, None},
		{"in cooldown", p, withPV(vol("warm-1"), AnnotationLastMigration, recent), known(9000), Skip, CodeCooldown, Warm, Hot},
		{"cooldown over", p, withPV(vol("warm-1"), AnnotationLastMigration, old), known(9000), Move, CodeMove, Warm, Hot},
		{"back-off after 1 failure", p, withPV(vol("warm-1"), AnnotationLastMigration, old, AnnotationMigrationFailures, "1"), known(9000), Skip, CodeCooldown, Warm, Hot},
		{"unparsable cooldown blocks", p, withPV(vol("warm-1"), AnnotationLastMigration, "soon"), known(9000), Skip, CodeBadAnnotation, Warm, Hot},
		{"excluded on PVC", p, withPVC(vol("warm-1"), AnnotationExclude, "true"), known(9000), Skip, CodeExcluded, Warm, None},
		{"excluded on PV", p, withPV(vol("warm-1"), AnnotationExclude, "True"), known(9000), Skip, CodeExcluded, Warm, None},
		{"pinned hot moves without IOPS", p, withPVC(vol("cold-1"), AnnotationPinTier, "hot"), unknown, Move, CodeMove, Cold, Hot},
		{"pinned stays against IOPS", p, withPVC(vol("cold-1"), AnnotationPinTier, "cold"), known(9000), Stay, CodeOnTier, Cold, Cold},
		{"PV pin wins over PVC pin", p, withPV(withPVC(vol("cold-1"), AnnotationPinTier, "hot"), AnnotationPinTier, "cold"), known(9000), Stay, CodeOnTier, Cold, Cold},
		{"bad pin", p, withPVC(vol("cold-1"), AnnotationPinTier, "lukewarm"), known(9000), Skip, CodeBadAnnotation, Cold, None},
	}
	for _, c := range cases {
		d := Decide(c.p, c.v, c.m, poolTiers, now)
		if d.Action != c.action || d.Code != c.code || d.From != c.from || d.To != c.to {
			t.Errorf("%s: got %s/%s %q→%q (%s), want %s/%s %q→%q", c.name, d.Action, d.Code, d.From, d.To, d.Reason, c.action, c.code, c.from, c.to)
		}
	}
}

func TestEvaluateCountsAndECCandidates(t *testing.T) {
	p := testPolicy()
	vols := []Volume{
		{Name: "a", MayastorVolume: true, Published: true, ReplicaPools: []string{"hot-1"}, SizeBytes: 1000},
		{Name: "b", MayastorVolume: true, Published: true, ReplicaPools: []string{"cold-1"}, SizeBytes: 1000},
		{Name: "c", MayastorVolume: true, ReplicaPools: []string{"cold-2"}, SizeBytes: 10}, // too small for EC
		{Name: "d", MayastorVolume: true, Published: true, ReplicaPools: []string{"warm-1"}},
	}
	ms := map[string]iops.Measurement{"a": known(1), "b": known(1), "c": known(0)} // d missing: unknown
	e := Evaluate(p, vols, ms, poolTiers, time.Now())
	if e.Current[Hot] != 1 || e.Current[Cold] != 2 || e.Current[Warm] != 1 {
		t.Errorf("current %v", e.Current)
	}
	if e.Actions[Move] != 1 || e.Actions[Stay] != 2 || e.Actions[Skip] != 1 {
		t.Errorf("actions %v", e.Actions)
	}
	if e.ECCandidates != 1 {
		t.Errorf("EC candidates %d, want 1 (b)", e.ECCandidates)
	}
	if d := e.Decisions[0]; d.Describe() != "a hot → cold (1 IOPS)" {
		t.Errorf("describe %q", d.Describe())
	}
	p.ECEnabled = false
	if Evaluate(p, vols, ms, poolTiers, time.Now()).ECCandidates != 0 {
		t.Error("EC candidates counted without ecPolicyRef")
	}
}

func TestDryRunDue(t *testing.T) {
	now := time.Now()
	if !DryRunDue(time.Time{}, now, time.Hour) || DryRunDue(now.Add(-59*time.Minute), now, time.Hour) || !DryRunDue(now.Add(-time.Hour), now, time.Hour) {
		t.Fatal("once per cooldown period")
	}
}
