package conversion

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/billyronks/couchestor/pkg/tiering"
)

func TestEligible(t *testing.T) {
	now := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	cold := tiering.Decision{Action: tiering.Stay, Code: tiering.CodeOnTier, From: tiering.Cold, To: tiering.Cold, IOPS: 3, IOPSKnown: true}
	pv := func(ann map[string]string) *corev1.PersistentVolume {
		return &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "pvc-1", Annotations: ann}}
	}
	claim := func(ann map[string]string, modes ...corev1.PersistentVolumeAccessMode) *corev1.PersistentVolumeClaim {
		if modes == nil {
			modes = []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}
		}
		return &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "data", Annotations: ann},
			Spec: corev1.PersistentVolumeClaimSpec{VolumeName: "pvc-1", AccessModes: modes}, Status: corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimBound}}
	}
	rules := Rules{MinSizeBytes: 10 << 30, Residency: 24 * time.Hour}
	big := int64(20 << 30)
	cases := []struct {
		name string
		d    tiering.Decision
		v    Volume
		code string
		wait bool
		in   string
	}{
		{"converts", cold, Volume{PV: pv(nil), Claim: claim(nil), SizeBytes: big}, CodeConvert, false, ""},
		{"read-write-once-pod converts", cold, Volume{PV: pv(nil), Claim: claim(nil, corev1.ReadWriteOncePod), SizeBytes: big}, CodeConvert, false, ""},
		{"pinned cold with unknown IOPS converts", tiering.Decision{Code: tiering.CodeOnTier, From: tiering.Cold, To: tiering.Cold, Pinned: true}, Volume{PV: pv(nil), Claim: claim(nil), SizeBytes: big}, CodeConvert, false, ""},
		{"warm volume", tiering.Decision{Code: tiering.CodeOnTier, From: tiering.Warm, To: tiering.Warm, IOPSKnown: true}, Volume{PV: pv(nil), Claim: claim(nil), SizeBytes: big}, CodeNotCold, false, "not a cold volume"},
		{"cold volume on its way up", tiering.Decision{Code: tiering.CodeMove, From: tiering.Cold, To: tiering.Warm, IOPSKnown: true}, Volume{PV: pv(nil), Claim: claim(nil), SizeBytes: big}, CodeNotCold, false, ""},
		{"cold with unknown IOPS", tiering.Decision{Code: tiering.CodeOnTier, From: tiering.Cold, To: tiering.Cold}, Volume{PV: pv(nil), Claim: claim(nil), SizeBytes: big}, CodeNotCold, false, ""},
		{"too small", cold, Volume{PV: pv(nil), Claim: claim(nil), SizeBytes: 1 << 30}, CodeTooSmall, false, "below ecMinVolumeSizeBytes 10737418240"},
		{"not 512-aligned", cold, Volume{PV: pv(nil), Claim: claim(nil), SizeBytes: big + 1}, CodeSizeAlignment, false, "multiple of 512"},
		{"excluded from tiering on the PV", cold, Volume{PV: pv(map[string]string{tiering.AnnotationExclude: "true"}), Claim: claim(nil), SizeBytes: big}, CodeExcluded, false, "PV"},
		{"excluded from conversion on the PVC", cold, Volume{PV: pv(nil), Claim: claim(map[string]string{AnnotationExcludeFromConversion: "true"}), SizeBytes: big}, CodeExcluded, false, "PVC"},
		{"no claim", cold, Volume{PV: pv(nil), SizeBytes: big}, CodeNoClaim, false, ""},
		{"shared access mode", cold, Volume{PV: pv(nil), Claim: claim(nil, corev1.ReadWriteMany), SizeBytes: big}, CodeAccessMode, false, "ReadWriteMany"},
		{"migrated an hour ago", cold, Volume{PV: pv(map[string]string{tiering.AnnotationLastMigration: now.Add(-time.Hour).Format(time.RFC3339)}), Claim: claim(nil), SizeBytes: big}, CodeResidency, true, "2026-12-06T11:00:00Z"},
		{"bad cooldown annotation", cold, Volume{PV: pv(map[string]string{tiering.AnnotationLastMigration: "yesterday"}), Claim: claim(nil), SizeBytes: big}, CodeBadAnnotation, false, "yesterday"},
		{"in use", cold, Volume{PV: pv(nil), Claim: claim(nil), SizeBytes: big, UsedBy: []string{"apps/db-0"}}, CodeInUse, true, "apps/db-0"},
		{"converting", cold, Volume{PV: pv(map[string]string{AnnotationConversion: "{}"}), Claim: claim(nil), SizeBytes: big}, CodeConverting, false, ""},
		{"migrating", cold, Volume{PV: pv(map[string]string{"storage.billyronks.io/migration": "{}"}), Claim: claim(nil), SizeBytes: big}, CodeMigrating, false, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v := Eligible(c.d, c.v, rules, now)
			if v.Code != c.code || v.Wait != c.wait || !strings.Contains(v.Reason, c.in) {
				t.Fatalf("got %+v, want code %s wait %v reason containing %q", v, c.code, c.wait, c.in)
			}
		})
	}
}

func TestPodsUsingIgnoresEndedPodsAndOtherNamespaces(t *testing.T) {
	c := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "data"}}
	pod := func(ns, name string, phase corev1.PodPhase, claim string) corev1.Pod {
		return corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Status: corev1.PodStatus{Phase: phase},
			Spec: corev1.PodSpec{Volumes: []corev1.Volume{{Name: "v", VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim}}}}}}
	}
	got := PodsUsing(c, []corev1.Pod{
		pod("apps", "running", corev1.PodRunning, "data"), pod("apps", "pending", corev1.PodPending, "data"),
		pod("apps", "done", corev1.PodSucceeded, "data"), pod("apps", "failed", corev1.PodFailed, "data"),
		pod("other", "elsewhere", corev1.PodRunning, "data"), pod("apps", "another", corev1.PodRunning, "logs"),
	})
	if strings.Join(got, ",") != "apps/running,apps/pending" {
		t.Fatalf("got %v", got)
	}
}
