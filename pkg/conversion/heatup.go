package conversion

import (
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/billyronks/couchestor/pkg/csi"
	"github.com/billyronks/couchestor/pkg/migration"
	"github.com/billyronks/couchestor/pkg/tiering"
)

// Verdict codes of HeatUp beyond Eligible's (CodeConvert means "converts
// back now").
const (
	CodeNotHot          = "NotHot"
	CodeIOPSUnknown     = "IOPSUnknown"
	CodePinned          = "Pinned"
	CodeNoOriginalClass = "NoOriginalStorageClass"
	CodeNoTier          = "NoTier"
)

// ECVolume is what HeatUp needs to know about one erasure-coded volume.
type ECVolume struct {
	// PV is the erasure-coded PersistentVolume (the CSI driver's); its
	// annotations carry the cooldown, the opt-outs and the StorageClass
	// it came from (AnnotationOriginalStorageClass).
	PV *corev1.PersistentVolume
	// Claim is the PVC bound to it (nil: none).
	Claim *corev1.PersistentVolumeClaim
	// UsedBy are the pods (namespace/name) that use the claim and have not
	// ended; only asked for once the volume would convert back.
	UsedBy []string
	// IOPS of the export over the policy's sampling window, when known.
	IOPS      float64
	IOPSKnown bool
	// Unknown says why the IOPS are unknown (no series, too short a
	// history, Prometheus did not answer).
	Unknown string
	// MeasuredAt is set when IOPS are recalled (Recall): measured then,
	// while a pod used the volume, not over the latest window.
	MeasuredAt time.Time
}

// HeatSeen is the last measurement that found an erasure-coded volume hot
// while a pod used it (verdict CodeInUse on known IOPS).
type HeatSeen struct {
	IOPS float64
	At   time.Time
}

// Recall is how heat-up sees a volume whose pod has gone. An erasure-coded
// volume is measured by its export, which runs only while a pod uses the
// volume: while the pod runs the volume cannot convert (it waits, in use),
// and once the pod is gone its export is stopped and its IOPS are unknown
// (the series ends), so on the latest window alone a volume that is hot
// whenever it is used would never convert back. Recall gives v the IOPS of
// seen, measured while a pod used it, when v's own are unknown and seen is
// at most memory old (the caller passes the policy's samplingWindow, at
// least a few evaluation intervals): "hot within the last window". Known
// IOPS always win (a volume used again is judged afresh). v unchanged
// otherwise.
func Recall(v ECVolume, seen *HeatSeen, now time.Time, memory time.Duration) ECVolume {
	if v.IOPSKnown || seen == nil || seen.At.After(now) || now.Sub(seen.At) > memory {
		return v
	}
	v.IOPS, v.IOPSKnown, v.Unknown, v.MeasuredAt = seen.IOPS, true, "", seen.At
	return v
}

// Remember is what heat-up keeps of a verdict for Recall: the measurement
// when it found the volume hot while in use; nil (forget) when the IOPS
// were measured and the verdict is anything else, or once a conversion is
// on the volume; prev when the IOPS were unknown or recalled (nothing new
// was learnt; a recalled "converts now" is kept until its conversion has
// started, since the start may wait for a free slot).
func Remember(v ECVolume, verdict HeatVerdict, prev *HeatSeen, now time.Time) *HeatSeen {
	switch {
	case verdict.Code == CodeConverting:
		return nil // a conversion is on it: nothing left to recall
	case !v.IOPSKnown || !v.MeasuredAt.IsZero():
		return prev
	case verdict.Code == CodeInUse:
		return &HeatSeen{IOPS: v.IOPS, At: now}
	}
	return nil
}

// HeatRules are the policy's settings heat-up applies.
type HeatRules struct {
	Watermarks tiering.Watermarks
	// WarmTier and HotTier: the policy has a pool selector for the tier.
	WarmTier, HotTier bool
	// Residency is the policy's cooldownPeriod: an erasure-coded volume
	// stays at least that long after the conversion rebound it (or its
	// last move) before it converts back.
	Residency time.Duration
}

// HeatVerdict is HeatUp's verdict; To is the tier the volume converts back
// to (set when the IOPS or a pin name one, also while it waits).
type HeatVerdict struct {
	Verdict
	To tiering.Tier
}

