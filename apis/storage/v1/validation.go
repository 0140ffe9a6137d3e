package v1

import (
	"fmt"
	"sort"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/billyronks/couchestor/apis/storage/v1/geometry"
)

// The rules of database-schema.md section 6, and the ones users expect beyond
// it, as pure functions. Each Validate* function judges the spec as it would
// be after defaulting (it defaults a copy first), so a controller may call it
// on an object read from anywhere and get the webhook's verdict. Errors name
// the field, the value and the rule; warnings are soft problems that do not
// stop admission.
//
// Cross-object rules take the facts they need as arguments (does the policy
// exist, which stripes of the volume collide), so that the webhooks can answer
// them from the manager's cache and controllers from their own indexes.

// WarmWatermarkOscillationFraction: a warm watermark closer than this fraction
// of the high watermark to it gets a warning (volumes near the boundary flip
// between hot and warm).
const WarmWatermarkOscillationFraction = 0.10

// ValidateStoragePolicySpec checks the rules of one StoragePolicy that need no
// other object (schema 6.1 except the ecPolicyRef lookup; see
// ValidateECPolicyRef). It returns the errors and the warnings.
func ValidateStoragePolicySpec(in *StoragePolicySpec, fldPath *field.Path) (field.ErrorList, []string) {
	spec := in.DeepCopy()
	DefaultStoragePolicySpec(spec)
	var errs field.ErrorList
	var warns []string

	high, warm, low := *spec.HighWatermarkIOPS, *spec.WarmWatermarkIOPS, *spec.LowWatermarkIOPS
	nonNegative := true
	for _, w := range []struct {
		name string
		v    int64
	}{{"highWatermarkIOPS", high}, {"warmWatermarkIOPS", warm}, {"lowWatermarkIOPS", low}} {
		if w.v < 0 {
			errs = append(errs, field.Invalid(fldPath.Child(w.name), w.v, "must be greater than or equal to 0"))
			nonNegative = false
		}
	}
	if nonNegative {
		ordered := true
		if high <= warm {
			errs = append(errs, field.Invalid(fldPath.Child("highWatermarkIOPS"), high,
				fmt.Sprintf("must be greater than %s (%d)", fldPath.Child("warmWatermarkIOPS"), warm)))
			ordered = false
		}
		if warm <= low {
			errs = append(errs, field.Invalid(fldPath.Child("warmWatermarkIOPS"), warm,
				fmt.Sprintf("must be greater than %s (%d)", fldPath.Child("lowWatermarkIOPS"), low)))
			ordered = false
		}
		if ordered && float64(high-warm) < WarmWatermarkOscillationFraction*float64(high) {
			warns = append(warns, fmt.Sprintf("%s (%d) is within 10%% of %s (%d): volumes near the boundary may oscillate between hot and warm",
				fldPath.Child("warmWatermarkIOPS"), warm, fldPath.Child("highWatermarkIOPS"), high))
		}
	}

	errs = append(errs, validateDuration(spec.SamplingWindow, fldPath.Child("samplingWindow"))...)
	errs = append(errs, validateDuration(spec.CooldownPeriod, fldPath.Child("cooldownPeriod"))...)
	errs = append(errs, validateDuration(spec.MigrationTimeout, fldPath.Child("migrationTimeout"))...)
	if n := *spec.MaxConcurrentMigrations; n <= 0 {
		errs = append(errs, field.Invalid(fldPath.Child("maxConcurrentMigrations"), n, "must be greater than 0"))
	}
	if n := *spec.ECMinVolumeSizeBytes; n < 0 {
		errs = append(errs, field.Invalid(fldPath.Child("ecMinVolumeSizeBytes"), n, "must be greater than or equal to 0"))
	}

	tiers := 0
	for _, t := range []struct {
		name string
		sel  *metav1.LabelSelector
	}{{"hotPoolSelector", spec.HotPoolSelector}, {"warmPoolSelector", spec.WarmPoolSelector}, {"coldPoolSelector", spec.ColdPoolSelector}} {
		if t.sel == nil {
			continue
		}
		tiers++
		p := fldPath.Child(t.name)
		if len(t.sel.MatchLabels) == 0 && len(t.sel.MatchExpressions) == 0 {
			errs = append(errs, field.Invalid(p, "{}", "must not be empty: an empty selector matches every pool; omit the field to leave the tier out"))
			continue
		}
		errs = append(errs, validateSelector(t.sel, p)...)
	}
	if spec.VolumeSelector != nil {
		errs = append(errs, validateSelector(spec.VolumeSelector, fldPath.Child("volumeSelector"))...)
	}
	if tiers < 2 {
		warns = append(warns, fmt.Sprintf("only %d of %s, %s, %s set: a policy needs at least two tiers to move anything",
			tiers, fldPath.Child("hotPoolSelector"), fldPath.Child("warmPoolSelector"), fldPath.Child("coldPoolSelector")))
	}
	return errs, warns
}

