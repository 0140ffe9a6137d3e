package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/iops"
	"github.com/billyronks/couchestor/pkg/migration"
	"github.com/billyronks/couchestor/pkg/tiering"
)

// Condition types of a StoragePolicy.
const (
	ConditionReady            = "Ready"
	ConditionMetricsAvailable = "MetricsAvailable"
	// ConditionMayastorAvailable is False while the tiering backend (Mayastor's
	// REST API, or its MayastorVolume/DiskPool kinds) cannot be read: nothing
	// is evaluated or moved, and the message names the call and the error.
	ConditionMayastorAvailable = "MayastorAvailable"
	ConditionConflict          = "Conflict"
	// ConditionSamplingWindowAdequate is False when samplingWindow holds fewer
	// than four scrape intervals (rate() then rests on two or three samples).
	ConditionSamplingWindowAdequate = "SamplingWindowAdequate"
	// ConditionErasureCoding (only with ecPolicyRef) reports the conversions
	// of cold volumes to erasure coding and the heat-ups back: what was
	// converted, what converts now, what waits and why.
	ConditionErasureCoding = "ErasureCoding"
)

// maxVolumeEvents bounds per-volume Events per evaluation; the rest are summed up.
const maxVolumeEvents = 10

// writeStatus computes the new status from the stored one and patches it
// with an optimistic lock, retrying on conflict with a fresh read. Only the
// fields this controller owns change; totalMigrations, failedMigrations,
// activeMigrations and existing history entries (the migration engine's) are
// carried over from what is stored, never recomputed or reset.
func (r *StoragePolicyReconciler) writeStatus(ctx context.Context, pol *storagev1.StoragePolicy, o *outcome) error {
	mem := r.memoryFor(pol)
	cur := pol
	first := true
	var results []migration.Result
	err := retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		if !first {
			fresh := &storagev1.StoragePolicy{}
			reader := r.APIReader
			if reader == nil {
				reader = r.Client
			}
			if err := reader.Get(ctx, client.ObjectKeyFromObject(pol), fresh); err != nil {
				return err
			}
			cur = fresh
		}
		first = false
		base := cur.DeepCopy()
		next := cur.DeepCopy()
		o.recorded = applyStatus(&next.Status, next.Generation, o, mem)
		if r.Migrations != nil {
			// Folded into what is stored, never over it: counters only grow.
			results = r.Migrations.PendingResults(cur.Name)
			next.Status = migration.FoldResults(next.Status, results, r.Migrations.ActiveCount(cur.Name))
		}
		patch := countersPatch{client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{}), &next.Status}
		return r.Client.Status().Patch(ctx, next, patch)
	})
	if err != nil {
		return fmt.Errorf("patch status of StoragePolicy %s: %w", pol.Name, err)
	}
	for _, e := range o.recorded {
		mem.dryRun[e.VolumeName] = e.Timestamp.Time
	}
	if r.Migrations != nil && len(results) > 0 {
		if err := r.Migrations.Acknowledge(ctx, results); err != nil {
			// Not lost: the results stay on the PVs and fold once next time.
			return fmt.Errorf("acknowledge %d migration results of StoragePolicy %s: %w", len(results), pol.Name, err)
		}
	}
	return nil
}

// onlyReady drops every condition but Ready: a policy that evaluates nothing
// (disabled, or its spec invalid) observes neither Mayastor nor Prometheus,
// so what those conditions said describes an earlier generation.
func onlyReady(st *storagev1.StoragePolicyStatus) {
	st.Conditions = slices.DeleteFunc(st.Conditions, func(c metav1.Condition) bool { return c.Type != ConditionReady })
}