// HeatUp decides whether an erasure-coded volume converts back to a
// replicated volume now, and to which tier. It is pure: every input is
// passed in.
//
// The rule, as tiering promotes a cold volume: IOPS at or above
// highWatermarkIOPS go to hot, at or above warmWatermarkIOPS to warm (only
// when the policy has a warm tier; without one, IOPS between the warm and
// high watermarks keep the volume erasure-coded, as they keep a replicated
// volume cold). The watermark is compared raw: hysteresis lowers the
// watermarks for demotions only, so a volume that came back does not turn
// cold again (and erasure-coded) until its IOPS fall below
// lowWatermarkIOPS by the margin. Unknown IOPS never heat a volume up; a
// pin-tier annotation decides instead of the IOPS (cold: never). The
// volume must have been left alone for cooldownPeriod, have no conversion
// or migration in progress, not be excluded, and be unused by pods (the
// copy needs it free: it waits, saying so).
func HeatUp(v ECVolume, r HeatRules, now time.Time) HeatVerdict {
	no := func(code, format string, a ...any) HeatVerdict {
		return HeatVerdict{Verdict: Verdict{Code: code, Reason: fmt.Sprintf(format, a...)}}
	}
	ann := v.PV.Annotations
	switch {
	case ann[AnnotationConversion] != "":
		return no(CodeConverting, "a conversion is in progress on it")
	case ann[tiering.AnnotationExclude] == "true" || ann[AnnotationExcludeFromConversion] == "true":
		return no(CodeExcluded, "excluded by annotation on the PV")
	case v.Claim != nil && (v.Claim.Annotations[tiering.AnnotationExclude] == "true" || v.Claim.Annotations[AnnotationExcludeFromConversion] == "true"):
		return no(CodeExcluded, "excluded by annotation on the PVC")
	case ann[migration.AnnotationMigration] != "":
		return no(CodeMigrating, "a tier migration is in progress")
	case ann[AnnotationOriginalStorageClass] == "":
		return no(CodeNoOriginalClass, "PV has no annotation %s: the StorageClass to provision the replicated volume from is unknown", AnnotationOriginalStorageClass)
	}
	to, why, pinned := tiering.None, "", false
	pin := ""
	if v.Claim != nil {
		pin = v.Claim.Annotations[tiering.AnnotationPinTier]
	}
	if p, ok := ann[tiering.AnnotationPinTier]; ok {
		pin = p // the PV's pin wins, as in tiering
	}
	if pin != "" {
		t, err := tiering.ParseTier(pin)
		if err != nil {
			return no(CodeBadAnnotation, "annotation %s: %v", tiering.AnnotationPinTier, err)
		}
		if t == tiering.Cold {
			return no(CodePinned, "pinned cold by %s", tiering.AnnotationPinTier)
		}
		to, why, pinned = t, "pinned "+string(t)+" by "+tiering.AnnotationPinTier, true
	}
	if !pinned {
		w := r.Watermarks
		switch {
		case !v.IOPSKnown:
			return no(CodeIOPSUnknown, "IOPS unknown (%s): an erasure-coded volume converts back only on measured IOPS", firstNonEmpty(v.Unknown, "no measurement"))
		case v.IOPS >= w.High:
			to, why = tiering.Hot, fmt.Sprintf("%.0f IOPS%s ≥ highWatermarkIOPS %.0f", v.IOPS, measuredAt(v), w.High)
		case r.WarmTier && v.IOPS >= w.Warm:
			to, why = tiering.Warm, fmt.Sprintf("%.0f IOPS%s ≥ warmWatermarkIOPS %.0f", v.IOPS, measuredAt(v), w.Warm)
		case r.WarmTier:
			return no(CodeNotHot, "%.0f IOPS, below warmWatermarkIOPS %.0f", v.IOPS, w.Warm)
		default:
			return no(CodeNotHot, "%.0f IOPS, below highWatermarkIOPS %.0f (the policy has no warm tier)", v.IOPS, w.High)
		}
	}
	if (to == tiering.Hot && !r.HotTier) || (to == tiering.Warm && !r.WarmTier) {
		return no(CodeNoTier, "%s, but the policy has no %s tier (no %sPoolSelector)", why, to, to)
	}
	out := func(code string, wait bool, format string, a ...any) HeatVerdict {
		return HeatVerdict{Verdict: Verdict{Code: code, Wait: wait, Reason: fmt.Sprintf(format, a...)}, To: to}
	}
	if v.Claim == nil || v.Claim.Status.Phase != corev1.ClaimBound || v.Claim.Spec.VolumeName != v.PV.Name {
		return out(CodeNoClaim, false, "%s, but no PVC is bound to it (converting back keeps a PVC's identity)", why)
	}
	until, err := tiering.Cooldown(ann, r.Residency)
	if err != nil {
		return out(CodeBadAnnotation, false, "%v", err)
	}
	if now.Before(until) {
		return out(CodeResidency, true, "%s: converts back to %s after %s (cooldownPeriod since its conversion or last move)", why, to, until.UTC().Format(time.RFC3339))
	}
	if len(v.UsedBy) > 0 {
		return out(CodeInUse, true, "%s: in use by pod %s; Kubernetes cannot swap a volume under a running pod, so it converts back to %s when no pod uses it", why, strings.Join(v.UsedBy, ", "), to)
	}
	return out(CodeConvert, false, "%s: converts back to %s", why, to)
}