// ValidateECPolicyRef is schema 6.1's last rule: a set ecPolicyRef names an
// ErasureCodingPolicy that exists. The policy must be applied before the
// StoragePolicy that names it (order GitOps syncs accordingly).
func ValidateECPolicyRef(spec *StoragePolicySpec, exists bool, fldPath *field.Path) field.ErrorList {
	if spec.ECPolicyRef == "" || exists {
		return nil
	}
	return field.ErrorList{field.NotFound(fldPath.Child("ecPolicyRef"),
		spec.ECPolicyRef+" (no ErasureCodingPolicy of that name exists; apply it before this StoragePolicy)")}
}

// StoragePolicyOverlapWarnings warns when other StoragePolicies can select the
// same volumes as spec: the same storageClassName and volume selectors that are
// absent or can match a common label set. The tiering controller resolves such
// conflicts at run time; admission only tells the user.
func StoragePolicyOverlapWarnings(name string, in *StoragePolicySpec, others []StoragePolicy, fldPath *field.Path) []string {
	spec := in.DeepCopy()
	DefaultStoragePolicySpec(spec)
	var clash []string
	for i := range others {
		o := &others[i]
		if o.Name == name {
			continue
		}
		os := o.Spec.DeepCopy()
		DefaultStoragePolicySpec(os)
		if os.StorageClassName != spec.StorageClassName {
			continue
		}
		if SelectorsMayOverlap(spec.VolumeSelector, os.VolumeSelector) {
			clash = append(clash, o.Name)
		}
	}
	if len(clash) == 0 {
		return nil
	}
	sort.Strings(clash)
	return []string{fmt.Sprintf("%s %q with %s may select the same volumes as StoragePolicy %s: each volume should be tiered by one policy",
		fldPath.Child("storageClassName"), spec.StorageClassName, fldPath.Child("volumeSelector"), strings.Join(clash, ", "))}
}

// SelectorsMayOverlap reports whether some label set could match both
// selectors (nil matches everything). It is conservative: it says false only
// when a label is pinned to different values, or pinned to a value that the
// other selector excludes or requires to be absent.
func SelectorsMayOverlap(a, b *metav1.LabelSelector) bool {
	if a == nil || b == nil {
		return true
	}
	ra, errA := metav1.LabelSelectorAsSelector(a)
	rb, errB := metav1.LabelSelectorAsSelector(b)
	if errA != nil || errB != nil {
		return true // invalid selectors are refused elsewhere; do not add noise here
	}
	reqA, _ := ra.Requirements()
	reqB, _ := rb.Requirements()
	pinned := func(reqs labels.Requirements) map[string]string {
		m := map[string]string{}
		for _, r := range reqs {
			if (r.Operator() == "=" || r.Operator() == "==" || r.Operator() == "in") && r.Values().Len() == 1 {
				m[r.Key()] = r.Values().List()[0]
			}
		}
		return m
	}
	pa, pb := pinned(reqA), pinned(reqB)
	for k, v := range pa {
		if w, ok := pb[k]; ok && w != v {
			return false
		}
	}
	// A label set built from both pins must satisfy each selector.
	both := labels.Set{}
	for k, v := range pa {
		both[k] = v
	}
	for k, v := range pb {
		both[k] = v
	}
	for _, reqs := range []labels.Requirements{reqA, reqB} {
		for _, r := range reqs {
			if _, isPinned := both[r.Key()]; isPinned && !r.Matches(both) {
				return false
			}
		}
	}
	return true
}

