package conversion

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/csi"
	"github.com/billyronks/couchestor/pkg/migration"
)

// The steps of conversions back to replicated (Direction ToReplicated)
// that differ from those to erasure coding; see reverse.go.

// ReasonUndoRefused: an undo was asked for and cannot happen.
const ReasonUndoRefused = "ConversionUndoRefused"

// prepareUndo freezes the retention of the conversion being undone: one
// optimistic-concurrency write of UndoneBy on its record, which fails if
// that conversion went on to delete its source meanwhile (next refuses
// StepDeletingSource while UndoneBy is set, so exactly one of the two
// writes wins).
func (c *Converter) prepareUndo(ctx context.Context, rec *Record) (reconcile.Result, error) {
	var why string
	err := c.updatePV(ctx, rec.Target, func(t *corev1.PersistentVolume) (bool, error) {
		why = ""
		raw := t.Annotations[AnnotationConversion]
		if raw == "" {
			why = "it carries no retained conversion (retention over, or undone)"
			return false, nil
		}
		fwd, err := Parse(raw)
		switch {
		case err != nil:
			why = err.Error()
		case fwd.Direction != ToErasureCoded || fwd.Target != rec.Source:
			why = fmt.Sprintf("its record is not the conversion onto PV %s", rec.Source)
		case fwd.Step != StepRetaining:
			why = fmt.Sprintf("the conversion being undone is at step %s, not %s", fwd.Step, StepRetaining)
		case t.Spec.CSI == nil:
			why = "it has no CSI source"
		}
		if why != "" || fwd.UndoneBy == rec.ID {
			return false, nil
		}
		fwd.UndoneBy = rec.ID
		out, err := fwd.Marshal()
		if err != nil {
			return false, err
		}
		t.Annotations[AnnotationConversion] = out
		return true, nil
	})
	switch {
	case apierrors.IsNotFound(err):
		return c.fail(ctx, rec, fmt.Sprintf("the retained source PV %s is gone", rec.Target))
	case err != nil:
		return reconcile.Result{}, err
	case why != "":
		return c.fail(ctx, rec, fmt.Sprintf("retained source PV %s: %s", rec.Target, why))
	}
	return c.next(ctx, rec, StepReleasingClaim, nil)
}

