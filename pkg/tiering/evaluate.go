package tiering

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/billyronks/couchestor/pkg/iops"
)

// MayastorCSIDriver is the CSI driver name of Mayastor's PVs.
const MayastorCSIDriver = "io.openebs.csi-mayastor"

// VolumeRef is what selection needs to know about a PV.
type VolumeRef struct {
	StorageClass string
	CSIDriver    string
	// HasPVC: the PV is bound to a PVC that exists; PVCLabels are its labels.
	HasPVC    bool
	PVCLabels map[string]string
}

// PolicyRef is what ownership needs to know about a policy.
type PolicyRef struct {
	Name           string
	Created        time.Time
	StorageClass   string
	VolumeSelector labels.Selector // from VolumeSelector: never nil
}

// Selects reports whether the policy watches the volume.
func (p PolicyRef) Selects(v VolumeRef) bool {
	if v.CSIDriver != MayastorCSIDriver || v.StorageClass != p.StorageClass {
		return false
	}
	if !v.HasPVC {
		return p.VolumeSelector.Empty() // unknown labels match only "every volume"
	}
	return p.VolumeSelector.Matches(labels.Set(v.PVCLabels))
}

// Older orders policies for ownership: earlier creation, then name.
func (p PolicyRef) Older(q PolicyRef) bool {
	if !p.Created.Equal(q.Created) {
		return p.Created.Before(q.Created)
	}
	return p.Name < q.Name
}

// Owner returns the oldest of the (enabled) policies that selects v, or "".
func Owner(policies []PolicyRef, v VolumeRef) string {
	var best *PolicyRef
	for i := range policies {
		if policies[i].Selects(v) && (best == nil || policies[i].Older(*best)) {
			best = &policies[i]
		}
	}
	if best == nil {
		return ""
	}
	return best.Name
}

// Volume is one watched volume as the controller observed it.
type Volume struct {
	// Name is the PV name (also the volume label of its IOPS series).
	Name      string
	SizeBytes int64
	// MayastorVolume: the backend has a volume of the PV's CSI volume handle
	// (a REST volume uuid, or a MayastorVolume's name).
	MayastorVolume bool
	Published      bool
	// Unmovable, when set, says why the backend cannot move the volume now
	// (e.g. unpublished on Mayastor 2.x, or a replica whose pool is unknown).
	Unmovable      string
	ReplicaPools   []string
	PVAnnotations  map[string]string
	PVCAnnotations map[string]string
}

// Policy is a StoragePolicy's spec in parsed form.
type Policy struct {
	Watermarks Watermarks
	Selectors  TierSelectors
	Cooldown   time.Duration
	// Hysteresis is the demotion margin as a fraction (0.1 = 10 %; see Demote).
	Hysteresis float64
	// ECEnabled: the policy names an ErasureCodingPolicy; cold volumes of at
	// least ECMinVolumeSizeBytes then qualify for erasure coding.
	ECEnabled            bool
	ECMinVolumeSizeBytes int64
}

// Action is what a decision says to do.
type Action string

const (
	// Move: the volume belongs on another tier and may move now.
	Move Action = "Move"
	// Stay: the volume is where it belongs (or in the dead band).
	Stay Action = "Stay"
	// Skip: the volume would or might need to move but something prevents it.
	Skip Action = "Skip"
)

// Codes of decisions: stable, short, for change detection and metrics.
const (
	CodeMove             = "Move"
	CodeOnTier           = "OnTier"
	CodeDeadBand         = "DeadBand"
	CodeHysteresis       = "Hysteresis"
	CodeNoTargetTier     = "NoTargetTier"
	CodeExcluded         = "Excluded"
	CodeNoMayastorVolume = "NoMayastorVolume"
	CodeUnmovable        = "Unmovable"
	CodeIOPSUnknown      = "IOPSUnknown"
	CodeNoCurrentTier    = "NoCurrentTier"
	CodeCooldown         = "Cooldown"
	CodeBadAnnotation    = "BadAnnotation"
	CodeConverting       = "Converting"
)

// Decision is the verdict on one volume.
type Decision struct {
	Volume    string
	Action    Action
	Code      string
	Placement Placement
	// From is the current tier; To the tier the volume belongs on (None when unknown or dead band).
	From, To Tier
	// IOPS is the measurement; IOPSKnown false means unknown (UnknownReason says why).
	IOPS          float64
	IOPSKnown     bool
	UnknownReason iops.UnknownReason
	Pinned        bool
	// Reason is a human sentence for Stay and Skip.
	Reason string
	// CooldownUntil is set for Cooldown skips.
	CooldownUntil time.Time
}

// Describe renders a move as history and Events show it: "pv-1 warm → hot (4800 IOPS)".
func (d Decision) Describe() string {
	why := FormatIOPS(d.IOPS) + " IOPS"
	if d.Pinned {
		why = "pinned by " + AnnotationPinTier
	}
	return fmt.Sprintf("%s %s → %s (%s)", d.Volume, d.Placement, d.To, why)
}

// FormatIOPS renders IOPS without noise: 4800, 12.5.
func FormatIOPS(x float64) string { return strconv.FormatFloat(x, 'f', -1, 64) }

