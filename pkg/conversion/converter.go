package conversion

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/migration"
	"github.com/billyronks/couchestor/pkg/tiering"
)

// Copier builds the copy Job and reads its result: pkg/blockcopy's Job and
// result format in production (wired in main.go).
type Copier interface {
	// Job copies the block device of srcClaim onto that of dstClaim (both
	// raw-block PVCs in ns) and verifies both sides.
	Job(ns, name string, rec *Record, srcClaim, dstClaim string) (*batchv1.Job, error)
	// Result parses the copy container's termination message.
	Result(message string) (CopyResult, error)
}

// Event reasons of conversions.
const (
	ReasonStarted       = "ConversionStarted"
	ReasonWaiting       = "ConversionWaiting"
	ReasonCopying       = "ConversionCopying"
	ReasonCompleted     = "ConversionCompleted"
	ReasonFailed        = "ConversionFailed"
	ReasonRolledBack    = "ConversionRolledBack"
	ReasonSourceDeleted = "ConversionSourceDeleted"
	ReasonStuck         = "ConversionStuck"
)

// Converter runs conversions: a reconciler of PVs that carry a Record. It
// owns no memory that matters: each Reconcile reads the record and the
// objects, does the recorded step (idempotently), records the next step and
// requeues; an operator restarted at any point repeats the step it finds.
type Converter struct {
	Client ctrl.Client
	// Reader reads Jobs and pods uncached (the manager's API reader).
	Reader ctrl.Reader
	// Engine shares the migration limits and folds results into history.
	Engine   *migration.Engine
	Recorder events.EventRecorder
	Copier   Copier
	// Namespace holds the temporary PVCs and the copy Job (the operator's).
	Namespace string
	// MaxCopyAttempts bounds failed copy Jobs before the conversion rolls
	// back; 0: 3.
	MaxCopyAttempts int
	// Poll is how often a waiting step looks again; 0: 5s.
	Poll  time.Duration
	Clock clock.Clock

	mu   sync.Mutex
	held map[string]slot   // PV -> the engine slot it holds
	said map[string]string // PV -> last waiting message (one Event per change)
}

func (c *Converter) clock() clock.Clock {
	if c.Clock == nil {
		return clock.RealClock{}
	}
	return c.Clock
}

func (c *Converter) poll() time.Duration {
	if c.Poll <= 0 {
		return 5 * time.Second
	}
	return c.Poll
}

// Start records a new conversion on its source PV: rec must be complete
// (Step Preparing). It takes a slot under the migration limits first and
// writes the record in one optimistic-concurrency update that checks, on
// the fresh PV, that no migration or conversion runs and the cooldown is
// over. ErrAtCapacity and ErrAlreadyActive come from the engine.
func (c *Converter) Start(ctx context.Context, rec *Record, cooldown time.Duration) error {
	raw, err := rec.Marshal()
	if err != nil {
		return fmt.Errorf("conversion of PV %s: %w", rec.Source, err)
	}
	task := migration.Task{VolumeID: rec.SourceHandle, PVName: rec.Source, Policy: rec.Policy, FromTier: rec.FromTier, ToTier: rec.ToTier, StartedAt: rec.StartedAt, Step: migration.Step("Converting")}
	if err := c.Engine.Reserve(task, rec.MaxConcurrent); err != nil {
		return err
	}
	err = c.updatePV(ctx, rec.Source, func(pv *corev1.PersistentVolume) (bool, error) {
		ann := pv.Annotations
		switch {
		case ann[AnnotationConversion] != "":
			return false, fmt.Errorf("PV %s: %w", pv.Name, migration.ErrAlreadyActive)
		case ann[migration.AnnotationMigration] != "":
			return false, fmt.Errorf("PV %s migrates: %w", pv.Name, migration.ErrAlreadyActive)
		}
		until, err := tiering.Cooldown(ann, cooldown)
		if err != nil {
			return false, err
		}
		if c.clock().Now().Before(until) {
			return false, &migration.SkipError{Reason: fmt.Sprintf("PV %s is in cooldown until %s", pv.Name, until.UTC().Format(time.RFC3339))}
		}
		ann[AnnotationConversion] = raw
		return true, nil
	})
	if err != nil {
		c.Engine.Release(rec.SourceHandle, rec.Policy)
		return err
	}
	c.mu.Lock()
	if c.held == nil {
		c.held = map[string]slot{}
	}
	c.held[rec.Source] = slot{policy: rec.Policy, handle: rec.SourceHandle}
	c.mu.Unlock()
	c.event(ctx, rec, corev1.EventTypeNormal, ReasonStarted, "converting PV %s (%s, %d bytes) from %s to %s for PVC %s/%s",
		rec.Source, rec.SourceHandle, rec.SizeBytes, rec.FromTier, rec.ToTier, rec.Claim.Namespace, rec.Claim.Name)
	return nil
}