// ValidateErasureCodingPolicySpec checks the rules of one ErasureCodingPolicy
// (schema 6.2, the LRC layout and block geometry pinned in package geometry).
func ValidateErasureCodingPolicySpec(in *ErasureCodingPolicySpec, fldPath *field.Path) (field.ErrorList, []string) {
	spec := in.DeepCopy()
	DefaultErasureCodingPolicySpec(spec)
	var errs field.ErrorList
	var warns []string

	k, m := int64(*spec.DataShards), int64(*spec.ParityShards)
	countsOK := true
	if k < 1 || k > geometry.MaxTotalShards {
		errs = append(errs, field.Invalid(fldPath.Child("dataShards"), k, "must be between 1 and 255"))
		countsOK = false
	}
	if m < 1 || m > geometry.MaxTotalShards {
		errs = append(errs, field.Invalid(fldPath.Child("parityShards"), m, "must be between 1 and 255"))
		countsOK = false
	}
	if countsOK && k+m > geometry.MaxTotalShards {
		errs = append(errs, field.Invalid(fldPath.Child("parityShards"), m,
			fmt.Sprintf("%s + %s (%d + %d = %d) must not exceed 255 (shard indices are u8)",
				fldPath.Child("dataShards"), fldPath.Child("parityShards"), k, m, k+m)))
		countsOK = false
	}

	size := *spec.StripeSizeBytes
	switch {
	case size < geometry.MinStripeSizeBytes || size > geometry.MaxStripeSizeBytes:
		errs = append(errs, field.Invalid(fldPath.Child("stripeSizeBytes"), size, "must be between 65536 (64 KiB) and 67108864 (64 MiB)"))
	case size%geometry.StripeAlignment != 0:
		errs = append(errs, field.Invalid(fldPath.Child("stripeSizeBytes"), size, "must be a multiple of 4096"))
	}

	switch spec.Algorithm {
	case AlgorithmReedSolomon:
	case AlgorithmLRC:
		if countsOK {
			if _, err := geometry.NewLRCLayout(int(k), int(m)); err != nil {
				errs = append(errs, field.Invalid(fldPath.Child("algorithm"), string(spec.Algorithm), err.Error()))
			}
		}
	default:
		errs = append(errs, field.NotSupported(fldPath.Child("algorithm"), string(spec.Algorithm),
			[]string{string(AlgorithmReedSolomon), string(AlgorithmLRC)}))
	}

	if countsOK {
		if mh := int64(*spec.MinHealthyShards); mh < k || mh > k+m {
			errs = append(errs, field.Invalid(fldPath.Child("minHealthyShards"), mh,
				fmt.Sprintf("must lie in [%s, %s + %s] = [%d, %d]", fldPath.Child("dataShards"), fldPath.Child("dataShards"), fldPath.Child("parityShards"), k, k+m)))
		}
		if m > k {
			warns = append(warns, fmt.Sprintf("%s (%d) is greater than %s (%d): more parity than data costs more than twice the data in storage and write bandwidth; check that this is intended",
				fldPath.Child("parityShards"), m, fldPath.Child("dataShards"), k))
		}
	}

	if j := spec.JournalConfig; j != nil {
		jp := fldPath.Child("journalConfig")
		if n := *j.JournalSizeBytes; n < 0 {
			errs = append(errs, field.Invalid(jp.Child("journalSizeBytes"), n, "must be greater than or equal to 0"))
		}
		if n := *j.ReplicationFactor; n <= 0 || n > 255 {
			errs = append(errs, field.Invalid(jp.Child("replicationFactor"), n, "must be greater than 0 and at most 255"))
		}
		if n := *j.DestageThresholdPercent; n < 0 || n > 100 {
			errs = append(errs, field.Invalid(jp.Child("destageThresholdPercent"), n, "must be between 0 and 100"))
		}
		errs = append(errs, validateDuration(j.DestageInterval, jp.Child("destageInterval"))...)
	}
	errs = append(errs, validateDuration(spec.ScrubInterval, fldPath.Child("scrubInterval"))...)
	return errs, warns
}

