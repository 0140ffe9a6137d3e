package tiering

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// Tier is a storage tier. The zero value means "no tier".
type Tier string

const (
	None Tier = ""
	Hot  Tier = "hot"
	Warm Tier = "warm"
	Cold Tier = "cold"
)

// Tiers lists the tiers from fastest to slowest.
var Tiers = []Tier{Hot, Warm, Cold}

// speed orders tiers: higher is faster.
func (t Tier) speed() int {
	switch t {
	case Hot:
		return 3
	case Warm:
		return 2
	case Cold:
		return 1
	}
	return 0
}

// ParseTier reads "hot", "warm" or "cold".
func ParseTier(s string) (Tier, error) {
	switch t := Tier(s); t {
	case Hot, Warm, Cold:
		return t, nil
	}
	return None, fmt.Errorf("%q is not a tier (hot, warm or cold)", s)
}

// Watermarks are a policy's IOPS thresholds, High > Warm > Low.
type Watermarks struct {
	High, Warm, Low float64
}

// Classify returns the tier iops belongs to, or ok=false in the dead band.
// warmTier says whether the policy has a warm tier.
func Classify(iops float64, w Watermarks, warmTier bool) (t Tier, ok bool) {
	switch {
	case iops >= w.High:
		return Hot, true
	case iops <= w.Low:
		return Cold, true
	case warmTier && iops >= w.Warm:
		return Warm, true
	}
	return None, false
}

// Slower reports whether t is a slower tier than u; false when either is None.
func (t Tier) Slower(u Tier) bool { return t != None && u != None && t.speed() < u.speed() }

// DefaultHysteresisPercent is the default demotion margin (see Hysteresis).
const DefaultHysteresisPercent = 10

// AnnotationHysteresis on a StoragePolicy sets its demotion margin in percent
// ("10", "2.5"; 0 <= x < 100), overriding --tiering-hysteresis-percent.
const AnnotationHysteresis = "storage.billyronks.io/hysteresis-percent"

// ParseHysteresis reads a margin in percent and returns it as a fraction.
func ParseHysteresis(s string) (float64, error) {
	x, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || x != x {
		return 0, fmt.Errorf("%q is not a number (percent, e.g. 10)", s)
	}
	if x < 0 || x >= 100 {
		return 0, fmt.Errorf("%v%% must be at least 0 and below 100", x)
	}
	return x / 100, nil
}

// Demote is the tier a volume on tier from belongs on when its IOPS were
// classified slower than from (raw): the classification of iops ÷ (1 −
// margin), that is, against every watermark lowered by the margin. ok=false
// means it stays on from (within the margin of the watermark it would cross,
// or in the dead band once the margin is applied).
func Demote(iops float64, w Watermarks, warmTier bool, margin float64, from Tier) (t Tier, ok bool) {
	t, ok = Classify(iops/(1-margin), w, warmTier)
	if !ok || !t.Slower(from) {
		return None, false
	}
	return t, true
}

// TierSelectors are a policy's pool selectors; a nil selector means that tier
// does not exist.
type TierSelectors map[Tier]labels.Selector

// CompileSelectors converts the policy's LabelSelectors.
func CompileSelectors(hot, warm, cold *metav1.LabelSelector) (TierSelectors, error) {
	s := TierSelectors{}
	for _, x := range []struct {
		t   Tier
		sel *metav1.LabelSelector
	}{{Hot, hot}, {Warm, warm}, {Cold, cold}} {
		if x.sel == nil {
			continue
		}
		ls, err := metav1.LabelSelectorAsSelector(x.sel)
		if err != nil {
			return nil, fmt.Errorf("%sPoolSelector: %w", x.t, err)
		}
		s[x.t] = ls
	}
	return s, nil
}

// Has reports whether the tier exists.
func (s TierSelectors) Has(t Tier) bool { return s[t] != nil }

// PoolTier returns the tier whose selector matches a pool's topology labels:
// None when no tier matches, and ambiguous=true (with None) when several do.
func (s TierSelectors) PoolTier(poolLabels map[string]string) (t Tier, ambiguous bool) {
	set := labels.Set(poolLabels)
	for _, tier := range Tiers {
		if sel := s[tier]; sel != nil && sel.Matches(set) {
			if t != None {
				return None, true
			}
			t = tier
		}
	}
	return t, false
}

