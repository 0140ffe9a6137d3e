package controllers

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/conversion"
	"github.com/billyronks/couchestor/pkg/migration"
	"github.com/billyronks/couchestor/pkg/tiering"
)

// The conversion of cold volumes to erasure coding, as the StoragePolicy
// controller sees it: it decides (pkg/conversion.Eligible) and hands the
// volumes that convert now to the Converter, which does the work off the
// reconcile path; in dry run it records "would convert" in history.

// +kubebuilder:rbac:groups="",resources=pods,verbs=list

// ConversionStarter starts conversions (pkg/conversion's Converter).
type ConversionStarter interface {
	Start(ctx context.Context, rec *conversion.Record, cooldown time.Duration) error
}

// conversionVerdict is the verdict on one cold volume.
type conversionVerdict struct {
	pv      *corev1.PersistentVolume
	claim   *corev1.PersistentVolumeClaim
	d       tiering.Decision
	size    int64
	verdict conversion.Verdict
}

// judgeConversions decides, for every volume of the evaluation, whether it
// converts now; o.pvs and o.claims come from observe.
func (r *StoragePolicyReconciler) judgeConversions(ctx context.Context, o *outcome, vols []tiering.Volume) error {
	rules := conversion.Rules{MinSizeBytes: *o.spec.ECMinVolumeSizeBytes, Residency: o.cooldown}
	podsIn := map[string][]corev1.Pod{} // namespace -> its pods, listed once per evaluation
	for i, d := range o.eval.Decisions {
		pv := o.pvs[d.Volume]
		if pv == nil {
			continue
		}
		if d.From != tiering.Cold {
			continue
		}
		cv := conversionVerdict{pv: pv, claim: o.claims[d.Volume], d: d, size: vols[i].SizeBytes}
		in := conversion.Volume{PV: pv, Claim: cv.claim, SizeBytes: cv.size}
		cv.verdict = conversion.Eligible(d, in, rules, o.now)
		if cv.verdict.Convert() {
			// Only now ask which pods use the claim (one uncached List per
			// namespace and evaluation), so the operator never caches every
			// pod of the cluster.
			pods, ok := podsIn[cv.claim.Namespace]
			if !ok {
				var list corev1.PodList
				reader := r.APIReader
				if reader == nil {
					reader = r.Client
				}
				if err := reader.List(ctx, &list, client.InNamespace(cv.claim.Namespace)); err != nil {
					return fmt.Errorf("list pods of namespace %s (does PVC %s use a pod?): %w", cv.claim.Namespace, cv.claim.Name, err)
				}
				pods = list.Items
				podsIn[cv.claim.Namespace] = pods
			}
			in.UsedBy = conversion.PodsUsing(cv.claim, pods)
			cv.verdict = conversion.Eligible(d, in, rules, o.now)
		}
		if cv.verdict.Code == conversion.CodeConverting {
			o.converting++
		}
		o.conversions = append(o.conversions, cv)
	}
	return nil
}

// conversionRecord is the record that starts a volume's conversion.
func (r *StoragePolicyReconciler) conversionRecord(pol *storagev1.StoragePolicy, o *outcome, cv conversionVerdict) *conversion.Record {
	rec := &conversion.Record{
		Direction: conversion.ToErasureCoded, Policy: pol.Name, MaxConcurrent: *o.spec.MaxConcurrentMigrations,
		Step: conversion.StepPreparing, StartedAt: o.now.UTC().Truncate(time.Second), TriggerIOPS: cv.d.IOPS,
		FromTier: conversion.TierCold, ToTier: conversion.TierErasureCoded,
		Source: cv.pv.Name, SourceHandle: cv.pv.Spec.CSI.VolumeHandle, SizeBytes: cv.size,
		SourceReclaimPolicy: cv.pv.Spec.PersistentVolumeReclaimPolicy, Claim: conversion.ClaimOf(cv.claim),
		ECPolicy: o.spec.ECPolicyRef, Target: "ec-" + cv.pv.Name, Retain: r.ConversionRetain.String(),
	}
	rec.ID = conversion.ConversionID(rec.Source, rec.StartedAt)
	return rec
}

// startConversions hands the volumes that convert now to the Converter.
func (r *StoragePolicyReconciler) startConversions(ctx context.Context, pol *storagev1.StoragePolicy, o *outcome) {
	if o.dryRun || r.Converter == nil || !o.ecPolicyReady {
		return
	}
	for _, cv := range o.conversions {
		if !cv.verdict.Convert() || cv.pv.Spec.CSI == nil {
			continue
		}
		err := r.Converter.Start(ctx, r.conversionRecord(pol, o, cv), o.cooldown)
		switch {
		case err == nil:
		case errors.Is(err, migration.ErrAtCapacity):
			return // the rest waits for the next evaluation
		case errors.Is(err, migration.ErrAlreadyActive), errors.Is(err, migration.ErrNotRunning):
		default:
			log.FromContext(ctx).Info("conversion not started", "pv", cv.pv.Name, "reason", err.Error())
			r.event(pol, corev1.EventTypeWarning, "ConversionNotStarted", "Convert", "PV %s: %v", cv.pv.Name, err)
		}
	}
}