// Reconcile does the recorded step of the conversion whose source is the PV.
func (c *Converter) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	var pv corev1.PersistentVolume
	if err := c.Client.Get(ctx, req.NamespacedName, &pv); err != nil {
		if apierrors.IsNotFound(err) {
			c.releaseHeld(req.Name)
			return reconcile.Result{}, nil
		}
		return reconcile.Result{}, err
	}
	raw := pv.Annotations[AnnotationConversion]
	if raw == "" {
		c.releaseHeld(pv.Name)
		return reconcile.Result{}, nil
	}
	rec, err := Parse(raw)
	if err != nil {
		// Never act on a record we cannot read: say so and leave it.
		log.FromContext(ctx).Error(err, "unreadable conversion record; left in place", "pv", pv.Name)
		c.Recorder.Eventf(&pv, nil, corev1.EventTypeWarning, ReasonStuck, "Convert", "conversion record unreadable, nothing done: %v", err)
		return reconcile.Result{}, nil
	}
	if rec.Source != pv.Name {
		err := fmt.Errorf("annotation %s: source %q is not this PV %q", AnnotationConversion, rec.Source, pv.Name)
		c.Recorder.Eventf(&pv, nil, corev1.EventTypeWarning, ReasonStuck, "Convert", "%v; nothing done", err)
		return reconcile.Result{}, nil
	}
	if rec.Step != StepRetaining && rec.Step != StepDeletingSource {
		c.hold(rec)
	}
	var res reconcile.Result
	switch rec.Step {
	case StepPreparing:
		res, err = c.prepare(ctx, &pv, rec)
	case StepReleasingClaim:
		res, err = c.releaseClaim(ctx, rec)
	case StepCopying:
		res, err = c.copy(ctx, &pv, rec)
	case StepRebinding:
		res, err = c.rebind(ctx, rec)
	case StepRetaining:
		res, err = c.retain(ctx, rec)
	case StepDeletingSource:
		res, err = c.deleteSource(ctx, &pv, rec)
	case StepRollingBack:
		res, err = c.rollBack(ctx, rec)
	}
	if err != nil {
		log.FromContext(ctx).Error(err, "conversion step", "pv", pv.Name, "step", rec.Step)
		return reconcile.Result{RequeueAfter: c.poll()}, nil
	}
	return res, nil
}

type slot struct{ policy, handle string }

// hold takes the engine slot of a conversion found in progress (after a
// restart) once.
func (c *Converter) hold(rec *Record) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.held == nil {
		c.held = map[string]slot{}
	}
	if _, ok := c.held[rec.Source]; ok {
		return
	}
	c.held[rec.Source] = slot{policy: rec.Policy, handle: rec.SourceHandle}
	c.Engine.Resume(migration.Task{VolumeID: rec.SourceHandle, PVName: rec.Source, Policy: rec.Policy, FromTier: rec.FromTier, ToTier: rec.ToTier, StartedAt: rec.StartedAt, Step: migration.Step("Converting")})
}

func (c *Converter) releaseHeld(pv string) {
	c.mu.Lock()
	h, ok := c.held[pv]
	delete(c.held, pv)
	delete(c.said, pv)
	c.mu.Unlock()
	if ok {
		c.Engine.Release(h.handle, h.policy)
	}
}

// next records the step (and whatever else mutate changes) before it is
// taken; the caller requeues.
func (c *Converter) next(ctx context.Context, rec *Record, step Step, mutate func(*Record)) (reconcile.Result, error) {
	err := c.updatePV(ctx, rec.Source, func(pv *corev1.PersistentVolume) (bool, error) {
		cur, err := Parse(pv.Annotations[AnnotationConversion])
		if err != nil {
			return false, err
		}
		if cur.ID != rec.ID || cur.Step != rec.Step {
			return false, fmt.Errorf("PV %s: conversion record changed under us (%s %s, expected %s %s)", pv.Name, cur.ID, cur.Step, rec.ID, rec.Step)
		}
		if step == StepDeletingSource && cur.UndoneBy != "" {
			return false, fmt.Errorf("PV %s: undo %s copies back onto this source; its retention does not end", pv.Name, cur.UndoneBy)
		}
		if mutate != nil {
			mutate(cur)
		}
		cur.Step = step
		raw, err := cur.Marshal()
		if err != nil {
			return false, err
		}
		pv.Annotations[AnnotationConversion] = raw
		*rec = *cur
		return true, nil
	})
	if err != nil {
		return reconcile.Result{}, err
	}
	return reconcile.Result{Requeue: true}, nil
}

func (c *Converter) waitFor(ctx context.Context, rec *Record, msg string) (reconcile.Result, error) {
	c.mu.Lock()
	if c.said == nil {
		c.said = map[string]string{}
	}
	changed := c.said[rec.Source] != msg
	c.said[rec.Source] = msg
	c.mu.Unlock()
	if changed {
		c.event(ctx, rec, corev1.EventTypeNormal, ReasonWaiting, "%s: %s", rec.Step, msg)
	}
	return reconcile.Result{RequeueAfter: c.poll()}, nil
}