// VolumeSelector converts a policy's volumeSelector; nil selects every volume
// (unlike metav1.LabelSelectorAsSelector, for which nil selects nothing).
func VolumeSelector(sel *metav1.LabelSelector) (labels.Selector, error) {
	if sel == nil {
		return labels.Everything(), nil
	}
	ls, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		return nil, fmt.Errorf("volumeSelector: %w", err)
	}
	return ls, nil
}

// Placement is where a volume's replicas are.
type Placement struct {
	// Tier is the current tier: the majority's, ties to the slower tier.
	Tier Tier
	// Mixed: replicas on more than one tier (untiered replicas do not count).
	Mixed bool
	// Replicas per tier; Replicas[None] counts replicas on no (or an ambiguous) tier.
	Replicas map[Tier]int
}

// String describes a placement for Events: "hot", "mixed (2 hot, 1 cold)".
func (p Placement) String() string {
	if p.Tier == None {
		return "no tier"
	}
	if !p.Mixed {
		return string(p.Tier)
	}
	s := "mixed ("
	first := true
	for _, t := range append(append([]Tier{}, Tiers...), None) {
		if n := p.Replicas[t]; n > 0 {
			if !first {
				s += ", "
			}
			name := string(t)
			if t == None {
				name = "untiered"
			}
			s += strconv.Itoa(n) + " " + name
			first = false
		}
	}
	return s + ")"
}

// CurrentTier computes a placement from the pools of a volume's replicas and
// each pool's tier (pools absent from poolTiers count as no tier).
func CurrentTier(replicaPools []string, poolTiers map[string]Tier) Placement {
	p := Placement{Replicas: map[Tier]int{}}
	tiers := 0
	for _, pool := range replicaPools {
		t := poolTiers[pool]
		if t != None && p.Replicas[t] == 0 {
			tiers++
		}
		p.Replicas[t]++
	}
	p.Mixed = tiers > 1
	best := 0
	for _, t := range Tiers { // fastest first, so a later (slower) tier wins ties
		if n := p.Replicas[t]; n > 0 && n >= best {
			best, p.Tier = n, t
		}
	}
	return p
}

// Annotation keys CoucheStor reads on PVs (and PVCs for the opt-outs).
const (
	AnnotationLastMigration     = "storage.billyronks.io/last-migration"
	AnnotationMigrationFailures = "storage.billyronks.io/migration-failures"
	AnnotationPinTier           = "storage.billyronks.io/pin-tier"
	AnnotationExclude           = "storage.billyronks.io/exclude-from-tiering"
	// AnnotationConversion on a PV: a conversion (pkg/conversion) is in
	// progress or its source is retained; tiering does not move the volume.
	AnnotationConversion = "storage.billyronks.io/ec-conversion"
)

// MaxBackoffDoublings caps the failure back-off at 2^4 = 16 cooldown periods.
const MaxBackoffDoublings = 4

// Cooldown returns when the volume may move again, from its PV annotations.
// The zero time means it may move now (never migrated).
func Cooldown(pvAnnotations map[string]string, cooldown time.Duration) (time.Time, error) {
	raw, ok := pvAnnotations[AnnotationLastMigration]
	if !ok || raw == "" {
		return time.Time{}, nil
	}
	last, err := time.Parse(time.RFC3339, raw)
	if err != nil {
		return time.Time{}, fmt.Errorf("annotation %s=%q: not an RFC 3339 time", AnnotationLastMigration, raw)
	}
	n := 0
	if f, ok := pvAnnotations[AnnotationMigrationFailures]; ok && f != "" {
		n, err = strconv.Atoi(f)
		if err != nil || n < 0 {
			return time.Time{}, fmt.Errorf("annotation %s=%q: not a non-negative integer", AnnotationMigrationFailures, f)
		}
	}
	n = min(n, MaxBackoffDoublings)
	mult := time.Duration(1) << n
	if cooldown > math.MaxInt64/mult {
		// cooldown·2^n does not fit a Duration (about 292 years): saturate,
		// never wrap around into the past.
		return last.Add(math.MaxInt64), nil
	}
	return last.Add(cooldown * mult), nil
}