// releaseUndone clears UndoneBy on the conversion an undo that rolls back
// was undoing: its retention runs on.
func (c *Converter) releaseUndone(ctx context.Context, rec *Record) error {
	err := c.updatePV(ctx, rec.Target, func(t *corev1.PersistentVolume) (bool, error) {
		fwd, err := Parse(t.Annotations[AnnotationConversion])
		if err != nil || fwd.UndoneBy != rec.ID {
			return false, nil
		}
		fwd.UndoneBy = ""
		out, err := fwd.Marshal()
		if err != nil {
			return false, err
		}
		t.Annotations[AnnotationConversion] = out
		return true, nil
	})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// finishUndo ends an undo whose PVC is bound to the retained source: one
// write on that PV (now the live one) records the result and removes the
// record of the conversion undone; then the undo's own record moves on to
// retention 0, which deletes the erasure-coded PV and its ECVolume.
func (c *Converter) finishUndo(ctx context.Context, rec *Record, result migration.Result, now time.Time, retain time.Duration) (reconcile.Result, error) {
	result.VolumeName = rec.Target
	if err := c.Engine.RecordResult(ctx, result, func(ann map[string]string) (bool, error) {
		fwd, err := Parse(ann[AnnotationConversion])
		if err != nil || fwd.UndoneBy != rec.ID {
			return false, nil // removed before a crash
		}
		delete(ann, AnnotationConversion)
		return true, nil
	}); err != nil {
		return reconcile.Result{}, err
	}
	res, err := c.next(ctx, rec, StepRetaining, func(r *Record) { r.RebindAt, r.RetainUntil = now, now.Add(retain) })
	if err != nil {
		return res, err
	}
	c.releaseHeld(rec.Source)
	c.event(ctx, rec, corev1.EventTypeNormal, ReasonCompleted, "conversion undone: PVC %s/%s uses its retained source PV %s again (%d bytes verified, digest %s); the erasure-coded PV %s and its ECVolume are deleted",
		rec.Claim.Namespace, rec.Claim.Name, rec.Target, rec.SizeBytes, shortDigest(rec.Copy), rec.Source)
	return res, nil
}

// prepareNewVolume provisions heat-up's new volume: a temporary raw-block
// PVC of TargetStorageClass in the operator's namespace (the copy's target
// claim), whose PV is set to Retain at once so that deleting the temporary
// PVC at the rebind keeps the volume.
func (c *Converter) prepareNewVolume(ctx context.Context, rec *Record) (reconcile.Result, error) {
	want := rec.TempClaim(c.Namespace, rec.TargetClaim(), "", rec.TargetStorageClass, rec.SizeBytes)
	var got corev1.PersistentVolumeClaim
	err := c.Client.Get(ctx, ctrl.ObjectKeyFromObject(want), &got)
	switch {
	case apierrors.IsNotFound(err):
		if err := c.Client.Create(ctx, want); err != nil && !apierrors.IsAlreadyExists(err) {
			if apierrors.IsInvalid(err) || apierrors.IsForbidden(err) {
				return c.fail(ctx, rec, fmt.Sprintf("create PVC %s/%s of StorageClass %s: %v", want.Namespace, want.Name, rec.TargetStorageClass, err))
			}
			return reconcile.Result{}, fmt.Errorf("create PVC %s/%s: %w", want.Namespace, want.Name, err)
		}
		return c.waitFor(ctx, rec, fmt.Sprintf("a new volume of StorageClass %s is being provisioned (PVC %s/%s)", rec.TargetStorageClass, want.Namespace, want.Name))
	case err != nil:
		return reconcile.Result{}, err
	case got.Labels[LabelConversion] != rec.ID:
		return c.fail(ctx, rec, fmt.Sprintf("PVC %s/%s exists and was not made by this conversion (label %s=%q)", got.Namespace, got.Name, LabelConversion, got.Labels[LabelConversion]))
	case got.Status.Phase != corev1.ClaimBound || got.Spec.VolumeName == "":
		return c.waitFor(ctx, rec, fmt.Sprintf("a new volume of StorageClass %s is being provisioned (PVC %s/%s is %s)", rec.TargetStorageClass, got.Namespace, got.Name, firstNonEmpty(string(got.Status.Phase), "Pending")))
	}
	var np corev1.PersistentVolume
	if err := c.Client.Get(ctx, types.NamespacedName{Name: got.Spec.VolumeName}, &np); err != nil {
		return reconcile.Result{}, err // not in the cache yet: again
	}
	if ref := np.Spec.ClaimRef; ref == nil || ref.Namespace != got.Namespace || ref.Name != got.Name || ref.UID != got.UID {
		return c.fail(ctx, rec, fmt.Sprintf("PV %s of PVC %s/%s is not bound to it", np.Name, got.Namespace, got.Name))
	}
	if np.Spec.CSI == nil {
		return c.fail(ctx, rec, fmt.Sprintf("the new volume's PV %s has no CSI source", np.Name))
	}
	if np.Name == rec.Target {
		return c.fail(ctx, rec, fmt.Sprintf("the provisioned PV is named %s, the name of the final PV", np.Name))
	}
	if err := c.setReclaim(ctx, np.Name, corev1.PersistentVolumeReclaimRetain); err != nil {
		return reconcile.Result{}, err
	}
	return c.next(ctx, rec, StepReleasingClaim, nil)
}

// newVolumePV finds heat-up's provisioned PV: the one whose claimRef names
// the temporary target PVC (still so once that PVC is deleted); nil if none.
func (c *Converter) newVolumePV(ctx context.Context, rec *Record) (*corev1.PersistentVolume, error) {
	var pvs corev1.PersistentVolumeList
	if err := c.Client.List(ctx, &pvs); err != nil {
		return nil, err
	}
	for i := range pvs.Items {
		pv := &pvs.Items[i]
		if ref := pv.Spec.ClaimRef; ref != nil && ref.Namespace == c.Namespace && ref.Name == rec.TargetClaim() && pv.Name != rec.Target {
			return pv, nil
		}
	}
	return nil, nil
}

// newVolumeFinalPV creates heat-up's final PV: the provisioned volume's
// CSI source in the claim's volume mode (a PV's volume mode is immutable
// and the provisioned one is raw block), with the filesystem type of the
// erasure-coded PV (whose bytes it now holds); then deletes the
// provisioned PV object (reclaim Retain: the volume stays). A zero result
// means go on.
func (c *Converter) newVolumeFinalPV(ctx context.Context, rec *Record, src *corev1.PersistentVolume) (reconcile.Result, error) {
	np, err := c.newVolumePV(ctx, rec)
	if err != nil {
		return reconcile.Result{}, err
	}
	var final corev1.PersistentVolume
	err = c.Client.Get(ctx, types.NamespacedName{Name: rec.Target}, &final)
	switch {
	case apierrors.IsNotFound(err):
		if np == nil || np.Spec.CSI == nil {
			c.event(ctx, rec, corev1.EventTypeWarning, ReasonStuck, "the new volume's PV (claimRef %s/%s) is not found and PV %s does not exist; the erasure-coded PV %s keeps the data", c.Namespace, rec.TargetClaim(), rec.Target, rec.Source)
			return reconcile.Result{RequeueAfter: 10 * c.poll()}, nil
		}
		s := np.Spec.CSI.DeepCopy()
		if src.Spec.CSI != nil {
			s.FSType = src.Spec.CSI.FSType
		}
		if err := c.Client.Create(ctx, rec.FinalPV(s, np.Spec.NodeAffinity, "")); err != nil && !apierrors.IsAlreadyExists(err) {
			return reconcile.Result{}, fmt.Errorf("create PV %s: %w", rec.Target, err)
		}
		return reconcile.Result{RequeueAfter: c.poll()}, nil
	case err != nil:
		return reconcile.Result{}, err
	}
	if np != nil && np.DeletionTimestamp == nil {
		if np.Spec.CSI == nil || final.Spec.CSI == nil || np.Spec.CSI.VolumeHandle != final.Spec.CSI.VolumeHandle {
			return reconcile.Result{}, fmt.Errorf("PV %s (claimRef %s/%s) is not the volume of PV %s: not deleting it", np.Name, c.Namespace, rec.TargetClaim(), rec.Target)
		}
		if err := c.setReclaim(ctx, np.Name, corev1.PersistentVolumeReclaimRetain); err != nil {
			return reconcile.Result{}, err
		}
		if err := c.Client.Delete(ctx, np, ctrl.Preconditions{UID: &np.UID}); err != nil && !apierrors.IsNotFound(err) {
			return reconcile.Result{}, fmt.Errorf("delete the provisioned PV object %s (reclaim Retain, the volume stays as PV %s): %w", np.Name, rec.Target, err)
		}
	}
	return reconcile.Result{}, nil
}

// preBind points the PV's claimRef at the claim by name (no UID), so the
// binder binds the recreated PVC to it.
func (c *Converter) preBind(ctx context.Context, pvName string, claim Claim) error {
	return c.updatePV(ctx, pvName, func(pv *corev1.PersistentVolume) (bool, error) {
		ref := pv.Spec.ClaimRef
		if ref != nil && ref.Namespace == claim.Namespace && ref.Name == claim.Name && ref.UID == "" {
			return false, nil
		}
		pv.Spec.ClaimRef = &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: claim.Namespace, Name: claim.Name}
		return true, nil
	})
}