// Decide judges one volume at time now.
func Decide(p Policy, v Volume, m iops.Measurement, poolTiers map[string]Tier, now time.Time) Decision {
	d := Decision{Volume: v.Name, IOPS: m.IOPS, IOPSKnown: m.Known, UnknownReason: m.Reason}
	d.Placement = CurrentTier(v.ReplicaPools, poolTiers)
	d.From = d.Placement.Tier
	skip := func(code, reason string) Decision {
		d.Action, d.Code, d.Reason = Skip, code, reason
		return d
	}
	stay := func(code, reason string) Decision {
		d.Action, d.Code, d.Reason = Stay, code, reason
		return d
	}
	if isTrue(v.PVAnnotations[AnnotationExclude]) || isTrue(v.PVCAnnotations[AnnotationExclude]) {
		return skip(CodeExcluded, "excluded by annotation "+AnnotationExclude)
	}
	if v.PVAnnotations[AnnotationConversion] != "" {
		return skip(CodeConverting, "a conversion to or from erasure coding is in progress or its source is retained (annotation "+AnnotationConversion+")")
	}
	if !v.MayastorVolume {
		return skip(CodeNoMayastorVolume, "Mayastor has no volume of the PV's CSI volume handle")
	}

	pin := v.PVCAnnotations[AnnotationPinTier]
	if pv, ok := v.PVAnnotations[AnnotationPinTier]; ok {
		pin = pv
	}
	switch {
	case pin != "":
		t, err := ParseTier(pin)
		if err != nil {
			return skip(CodeBadAnnotation, "annotation "+AnnotationPinTier+": "+err.Error())
		}
		d.To, d.Pinned = t, true
	case !m.Known:
		return skip(CodeIOPSUnknown, "IOPS unknown: "+m.Reason.Describe())
	default:
		t, ok := Classify(m.IOPS, p.Watermarks, p.Selectors.Has(Warm))
		if !ok {
			return stay(CodeDeadBand, fmt.Sprintf("%s IOPS is in the dead band between the watermarks", FormatIOPS(m.IOPS)))
		}
		d.To = t
	}
	if !p.Selectors.Has(d.To) {
		return stay(CodeNoTargetTier, fmt.Sprintf("belongs on %s but the policy has no %sPoolSelector", d.To, d.To))
	}
	if d.From == None {
		return skip(CodeNoCurrentTier, "none of its replicas is on a pool of any tier, so its current tier is unknown")
	}
	if d.From == d.To {
		return stay(CodeOnTier, "already on "+string(d.To))
	}
	if !d.Pinned && d.To.Slower(d.From) {
		t, ok := Demote(m.IOPS, p.Watermarks, p.Selectors.Has(Warm), p.Hysteresis, d.From)
		if !ok {
			d.To = d.From
			return stay(CodeHysteresis, fmt.Sprintf("%s IOPS is below a watermark of %s but not by the %s %% hysteresis margin",
				FormatIOPS(m.IOPS), d.From, FormatIOPS(p.Hysteresis*100)))
		}
		d.To = t
		if !p.Selectors.Has(d.To) {
			return stay(CodeNoTargetTier, fmt.Sprintf("belongs on %s but the policy has no %sPoolSelector", d.To, d.To))
		}
	}
	if v.Unmovable != "" {
		return skip(CodeUnmovable, fmt.Sprintf("belongs on %s but cannot move: %s", d.To, v.Unmovable))
	}
	until, err := Cooldown(v.PVAnnotations, p.Cooldown)
	if err != nil {
		return skip(CodeBadAnnotation, err.Error())
	}
	if now.Before(until) {
		d.CooldownUntil = until
		return skip(CodeCooldown, "in cooldown until "+until.UTC().Format(time.RFC3339))
	}
	d.Action, d.Code = Move, CodeMove
	return d
}

func isTrue(s string) bool { return strings.EqualFold(strings.TrimSpace(s), "true") }

// Evaluation is the verdict on every volume of a policy.
type Evaluation struct {
	// Decisions, in the order of the input volumes.
	Decisions []Decision
	// Current counts volumes by current tier (None: no tier).
	Current map[Tier]int
	// Actions counts decisions by action.
	Actions map[Action]int
	// ECCandidates counts cold volumes that qualify for erasure coding.
	ECCandidates int
}

// Evaluate judges every volume. measurements is keyed by volume name; a
// volume missing from it is unknown.
func Evaluate(p Policy, vols []Volume, measurements map[string]iops.Measurement, poolTiers map[string]Tier, now time.Time) Evaluation {
	e := Evaluation{Decisions: make([]Decision, len(vols)), Current: map[Tier]int{}, Actions: map[Action]int{}}
	for i := range vols {
		m, ok := measurements[vols[i].Name]
		if !ok {
			m = iops.Measurement{Reason: iops.ReasonNoSeries}
		}
		d := Decide(p, vols[i], m, poolTiers, now)
		e.Decisions[i] = d
		e.Current[d.From]++
		e.Actions[d.Action]++
		if p.ECEnabled && d.From == Cold && vols[i].SizeBytes >= p.ECMinVolumeSizeBytes {
			e.ECCandidates++
		}
	}
	return e
}

// DryRunDue reports whether a dry-run decision for volume should be recorded
// now, given when one was last recorded (zero: never).
func DryRunDue(last, now time.Time, cooldown time.Duration) bool {
	return last.IsZero() || !now.Before(last.Add(cooldown))
}