// fail rolls the conversion back (before the rebind) with why.
func (c *Converter) fail(ctx context.Context, rec *Record, why string) (reconcile.Result, error) {
	c.event(ctx, rec, corev1.EventTypeWarning, ReasonFailed, "%s failed, rolling back: %s", rec.Step, why)
	return c.next(ctx, rec, StepRollingBack, func(r *Record) { r.Failure = fmt.Sprintf("%s: %s", r.Step, why) })
}

// --- ToErasureCoded steps ---

func (c *Converter) prepare(ctx context.Context, pv *corev1.PersistentVolume, rec *Record) (reconcile.Result, error) {
	if pv.Spec.CSI == nil {
		return c.fail(ctx, rec, "the source PV has no CSI source")
	}
	if err := c.setReclaim(ctx, pv.Name, corev1.PersistentVolumeReclaimRetain); err != nil {
		return reconcile.Result{}, err
	}
	switch {
	case rec.Undo:
		return c.prepareUndo(ctx, rec)
	case rec.provisioned():
		return c.prepareNewVolume(ctx, rec)
	}
	want := rec.ECVolume()
	var ev storagev1.ECVolume
	switch err := c.Client.Get(ctx, types.NamespacedName{Name: want.Name}, &ev); {
	case apierrors.IsNotFound(err):
		if err := c.Client.Create(ctx, want); err != nil && !apierrors.IsAlreadyExists(err) {
			if apierrors.IsInvalid(err) || apierrors.IsForbidden(err) {
				return c.fail(ctx, rec, fmt.Sprintf("create ECVolume %s: %v", want.Name, err))
			}
			return reconcile.Result{}, fmt.Errorf("create ECVolume %s: %w", want.Name, err)
		}
		return reconcile.Result{Requeue: true}, nil
	case err != nil:
		return reconcile.Result{}, err
	case ev.Labels[LabelConversion] != rec.ID:
		return c.fail(ctx, rec, fmt.Sprintf("ECVolume %s exists and was not made by this conversion (label %s=%q)", ev.Name, LabelConversion, ev.Labels[LabelConversion]))
	}
	return c.next(ctx, rec, StepReleasingClaim, nil)
}

func (c *Converter) releaseClaim(ctx context.Context, rec *Record) (reconcile.Result, error) {
	var pvc corev1.PersistentVolumeClaim
	err := c.Client.Get(ctx, types.NamespacedName{Namespace: rec.Claim.Namespace, Name: rec.Claim.Name}, &pvc)
	switch {
	case apierrors.IsNotFound(err):
		return c.next(ctx, rec, StepCopying, nil)
	case err != nil:
		return reconcile.Result{}, err
	case pvc.UID != rec.Claim.UID:
		return c.next(ctx, rec, StepCopying, nil) // ours is gone; another PVC of that name is handled at the rebind
	case pvc.DeletionTimestamp != nil:
		return c.waitFor(ctx, rec, fmt.Sprintf("PVC %s/%s is being deleted; Kubernetes keeps it while a pod uses it (pvc-protection)", pvc.Namespace, pvc.Name))
	}
	var pods corev1.PodList
	if err := c.Reader.List(ctx, &pods, ctrl.InNamespace(pvc.Namespace)); err != nil {
		return reconcile.Result{}, err
	}
	if used := PodsUsing(&pvc, pods.Items); len(used) > 0 {
		// Nothing is deleted yet: give the slot back rather than wait on a
		// pod that may run for months.
		return c.fail(ctx, rec, fmt.Sprintf("pod %v started using PVC %s/%s before it was released", used, pvc.Namespace, pvc.Name))
	}
	if err := c.Client.Delete(ctx, &pvc, ctrl.Preconditions{UID: &rec.Claim.UID}); err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return reconcile.Result{}, fmt.Errorf("delete PVC %s/%s: %w", pvc.Namespace, pvc.Name, err)
	}
	return reconcile.Result{RequeueAfter: c.poll()}, nil
}