// deleteECVolume deletes the ECVolume of an erasure-coded PV (the PV's
// provisioner would on reclaim Delete; done here so it never depends on
// it). Only ECVolumes the CSI driver manages.
func (c *Converter) deleteECVolume(ctx context.Context, pv *corev1.PersistentVolume) error {
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != csi.DriverName {
		return nil
	}
	var ev storagev1.ECVolume
	err := c.Client.Get(ctx, types.NamespacedName{Name: pv.Spec.CSI.VolumeHandle}, &ev)
	switch {
	case apierrors.IsNotFound(err):
		return nil
	case err != nil:
		return err
	case ev.Labels[csi.LabelManaged] != "true":
		return fmt.Errorf("ECVolume %s has no label %s=true: not deleting it", ev.Name, csi.LabelManaged)
	case ev.DeletionTimestamp != nil:
		return nil
	}
	if err := c.Client.Delete(ctx, &ev, ctrl.Preconditions{UID: &ev.UID}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete ECVolume %s: %w", ev.Name, err)
	}
	return nil
}

// UndoReconciler starts undos: a reconciler of PVCs that carry
// AnnotationUndoConversion. It decides (CheckUndo), waits while a pod uses
// the PVC, and hands the undo's record to the Converter.
type UndoReconciler struct {
	*Converter
}