// conversionEvents tells, once per change, why a cold volume that qualifies
// for erasure coding waits (a pod uses it, its residency), as the
// ErasureCoding condition does for all of them at once.
func (r *StoragePolicyReconciler) conversionEvents(pol *storagev1.StoragePolicy, o *outcome, mem *policyMemory) {
	if mem.conv == nil {
		mem.conv = map[string]string{}
	}
	seen := map[string]bool{}
	for _, cv := range o.conversions {
		if !cv.verdict.Wait {
			continue
		}
		seen[cv.pv.Name] = true
		key := cv.verdict.Code + "|" + cv.verdict.Reason
		if mem.conv[cv.pv.Name] == key {
			continue
		}
		mem.conv[cv.pv.Name] = key
		r.event(pol, corev1.EventTypeNormal, "ConversionWaiting", "Convert", "PV %s (cold → erasure-coded) waits: %s", cv.pv.Name, cv.verdict.Reason)
	}
	for v := range mem.conv {
		if !seen[v] {
			delete(mem.conv, v)
		}
	}
}

// wouldConvert are the dry-run history entries of volumes that would
// convert now.
func wouldConvert(o *outcome, due func(volume string) bool, now metav1.Time) []storagev1.MigrationHistoryEntry {
	var out []storagev1.MigrationHistoryEntry
	for _, cv := range o.conversions {
		if cv.verdict.Convert() && due(cv.pv.Name) {
			out = append(out, storagev1.MigrationHistoryEntry{VolumeName: cv.pv.Name, Timestamp: now,
				FromTier: conversion.TierCold, ToTier: conversion.TierErasureCoded, TriggerIOPS: cv.d.IOPS,
				Duration: "0s", DryRun: true})
		}
	}
	return out
}

// setErasureCodingCondition reports what was converted, what converts, what
// waits and why.
func setErasureCodingCondition(st *storagev1.StoragePolicyStatus, o *outcome, set func(t string, s metav1.ConditionStatus, reason, msg string), converter bool) {
	switch {
	case o.spec.ECPolicyRef == "":
		meta.RemoveStatusCondition(&st.Conditions, ConditionErasureCoding)
		return
	case o.ecMissing:
		set(ConditionErasureCoding, metav1.ConditionFalse, "ECPolicyNotFound",
			fmt.Sprintf("spec.ecPolicyRef %q: no ErasureCodingPolicy of that name exists", o.spec.ECPolicyRef)+heatUpSummaryIf(o, converter))
		return
	case !o.ecPolicyReady:
		set(ConditionErasureCoding, metav1.ConditionFalse, "ECPolicyNotReady",
			fmt.Sprintf("ErasureCodingPolicy %s is %s, not Ready or Active: nothing converts to erasure coding", o.spec.ECPolicyRef, o.ecPhase)+heatUpSummaryIf(o, converter))
		return
	case !converter:
		set(ConditionErasureCoding, metav1.ConditionFalse, "ConversionDisabled",
			fmt.Sprintf("%d cold volumes of at least %d bytes qualify for ErasureCodingPolicy %s, but this operator runs without conversions (--ec-conversion=false, or no copy image: --ec-conversion-image / $COUCHESTOR_IMAGE)",
				o.eval.ECCandidates, *o.spec.ECMinVolumeSizeBytes, o.spec.ECPolicyRef))
		return
	}
	var now, waiting []string
	for _, cv := range o.conversions {
		switch {
		case cv.verdict.Convert():
			now = append(now, cv.pv.Name)
		case cv.verdict.Wait:
			waiting = append(waiting, cv.pv.Name+" ("+cv.verdict.Reason+")")
		}
	}
	sort.Strings(now)
	sort.Strings(waiting)
	verb := "converting"
	if o.dryRun {
		verb = "would convert (dry run)"
	}
	msg := fmt.Sprintf("ErasureCodingPolicy %s: %d converted, %d in progress or retained, %s %d", o.spec.ECPolicyRef, o.converted, o.converting, verb, len(now))
	if len(now) > 0 {
		msg += ": " + strings.Join(firstN(now, 5), ", ")
	}
	if len(waiting) > 0 {
		msg += fmt.Sprintf("; %d waiting: %s", len(waiting), strings.Join(firstN(waiting, 5), "; "))
	}
	msg += heatUpSummary(o)
	set(ConditionErasureCoding, metav1.ConditionTrue, "Converting", msg)
}

// heatUpSummaryIf is heatUpSummary when conversions run (heat-ups do not
// need the ErasureCodingPolicy), else nothing.
func heatUpSummaryIf(o *outcome, converter bool) string {
	if !converter {
		return ""
	}
	return heatUpSummary(o)
}

// heatUpSummary is the heat-up part of the ErasureCoding condition: what
// converts back, what waits and why, what is in progress.
func heatUpSummary(o *outcome) string {
	var now, waiting []string
	unknown := 0
	for _, hv := range o.heatUps {
		switch {
		case hv.verdict.Convert():
			now = append(now, hv.pv.Name+" (→ "+string(hv.verdict.To)+")")
		case hv.verdict.Wait:
			waiting = append(waiting, hv.pv.Name+" (→ "+string(hv.verdict.To)+": "+hv.verdict.Reason+")")
		case hv.verdict.Code == conversion.CodeIOPSUnknown:
			unknown++
		}
	}
	if len(o.heatUps) == 0 {
		return ""
	}
	sort.Strings(now)
	sort.Strings(waiting)
	verb := "converting back"
	if o.dryRun {
		verb = "would convert back (dry run)"
	}
	msg := fmt.Sprintf("; heat-up: %d in progress, %s %d", o.heatingUp, verb, len(now))
	if len(now) > 0 {
		msg += ": " + strings.Join(firstN(now, 5), ", ")
	}
	if len(waiting) > 0 {
		msg += fmt.Sprintf("; %d heat-ups waiting: %s", len(waiting), strings.Join(firstN(waiting, 5), "; "))
	}
	if unknown > 0 {
		msg += fmt.Sprintf("; IOPS of %d erasure-coded volumes unknown (never converted back on unknown IOPS)", unknown)
	}
	return msg
}