func (c *Converter) copy(ctx context.Context, pv *corev1.PersistentVolume, rec *Record) (reconcile.Result, error) {
	src := pv.Spec.CSI
	if src == nil {
		return c.fail(ctx, rec, "the source PV has no CSI source")
	}
	fsType := src.FSType
	aliases := []*corev1.PersistentVolume{
		rec.AliasPV(rec.SourceAlias(), src, pv.Spec.NodeAffinity, rec.SizeBytes, c.Namespace, rec.SourceClaim()),
	}
	claims := []*corev1.PersistentVolumeClaim{
		rec.TempClaim(c.Namespace, rec.SourceClaim(), rec.SourceAlias(), "", rec.SizeBytes),
	}
	switch {
	case rec.Direction == ToErasureCoded:
		aliases = append(aliases, rec.AliasPV(rec.TargetAlias(), rec.ECSource(fsType), nil, rec.SizeBytes, c.Namespace, rec.TargetClaim()))
		claims = append(claims, rec.TempClaim(c.Namespace, rec.TargetClaim(), rec.TargetAlias(), "", rec.SizeBytes))
	case rec.Undo:
		// The retained source of the conversion being undone.
		var t corev1.PersistentVolume
		if err := c.Client.Get(ctx, types.NamespacedName{Name: rec.Target}, &t); err != nil {
			if apierrors.IsNotFound(err) {
				return c.fail(ctx, rec, fmt.Sprintf("the retained source PV %s is gone", rec.Target))
			}
			return reconcile.Result{}, err
		}
		if t.Spec.CSI == nil {
			return c.fail(ctx, rec, fmt.Sprintf("the retained source PV %s has no CSI source", rec.Target))
		}
		aliases = append(aliases, rec.AliasPV(rec.TargetAlias(), t.Spec.CSI, t.Spec.NodeAffinity, rec.SizeBytes, c.Namespace, rec.TargetClaim()))
		claims = append(claims, rec.TempClaim(c.Namespace, rec.TargetClaim(), rec.TargetAlias(), "", rec.SizeBytes))
	default:
		// Heat-up: the target claim is the new volume's, provisioned in
		// Preparing; it is never recreated here (that would be another,
		// empty volume).
		var got corev1.PersistentVolumeClaim
		if err := c.Client.Get(ctx, types.NamespacedName{Namespace: c.Namespace, Name: rec.TargetClaim()}, &got); err != nil {
			if apierrors.IsNotFound(err) {
				return c.fail(ctx, rec, fmt.Sprintf("the temporary PVC %s/%s of the new volume is gone", c.Namespace, rec.TargetClaim()))
			}
			return reconcile.Result{}, err
		}
		if got.Status.Phase != corev1.ClaimBound {
			return c.waitFor(ctx, rec, "the new volume's temporary PVC is not bound")
		}
	}
	for _, o := range aliases {
		if err := c.Client.Create(ctx, o); err != nil && !apierrors.IsAlreadyExists(err) {
			return reconcile.Result{}, fmt.Errorf("create block alias PV %s: %w", o.Name, err)
		}
	}
	bound := true
	for _, o := range claims {
		var got corev1.PersistentVolumeClaim
		err := c.Client.Get(ctx, ctrl.ObjectKeyFromObject(o), &got)
		if apierrors.IsNotFound(err) {
			if err := c.Client.Create(ctx, o); err != nil && !apierrors.IsAlreadyExists(err) {
				return reconcile.Result{}, fmt.Errorf("create temporary PVC %s/%s: %w", o.Namespace, o.Name, err)
			}
			bound = false
			continue
		}
		if err != nil {
			return reconcile.Result{}, err
		}
		if got.Status.Phase != corev1.ClaimBound {
			bound = false
		}
	}
	if !bound {
		return c.waitFor(ctx, rec, "temporary block PVCs are not bound yet")
	}
	var job batchv1.Job
	err := c.Reader.Get(ctx, types.NamespacedName{Namespace: c.Namespace, Name: rec.JobName()}, &job)
	if apierrors.IsNotFound(err) {
		j, err := c.Copier.Job(c.Namespace, rec.JobName(), rec, rec.SourceClaim(), rec.TargetClaim())
		if err != nil {
			return c.fail(ctx, rec, fmt.Sprintf("build copy Job: %v", err))
		}
		if j.Labels == nil {
			j.Labels = map[string]string{}
		}
		j.Labels[LabelConversion] = rec.ID
		if err := c.Client.Create(ctx, j); err != nil && !apierrors.IsAlreadyExists(err) {
			return reconcile.Result{}, fmt.Errorf("create copy Job %s: %w", j.Name, err)
		}
		c.event(ctx, rec, corev1.EventTypeNormal, ReasonCopying, "copy Job %s/%s started (attempt %d)", c.Namespace, rec.JobName(), rec.CopyAttempts+1)
		return reconcile.Result{RequeueAfter: c.poll()}, nil
	}
	if err != nil {
		return reconcile.Result{}, err
	}
	switch {
	case jobCondition(&job, batchv1.JobComplete):
		msg, err := c.terminationMessage(ctx, &job)
		if err != nil {
			return reconcile.Result{}, err
		}
		res, err := c.Copier.Result(msg)
		if err == nil {
			err = res.Verified(rec.SizeBytes)
		}
		if err != nil {
			return c.retryCopy(ctx, rec, &job, fmt.Sprintf("copy Job %s finished but its result does not verify: %v", job.Name, err))
		}
		return c.next(ctx, rec, StepRebinding, func(r *Record) { r.Copy = &res })
	case jobCondition(&job, batchv1.JobFailed):
		msg, _ := c.terminationMessage(ctx, &job)
		return c.retryCopy(ctx, rec, &job, fmt.Sprintf("copy Job %s failed: %s", job.Name, firstNonEmpty(msg, jobConditionMessage(&job, batchv1.JobFailed))))
	}
	return reconcile.Result{RequeueAfter: c.poll()}, nil
}