// ValidateErasureCodingPolicyUpdate refuses changes to the fields that define
// how existing stripes were encoded, while the policy has stripes.
func ValidateErasureCodingPolicyUpdate(oldIn, newIn *ErasureCodingPolicySpec, stripes int, fldPath *field.Path) field.ErrorList {
	if stripes == 0 {
		return nil
	}
	o, n := oldIn.DeepCopy(), newIn.DeepCopy()
	DefaultErasureCodingPolicySpec(o)
	DefaultErasureCodingPolicySpec(n)
	var errs field.ErrorList
	why := func(old any) string {
		return fmt.Sprintf("is immutable while ECStripes use this policy (%d exist; was %v): their shards were encoded with it", stripes, old)
	}
	if *o.DataShards != *n.DataShards {
		errs = append(errs, field.Invalid(fldPath.Child("dataShards"), *n.DataShards, why(*o.DataShards)))
	}
	if *o.ParityShards != *n.ParityShards {
		errs = append(errs, field.Invalid(fldPath.Child("parityShards"), *n.ParityShards, why(*o.ParityShards)))
	}
	if *o.StripeSizeBytes != *n.StripeSizeBytes {
		errs = append(errs, field.Invalid(fldPath.Child("stripeSizeBytes"), *n.StripeSizeBytes, why(*o.StripeSizeBytes)))
	}
	if o.Algorithm != n.Algorithm {
		errs = append(errs, field.Invalid(fldPath.Child("algorithm"), string(n.Algorithm), why(o.Algorithm)))
	}
	return errs
}

// Referrers names the objects that still use an ErasureCodingPolicy. The
// lists may be truncated; the totals are exact.
// +kubebuilder:object:generate=false
// +kubebuilder:object:generate=false
type Referrers struct {
	StoragePolicies      []string
	TotalStoragePolicies int
	ECStripes            []string
	TotalECStripes       int
}

// ErasureCodingPolicyDeleteRefusal says why a policy must not be deleted, or
// "" when nothing references it.
func ErasureCodingPolicyDeleteRefusal(name string, r Referrers) string {
	var parts []string
	list := func(kind, field string, names []string, total int) {
		if total == 0 {
			return
		}
		s := fmt.Sprintf("%d %s (%s %s)", total, kind, field, strings.Join(names, ", "))
		if total > len(names) {
			s = fmt.Sprintf("%d %s (%s %s, and %d more)", total, kind, field, strings.Join(names, ", "), total-len(names))
		}
		parts = append(parts, s)
	}
	list("StoragePolicies", "spec.ecPolicyRef of", r.StoragePolicies, r.TotalStoragePolicies)
	list("ECStripes", "spec.policyRef of", r.ECStripes, r.TotalECStripes)
	if len(parts) == 0 {
		return ""
	}
	return fmt.Sprintf("ErasureCodingPolicy %s is still referenced by %s: delete or repoint them first",
		name, strings.Join(parts, " and "))
}

