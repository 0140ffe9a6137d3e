package controllers

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/conversion"
	"github.com/billyronks/couchestor/pkg/csi"
	"github.com/billyronks/couchestor/pkg/iops"
	"github.com/billyronks/couchestor/pkg/migration"
	"github.com/billyronks/couchestor/pkg/tiering"
)

// Heat-up, as the StoragePolicy controller sees it: the erasure-coded
// volumes a policy converted (PVs of the CSI driver whose
// AnnotationOriginalStorageClass is the policy's storageClassName, owned as
// the replicated volume they were would be) are measured through the
// export's op counters (ECMeter, the same rules as Mayastor's volumes:
// unknown is never zero), judged by conversion.HeatUp, and those that
// convert back now are handed to the Converter as Direction ToReplicated
// records; in dry run they are recorded as "would convert back".

// ecVolume is one erasure-coded volume the policy owns.
type ecVolume struct {
	pv    *corev1.PersistentVolume
	claim *corev1.PersistentVolumeClaim
}

// heatVerdict is the verdict on one erasure-coded volume.
type heatVerdict struct {
	pv      *corev1.PersistentVolume
	claim   *corev1.PersistentVolumeClaim
	m       iops.Measurement
	verdict conversion.HeatVerdict
}

// isErasureCodedPV says whether pv is an erasure-coded volume a conversion
// made (the CSI driver's, with the StorageClass it came from recorded).
func isErasureCodedPV(pv *corev1.PersistentVolume) bool {
	return pv.Spec.CSI != nil && pv.Spec.CSI.Driver == csi.DriverName && pv.Annotations[conversion.AnnotationOriginalStorageClass] != ""
}

// ecVolumeRef is how ownership sees an erasure-coded volume: as the
// replicated volume of its original StorageClass it was (and will be
// again), so the policy that converted it keeps it.
func ecVolumeRef(pv *corev1.PersistentVolume, claim *corev1.PersistentVolumeClaim) tiering.VolumeRef {
	ref := tiering.VolumeRef{StorageClass: pv.Annotations[conversion.AnnotationOriginalStorageClass], CSIDriver: tiering.MayastorCSIDriver}
	if claim != nil {
		ref.HasPVC, ref.PVCLabels = true, claim.Labels
	}
	return ref
}

// heatMemoryFloor is the least time a hot-while-in-use measurement is
// recalled for.
const heatMemoryFloor = 10 * time.Minute

// noECMeter is the measurement of every erasure-coded volume when the
// operator has no meter for them.
var noECMeter = iops.Measurement{Reason: "NoECMeter"}

// judgeHeatUps measures the policy's erasure-coded volumes and decides
// which convert back now.
func (r *StoragePolicyReconciler) judgeHeatUps(ctx context.Context, o *outcome, rules conversion.HeatRules, mem *policyMemory) error {
	o.converted = len(o.ecVols)
	// mem is this policy's: its reconciles never run at once.
	seen := map[string]bool{}
	defer func() {
		for pv := range mem.hotSeen {
			if !seen[pv] {
				delete(mem.hotSeen, pv)
			}
		}
	}()
	if len(o.ecVols) == 0 {
		return nil
	}
	// A measurement made while a pod used the volume is recalled for one
	// samplingWindow, at least heatMemoryFloor and three evaluations: the
	// pod's teardown (grace period, unmount, the export's stop) happens
	// between its last measured window and the evaluation that finds it
	// gone (conversion.Recall).
	memory := max(o.window, heatMemoryFloor, 3*r.EvaluationInterval)
	if r.ECMeter != nil {
		vols := make([]iops.Volume, len(o.ecVols))
		for i, ev := range o.ecVols {
			// Always "published": an export is expected to run, so a volume
			// without a series (or with too short a history) is unknown,
			// never idle.
			vols[i] = iops.Volume{Name: ev.pv.Spec.CSI.VolumeHandle, Published: true}
		}
		o.ecReport = r.ECMeter.Measure(ctx, o.window, vols)
	}
	pods := podLister{r: r, byNS: map[string][]corev1.Pod{}}
	for _, ev := range o.ecVols {
		m, ok := o.ecReport.Measurements[ev.pv.Spec.CSI.VolumeHandle]
		if r.ECMeter == nil || !ok {
			m = noECMeter
		}
		seen[ev.pv.Name] = true
		in := conversion.ECVolume{PV: ev.pv, Claim: ev.claim, IOPS: m.IOPS, IOPSKnown: m.Known, Unknown: describeUnknown(m.Reason)}
		in = conversion.Recall(in, mem.hotSeen[ev.pv.Name], o.now, memory)
		if !in.MeasuredAt.IsZero() {
			m = iops.Measurement{IOPS: in.IOPS, Known: true}
		}
		hv := heatVerdict{pv: ev.pv, claim: ev.claim, m: m, verdict: conversion.HeatUp(in, rules, o.now)}
		if hv.verdict.Convert() {
			used, err := pods.using(ctx, ev.claim)
			if err != nil {
				return err
			}
			in.UsedBy = used
			hv.verdict = conversion.HeatUp(in, rules, o.now)
		}
		if s := conversion.Remember(in, hv.verdict, mem.hotSeen[ev.pv.Name], o.now); s != nil {
			mem.hotSeen[ev.pv.Name] = s
		} else {
			delete(mem.hotSeen, ev.pv.Name)
		}
		if hv.verdict.Code == conversion.CodeConverting {
			o.heatingUp++
		}
		o.heatUps = append(o.heatUps, hv)
	}
	return nil
}