func (c *Converter) retryCopy(ctx context.Context, rec *Record, job *batchv1.Job, why string) (reconcile.Result, error) {
	max := c.MaxCopyAttempts
	if max <= 0 {
		max = 3
	}
	if rec.CopyAttempts+1 >= max {
		return c.fail(ctx, rec, fmt.Sprintf("%s (attempt %d of %d)", why, rec.CopyAttempts+1, max))
	}
	c.event(ctx, rec, corev1.EventTypeWarning, ReasonCopying, "%s; retrying (attempt %d of %d)", why, rec.CopyAttempts+2, max)
	// Record the attempt before deleting the Job: a crash in between
	// deletes it again, never counts twice.
	if _, err := c.next(ctx, rec, StepCopying, func(r *Record) { r.CopyAttempts++ }); err != nil {
		return reconcile.Result{}, err
	}
	if err := c.Client.Delete(ctx, job, ctrl.PropagationPolicy(metav1.DeletePropagationBackground)); err != nil && !apierrors.IsNotFound(err) {
		return reconcile.Result{}, err
	}
	return reconcile.Result{RequeueAfter: c.poll()}, nil
}

func (c *Converter) rebind(ctx context.Context, rec *Record) (reconcile.Result, error) {
	if gone, err := c.removeTemporaries(ctx, rec); err != nil || !gone {
		if err != nil {
			return reconcile.Result{}, err
		}
		return c.waitFor(ctx, rec, "temporary PVCs, block aliases and the copy Job are being removed")
	}
	var src corev1.PersistentVolume
	if err := c.Client.Get(ctx, types.NamespacedName{Name: rec.Source}, &src); err != nil {
		return reconcile.Result{}, err
	}
	switch {
	case rec.Direction == ToErasureCoded:
		final := rec.FinalPV(rec.ECSource(src.Spec.CSI.FSType), nil, rec.Claim.StorageClassName)
		if err := c.Client.Create(ctx, final); err != nil && !apierrors.IsAlreadyExists(err) {
			return reconcile.Result{}, fmt.Errorf("create PV %s: %w", final.Name, err)
		}
	case rec.provisioned():
		if res, err := c.newVolumeFinalPV(ctx, rec, &src); err != nil || !res.IsZero() {
			return res, err
		}
	}
	var pvc corev1.PersistentVolumeClaim
	err := c.Client.Get(ctx, types.NamespacedName{Namespace: rec.Claim.Namespace, Name: rec.Claim.Name}, &pvc)
	switch {
	case apierrors.IsNotFound(err):
		if rec.Undo {
			// The retained source's claimRef still names the PVC the
			// conversion deleted: pre-bind it to the claim by name.
			if err := c.preBind(ctx, rec.Target, rec.Claim); err != nil {
				return reconcile.Result{}, err
			}
		}
		if err := c.Client.Create(ctx, rec.FinalClaim()); err != nil && !apierrors.IsAlreadyExists(err) {
			return reconcile.Result{}, fmt.Errorf("recreate PVC %s/%s: %w", rec.Claim.Namespace, rec.Claim.Name, err)
		}
		return reconcile.Result{RequeueAfter: c.poll()}, nil
	case err != nil:
		return reconcile.Result{}, err
	case pvc.Spec.VolumeName != rec.Target:
		// Someone made a PVC of that name meanwhile: the data is safe on
		// both volumes; a human decides.
		c.event(ctx, rec, corev1.EventTypeWarning, ReasonStuck, "PVC %s/%s was recreated by someone else (volume %q); the verified copy is PV %s, the source PV %s is retained; delete that PVC to let the conversion finish", pvc.Namespace, pvc.Name, pvc.Spec.VolumeName, rec.Target, rec.Source)
		return reconcile.Result{RequeueAfter: 10 * c.poll()}, nil
	case pvc.Status.Phase != corev1.ClaimBound:
		return c.waitFor(ctx, rec, fmt.Sprintf("PVC %s/%s is recreated and not yet bound to PV %s", pvc.Namespace, pvc.Name, rec.Target))
	}
	if err := c.setReclaim(ctx, rec.Target, rec.SourceReclaimPolicy); err != nil {
		return reconcile.Result{}, err
	}
	now := c.clock().Now()
	// The live volume starts its cooldown (heat-up waits for it), then the
	// result and the next step are one write on the source.
	if err := c.updatePV(ctx, rec.Target, func(pv *corev1.PersistentVolume) (bool, error) {
		if last, err := time.Parse(time.RFC3339, pv.Annotations[tiering.AnnotationLastMigration]); err == nil && !last.Before(rec.StartedAt.Truncate(time.Second)) {
			return false, nil // set by this conversion (before a crash)
		}
		pv.Annotations[tiering.AnnotationLastMigration] = now.UTC().Format(time.RFC3339)
		return true, nil
	}); err != nil {
		return reconcile.Result{}, err
	}
	retain, _ := time.ParseDuration(rec.Retain)
	result := rec.result(now, migration.Succeeded, "")
	if rec.Undo {
		return c.finishUndo(ctx, rec, result, now, retain)
	}
	if err := c.Engine.RecordResult(ctx, result, func(ann map[string]string) (bool, error) {
		cur, err := Parse(ann[AnnotationConversion])
		if err != nil || cur.ID != rec.ID || cur.Step != StepRebinding {
			return false, nil // advanced before a crash
		}
		cur.Step, cur.RebindAt, cur.RetainUntil = StepRetaining, now, now.Add(retain)
		raw, err := cur.Marshal()
		if err != nil {
			return false, err
		}
		ann[AnnotationConversion] = raw
		*rec = *cur
		return true, nil
	}); err != nil {
		return reconcile.Result{}, err
	}
	c.releaseHeld(rec.Source)
	c.event(ctx, rec, corev1.EventTypeNormal, ReasonCompleted, "PVC %s/%s now uses PV %s (%s, %d bytes verified, source digest %s); source PV %s retained until %s",
		rec.Claim.Namespace, rec.Claim.Name, rec.Target, rec.ToTier, rec.SizeBytes, shortDigest(rec.Copy), rec.Source, rec.RetainUntil.UTC().Format(time.RFC3339))
	return reconcile.Result{Requeue: true}, nil
}