// Reconcile handles one PVC.
func (u UndoReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	c := u.Converter
	var pvc corev1.PersistentVolumeClaim
	if err := c.Client.Get(ctx, req.NamespacedName, &pvc); err != nil {
		return reconcile.Result{}, ctrl.IgnoreNotFound(err)
	}
	if _, ok := pvc.Annotations[AnnotationUndoConversion]; !ok || pvc.DeletionTimestamp != nil {
		return reconcile.Result{}, nil
	}
	var bound, retained *corev1.PersistentVolume
	get := func(name string) (*corev1.PersistentVolume, error) {
		var pv corev1.PersistentVolume
		if err := c.Client.Get(ctx, types.NamespacedName{Name: name}, &pv); err != nil {
			return nil, ctrl.IgnoreNotFound(err)
		}
		return &pv, nil
	}
	var err error
	if pvc.Spec.VolumeName != "" {
		if bound, err = get(pvc.Spec.VolumeName); err != nil {
			return reconcile.Result{}, err
		}
	}
	if bound != nil && bound.Annotations[AnnotationConvertedFrom] != "" {
		if retained, err = get(bound.Annotations[AnnotationConvertedFrom]); err != nil {
			return reconcile.Result{}, err
		}
	}
	v := CheckUndo(&pvc, bound, retained, c.clock().Now())
	switch {
	case v.InProgress:
		return reconcile.Result{}, nil
	case v.Refusal != "":
		c.sayOnce(&pvc, corev1.EventTypeWarning, ReasonUndoRefused, fmt.Sprintf("undo asked by annotation %s on PVC %s/%s refused, nothing changed: %s", AnnotationUndoConversion, pvc.Namespace, pvc.Name, v.Refusal))
		return reconcile.Result{}, nil
	}
	var pods corev1.PodList
	if err := c.Reader.List(ctx, &pods, ctrl.InNamespace(pvc.Namespace)); err != nil {
		return reconcile.Result{}, err
	}
	if used := PodsUsing(&pvc, pods.Items); len(used) > 0 {
		c.sayOnce(&pvc, corev1.EventTypeNormal, ReasonWaiting, fmt.Sprintf("undo of the conversion of PVC %s/%s waits: in use by pod %v (Kubernetes cannot swap the volume under a running pod)", pvc.Namespace, pvc.Name, used))
		return reconcile.Result{RequeueAfter: c.poll()}, nil
	}
	rec := UndoRecord(v.Forward, &pvc, bound, c.clock().Now())
	// No cooldown: the conversion being undone has just started one on
	// this PV, and an undo is the user's decision.
	err = c.Start(ctx, rec, 0)
	var skip *migration.SkipError
	switch {
	case err == nil:
		return reconcile.Result{}, nil
	case errors.Is(err, migration.ErrAtCapacity), errors.Is(err, migration.ErrNotRunning), errors.As(err, &skip):
		c.sayOnce(&pvc, corev1.EventTypeNormal, ReasonWaiting, fmt.Sprintf("undo of the conversion of PVC %s/%s waits: %v", pvc.Namespace, pvc.Name, err))
		return reconcile.Result{RequeueAfter: c.poll()}, nil
	case errors.Is(err, migration.ErrAlreadyActive):
		return reconcile.Result{RequeueAfter: c.poll()}, nil
	}
	return reconcile.Result{}, err
}

// sayOnce records an Event on the PVC when its message changed since the
// last one for that PVC.
func (c *Converter) sayOnce(pvc *corev1.PersistentVolumeClaim, typ, reason, msg string) {
	key := "pvc:" + string(pvc.UID)
	c.mu.Lock()
	if c.said == nil {
		c.said = map[string]string{}
	}
	changed := c.said[key] != msg
	c.said[key] = msg
	c.mu.Unlock()
	if changed && c.Recorder != nil {
		c.Recorder.Eventf(pvc, nil, typ, reason, "Undo", "%s", msg)
	}
}