// ValidateECStripeSpec checks one stripe against the ErasureCodingPolicy it
// names (policy nil: it does not exist): exactly k+m shardLocations, each
// shardIndex unique and in [0, k+m), isDataShard exactly for index < k, a
// non-empty LBA range no longer than one stripe (stripeSizeBytes / 512 LBAs).
func ValidateECStripeSpec(spec *ECStripeSpec, policy *ErasureCodingPolicySpec, fldPath *field.Path) (field.ErrorList, []string) {
	var errs field.ErrorList
	if spec.VolumeRef == "" {
		errs = append(errs, field.Required(fldPath.Child("volumeRef"), "names the volume the stripe belongs to"))
	}
	if spec.StripeID < 0 {
		errs = append(errs, field.Invalid(fldPath.Child("stripeId"), spec.StripeID, "must be greater than or equal to 0"))
	}
	if spec.Generation < 0 {
		errs = append(errs, field.Invalid(fldPath.Child("generation"), spec.Generation, "must be greater than or equal to 0"))
	}
	lr := fldPath.Child("lbaRange")
	start, end := spec.LbaRange.StartLba, spec.LbaRange.EndLba
	if start < 0 {
		errs = append(errs, field.Invalid(lr.Child("startLba"), start, "must be greater than or equal to 0"))
	}
	if start >= end {
		errs = append(errs, field.Invalid(lr.Child("endLba"), end,
			fmt.Sprintf("must be greater than %s (%d): endLba is exclusive and a stripe is never empty", lr.Child("startLba"), start)))
	}
	shards := fldPath.Child("shardLocations")
	for i, s := range spec.ShardLocations {
		p := shards.Index(i)
		if s.Offset < 0 {
			errs = append(errs, field.Invalid(p.Child("offset"), s.Offset, "must be greater than or equal to 0"))
		}
		if s.SizeBytes < 0 {
			errs = append(errs, field.Invalid(p.Child("sizeBytes"), s.SizeBytes, "must be greater than or equal to 0"))
		}
	}

	if spec.PolicyRef == "" {
		return append(errs, field.Required(fldPath.Child("policyRef"), "names the ErasureCodingPolicy the stripe was written under")), nil
	}
	if policy == nil {
		return append(errs, field.NotFound(fldPath.Child("policyRef"), spec.PolicyRef+" (no ErasureCodingPolicy of that name exists)")), nil
	}
	p := policy.DeepCopy()
	DefaultErasureCodingPolicySpec(p)
	k, m := int64(*p.DataShards), int64(*p.ParityShards)
	if span := geometry.StripeSpanLBAs(*p.StripeSizeBytes); start < end && end-start > span {
		errs = append(errs, field.Invalid(lr.Child("endLba"), end,
			fmt.Sprintf("the stripe spans %d LBAs (%d - %d); ErasureCodingPolicy %s allows at most stripeSizeBytes / 512 = %d",
				end-start, end, start, spec.PolicyRef, span)))
	}
	if n := int64(len(spec.ShardLocations)); n != k+m {
		errs = append(errs, field.Invalid(shards, n,
			fmt.Sprintf("must have exactly dataShards + parityShards = %d + %d = %d entries for ErasureCodingPolicy %s", k, m, k+m, spec.PolicyRef)))
	}
	seen := make(map[int32]int, len(spec.ShardLocations))
	for i, s := range spec.ShardLocations {
		p := shards.Index(i)
		idx := int64(s.ShardIndex)
		if idx < 0 || idx >= k+m {
			errs = append(errs, field.Invalid(p.Child("shardIndex"), s.ShardIndex, fmt.Sprintf("must be in [0, %d) (dataShards + parityShards)", k+m)))
			continue
		}
		if j, dup := seen[s.ShardIndex]; dup {
			errs = append(errs, field.Duplicate(p.Child("shardIndex"), fmt.Sprintf("%d (also at %s)", s.ShardIndex, shards.Index(j))))
			continue
		}
		seen[s.ShardIndex] = i
		if want := idx < k; s.IsDataShard != want {
			errs = append(errs, field.Invalid(p.Child("isDataShard"), s.IsDataShard,
				fmt.Sprintf("must be %v for shardIndex %d: exactly the indices below dataShards (%d) are data shards", want, idx, k)))
		}
	}
	return errs, nil
}