func (c *Converter) retain(ctx context.Context, rec *Record) (reconcile.Result, error) {
	now := c.clock().Now()
	if now.Before(rec.RetainUntil) {
		return reconcile.Result{RequeueAfter: min(rec.RetainUntil.Sub(now), time.Hour)}, nil
	}
	if rec.UndoneBy != "" {
		// An undo copies the erasure-coded volume back onto this source:
		// it ends this record (or clears UndoneBy when it rolls back).
		return reconcile.Result{RequeueAfter: c.poll()}, nil
	}
	return c.next(ctx, rec, StepDeletingSource, nil)
}

func (c *Converter) deleteSource(ctx context.Context, pv *corev1.PersistentVolume, rec *Record) (reconcile.Result, error) {
	// The target must be the live copy before the source goes.
	var pvc corev1.PersistentVolumeClaim
	if err := c.Client.Get(ctx, types.NamespacedName{Namespace: rec.Claim.Namespace, Name: rec.Claim.Name}, &pvc); err == nil && pvc.Spec.VolumeName == rec.Source {
		return c.waitFor(ctx, rec, "PVC is bound to the source again; not deleting it")
	}
	if err := c.setReclaim(ctx, pv.Name, rec.SourceReclaimPolicy); err != nil {
		return reconcile.Result{}, err
	}
	if rec.Direction == ToReplicated && (rec.Undo || rec.SourceReclaimPolicy == corev1.PersistentVolumeReclaimDelete) {
		if err := c.deleteECVolume(ctx, pv); err != nil {
			return reconcile.Result{}, err
		}
	}
	if pv.DeletionTimestamp == nil {
		if err := c.Client.Delete(ctx, pv, ctrl.Preconditions{UID: &pv.UID}); err != nil && !apierrors.IsNotFound(err) {
			return reconcile.Result{}, err
		}
		c.event(ctx, rec, corev1.EventTypeNormal, ReasonSourceDeleted, "retention of source PV %s ended: deleted (reclaim policy %s)", rec.Source, rec.SourceReclaimPolicy)
	}
	return reconcile.Result{RequeueAfter: c.poll()}, nil
}

