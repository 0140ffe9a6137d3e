package conversion

import (
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/billyronks/couchestor/pkg/csi"
	"github.com/billyronks/couchestor/pkg/migration"
	"github.com/billyronks/couchestor/pkg/tiering"
)

func TestHeatUp(t *testing.T) {
	now := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	ann := func(kv ...string) map[string]string {
		m := map[string]string{AnnotationOriginalStorageClass: "mayastor-3", AnnotationConvertedFrom: "pvc-1"}
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i+1] == "" {
				delete(m, kv[i])
			} else {
				m[kv[i]] = kv[i+1]
			}
		}
		return m
	}
	pv := func(a map[string]string) *corev1.PersistentVolume {
		return &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "ec-pvc-1", Annotations: a}}
	}
	claim := func(a map[string]string) *corev1.PersistentVolumeClaim {
		return &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "data", Annotations: a},
			Spec: corev1.PersistentVolumeClaimSpec{VolumeName: "ec-pvc-1"}, Status: corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimBound}}
	}
	unbound := claim(nil)
	unbound.Status.Phase = corev1.ClaimPending
	rules := HeatRules{Watermarks: tiering.Watermarks{High: 5000, Warm: 2000, Low: 500}, WarmTier: true, HotTier: true, Residency: 24 * time.Hour}
	noWarm := rules
	noWarm.WarmTier = false
	vol := func(a map[string]string, c *corev1.PersistentVolumeClaim, iops float64) ECVolume {
		return ECVolume{PV: pv(a), Claim: c, IOPS: iops, IOPSKnown: true}
	}
	recent := now.Add(-time.Hour).Format(time.RFC3339)
	old := now.Add(-25 * time.Hour).Format(time.RFC3339)
	cases := []struct {
		name string
		v    ECVolume
		r    HeatRules
		code string
		wait bool
		to   tiering.Tier
		in   string
	}{
		{"at the warm watermark: back to warm", vol(ann(), claim(nil), 2000), rules, CodeConvert, false, tiering.Warm, "2000 IOPS ≥ warmWatermarkIOPS 2000"},
		{"at the high watermark: back to hot", vol(ann(), claim(nil), 5000), rules, CodeConvert, false, tiering.Hot, "highWatermarkIOPS"},
		{"cooldown over", vol(ann(tiering.AnnotationLastMigration, old), claim(nil), 3000), rules, CodeConvert, false, tiering.Warm, ""},
		{"below the warm watermark stays", vol(ann(), claim(nil), 1999), rules, CodeNotHot, false, tiering.None, "below warmWatermarkIOPS"},
		{"no warm tier: dead band stays", vol(ann(), claim(nil), 3000), noWarm, CodeNotHot, false, tiering.None, "no warm tier"},
		{"no warm tier: hot still goes hot", vol(ann(), claim(nil), 6000), noWarm, CodeConvert, false, tiering.Hot, ""},
		{"unknown IOPS never heat up", ECVolume{PV: pv(ann()), Claim: claim(nil), Unknown: "NoSeries"}, rules, CodeIOPSUnknown, false, tiering.None, "NoSeries"},
		{"unknown with a zero value is still unknown", ECVolume{PV: pv(ann()), Claim: claim(nil), IOPS: 9000}, rules, CodeIOPSUnknown, false, tiering.None, "IOPS unknown"},
		{"in cooldown waits", vol(ann(tiering.AnnotationLastMigration, recent), claim(nil), 9000), rules, CodeResidency, true, tiering.Hot, "converts back to hot after 2026-12-06T11:00:00Z"},
		{"failure back-off doubles the cooldown", vol(ann(tiering.AnnotationLastMigration, old, tiering.AnnotationMigrationFailures, "1"), claim(nil), 9000), rules, CodeResidency, true, tiering.Hot, ""},
		{"in use waits, saying why", ECVolume{PV: pv(ann()), Claim: claim(nil), IOPS: 2500, IOPSKnown: true, UsedBy: []string{"apps/db-0"}}, rules, CodeInUse, true, tiering.Warm, "in use by pod apps/db-0"},
		{"conversion in progress", vol(ann(AnnotationConversion, "{}"), claim(nil), 9000), rules, CodeConverting, false, tiering.None, "in progress"},
		{"migration in progress", vol(ann(migration.AnnotationMigration, "{}"), claim(nil), 9000), rules, CodeMigrating, false, tiering.None, ""},
		{"excluded from tiering on the PV", vol(ann(tiering.AnnotationExclude, "true"), claim(nil), 9000), rules, CodeExcluded, false, tiering.None, "PV"},
		{"excluded from conversion on the PVC", vol(ann(), claim(map[string]string{AnnotationExcludeFromConversion: "true"}), 9000), rules, CodeExcluded, false, tiering.None, "PVC"},
		{"no original StorageClass", vol(ann(AnnotationOriginalStorageClass, ""), claim(nil), 9000), rules, CodeNoOriginalClass, false, tiering.None, AnnotationOriginalStorageClass},
		{"pinned cold never heats up", vol(ann(tiering.AnnotationPinTier, "cold"), claim(nil), 9000), rules, CodePinned, false, tiering.None, "pinned cold"},
		{"pinned warm on the PVC heats up without IOPS", ECVolume{PV: pv(ann()), Claim: claim(map[string]string{tiering.AnnotationPinTier: "warm"})}, rules, CodeConvert, false, tiering.Warm, "pinned warm"},
		{"the PV's pin wins", vol(ann(tiering.AnnotationPinTier, "cold"), claim(map[string]string{tiering.AnnotationPinTier: "hot"}), 9000), rules, CodePinned, false, tiering.None, ""},
		{"bad pin", vol(ann(tiering.AnnotationPinTier, "lukewarm"), claim(nil), 9000), rules, CodeBadAnnotation, false, tiering.None, "lukewarm"},
		{"pinned warm without a warm tier", vol(ann(tiering.AnnotationPinTier, "warm"), claim(nil), 0), noWarm, CodeNoTier, false, tiering.None, "no warm tier"},
		{"no claim", vol(ann(), nil, 9000), rules, CodeNoClaim, false, tiering.Hot, "no PVC"},
		{"claim not bound", vol(ann(), unbound, 9000), rules, CodeNoClaim, false, tiering.Hot, ""},
		{"bad last-migration", vol(ann(tiering.AnnotationLastMigration, "yesterday"), claim(nil), 9000), rules, CodeBadAnnotation, false, tiering.Hot, "yesterday"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := HeatUp(tc.v, tc.r, now)
			if got.Code != tc.code || got.Wait != tc.wait || got.To != tc.to || !strings.Contains(got.Reason, tc.in) {
				t.Errorf("HeatUp = %+v, want code %s wait %v to %q with %q", got, tc.code, tc.wait, tc.to, tc.in)
			}
			if got.Convert() != (tc.code == CodeConvert) {
				t.Errorf("Convert() = %v for code %s", got.Convert(), got.Code)
			}
		})
	}
}