// applyStatus writes the outcome into st and returns the dry-run entries it added.
func applyStatus(st *storagev1.StoragePolicyStatus, gen int64, o *outcome, mem *policyMemory) []storagev1.MigrationHistoryEntry {
	now := metav1.NewTime(o.now)
	st.Phase = o.phase
	st.LastReconcileTime = &now
	set := func(t string, s metav1.ConditionStatus, reason, msg string) {
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: t, Status: s, Reason: reason, Message: msg, ObservedGeneration: gen})
	}
	switch o.phase {
	case storagev1.StoragePolicyDisabled:
		set(ConditionReady, metav1.ConditionFalse, "Disabled", "spec.enabled is false: nothing is evaluated or moved")
		onlyReady(st)
		return nil
	case storagev1.StoragePolicyError:
		set(ConditionReady, metav1.ConditionFalse, "InvalidSpec", o.invalid)
		onlyReady(st)
		return nil
	}
	if o.backendErr != nil {
		// Counters and history stay as stored: an unreadable backend is not zero volumes.
		msg := fmt.Sprintf("cannot read %s: %v", o.backend, o.backendErr)
		set(ConditionMayastorAvailable, metav1.ConditionFalse, "BackendUnavailable", msg)
		set(ConditionReady, metav1.ConditionFalse, "MayastorUnavailable", "no volume is evaluated or moved until Mayastor can be read: "+msg)
		return nil
	}
	set(ConditionMayastorAvailable, metav1.ConditionTrue, "BackendRead", fmt.Sprintf("read %d volumes' replicas and pools from %s", o.volumes, o.backend))

	st.WatchedVolumes = int32(o.volumes)
	st.HotVolumes = int32(o.eval.Current[tiering.Hot])
	st.WarmVolumes = int32(o.eval.Current[tiering.Warm])
	st.ColdVolumes = int32(o.eval.Current[tiering.Cold])

	var recorded []storagev1.MigrationHistoryEntry
	if o.dryRun {
		last := lastDryRun(st.MigrationHistory)
		for _, d := range o.eval.Decisions {
			if d.Action != tiering.Move {
				continue
			}
			when := last[d.Volume]
			if m := mem.dryRun[d.Volume]; m.After(when) {
				when = m
			}
			if !tiering.DryRunDue(when, o.now, o.cooldown) {
				continue
			}
			recorded = append(recorded, storagev1.MigrationHistoryEntry{
				VolumeName: d.Volume, Timestamp: now, FromTier: string(d.From), ToTier: string(d.To),
				TriggerIOPS: d.IOPS, Duration: "0s", Success: false, DryRun: true,
			})
		}
		recorded = append(recorded, wouldConvert(o, func(v string) bool {
			when := last[v]
			if m := mem.dryRun[v]; m.After(when) {
				when = m
			}
			return tiering.DryRunDue(when, o.now, o.cooldown)
		}, now)...)
		recorded = append(recorded, wouldConvertBack(o, func(v string) bool {
			when := last[v]
			if m := mem.dryRun[v]; m.After(when) {
				when = m
			}
			return tiering.DryRunDue(when, o.now, o.cooldown)
		}, now)...)
		if len(recorded) > 0 {
			// Newest first; keep the 50 newest (schema 7.3).
			h := make([]storagev1.MigrationHistoryEntry, 0, len(recorded)+len(st.MigrationHistory))
			for i := len(recorded) - 1; i >= 0; i-- {
				h = append(h, recorded[i])
			}
			h = append(h, st.MigrationHistory...)
			if len(h) > storagev1.MaxMigrationHistory {
				h = h[:storagev1.MaxMigrationHistory]
			}
			st.MigrationHistory = h
		}
	}

	// MetricsAvailable
	switch {
	case o.report.Err != nil:
		set(ConditionMetricsAvailable, metav1.ConditionFalse, string(iops.ReasonPrometheusUnavailable),
			fmt.Sprintf("no IOPS for any of %d volumes, none will move: %v", o.volumes, o.report.Err))
	case len(o.report.Unknown) > 0:
		set(ConditionMetricsAvailable, metav1.ConditionFalse, "VolumesUnmeasured", unknownMessage(o))
	default:
		set(ConditionMetricsAvailable, metav1.ConditionTrue, "AllVolumesMeasured", fmt.Sprintf("IOPS known for all %d volumes", o.volumes))
	}

	// Ready
	moves := o.eval.Actions[tiering.Move]
	summary := fmt.Sprintf("%d volumes: %d hot, %d warm, %d cold, %d on no tier; %d to move, %d stay, %d skipped",
		o.volumes, o.eval.Current[tiering.Hot], o.eval.Current[tiering.Warm], o.eval.Current[tiering.Cold], o.eval.Current[tiering.None],
		moves, o.eval.Actions[tiering.Stay], o.eval.Actions[tiering.Skip])
	switch {
	case o.dryRun:
		summary += fmt.Sprintf(" (dry run: nothing moves; %d decisions recorded in migrationHistory this evaluation)", len(recorded))
	case moves > 0 && !o.engine:
		summary += " (no migration engine is running in this operator: nothing moves)"
	}
	if len(o.ambiguous) > 0 {
		summary += fmt.Sprintf("; pools matching more than one tier selector are ignored: %s", strings.Join(firstN(o.ambiguous, 5), ", "))
	}
	if o.report.Err != nil {
		set(ConditionReady, metav1.ConditionFalse, "MetricsUnavailable", "Prometheus did not answer; no volume moves until it does. "+summary)
	} else {
		set(ConditionReady, metav1.ConditionTrue, "Evaluated", summary)
	}

	// Conflict
	if len(o.conflicts) > 0 {
		owners := make([]string, 0, len(o.conflicts))
		total := 0
		for p, n := range o.conflicts {
			owners = append(owners, fmt.Sprintf("%s (%d)", p, n))
			total += n
		}
		sort.Strings(owners)
		set(ConditionConflict, metav1.ConditionTrue, "OwnedByOlderPolicy",
			fmt.Sprintf("%d selected volumes are skipped: an older StoragePolicy owns them: %s", total, strings.Join(owners, ", ")))
	} else {
		set(ConditionConflict, metav1.ConditionFalse, "NoConflict", "no other StoragePolicy owns a volume this one selects")
	}

	// SamplingWindowAdequate
	if iops.WindowTooShort(o.window, o.scrapeInterval) {
		set(ConditionSamplingWindowAdequate, metav1.ConditionFalse, "ShorterThanFourScrapeIntervals",
			fmt.Sprintf("spec.samplingWindow %s is shorter than 4 scrape intervals (4 x %s): rate() rests on too few samples", o.spec.SamplingWindow, o.scrapeInterval))
	} else {
		set(ConditionSamplingWindowAdequate, metav1.ConditionTrue, "AtLeastFourScrapeIntervals",
			fmt.Sprintf("spec.samplingWindow %s holds at least 4 scrape intervals of %s", o.spec.SamplingWindow, o.scrapeInterval))
	}

	// ErasureCoding
	setErasureCodingCondition(st, o, set, o.converter)
	return recorded
}