// rollBack returns the PVC to the source and removes the target. It runs
// only before the rebind succeeded, so the source is the only copy the PVC
// ever wrote: it is never touched here.
func (c *Converter) rollBack(ctx context.Context, rec *Record) (reconcile.Result, error) {
	if gone, err := c.removeTemporaries(ctx, rec); err != nil || !gone {
		if err != nil {
			return reconcile.Result{}, err
		}
		return c.waitFor(ctx, rec, "rolling back: temporary objects are being removed")
	}
	var pvc corev1.PersistentVolumeClaim
	err := c.Client.Get(ctx, types.NamespacedName{Namespace: rec.Claim.Namespace, Name: rec.Claim.Name}, &pvc)
	switch {
	case apierrors.IsNotFound(err):
		// Pre-bind the source to the claim by name (its claimRef still
		// names the deleted incarnation), then recreate the claim.
		if err := c.updatePV(ctx, rec.Source, func(pv *corev1.PersistentVolume) (bool, error) {
			ref := pv.Spec.ClaimRef
			if ref != nil && ref.Namespace == rec.Claim.Namespace && ref.Name == rec.Claim.Name && ref.UID == "" {
				return false, nil
			}
			pv.Spec.ClaimRef = &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: rec.Claim.Namespace, Name: rec.Claim.Name}
			return true, nil
		}); err != nil {
			return reconcile.Result{}, err
		}
		if err := c.Client.Create(ctx, RecreatedClaim(rec.Claim, rec.Source)); err != nil && !apierrors.IsAlreadyExists(err) {
			return reconcile.Result{}, fmt.Errorf("recreate PVC %s/%s on the source: %w", rec.Claim.Namespace, rec.Claim.Name, err)
		}
		return reconcile.Result{RequeueAfter: c.poll()}, nil
	case err != nil:
		return reconcile.Result{}, err
	case pvc.UID == rec.Claim.UID:
		// Never released (the failure came first): nothing to rebind.
	case pvc.Spec.VolumeName != rec.Source:
		c.event(ctx, rec, corev1.EventTypeWarning, ReasonStuck, "rolling back: PVC %s/%s was recreated by someone else (volume %q); source PV %s is retained with the data; delete that PVC to let the rollback rebind it", pvc.Namespace, pvc.Name, pvc.Spec.VolumeName, rec.Source)
		return reconcile.Result{RequeueAfter: 10 * c.poll()}, nil
	case pvc.Status.Phase != corev1.ClaimBound:
		return c.waitFor(ctx, rec, "rolling back: the recreated PVC is not yet bound to the source")
	}
	if err := c.setReclaim(ctx, rec.Source, rec.SourceReclaimPolicy); err != nil {
		return reconcile.Result{}, err
	}
	switch {
	case rec.Direction == ToErasureCoded:
		var ev storagev1.ECVolume
		if err := c.Client.Get(ctx, types.NamespacedName{Name: rec.Target}, &ev); err == nil && ev.Labels[LabelConversion] == rec.ID {
			if err := c.Client.Delete(ctx, &ev, ctrl.Preconditions{UID: &ev.UID}); err != nil && !apierrors.IsNotFound(err) {
				return reconcile.Result{}, err
			}
		} else if err != nil && !apierrors.IsNotFound(err) {
			return reconcile.Result{}, err
		}
	case rec.Undo:
		// The retained source stays retained (it may hold part of the
		// copy back; the erasure-coded volume is the live copy).
		if err := c.releaseUndone(ctx, rec); err != nil {
			return reconcile.Result{}, err
		}
	default:
		// The new volume goes: its PV (Retain since Preparing, Released
		// once its temporary PVC is gone) returns to Delete, so its
		// provisioner deletes it.
		np, err := c.newVolumePV(ctx, rec)
		if err != nil {
			return reconcile.Result{}, err
		}
		if np != nil {
			if err := c.setReclaim(ctx, np.Name, corev1.PersistentVolumeReclaimDelete); err != nil {
				return reconcile.Result{}, err
			}
		}
	}
	now := c.clock().Now()
	result := rec.result(now, migration.Aborted, rec.Failure)
	if err := c.Engine.RecordResult(ctx, result, func(ann map[string]string) (bool, error) {
		if ann[AnnotationConversion] == "" {
			return false, nil
		}
		delete(ann, AnnotationConversion)
		// Cooldown with back-off, as a failed migration.
		n, _ := strconv.Atoi(ann[tiering.AnnotationMigrationFailures])
		ann[tiering.AnnotationMigrationFailures] = strconv.Itoa(n + 1)
		ann[tiering.AnnotationLastMigration] = now.UTC().Format(time.RFC3339)
		return true, nil
	}); err != nil {
		return reconcile.Result{}, err
	}
	c.releaseHeld(rec.Source)
	c.event(ctx, rec, corev1.EventTypeWarning, ReasonRolledBack, "conversion rolled back, PVC %s/%s stays on PV %s: %s", rec.Claim.Namespace, rec.Claim.Name, rec.Source, rec.Failure)
	return reconcile.Result{}, nil
}

// removeTemporaries deletes the copy Job, the temporary PVCs and the block
// aliases, and reports whether they are all gone.
func (c *Converter) removeTemporaries(ctx context.Context, rec *Record) (bool, error) {
	objs := []ctrl.Object{
		&batchv1.Job{ObjectMeta: metav1.ObjectMeta{Namespace: c.Namespace, Name: rec.JobName()}},
		&corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: c.Namespace, Name: rec.SourceClaim()}},
		&corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: c.Namespace, Name: rec.TargetClaim()}},
		&corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: rec.SourceAlias()}},
		&corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: rec.TargetAlias()}},
	}
	gone := true
	for _, o := range objs {
		reader := ctrl.Reader(c.Client)
		if _, ok := o.(*batchv1.Job); ok {
			reader = c.Reader
		}
		err := reader.Get(ctx, ctrl.ObjectKeyFromObject(o), o)
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return false, err
		}
		gone = false
		if o.GetLabels()[LabelConversion] != rec.ID {
			return false, fmt.Errorf("%T %s exists and is not this conversion's (label %s=%q): not deleting it", o, o.GetName(), LabelConversion, o.GetLabels()[LabelConversion])
		}
		if o.GetDeletionTimestamp() != nil {
			continue
		}
		if err := c.Client.Delete(ctx, o, ctrl.PropagationPolicy(metav1.DeletePropagationBackground)); err != nil && !apierrors.IsNotFound(err) {
			return false, err
		}
	}
	return gone, nil
}

