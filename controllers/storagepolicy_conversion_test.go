package controllers

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/conversion"
	"github.com/billyronks/couchestor/pkg/tiering"
)

func TestErasureCodingCondition(t *testing.T) {
	spec := &storagev1.StoragePolicySpec{ECPolicyRef: "rs"}
	storagev1.DefaultStoragePolicySpec(spec)
	pv := func(n string) *corev1.PersistentVolume {
		return &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: n}}
	}
	verdicts := []conversionVerdict{
		{pv: pv("pvc-a"), verdict: conversion.Verdict{Code: conversion.CodeConvert}},
		{pv: pv("pvc-b"), verdict: conversion.Verdict{Code: conversion.CodeInUse, Wait: true, Reason: "in use by pod apps/db-0"}},
		{pv: pv("pvc-c"), verdict: conversion.Verdict{Code: conversion.CodeTooSmall, Reason: "small"}},
	}
	heats := []heatVerdict{
		{pv: pv("ec-a"), verdict: conversion.HeatVerdict{Verdict: conversion.Verdict{Code: conversion.CodeConvert}, To: tiering.Warm}},
		{pv: pv("ec-b"), verdict: conversion.HeatVerdict{Verdict: conversion.Verdict{Code: conversion.CodeInUse, Wait: true, Reason: "in use by pod apps/web-0"}, To: tiering.Hot}},
		{pv: pv("ec-c"), verdict: conversion.HeatVerdict{Verdict: conversion.Verdict{Code: conversion.CodeIOPSUnknown}}},
		{pv: pv("ec-d"), verdict: conversion.HeatVerdict{Verdict: conversion.Verdict{Code: conversion.CodeConverting}}},
	}
	cases := []struct {
		name      string
		o         outcome
		converter bool
		status    metav1.ConditionStatus
		reason    string
		in        []string
	}{
		{"missing policy", outcome{ecMissing: true}, true, metav1.ConditionFalse, "ECPolicyNotFound", []string{`"rs"`}},
		{"policy not ready", outcome{ecPolicyOK: true, ecPhase: storagev1.ECPolicyInvalid}, true, metav1.ConditionFalse, "ECPolicyNotReady", []string{"Invalid"}},
		{"no converter", outcome{ecPolicyOK: true, ecPolicyReady: true, eval: tiering.Evaluation{ECCandidates: 4}}, false, metav1.ConditionFalse, "ConversionDisabled", []string{"4 cold volumes", "--ec-conversion-image"}},
		{"converting", outcome{ecPolicyOK: true, ecPolicyReady: true, conversions: verdicts, converted: 2, converting: 1}, true, metav1.ConditionTrue, "Converting",
			[]string{"2 converted, 1 in progress or retained, converting 1: pvc-a", "1 waiting: pvc-b (in use by pod apps/db-0)"}},
		{"dry run", outcome{ecPolicyOK: true, ecPolicyReady: true, conversions: verdicts, dryRun: true}, true, metav1.ConditionTrue, "Converting", []string{"would convert (dry run) 1: pvc-a"}},
		{"heat-ups", outcome{ecPolicyOK: true, ecPolicyReady: true, heatUps: heats, converted: 4, heatingUp: 1}, true, metav1.ConditionTrue, "Converting",
			[]string{"4 converted", "heat-up: 1 in progress, converting back 1: ec-a (→ warm)", "1 heat-ups waiting: ec-b (→ hot: in use by pod apps/web-0)", "IOPS of 1 erasure-coded volumes unknown"}},
		{"heat-ups in dry run", outcome{ecPolicyOK: true, ecPolicyReady: true, heatUps: heats, dryRun: true}, true, metav1.ConditionTrue, "Converting",
			[]string{"would convert back (dry run) 1: ec-a (→ warm)"}},
		{"heat-ups go on while the ErasureCodingPolicy is not ready", outcome{ecPolicyOK: true, ecPhase: storagev1.ECPolicyInvalid, heatUps: heats}, true, metav1.ConditionFalse, "ECPolicyNotReady",
			[]string{"nothing converts to erasure coding", "converting back 1: ec-a"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := c.o
			o.spec = spec
			var st storagev1.StoragePolicyStatus
			set := func(typ string, s metav1.ConditionStatus, reason, msg string) {
				meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: typ, Status: s, Reason: reason, Message: msg})
			}
			setErasureCodingCondition(&st, &o, set, c.converter)
			got := meta.FindStatusCondition(st.Conditions, ConditionErasureCoding)
			if got == nil || got.Status != c.status || got.Reason != c.reason {
				t.Fatalf("got %+v", got)
			}
			for _, s := range c.in {
				if !strings.Contains(got.Message, s) {
					t.Errorf("message %q lacks %q", got.Message, s)
				}
			}
		})
	}
}

// A cold volume that qualifies but waits (a pod uses it) is told once per
// change of its verdict as a ConversionWaiting Event, and again after it
// stopped waiting and waits anew.
func TestConversionWaitingEvents(t *testing.T) {
	rec := events.NewFakeRecorder(10)
	r := &StoragePolicyReconciler{Recorder: rec}
	pol := &storagev1.StoragePolicy{ObjectMeta: metav1.ObjectMeta{Name: "p"}}
	pv := &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "pvc-b"}}
	wait := func(reason string) *outcome {
		return &outcome{conversions: []conversionVerdict{
			{pv: pv, verdict: conversion.Verdict{Code: conversion.CodeInUse, Wait: true, Reason: reason}},
			{pv: &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "pvc-c"}}, verdict: conversion.Verdict{Code: conversion.CodeTooSmall, Reason: "small"}},
		}}
	}
	mem := &policyMemory{}
	drain := func() []string {
		var out []string
		for {
			select {
			case e := <-rec.Events:
				out = append(out, e)
			default:
				return out
			}
		}
	}
	r.conversionEvents(pol, wait("in use by pod apps/db-0"), mem)
	r.conversionEvents(pol, wait("in use by pod apps/db-0"), mem)
	got := drain()
	if len(got) != 1 || !strings.Contains(got[0], "ConversionWaiting") || !strings.Contains(got[0], "PV pvc-b (cold → erasure-coded) waits: in use by pod apps/db-0") {
		t.Fatalf("first evaluations: events %q, want one ConversionWaiting naming the pod", got)
	}
	r.conversionEvents(pol, wait("in use by pod apps/db-1"), mem)
	if got := drain(); len(got) != 1 || !strings.Contains(got[0], "apps/db-1") {
		t.Fatalf("another pod: events %q, want one naming apps/db-1", got)
	}
	r.conversionEvents(pol, &outcome{}, mem)
	r.conversionEvents(pol, wait("in use by pod apps/db-1"), mem)
	if got := drain(); len(got) != 1 {
		t.Fatalf("waiting again after it stopped: events %q, want one", got)
	}
}
