package conversion

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/billyronks/couchestor/pkg/csi"
	"github.com/billyronks/couchestor/pkg/tiering"
)

// undoWorld is a retained conversion of PVC apps/data from PV pvc-1 onto
// the erasure-coded PV ec-pvc-1, retained until 2026-12-06.
func undoWorld(t *testing.T) (*corev1.PersistentVolumeClaim, *corev1.PersistentVolume, *corev1.PersistentVolume, time.Time) {
	t.Helper()
	fwd := testRecord()
	fwd.Step = StepRetaining
	fwd.RebindAt = time.Date(2026, 12, 5, 0, 0, 0, 0, time.UTC)
	fwd.RetainUntil = fwd.RebindAt.Add(24 * time.Hour)
	raw, err := fwd.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "data", UID: "u2",
		Annotations: map[string]string{AnnotationUndoConversion: "true", "team": "storage"}},
		Spec: corev1.PersistentVolumeClaimSpec{VolumeName: "ec-pvc-1", AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Mi")}}}}
	ec := &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "ec-pvc-1",
		Annotations: map[string]string{AnnotationConvertedFrom: "pvc-1", AnnotationOriginalStorageClass: "mayastor"}},
		Spec: corev1.PersistentVolumeSpec{Capacity: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Mi")},
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimDelete,
			PersistentVolumeSource:        corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: csi.DriverName, VolumeHandle: "ec-pvc-1"}}}}
	src := &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "pvc-1", Annotations: map[string]string{AnnotationConversion: raw}},
		Spec: corev1.PersistentVolumeSpec{PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: "io.openebs.csi-mayastor", VolumeHandle: "h"}}}}
	return pvc, ec, src, fwd.RebindAt.Add(time.Hour)
}

func TestCheckUndo(t *testing.T) {
	withRecord := func(pv *corev1.PersistentVolume, f func(*Record)) {
		r, err := Parse(pv.Annotations[AnnotationConversion])
		if err != nil {
			t.Fatal(err)
		}
		f(r)
		raw, err := r.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		pv.Annotations[AnnotationConversion] = raw
	}
	for _, c := range []struct {
		name   string
		change func(pvc *corev1.PersistentVolumeClaim, ec, src **corev1.PersistentVolume, now *time.Time)
		refuse string // "" : may start
		going  bool
	}{
		{name: "within retention", change: func(*corev1.PersistentVolumeClaim, **corev1.PersistentVolume, **corev1.PersistentVolume, *time.Time) {
		}},
		{name: "annotation not true", refuse: `only "true" asks`, change: func(p *corev1.PersistentVolumeClaim, _, _ **corev1.PersistentVolume, _ *time.Time) {
			p.Annotations[AnnotationUndoConversion] = "yes"
		}},
		{name: "unbound", refuse: "not bound to an existing PV", change: func(p *corev1.PersistentVolumeClaim, ec, _ **corev1.PersistentVolume, _ *time.Time) { *ec = nil }},
		{name: "not erasure-coded", refuse: "not an erasure-coded volume", change: func(_ *corev1.PersistentVolumeClaim, ec, _ **corev1.PersistentVolume, _ *time.Time) {
			(*ec).Spec.CSI.Driver = "io.openebs.csi-mayastor"
		}},
		{name: "not converted", refuse: "was not made by a conversion", change: func(_ *corev1.PersistentVolumeClaim, ec, _ **corev1.PersistentVolume, _ *time.Time) {
			delete((*ec).Annotations, AnnotationConvertedFrom)
		}},
		{name: "source deleted", refuse: "source PV pvc-1 of the conversion no longer exists", change: func(_ *corev1.PersistentVolumeClaim, _, src **corev1.PersistentVolume, _ *time.Time) { *src = nil }},
		{name: "record gone", refuse: "carries no retained conversion", change: func(_ *corev1.PersistentVolumeClaim, _, src **corev1.PersistentVolume, _ *time.Time) {
			delete((*src).Annotations, AnnotationConversion)
		}},
		{name: "retention expired", refuse: "retention of source PV pvc-1 ended at 2026-12-06T00:00:00Z", change: func(_ *corev1.PersistentVolumeClaim, _, _ **corev1.PersistentVolume, now *time.Time) {
			*now = now.Add(23 * time.Hour)
		}},
		{name: "deleting the source", refuse: "at step DeletingSource", change: func(_ *corev1.PersistentVolumeClaim, _, src **corev1.PersistentVolume, _ *time.Time) {
			withRecord(*src, func(r *Record) { r.Step = StepDeletingSource })
		}},
		{name: "another PVC's conversion", refuse: "is not the conversion of PVC apps/data", change: func(_ *corev1.PersistentVolumeClaim, _, src **corev1.PersistentVolume, _ *time.Time) {
			withRecord(*src, func(r *Record) { r.Claim.Name = "other" })
		}},
		{name: "undo running", going: true, change: func(p *corev1.PersistentVolumeClaim, ec, src **corev1.PersistentVolume, now *time.Time) {
			fwd, _ := Parse((*src).Annotations[AnnotationConversion])
			u := UndoRecord(fwd, p, *ec, *now)
			raw, err := u.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			(*ec).Annotations[AnnotationConversion] = raw
		}},
		{name: "another conversion running", refuse: "has another conversion in progress", change: func(_ *corev1.PersistentVolumeClaim, ec, _ **corev1.PersistentVolume, _ *time.Time) {
			(*ec).Annotations[AnnotationConversion] = "{}"
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			pvc, ec, src, now := undoWorld(t)
			c.change(pvc, &ec, &src, &now)
			v := CheckUndo(pvc, ec, src, now)
			switch {
			case c.going:
				if !v.InProgress || v.Refusal != "" || v.Forward != nil {
					t.Fatalf("want in progress, got %+v", v)
				}
			case c.refuse == "":
				if v.Refusal != "" || v.Forward == nil || v.Forward.Source != "pvc-1" {
					t.Fatalf("want a go, got %+v", v)
				}
			default:
				if v.Forward != nil || !strings.Contains(v.Refusal, c.refuse) {
					t.Fatalf("refusal %q, want it to contain %q", v.Refusal, c.refuse)
				}
			}
		})
	}
}

