package conversion

import (
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/billyronks/couchestor/pkg/csi"
)

// Conversions back to replicated (Direction ToReplicated) run the same
// steps as conversions to erasure coding, with the erasure-coded PV as the
// source (it carries the record) and a replicated PV as the target:
//   - undo (Undo): the target is the retained source of the conversion
//     being undone, which the undo copies the ECVolume's current bytes onto;
//   - heat-up: the target is a new volume provisioned from
//     TargetStorageClass (the PV's AnnotationOriginalStorageClass).
// These pure functions decide whether an undo may start and build the
// records; the Converter runs them.

// UndoVerdict is what CheckUndo decides for a PVC that asks for an undo.
type UndoVerdict struct {
	// Forward is the retained conversion to undo (set when the undo may
	// start).
	Forward *Record
	// InProgress: the PVC's PV already carries this PVC's undo.
	InProgress bool
	// Refusal says why the undo cannot happen; "" when it can.
	Refusal string
}

// CheckUndo decides whether the undo asked for on pvc
// (AnnotationUndoConversion) may start: pvc is bound to bound, an
// erasure-coded PV made by a conversion (AnnotationConvertedFrom names its
// source), whose source retained still carries that conversion's record in
// StepRetaining with the retention not over at now. bound and retained
// are nil when they do not exist.
func CheckUndo(pvc *corev1.PersistentVolumeClaim, bound, retained *corev1.PersistentVolume, now time.Time) UndoVerdict {
	refuse := func(format string, args ...any) UndoVerdict {
		return UndoVerdict{Refusal: fmt.Sprintf(format, args...)}
	}
	if v := pvc.Annotations[AnnotationUndoConversion]; v != "true" {
		return refuse("annotation %s=%q: only \"true\" asks for an undo", AnnotationUndoConversion, v)
	}
	if pvc.Spec.VolumeName == "" || bound == nil || bound.Name != pvc.Spec.VolumeName {
		return refuse("PVC %s/%s is not bound to an existing PV (volumeName %q)", pvc.Namespace, pvc.Name, pvc.Spec.VolumeName)
	}
	if raw := bound.Annotations[AnnotationConversion]; raw != "" {
		cur, err := Parse(raw)
		if err == nil && cur.Direction == ToReplicated && cur.Undo && cur.Claim.Namespace == pvc.Namespace && cur.Claim.Name == pvc.Name {
			return UndoVerdict{InProgress: true}
		}
		return refuse("PV %s has another conversion in progress (annotation %s)", bound.Name, AnnotationConversion)
	}
	if bound.Spec.CSI == nil || bound.Spec.CSI.Driver != csi.DriverName {
		return refuse("PV %s is not an erasure-coded volume (not of CSI driver %s): there is no conversion to undo", bound.Name, csi.DriverName)
	}
	from := bound.Annotations[AnnotationConvertedFrom]
	if from == "" {
		return refuse("PV %s has no annotation %s: it was not made by a conversion, there is nothing to go back to", bound.Name, AnnotationConvertedFrom)
	}
	if retained == nil {
		return refuse("the source PV %s of the conversion no longer exists (its retention is over)", from)
	}
	raw := retained.Annotations[AnnotationConversion]
	if raw == "" {
		return refuse("the source PV %s carries no retained conversion (annotation %s): its retention is over or it was undone", from, AnnotationConversion)
	}
	fwd, err := Parse(raw)
	switch {
	case err != nil:
		return refuse("the source PV %s: %v", from, err)
	case fwd.Direction != ToErasureCoded || fwd.Target != bound.Name || fwd.Claim.Namespace != pvc.Namespace || fwd.Claim.Name != pvc.Name:
		return refuse("the record on PV %s is not the conversion of PVC %s/%s onto PV %s", from, pvc.Namespace, pvc.Name, bound.Name)
	case fwd.Step != StepRetaining:
		return refuse("the conversion on PV %s is at step %s, not %s: the source is no longer retained", from, fwd.Step, StepRetaining)
	case !now.Before(fwd.RetainUntil):
		return refuse("the retention of source PV %s ended at %s", from, fwd.RetainUntil.UTC().Format(time.RFC3339))
	case retained.Spec.CSI == nil:
		return refuse("the retained source PV %s has no CSI source", from)
	case fwd.SizeBytes <= 0 || bound.Spec.Capacity.Storage().Value() < fwd.SizeBytes:
		return refuse("PV %s holds %d bytes, less than the %d of the conversion", bound.Name, bound.Spec.Capacity.Storage().Value(), fwd.SizeBytes)
	}
	return UndoVerdict{Forward: fwd}
}

// UndoRecord is the record of the undo of fwd: from the erasure-coded PV
// ec (bound to pvc) back onto fwd's retained source, in the same policy and
// slot limits. The undone volume is left with retention 0: once the PVC is
// rebound to the verified source, the ECVolume and its PV are deleted.
func UndoRecord(fwd *Record, pvc *corev1.PersistentVolumeClaim, ec *corev1.PersistentVolume, now time.Time) *Record {
	claim := ClaimOf(pvc)
	delete(claim.Annotations, AnnotationUndoConversion)
	if len(claim.Annotations) == 0 {
		claim.Annotations = nil
	}
	r := &Record{Direction: ToReplicated, Undo: true, Policy: fwd.Policy, MaxConcurrent: fwd.MaxConcurrent,
		Step: StepPreparing, StartedAt: now.UTC().Truncate(time.Second), FromTier: TierErasureCoded, ToTier: TierCold,
		Source: ec.Name, SourceHandle: ec.Spec.CSI.VolumeHandle, SizeBytes: fwd.SizeBytes,
		// The source's original policy: the retained PV gets it back, and
		// the erasure-coded PV (given it by the conversion) goes with it.
		SourceReclaimPolicy: fwd.SourceReclaimPolicy, Claim: claim,
		Target: fwd.Source, Retain: "0s"}
	r.ID = ConversionID(r.Source, r.StartedAt)
	return r
}

// FinalClaim is the user's PVC recreated on the conversion's final PV. An
// undone conversion's PVC also gets AnnotationExcludeFromConversion
// "true": the user asked to go back, and without it the policy would
// convert the volume again after its cooldown (remove it to allow that).
func (r *Record) FinalClaim() *corev1.PersistentVolumeClaim {
	pvc := RecreatedClaim(r.Claim, r.Target)
	if r.Undo {
		if pvc.Annotations == nil {
			pvc.Annotations = map[string]string{}
		}
		pvc.Annotations[AnnotationExcludeFromConversion] = "true"
	}
	return pvc
}

// provisioned says whether the record's target is a new volume
// provisioned for it (heat-up).
func (r *Record) provisioned() bool { return r.Direction == ToReplicated && !r.Undo }