func unknownMessage(o *outcome) string {
	reasons := make([]string, 0, len(o.report.Unknown))
	for r, n := range o.report.Unknown {
		reasons = append(reasons, fmt.Sprintf("%d %s (%s)", n, r, r.Describe()))
	}
	sort.Strings(reasons)
	var examples []string
	for _, d := range o.eval.Decisions {
		if !d.IOPSKnown && d.UnknownReason != "" && len(examples) < 5 {
			examples = append(examples, d.Volume)
		}
	}
	return fmt.Sprintf("IOPS unknown for %s, e.g. %s; unknown volumes are never moved", strings.Join(reasons, ", "), strings.Join(examples, ", "))
}

// lastDryRun returns, per volume, the newest dry-run entry's time in history.
func lastDryRun(h []storagev1.MigrationHistoryEntry) map[string]time.Time {
	m := map[string]time.Time{}
	for _, e := range h {
		if e.DryRun && e.Timestamp.After(m[e.VolumeName]) {
			m[e.VolumeName] = e.Timestamp.Time
		}
	}
	return m
}

func firstN(s []string, n int) []string {
	if len(s) > n {
		return append(append([]string{}, s[:n]...), fmt.Sprintf("and %d more", len(s)-n))
	}
	return s
}

// afterWrite emits Events for what changed, updates metrics and hands Move
// decisions to the engine (never in dry run).
func (r *StoragePolicyReconciler) afterWrite(ctx context.Context, pol *storagev1.StoragePolicy, o *outcome) {
	mem := r.memoryFor(pol)
	if o.phase == storagev1.StoragePolicyDisabled || o.phase == storagev1.StoragePolicyError {
		key := string(o.phase) + o.invalid
		if key != mem.summary {
			mem.summary = key
			if o.phase == storagev1.StoragePolicyError {
				r.event(pol, "Warning", "InvalidSpec", "Evaluate", "%s", o.invalid)
			} else {
				r.event(pol, "Normal", "Disabled", "Evaluate", "spec.enabled is false: tiering stopped")
			}
		}
		return
	}

	// Metrics.
	for _, t := range []tiering.Tier{tiering.Hot, tiering.Warm, tiering.Cold, tiering.None} {
		name := string(t)
		if t == tiering.None {
			name = "none"
		}
		policyVolumes.WithLabelValues(pol.Name, name).Set(float64(o.eval.Current[t]))
	}
	policyDecisions.DeletePartialMatch(map[string]string{"policy": pol.Name})
	codes := map[[2]string]int{}
	for _, d := range o.eval.Decisions {
		codes[[2]string{string(d.Action), d.Code}]++
	}
	for k, n := range codes {
		policyDecisions.WithLabelValues(pol.Name, k[0], k[1]).Set(float64(n))
	}
	for _, reason := range []iops.UnknownReason{iops.ReasonPrometheusUnavailable, iops.ReasonNoSeries, iops.ReasonInsufficientCoverage} {
		policyUnknownVolumes.WithLabelValues(pol.Name, string(reason)).Set(float64(o.report.Unknown[reason]))
	}

	// Events: only what changed since the last evaluation.
	summaryKey := fmt.Sprintf("%s|%v", o.phase, o.report.Err != nil)
	if summaryKey != mem.summary {
		prevUnavailable := strings.HasSuffix(mem.summary, "|true")
		mem.summary = summaryKey
		switch {
		case o.report.Err != nil:
			r.event(pol, "Warning", "MetricsUnavailable", "Evaluate", "Prometheus did not answer; no volume of %d moves until it does: %v", o.volumes, o.report.Err)
		case prevUnavailable:
			r.event(pol, "Normal", "MetricsAvailable", "Evaluate", "Prometheus answers again")
		}
	}
	recordedDry := map[string]bool{}
	for _, e := range o.recorded {
		recordedDry[e.VolumeName] = true
	}
	changed, seen := 0, make(map[string]bool, len(o.eval.Decisions))
	for _, d := range o.eval.Decisions {
		seen[d.Volume] = true
		key := string(d.Action) + "|" + d.Code + "|" + string(d.To)
		if mem.decisions[d.Volume] == key {
			continue
		}
		mem.decisions[d.Volume] = key
		if d.Action == tiering.Stay {
			continue // staying put is not news
		}
		changed++
		if changed > maxVolumeEvents {
			continue
		}
		switch {
		case d.Action == tiering.Move && o.dryRun:
			r.event(pol, "Normal", "WouldMove", "DryRun", "would move %s", d.Describe())
		case d.Action == tiering.Move:
			r.event(pol, "Normal", "MoveDecided", "Decide", "move %s", d.Describe())
		case d.Code == tiering.CodeIOPSUnknown && o.report.Err != nil:
			// Covered by the one MetricsUnavailable Event.
		default:
			r.event(pol, "Normal", "Skipped", "Decide", "%s (%s): %s", d.Volume, d.Placement, d.Reason)
		}
	}
	if changed > maxVolumeEvents {
		r.event(pol, "Normal", "DecisionsChanged", "Decide", "%d more volumes changed decision (see status and couchestor_tiering_decisions)", changed-maxVolumeEvents)
	}
	for v := range mem.decisions {
		if !seen[v] {
			delete(mem.decisions, v)
		}
	}

	r.heatUpEvents(pol, o, mem)
	r.conversionEvents(pol, o, mem)
	// Heat-ups first: a hot volume on erasure coding costs its users
	// latency now; a cold one on replicas only costs space.
	if r.startHeatUps(ctx, pol, o) {
		r.startConversions(ctx, pol, o)
	}
	if o.dryRun || r.Engine == nil || o.eval.Actions[tiering.Move] == 0 {
		return
	}
	moves := make([]tiering.Decision, 0, o.eval.Actions[tiering.Move])
	for _, d := range o.eval.Decisions {
		if d.Action == tiering.Move {
			moves = append(moves, d)
		}
	}
	log.FromContext(ctx).V(1).Info("handing moves to the migration engine", "moves", len(moves))
	r.Engine.StartMigrations(ctx, pol, moves)
}