func measuredAt(v ECVolume) string {
	if v.MeasuredAt.IsZero() {
		return ""
	}
	return " (measured at " + v.MeasuredAt.UTC().Format(time.RFC3339) + " while a pod used it)"
}

// HeatUpTarget is the name of the PV a heat-up ends on: derived from the
// conversion's ID ("cv-…-rep"), so it is short, unique per heat-up, and
// does not grow when a volume goes cold and hot again (the PV that was
// converted to erasure coding may still be retained under its own name).
func HeatUpTarget(id string) string { return id + "-rep" }

// HeatUpRecord is the record that starts converting an erasure-coded PV
// back to a replicated volume of the StorageClass it came from (heat-up,
// Direction ToReplicated, not an undo): the new volume is provisioned from
// pv's AnnotationOriginalStorageClass and ends on the PV HeatUpTarget(ID).
// claim is the PVC bound to pv. The caller passes the record to
// Converter.Start.
func HeatUpRecord(pv *corev1.PersistentVolume, claim *corev1.PersistentVolumeClaim, policy string, maxConcurrent int32,
	to tiering.Tier, triggerIOPS float64, retain time.Duration, now time.Time) (*Record, error) {
	switch {
	case pv.Spec.CSI == nil || pv.Spec.CSI.Driver != csi.DriverName:
		return nil, fmt.Errorf("PV %s: not an erasure-coded volume (CSI driver must be %s)", pv.Name, csi.DriverName)
	case pv.Annotations[AnnotationOriginalStorageClass] == "":
		return nil, fmt.Errorf("PV %s: annotation %s is empty: no StorageClass to provision the replicated volume from", pv.Name, AnnotationOriginalStorageClass)
	case to == "" || string(to) == TierErasureCoded:
		return nil, fmt.Errorf("heat-up of PV %s: toTier %q must name a replicated tier", pv.Name, to)
	case retain < 0:
		return nil, fmt.Errorf("heat-up of PV %s: retain %v must not be negative", pv.Name, retain)
	}
	q, ok := pv.Spec.Capacity[corev1.ResourceStorage]
	if !ok {
		return nil, fmt.Errorf("PV %s: spec.capacity.storage is missing: the size of the replicated volume is unknown", pv.Name)
	}
	rec := &Record{
		Direction: ToReplicated, Policy: policy, MaxConcurrent: maxConcurrent,
		Step: StepPreparing, StartedAt: now.UTC().Truncate(time.Second), TriggerIOPS: triggerIOPS,
		FromTier: TierErasureCoded, ToTier: string(to),
		Source: pv.Name, SourceHandle: pv.Spec.CSI.VolumeHandle, SizeBytes: q.Value(),
		SourceReclaimPolicy: pv.Spec.PersistentVolumeReclaimPolicy, Claim: ClaimOf(claim),
		TargetStorageClass: pv.Annotations[AnnotationOriginalStorageClass], Retain: retain.String(),
	}
	rec.ID = ConversionID(rec.Source, rec.StartedAt)
	rec.Target = HeatUpTarget(rec.ID)
	if _, err := rec.Marshal(); err != nil {
		return nil, fmt.Errorf("heat-up of PV %s: %w", pv.Name, err)
	}
	return rec, nil
}