func TestUndoRecordGoesBackOntoTheRetainedSource(t *testing.T) {
	pvc, ec, src, now := undoWorld(t)
	v := CheckUndo(pvc, ec, src, now)
	u := UndoRecord(v.Forward, pvc, ec, now)
	if _, err := u.Marshal(); err != nil {
		t.Fatal(err)
	}
	if u.Direction != ToReplicated || !u.Undo || u.Source != "ec-pvc-1" || u.SourceHandle != "ec-pvc-1" || u.Target != "pvc-1" ||
		u.FromTier != TierErasureCoded || u.ToTier != TierCold || u.Retain != "0s" || u.SizeBytes != v.Forward.SizeBytes ||
		u.SourceReclaimPolicy != corev1.PersistentVolumeReclaimDelete || u.Policy != "p" || u.Claim.UID != "u2" {
		t.Fatalf("undo record: %+v", u)
	}
	if _, ok := u.Claim.Annotations[AnnotationUndoConversion]; ok || u.Claim.Annotations["team"] != "storage" {
		t.Fatalf("claim annotations: %v", u.Claim.Annotations)
	}
	if pvc.Annotations[AnnotationUndoConversion] != "true" {
		t.Fatal("UndoRecord changed the PVC")
	}
	final := u.FinalClaim()
	if final.Spec.VolumeName != "pvc-1" || final.Annotations[AnnotationExcludeFromConversion] != "true" || final.Annotations[AnnotationUndoConversion] != "" || final.Annotations["team"] != "storage" {
		t.Fatalf("final claim: %+v", final.ObjectMeta)
	}
	// A heat-up's or a conversion's final claim gets no opt-out.
	if f := testRecord().FinalClaim(); f.Annotations[AnnotationExcludeFromConversion] != "" {
		t.Fatal(f.Annotations)
	}
}

// heatUp are HeatUpRecord's arguments after the PV and the claim.
type heatUp struct {
	Policy        string
	MaxConcurrent int32
	ToTier        tiering.Tier
	TriggerIOPS   float64
	Retain        time.Duration
	Now           time.Time
}

func heatUpRecord(ec *corev1.PersistentVolume, pvc *corev1.PersistentVolumeClaim, h heatUp) (*Record, error) {
	return HeatUpRecord(ec, pvc, h.Policy, h.MaxConcurrent, h.ToTier, h.TriggerIOPS, h.Retain, h.Now)
}

func TestHeatUpRecordOfAnUndoWorld(t *testing.T) {
	pvc, ec, _, now := undoWorld(t)
	h := heatUp{Policy: "p", MaxConcurrent: 2, ToTier: "warm", TriggerIOPS: 900, Retain: 48 * time.Hour, Now: now}
	r, err := heatUpRecord(ec, pvc, h)
	if err != nil {
		t.Fatal(err)
	}
	if r.Direction != ToReplicated || r.Undo || r.TargetStorageClass != "mayastor" || r.Source != "ec-pvc-1" || r.Target != HeatUpTarget(r.ID) ||
		r.ToTier != "warm" || r.FromTier != TierErasureCoded || r.SizeBytes != 1<<20 || r.Retain != "48h0m0s" || r.Step != StepPreparing {
		t.Fatalf("heat-up record: %+v", r)
	}
	for _, c := range []struct {
		name   string
		change func(*corev1.PersistentVolume, *heatUp)
		want   string
	}{
		{"no original class", func(pv *corev1.PersistentVolume, _ *heatUp) { delete(pv.Annotations, AnnotationOriginalStorageClass) }, "annotation storage.billyronks.io/original-storage-class is empty"},
		{"not erasure-coded", func(pv *corev1.PersistentVolume, _ *heatUp) { pv.Spec.CSI.Driver = "x" }, "not an erasure-coded volume"},
		{"to erasure-coded", func(_ *corev1.PersistentVolume, h *heatUp) { h.ToTier = TierErasureCoded }, `toTier "erasure-coded"`},
		{"no limit", func(_ *corev1.PersistentVolume, h *heatUp) { h.MaxConcurrent = 0 }, "maxConcurrent 0"},
	} {
		_, ec, _, _ := undoWorld(t)
		hh := h
		c.change(ec, &hh)
		if _, err := heatUpRecord(ec, pvc, hh); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error containing %q", c.name, err, c.want)
		}
	}
}

func TestRecordRefusesMixedDirections(t *testing.T) {
	r := testRecord()
	r.Undo = true
	if _, err := r.Marshal(); err == nil || !strings.Contains(err.Error(), "undo is set on a conversion to erasure coding") {
		t.Fatal(err)
	}
	r = testRecord()
	r.Target = r.Source
	if _, err := r.Marshal(); err == nil || !strings.Contains(err.Error(), "is the source") {
		t.Fatal(err)
	}
	pvc, ec, _, now := undoWorld(t)
	h, err := heatUpRecord(ec, pvc, heatUp{Policy: "p", MaxConcurrent: 1, ToTier: "hot", Now: now})
	if err != nil {
		t.Fatal(err)
	}
	h.UndoneBy = "cv-1"
	if _, err := h.Marshal(); err == nil || !strings.Contains(err.Error(), `undoneBy "cv-1"`) {
		t.Fatal(err)
	}
}