func describeUnknown(r iops.UnknownReason) string {
	switch r {
	case "":
		return ""
	case noECMeter.Reason:
		return "this operator has no meter for erasure-coded volumes"
	}
	return string(r) + ": " + r.Describe()
}

// podLister lists a namespace's pods once per evaluation, uncached, and
// only for claims that would convert now (the operator never caches every
// pod of the cluster).
type podLister struct {
	r    *StoragePolicyReconciler
	byNS map[string][]corev1.Pod
}

func (p *podLister) using(ctx context.Context, claim *corev1.PersistentVolumeClaim) ([]string, error) {
	pods, ok := p.byNS[claim.Namespace]
	if !ok {
		var list corev1.PodList
		reader := p.r.APIReader
		if reader == nil {
			reader = p.r.Client
		}
		if err := reader.List(ctx, &list, client.InNamespace(claim.Namespace)); err != nil {
			return nil, fmt.Errorf("list pods of namespace %s (does PVC %s use a pod?): %w", claim.Namespace, claim.Name, err)
		}
		pods = list.Items
		p.byNS[claim.Namespace] = pods
	}
	return conversion.PodsUsing(claim, pods), nil
}

// startHeatUps hands the erasure-coded volumes that convert back now to
// the Converter. It returns false when the limits are reached (the rest,
// and conversions to erasure coding, wait for the next evaluation).
func (r *StoragePolicyReconciler) startHeatUps(ctx context.Context, pol *storagev1.StoragePolicy, o *outcome) bool {
	if o.dryRun || r.Converter == nil {
		return true
	}
	for _, hv := range o.heatUps {
		if !hv.verdict.Convert() {
			continue
		}
		rec, err := conversion.HeatUpRecord(hv.pv, hv.claim, pol.Name, *o.spec.MaxConcurrentMigrations, hv.verdict.To, hv.m.IOPS, r.ConversionRetain, o.now)
		if err == nil {
			err = r.Converter.Start(ctx, rec, o.cooldown)
		}
		switch {
		case err == nil:
		case errors.Is(err, migration.ErrAtCapacity):
			return false
		case errors.Is(err, migration.ErrAlreadyActive), errors.Is(err, migration.ErrNotRunning):
		default:
			log.FromContext(ctx).Info("heat-up not started", "pv", hv.pv.Name, "reason", err.Error())
			r.event(pol, corev1.EventTypeWarning, "ConversionNotStarted", "ConvertBack", "PV %s (erasure-coded → %s): %v", hv.pv.Name, hv.verdict.To, err)
		}
	}
	return true
}

// wouldConvertBack are the dry-run history entries of erasure-coded
// volumes that would convert back now.
func wouldConvertBack(o *outcome, due func(volume string) bool, now metav1.Time) []storagev1.MigrationHistoryEntry {
	var out []storagev1.MigrationHistoryEntry
	for _, hv := range o.heatUps {
		if hv.verdict.Convert() && due(hv.pv.Name) {
			out = append(out, storagev1.MigrationHistoryEntry{VolumeName: hv.pv.Name, Timestamp: now,
				FromTier: conversion.TierErasureCoded, ToTier: string(hv.verdict.To), TriggerIOPS: hv.m.IOPS,
				Duration: "0s", DryRun: true})
		}
	}
	return out
}

// heatUpEvents tells, once per change, why an erasure-coded volume that
// should convert back waits (a pod uses it, its cooldown).
func (r *StoragePolicyReconciler) heatUpEvents(pol *storagev1.StoragePolicy, o *outcome, mem *policyMemory) {
	seen := map[string]bool{}
	for _, hv := range o.heatUps {
		seen[hv.pv.Name] = true
		key := hv.verdict.Code + "|" + string(hv.verdict.To)
		if mem.heat[hv.pv.Name] == key {
			continue
		}
		mem.heat[hv.pv.Name] = key
		switch {
		case hv.verdict.Convert() && o.dryRun:
			r.event(pol, corev1.EventTypeNormal, "WouldConvertBack", "DryRun", "would convert PV %s back (erasure-coded → %s): %s", hv.pv.Name, hv.verdict.To, hv.verdict.Reason)
		case hv.verdict.Wait:
			r.event(pol, corev1.EventTypeNormal, "ConversionWaiting", "ConvertBack", "PV %s (erasure-coded → %s) waits: %s", hv.pv.Name, hv.verdict.To, hv.verdict.Reason)
		}
	}
	for v := range mem.heat {
		if !seen[v] {
			delete(mem.heat, v)
		}
	}
}

// heatRules are the policy's heat-up settings.
func heatRules(p tiering.Policy, cooldown time.Duration) conversion.HeatRules {
	return conversion.HeatRules{Watermarks: p.Watermarks, WarmTier: p.Selectors.Has(tiering.Warm), HotTier: p.Selectors.Has(tiering.Hot), Residency: cooldown}
}