// ValidateECStripeUpdate refuses changes to a stripe's identity: which
// volume it belongs to (spec.volumeRef and the ECStripeVolumeLabel), where in
// the volume it sits (spec.stripeId, spec.lbaRange.startLba), and the policy
// its shards were encoded under (spec.policyRef). spec.lbaRange.endLba may
// only grow: a volume that grew extends its last, partial stripe. The CRD's
// CEL transition rules say the same for the spec fields (a test holds them to
// it); the label is judged here alone, as CEL cannot see metadata.labels. A
// stripe created without the label may gain it, with its volume's value.
func ValidateECStripeUpdate(oldObj, newObj *ECStripe) field.ErrorList {
	var errs field.ErrorList
	spec := field.NewPath("spec")
	o, n := &oldObj.Spec, &newObj.Spec
	immutable := func(p *field.Path, now, was any, why string) {
		errs = append(errs, field.Invalid(p, now, fmt.Sprintf("is immutable (was %v): %s", was, why)))
	}
	if n.VolumeRef != o.VolumeRef {
		immutable(spec.Child("volumeRef"), n.VolumeRef, o.VolumeRef, "the stripe's shards hold that volume's data")
	}
	if n.StripeID != o.StripeID {
		immutable(spec.Child("stripeId"), n.StripeID, o.StripeID, "it fixes the stripe's place in the volume")
	}
	if n.PolicyRef != o.PolicyRef {
		immutable(spec.Child("policyRef"), n.PolicyRef, o.PolicyRef, "the stripe's shards were encoded under that policy")
	}
	lr := spec.Child("lbaRange")
	if n.LbaRange.StartLba != o.LbaRange.StartLba {
		immutable(lr.Child("startLba"), n.LbaRange.StartLba, o.LbaRange.StartLba, "it fixes the stripe's place in the volume")
	}
	if n.LbaRange.EndLba < o.LbaRange.EndLba {
		errs = append(errs, field.Invalid(lr.Child("endLba"), n.LbaRange.EndLba,
			fmt.Sprintf("may only grow (was %d; a grown volume extends its last stripe): shrinking would drop written data", o.LbaRange.EndLba)))
	}
	lp := field.NewPath("metadata", "labels").Key(ECStripeVolumeLabel)
	was, had := oldObj.Labels[ECStripeVolumeLabel]
	now, has := newObj.Labels[ECStripeVolumeLabel]
	switch {
	case had && !has:
		errs = append(errs, field.Required(lp, fmt.Sprintf("is immutable (was %q): it names the stripe's volume and must not be removed", was)))
	case had && now != was:
		immutable(lp, now, fmt.Sprintf("%q", was), "it names the stripe's volume")
	case !had && has && now != ECStripeVolumeLabelValue(o.VolumeRef):
		errs = append(errs, field.Invalid(lp, now,
			fmt.Sprintf("must be %q, the label value of spec.volumeRef %s, when added", ECStripeVolumeLabelValue(o.VolumeRef), o.VolumeRef)))
	}
	return errs
}

// StripeRef identifies another stripe in a collision message.
// +kubebuilder:object:generate=false
// +kubebuilder:object:generate=false
type StripeRef struct {
	Name     string
	StripeID int64
	LbaRange LbaRange
}

// StripeNeighbours answers the cross-object ECStripe questions about the other
// stripes of the same volume. self is the name of the stripe being judged: a
// stripe never collides with itself.
// +kubebuilder:object:generate=false
// +kubebuilder:object:generate=false
type StripeNeighbours interface {
	// StripeWithID returns another stripe of volume with that stripeId.
	StripeWithID(volume string, stripeID int64, self string) (StripeRef, bool)
	// Overlapping returns another stripe of volume whose range overlaps [start, end).
	Overlapping(volume string, start, end int64, self string) (StripeRef, bool)
}

// ValidateECStripeNeighbours checks schema 6.3's cross-object rules: stripeId
// unique within the volume, and no LBA overlap with another stripe of the
// volume (ranges are half-open, so [0,128) and [128,256) do not overlap).
func ValidateECStripeNeighbours(name string, spec *ECStripeSpec, n StripeNeighbours, fldPath *field.Path) field.ErrorList {
	var errs field.ErrorList
	if o, found := n.StripeWithID(spec.VolumeRef, spec.StripeID, name); found {
		errs = append(errs, field.Duplicate(fldPath.Child("stripeId"),
			fmt.Sprintf("%d (ECStripe %s of volume %s has it; stripeId must be unique within the volume)", spec.StripeID, o.Name, spec.VolumeRef)))
	}
	if start, end := spec.LbaRange.StartLba, spec.LbaRange.EndLba; start < end {
		if o, found := n.Overlapping(spec.VolumeRef, start, end, name); found {
			errs = append(errs, field.Invalid(fldPath.Child("lbaRange"), fmt.Sprintf("[%d, %d)", start, end),
				fmt.Sprintf("overlaps ECStripe %s of volume %s, which holds [%d, %d): stripes of a volume must not overlap",
					o.Name, spec.VolumeRef, o.LbaRange.StartLba, o.LbaRange.EndLba)))
		}
	}
	return errs
}

func validateDuration(s string, p *field.Path) field.ErrorList {
	if _, err := ParseDuration(s); err != nil {
		return field.ErrorList{field.Invalid(p, s, fmt.Sprintf("must be %s; this value %v", DurationSyntax, err))}
	}
	return nil
}

func validateSelector(sel *metav1.LabelSelector, p *field.Path) field.ErrorList {
	return metav1validation.ValidateLabelSelector(sel, metav1validation.LabelSelectorValidationOptions{}, p)
}