func (c *Converter) terminationMessage(ctx context.Context, job *batchv1.Job) (string, error) {
	var pods corev1.PodList
	if err := c.Reader.List(ctx, &pods, ctrl.InNamespace(job.Namespace), ctrl.MatchingLabels{"batch.kubernetes.io/job-name": job.Name}); err != nil {
		return "", err
	}
	var failed string
	for _, p := range pods.Items {
		if p.Labels["controller-uid"] != "" && p.Labels["controller-uid"] != string(job.UID) {
			continue
		}
		for _, st := range p.Status.ContainerStatuses {
			if t := st.State.Terminated; t != nil {
				if t.ExitCode == 0 && p.Status.Phase == corev1.PodSucceeded {
					return t.Message, nil
				}
				failed = firstNonEmpty(t.Message, t.Reason)
			}
		}
	}
	if job.Status.Succeeded > 0 {
		return "", fmt.Errorf("copy Job %s succeeded but no pod of it reports a result", job.Name)
	}
	return failed, nil
}

func (c *Converter) setReclaim(ctx context.Context, pvName string, p corev1.PersistentVolumeReclaimPolicy) error {
	return c.updatePV(ctx, pvName, func(pv *corev1.PersistentVolume) (bool, error) {
		if pv.Spec.PersistentVolumeReclaimPolicy == p {
			return false, nil
		}
		pv.Spec.PersistentVolumeReclaimPolicy = p
		return true, nil
	})
}

func (c *Converter) updatePV(ctx context.Context, name string, mutate func(*corev1.PersistentVolume) (bool, error)) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		var pv corev1.PersistentVolume
		if err := c.Client.Get(ctx, types.NamespacedName{Name: name}, &pv); err != nil {
			return err
		}
		if pv.Annotations == nil {
			pv.Annotations = map[string]string{}
		}
		changed, err := mutate(&pv)
		if err != nil || !changed {
			return err
		}
		return c.Client.Update(ctx, &pv)
	})
}

// event records on the source PV, the PVC (when it exists) and the policy.
func (c *Converter) event(ctx context.Context, rec *Record, typ, reason, format string, args ...any) {
	if c.Recorder == nil {
		return
	}
	note := fmt.Sprintf(format, args...)
	var pv corev1.PersistentVolume
	if err := c.Client.Get(ctx, types.NamespacedName{Name: rec.Source}, &pv); err == nil {
		c.Recorder.Eventf(&pv, nil, typ, reason, "Convert", "%s", note)
	}
	var pvc corev1.PersistentVolumeClaim
	if err := c.Client.Get(ctx, types.NamespacedName{Namespace: rec.Claim.Namespace, Name: rec.Claim.Name}, &pvc); err == nil {
		c.Recorder.Eventf(&pvc, nil, typ, reason, "Convert", "%s", note)
	}
	var sp storagev1.StoragePolicy
	if err := c.Client.Get(ctx, types.NamespacedName{Name: rec.Policy}, &sp); err == nil {
		c.Recorder.Eventf(&sp, nil, typ, reason, "Convert", "PV %s: %s", rec.Source, note)
	}
}

func (r *Record) result(now time.Time, o migration.Outcome, why string) migration.Result {
	return migration.Result{Policy: r.Policy, VolumeName: r.Source, VolumeID: r.SourceHandle, FromTier: r.FromTier, ToTier: r.ToTier,
		TriggerIOPS: r.TriggerIOPS, StartedAt: r.StartedAt, FinishedAt: now, Outcome: o, Error: why}
}

func jobCondition(j *batchv1.Job, t batchv1.JobConditionType) bool {
	for _, c := range j.Status.Conditions {
		if c.Type == t && c.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}

func jobConditionMessage(j *batchv1.Job, t batchv1.JobConditionType) string {
	for _, c := range j.Status.Conditions {
		if c.Type == t {
			return firstNonEmpty(c.Message, c.Reason)
		}
	}
	return ""
}

func firstNonEmpty(s ...string) string {
	for _, x := range s {
		if x != "" {
			return x
		}
	}
	return ""
}

func shortDigest(c *CopyResult) string {
	if c == nil {
		return "?"
	}
	if len(c.SourceDigest) > 16 {
		return c.SourceDigest[:16]
	}
	return c.SourceDigest
}