// A volume found hot while its pod ran converts back once the pod is gone
// and its export stopped (its IOPS unknown), within the memory; known IOPS
// always win; what is remembered follows the verdicts.
func TestRecallAndRemember(t *testing.T) {
	now := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	pv := &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "ec-pvc-1", Annotations: map[string]string{AnnotationOriginalStorageClass: "mayastor-3"}}}
	claim := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "data"},
		Spec: corev1.PersistentVolumeClaimSpec{VolumeName: "ec-pvc-1"}, Status: corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimBound}}
	rules := HeatRules{Watermarks: tiering.Watermarks{High: 5000, Warm: 2000, Low: 500}, WarmTier: true, HotTier: true}
	unknown := ECVolume{PV: pv, Claim: claim, Unknown: "InsufficientCoverage"}
	seen := &HeatSeen{IOPS: 6000, At: now.Add(-time.Minute)}
	recall := []struct {
		name   string
		v      ECVolume
		seen   *HeatSeen
		memory time.Duration
		code   string
		in     string
	}{
		{"pod gone, export stopped: recalled, converts back to hot", unknown, seen, 10 * time.Minute, CodeConvert, "6000 IOPS (measured at 2026-12-05T11:59:00Z while a pod used it) ≥ highWatermarkIOPS"},
		{"recalled but a pod uses it again: waits", ECVolume{PV: pv, Claim: claim, UsedBy: []string{"apps/db-0"}}, seen, 10 * time.Minute, CodeInUse, "in use by pod apps/db-0"},
		{"memory ran out: unknown again", unknown, seen, 30 * time.Second, CodeIOPSUnknown, "InsufficientCoverage"},
		{"at the edge of the memory: recalled", unknown, seen, time.Minute, CodeConvert, ""},
		{"nothing seen: unknown", unknown, nil, time.Hour, CodeIOPSUnknown, ""},
		{"seen in the future (clock step): not trusted", unknown, &HeatSeen{IOPS: 6000, At: now.Add(time.Minute)}, time.Hour, CodeIOPSUnknown, ""},
		{"known IOPS win over the memory", ECVolume{PV: pv, Claim: claim, IOPS: 10, IOPSKnown: true}, seen, time.Hour, CodeNotHot, "10 IOPS"},
	}
	for _, tc := range recall {
		t.Run(tc.name, func(t *testing.T) {
			got := HeatUp(Recall(tc.v, tc.seen, now, tc.memory), rules, now)
			if got.Code != tc.code || !strings.Contains(got.Reason, tc.in) {
				t.Errorf("HeatUp(Recall) = %+v, want code %s with %q", got, tc.code, tc.in)
			}
		})
	}
	hotInUse := ECVolume{PV: pv, Claim: claim, IOPS: 7000, IOPSKnown: true, UsedBy: []string{"apps/db-0"}}
	cold := ECVolume{PV: pv, Claim: claim, IOPS: 10, IOPSKnown: true}
	recalled := Recall(unknown, seen, now, time.Hour)
	remember := []struct {
		name string
		v    ECVolume
		prev *HeatSeen
		want *HeatSeen
	}{
		{"hot while in use: remembered now", hotInUse, nil, &HeatSeen{IOPS: 7000, At: now}},
		{"hot while in use again: refreshed", hotInUse, seen, &HeatSeen{IOPS: 7000, At: now}},
		{"measured and not hot: forgotten", cold, seen, nil},
		{"unknown: kept", unknown, seen, seen},
		{"recalled and converting now: kept until its conversion started (the start may wait for a slot)", recalled, seen, seen},
		{"a conversion on it: forgotten", func() ECVolume {
			v := recalled
			v.PV = pv.DeepCopy()
			v.PV.Annotations[AnnotationConversion] = "{}"
			return v
		}(), seen, nil},
		{"recalled and in use again: kept, not refreshed", Recall(ECVolume{PV: pv, Claim: claim, UsedBy: []string{"apps/db-0"}}, seen, now, time.Hour), seen, seen},
	}
	for _, tc := range remember {
		t.Run(tc.name, func(t *testing.T) {
			got := Remember(tc.v, HeatUp(tc.v, rules, now), tc.prev, now)
			if (got == nil) != (tc.want == nil) || (got != nil && *got != *tc.want) {
				t.Errorf("Remember = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// The heat-up record names the StorageClass the volume came from, the tier
// the IOPS chose, and passes the record's own validation.
func TestHeatUpRecord(t *testing.T) {
	now := time.Date(2026, 12, 5, 12, 0, 0, 123, time.UTC)
	pv := &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "ec-pvc-1", Annotations: map[string]string{AnnotationOriginalStorageClass: "mayastor-3"}},
		Spec: corev1.PersistentVolumeSpec{Capacity: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimDelete,
			PersistentVolumeSource:        corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: csi.DriverName, VolumeHandle: "ec-pvc-1"}}}}
	claim := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "data", UID: "u1", Labels: map[string]string{"app": "db"}},
		Spec: corev1.PersistentVolumeClaimSpec{AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}, StorageClassName: ptr.To("mayastor-3")}}
	rec, err := HeatUpRecord(pv, claim, "tiers", 2, tiering.Warm, 2500, 72*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	want := Record{Direction: ToReplicated, Policy: "tiers", MaxConcurrent: 2, Step: StepPreparing, StartedAt: now.Truncate(time.Second),
		TriggerIOPS: 2500, FromTier: TierErasureCoded, ToTier: "warm", Source: "ec-pvc-1", SourceHandle: "ec-pvc-1", SizeBytes: 1 << 30,
		SourceReclaimPolicy: corev1.PersistentVolumeReclaimDelete, TargetStorageClass: "mayastor-3", Retain: "72h0m0s"}
	want.ID = ConversionID("ec-pvc-1", want.StartedAt)
	want.Target = want.ID + "-rep"
	want.Claim = ClaimOf(claim)
	if !reflect.DeepEqual(*rec, want) {
		t.Errorf("record\n%+v\nwant\n%+v", *rec, want)
	}
	raw, err := rec.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if back, err := Parse(raw); err != nil || back.Undo || back.TargetStorageClass != "mayastor-3" {
		t.Errorf("Parse = %+v, %v", back, err)
	}
}
