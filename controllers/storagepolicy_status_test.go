package controllers

import (
	"errors"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/iops"
	"github.com/billyronks/couchestor/pkg/tiering"
)

func TestApplyStatusKeepsEngineFieldsAndRecordsDryRunOncePerCooldown(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	engineEntry := storagev1.MigrationHistoryEntry{VolumeName: "pv-x", Timestamp: metav1.NewTime(now.Add(-time.Hour)), FromTier: "hot", ToTier: "cold", Success: true, Duration: "3m0s"}
	st := storagev1.StoragePolicyStatus{TotalMigrations: 9, FailedMigrations: 4, ActiveMigrations: 1, MigrationHistory: []storagev1.MigrationHistoryEntry{engineEntry}}
	spec := &storagev1.StoragePolicySpec{}
	storagev1.DefaultStoragePolicySpec(spec)
	move := tiering.Decision{Volume: "pv-a", Action: tiering.Move, Code: tiering.CodeMove, From: tiering.Warm, To: tiering.Hot, IOPS: 4800, IOPSKnown: true}
	o := &outcome{now: now, phase: storagev1.StoragePolicyActive, spec: spec, dryRun: true, window: time.Hour, cooldown: 24 * time.Hour,
		scrapeInterval: 30 * time.Second, volumes: 1,
		eval:   tiering.Evaluation{Decisions: []tiering.Decision{move}, Current: map[tiering.Tier]int{tiering.Warm: 1}, Actions: map[tiering.Action]int{tiering.Move: 1}},
		report: iops.Report{Unknown: map[iops.UnknownReason]int{}}}
	mem := &policyMemory{decisions: map[string]string{}, dryRun: map[string]time.Time{}}

	rec := applyStatus(&st, 3, o, mem)
	if len(rec) != 1 || st.TotalMigrations != 9 || st.FailedMigrations != 4 || st.ActiveMigrations != 1 {
		t.Fatalf("recorded %v; counters %d/%d/%d", rec, st.TotalMigrations, st.FailedMigrations, st.ActiveMigrations)
	}
	if len(st.MigrationHistory) != 2 || st.MigrationHistory[0].VolumeName != "pv-a" || !st.MigrationHistory[0].DryRun || st.MigrationHistory[1] != engineEntry {
		t.Fatalf("history %+v", st.MigrationHistory)
	}
	// A fresh memory (restart) still sees the entry in history: nothing new within the cooldown.
	o.now = now.Add(23 * time.Hour)
	if rec := applyStatus(&st, 3, o, &policyMemory{dryRun: map[string]time.Time{}}); len(rec) != 0 {
		t.Fatalf("recorded again within the cooldown: %v", rec)
	}
	o.now = now.Add(24 * time.Hour)
	if rec := applyStatus(&st, 3, o, mem); len(rec) != 1 {
		t.Fatalf("not recorded after the cooldown: %v", rec)
	}
	for _, c := range st.Conditions {
		if c.ObservedGeneration != 3 {
			t.Errorf("condition %s observedGeneration %d", c.Type, c.ObservedGeneration)
		}
	}
	// History stays capped at 50, newest first.
	for range 60 {
		o.now = o.now.Add(25 * time.Hour)
		applyStatus(&st, 3, o, mem)
	}
	if len(st.MigrationHistory) != storagev1.MaxMigrationHistory || !st.MigrationHistory[0].Timestamp.After(st.MigrationHistory[1].Timestamp.Time) {
		t.Fatalf("history len %d", len(st.MigrationHistory))
	}
}

func TestApplyStatusConditions(t *testing.T) {
	spec := &storagev1.StoragePolicySpec{SamplingWindow: "1m", ECPolicyRef: "ec", ECMinVolumeSizeBytes: ptr.To[int64](10)}
	storagev1.DefaultStoragePolicySpec(spec)
	o := &outcome{now: time.Now(), phase: storagev1.StoragePolicyActive, spec: spec, window: time.Minute, scrapeInterval: 30 * time.Second, volumes: 2,
		ecPolicyOK: true, ecPolicyReady: true, ecPhase: storagev1.ECPolicyReady,
		conflicts: map[string]int{"older": 3},
		eval:      tiering.Evaluation{Current: map[tiering.Tier]int{tiering.Cold: 2}, Actions: map[tiering.Action]int{}, ECCandidates: 2},
		report:    iops.Report{Err: errors.New("connection refused"), Unknown: map[iops.UnknownReason]int{iops.ReasonPrometheusUnavailable: 2}}}
	var st storagev1.StoragePolicyStatus
	applyStatus(&st, 1, o, &policyMemory{})
	want := map[string]string{
		ConditionReady: "MetricsUnavailable", ConditionMetricsAvailable: "PrometheusUnavailable", ConditionConflict: "OwnedByOlderPolicy",
		ConditionSamplingWindowAdequate: "ShorterThanFourScrapeIntervals", ConditionErasureCoding: "ConversionDisabled",
	}
	for typ, reason := range want {
		found := false
		for _, c := range st.Conditions {
			if c.Type == typ {
				found = true
				if c.Reason != reason {
					t.Errorf("%s reason %s (%s), want %s", typ, c.Reason, c.Message, reason)
				}
			}
		}
		if !found {
			t.Errorf("no %s condition", typ)
		}
	}
	if st.ColdVolumes != 2 {
		t.Errorf("cold %d", st.ColdVolumes)
	}
}

// Disabled or invalid, a policy observes nothing: the conditions an enabled
// evaluation set are dropped and Ready carries the new generation.
func TestApplyStatusDisabledKeepsOnlyReady(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	for _, phase := range []storagev1.StoragePolicyPhase{storagev1.StoragePolicyDisabled, storagev1.StoragePolicyError} {
		st := storagev1.StoragePolicyStatus{Conditions: []metav1.Condition{
			{Type: ConditionReady, Status: metav1.ConditionTrue, Reason: "Evaluated", ObservedGeneration: 1},
			{Type: ConditionMayastorAvailable, Status: metav1.ConditionTrue, Reason: "BackendRead", ObservedGeneration: 1},
			{Type: ConditionMetricsAvailable, Status: metav1.ConditionTrue, Reason: "AllVolumesMeasured", ObservedGeneration: 1},
			{Type: ConditionConflict, Status: metav1.ConditionFalse, Reason: "NoConflict", ObservedGeneration: 1},
		}}
		applyStatus(&st, 2, &outcome{now: now, phase: phase, invalid: "spec.x: bad"}, &policyMemory{dryRun: map[string]time.Time{}})
		if len(st.Conditions) != 1 || st.Conditions[0].Type != ConditionReady || st.Conditions[0].Status != metav1.ConditionFalse || st.Conditions[0].ObservedGeneration != 2 {
			t.Errorf("%s: conditions %+v; want only Ready=False at generation 2", phase, st.Conditions)
		}
	}
}