func (r *StoragePolicyReconciler) event(pol *storagev1.StoragePolicy, typ, reason, action, note string, args ...any) {
	if r.Recorder != nil {
		r.Recorder.Eventf(pol, nil, typ, reason, action, note, args...)
	}
}

// countersPatch is a merge patch that always carries the status counters the
// schema defines. A merge patch holds only what differs, and the Go types
// serialize a 0 the same whether or not the stored object has the field, so
// an object written before the counters lost omitempty would never get its
// zeros (kubectl would show blank cells instead of 0).
type countersPatch struct {
	client.Patch
	st *storagev1.StoragePolicyStatus
}

func (p countersPatch) Data(obj client.Object) ([]byte, error) {
	raw, err := p.Patch.Data(obj)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("status patch: %w", err)
	}
	st, _ := m["status"].(map[string]any)
	if st == nil {
		st = map[string]any{}
		m["status"] = st
	}
	for k, v := range map[string]int64{
		"watchedVolumes": int64(p.st.WatchedVolumes), "hotVolumes": int64(p.st.HotVolumes), "warmVolumes": int64(p.st.WarmVolumes),
		"coldVolumes": int64(p.st.ColdVolumes), "activeMigrations": int64(p.st.ActiveMigrations),
		"totalMigrations": p.st.TotalMigrations, "failedMigrations": p.st.FailedMigrations,
	} {
		st[k] = v
	}
	return json.Marshal(m)
}
