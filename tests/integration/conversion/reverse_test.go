package conversion_test

// Conversions back to replicated: undo within retention and heat-up.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/conversion"
	"github.com/billyronks/couchestor/pkg/csi"
	"github.com/billyronks/couchestor/pkg/migration"
	"github.com/billyronks/couchestor/pkg/tiering"
)

func (w *world) randomBytes() []byte {
	b := make([]byte, size)
	if _, err := rand.Read(b); err != nil {
		w.t.Fatal(err)
	}
	return b
}

func (w *world) fileOf(handle string) []byte {
	w.t.Helper()
	b, err := os.ReadFile(filepath.Join(w.k.dir, handle+".img"))
	if err != nil {
		w.t.Fatal(err)
	}
	return b
}

// askUndo sets the undo annotation on the PVC.
func (w *world) askUndo(ns, name string) {
	w.t.Helper()
	w.eventually("annotate the PVC", func() error {
		var pvc corev1.PersistentVolumeClaim
		if err := w.c.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, &pvc); err != nil {
			return err
		}
		if pvc.Annotations == nil {
			pvc.Annotations = map[string]string{}
		}
		pvc.Annotations[conversion.AnnotationUndoConversion] = "true"
		return w.c.Update(context.Background(), &pvc)
	})
}

// event waits for an Event of reason on the PVC whose note has all of want.
func (w *world) event(pvc, reason string, want ...string) {
	w.t.Helper()
	w.eventually("Event "+reason+" on PVC "+pvc, func() error {
		var evs eventsv1.EventList
		if err := w.c.List(context.Background(), &evs, client.InNamespace(userNS)); err != nil {
			return err
		}
		var notes []string
		for _, e := range evs.Items {
			if e.Regarding.Kind != "PersistentVolumeClaim" || e.Regarding.Name != pvc || e.Reason != reason {
				continue
			}
			notes = append(notes, e.Note)
			ok := true
			for _, s := range want {
				ok = ok && strings.Contains(e.Note, s)
			}
			if ok {
				return nil
			}
		}
		return fmt.Errorf("events %v", notes)
	})
}

// TestUndoWithinRetentionCopiesTheLatestBytesBack converts a volume, writes
// other bytes into its erasure-coded side, asks for the undo, kills the
// operator the first time the undo reaches each step, and ends with the
// PVC on its original PV holding the erasure-coded side's latest bytes,
// the original reclaim policy back, the forward record gone, the
// ECVolume and its PV deleted, and a history result each way.
func TestUndoWithinRetentionCopiesTheLatestBytesBack(t *testing.T) {
	w := newWorld(t)
	h := "0b5c7a3e-4444-4a4e-9a59-000000000004"
	pvc, data := w.volume("undo-db", h)
	rec := w.record(pvc, h)
	op := w.startOperator(nil)
	if err := op.conv.Start(context.Background(), rec, time.Hour); err != nil {
		t.Fatal(err)
	}
	w.waitStep(rec.Source, conversion.StepRetaining)
	w.converted(rec, pvc, data)
	var converted corev1.PersistentVolumeClaim
	if err := w.c.Get(context.Background(), client.ObjectKeyFromObject(pvc), &converted); err != nil {
		t.Fatal(err)
	}

	// The erasure-coded volume is written after the conversion.
	latest := w.randomBytes()
	if err := os.WriteFile(filepath.Join(w.k.dir, rec.Target+".img"), latest, 0o600); err != nil {
		t.Fatal(err)
	}
	w.clock.Step(time.Hour) // within the 24 h retention
	w.askUndo(userNS, pvc.Name)
	for _, s := range []conversion.Step{conversion.StepReleasingClaim, conversion.StepCopying, conversion.StepRebinding} {
		w.waitStep(rec.Target, s)
		if s == conversion.StepReleasingClaim {
			// The retention is frozen by the undo.
			var src corev1.PersistentVolume
			if err := w.c.Get(context.Background(), types.NamespacedName{Name: rec.Source}, &src); err != nil {
				t.Fatal(err)
			}
			fwd, err := conversion.Parse(src.Annotations[conversion.AnnotationConversion])
			if err != nil || fwd.UndoneBy == "" || fwd.Step != conversion.StepRetaining {
				t.Fatalf("forward record during the undo: %v %+v", err, fwd)
			}
		}
		op.kill()
		t.Logf("operator killed at undo step %s", s)
		op = w.startOperator(nil)
	}

	ctx := context.Background()
	var back corev1.PersistentVolumeClaim
	w.eventually("the PVC is back on its original PV", func() error {
		if err := w.c.Get(ctx, client.ObjectKeyFromObject(pvc), &back); err != nil {
			return err
		}
		if back.Spec.VolumeName != rec.Source || back.Status.Phase != corev1.ClaimBound {
			return errors.New("volume " + back.Spec.VolumeName + " phase " + string(back.Status.Phase))
		}
		return nil
	})
	if back.UID == converted.UID || back.Labels["app"] != "db" || back.Annotations["team"] != "storage" ||
		*back.Spec.StorageClassName != "mayastor" || back.Spec.Resources.Requests.Storage().Value() != size {
		t.Fatalf("PVC after the undo lost its identity: %+v %+v", back.ObjectMeta, back.Spec)
	}
	if _, ok := back.Annotations[conversion.AnnotationUndoConversion]; ok || back.Annotations[conversion.AnnotationExcludeFromConversion] != "true" {
		t.Fatalf("PVC annotations after the undo: %v", back.Annotations)
	}
	if got := w.fileOf(h); !bytes.Equal(got, latest) {
		t.Fatalf("the original volume does not hold the erasure-coded side's latest bytes (sha256 %x, want %x)", sha256.Sum256(got), sha256.Sum256(latest))
	}
	w.eventually("the erasure-coded PV and its ECVolume are deleted", func() error {
		var pv corev1.PersistentVolume
		if err := w.c.Get(ctx, types.NamespacedName{Name: rec.Target}, &pv); !apierrors.IsNotFound(err) {
			return fmt.Errorf("PV %s: %v (reclaim %s)", rec.Target, err, pv.Spec.PersistentVolumeReclaimPolicy)
		}
		var ev storagev1.ECVolume
		if err := w.c.Get(ctx, types.NamespacedName{Name: rec.Target}, &ev); !apierrors.IsNotFound(err) {
			return fmt.Errorf("ECVolume %s: %v", rec.Target, err)
		}
		return nil
	})
	var src corev1.PersistentVolume
	w.eventually("the original PV is bound with its reclaim policy", func() error {
		if err := w.c.Get(ctx, types.NamespacedName{Name: rec.Source}, &src); err != nil {
			return err
		}
		if src.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete || src.Status.Phase != corev1.VolumeBound {
			return fmt.Errorf("reclaim %s phase %s", src.Spec.PersistentVolumeReclaimPolicy, src.Status.Phase)
		}
		return nil
	})
	if raw := src.Annotations[conversion.AnnotationConversion]; raw != "" {
		t.Fatalf("the forward record is left on the original PV: %s", raw)
	}
	w.eventually("a result each way", func() error {
		rs := w.results(op)
		var there, back int
		for _, r := range rs {
			switch {
			case r.Success() && r.FromTier == "cold" && r.ToTier == "erasure-coded":
				there++
			case r.Success() && r.FromTier == "erasure-coded" && r.ToTier == "cold":
				back++
			}
		}
		if len(rs) != 2 || there != 1 || back != 1 {
			return errors.New("results: " + fmtResults(rs))
		}
		return nil
	})
	if op.engine.ActiveCount("cold-ec") != 0 {
		t.Fatalf("the undo still holds a slot: %d", op.engine.ActiveCount("cold-ec"))
	}
	// The retention that was frozen does not come back: the original PV
	// stays after the retention would have ended.
	w.clock.Step(48 * time.Hour)
	w.eventually("no temporaries left", func() error {
		var pvcs corev1.PersistentVolumeClaimList
		if err := w.c.List(ctx, &pvcs, client.InNamespace(opNS)); err != nil || len(pvcs.Items) != 0 {
			return fmt.Errorf("temporary PVCs: %v %d", err, len(pvcs.Items))
		}
		return nil
	})
	if err := w.c.Get(ctx, types.NamespacedName{Name: rec.Source}, &src); err != nil || src.DeletionTimestamp != nil {
		t.Fatalf("original PV after the undo and 48 h: %v %v", err, src.DeletionTimestamp)
	}
}

// TestUndoRefusedWithoutARetainedSource: after the retention (fake clock)
// and on a PVC that was never converted, the undo annotation gets a
// Warning Event naming the PVC, the annotation and the reason, and
// nothing changes.
func TestUndoRefusedWithoutARetainedSource(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	h := "0b5c7a3e-5555-4a4e-9a59-000000000005"
	pvc, data := w.volume("late", h)
	rec := w.record(pvc, h)
	op := w.startOperator(nil)
	if err := op.conv.Start(ctx, rec, time.Hour); err != nil {
		t.Fatal(err)
	}
	w.waitStep(rec.Source, conversion.StepRetaining)
	w.clock.Step(25 * time.Hour)
	// A retained record is looked at again within the hour (real time):
	// a restarted operator looks at once.
	op.kill()
	op = w.startOperator(nil)
	w.eventually("the source is deleted after the retention", func() error {
		var pv corev1.PersistentVolume
		if err := w.c.Get(ctx, types.NamespacedName{Name: rec.Source}, &pv); !apierrors.IsNotFound(err) {
			return fmt.Errorf("source PV: %v", err)
		}
		return nil
	})
	var before corev1.PersistentVolumeClaim
	if err := w.c.Get(ctx, client.ObjectKeyFromObject(pvc), &before); err != nil {
		t.Fatal(err)
	}
	w.askUndo(userNS, pvc.Name)
	w.event(pvc.Name, conversion.ReasonUndoRefused, "PVC apps/late", conversion.AnnotationUndoConversion, "no longer exists (its retention is over)")

	plain, _ := w.volume("never-converted", "0b5c7a3e-6666-4a4e-9a59-000000000006")
	w.askUndo(userNS, plain.Name)
	w.event(plain.Name, conversion.ReasonUndoRefused, "PVC apps/never-converted", conversion.AnnotationUndoConversion, "not an erasure-coded volume")

	// Nothing changed: the PVC (same UID) on the erasure-coded PV, which
	// carries no record, holding the converted bytes.
	var after corev1.PersistentVolumeClaim
	if err := w.c.Get(ctx, client.ObjectKeyFromObject(pvc), &after); err != nil || after.UID != before.UID || after.Spec.VolumeName != rec.Target || after.DeletionTimestamp != nil {
		t.Fatalf("PVC after a refused undo: %v uid %s (was %s) volume %s", err, after.UID, before.UID, after.Spec.VolumeName)
	}
	var ec corev1.PersistentVolume
	if err := w.c.Get(ctx, types.NamespacedName{Name: rec.Target}, &ec); err != nil || ec.Annotations[conversion.AnnotationConversion] != "" {
		t.Fatalf("erasure-coded PV after a refused undo: %v %v", err, ec.Annotations)
	}
	if !bytes.Equal(w.fileOf(rec.Target), data) {
		t.Fatal("the erasure-coded volume's bytes changed")
	}
	if n := op.engine.ActiveCount("cold-ec"); n != 0 {
		t.Fatalf("a refused undo holds a slot: %d", n)
	}
}

// ecVolume makes an erasure-coded volume as a conversion leaves it: an
// ECVolume, its PV (the EC CSI driver, reclaim Delete, Filesystem ext4,
// AnnotationOriginalStorageClass "mayastor") bound to PVC name in userNS,
// and its bytes (random) in the ECVolume's file.
func (w *world) ecVolume(name string) (*corev1.PersistentVolumeClaim, *corev1.PersistentVolume, []byte) {
	ctx := context.Background()
	ecName := "ec-pvc-" + name
	data := w.randomBytes()
	if err := os.WriteFile(filepath.Join(w.k.dir, ecName+".img"), data, 0o600); err != nil {
		w.t.Fatal(err)
	}
	ev := &storagev1.ECVolume{ObjectMeta: metav1.ObjectMeta{Name: ecName, Labels: map[string]string{csi.LabelManaged: "true"}},
		Spec: storagev1.ECVolumeSpec{SizeBytes: size, PolicyRef: "rs-4-2"}}
	if err := w.c.Create(ctx, ev); err != nil {
		w.t.Fatal(err)
	}
	pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: userNS, Name: name,
		Labels: map[string]string{"app": "db"}, Annotations: map[string]string{"team": "storage"}},
		Spec: corev1.PersistentVolumeClaimSpec{AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: ptr.To("mayastor"), VolumeName: ecName,
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: *resource.NewQuantity(size, resource.BinarySI)}}}}
	if err := w.c.Create(ctx, pvc); err != nil {
		w.t.Fatal(err)
	}
	pv := &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: ecName, Annotations: map[string]string{
		"pv.kubernetes.io/provisioned-by": csi.DriverName, conversion.AnnotationConvertedFrom: "pvc-gone-" + name, conversion.AnnotationOriginalStorageClass: "mayastor"}},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: *resource.NewQuantity(size, resource.BinarySI)},
			AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName:              "mayastor",
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimDelete,
			VolumeMode:                    ptr.To(corev1.PersistentVolumeFilesystem),
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: csi.DriverName, VolumeHandle: ecName, FSType: "ext4",
				VolumeAttributes: map[string]string{csi.ParamPolicy: "rs-4-2"}}},
			ClaimRef: &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: userNS, Name: name, UID: pvc.UID},
		}}
	if err := w.c.Create(ctx, pv); err != nil {
		w.t.Fatal(err)
	}
	w.eventually("the PVC binds", func() error {
		if err := w.c.Get(ctx, client.ObjectKeyFromObject(pvc), pvc); err != nil {
			return err
		}
		if pvc.Status.Phase != corev1.ClaimBound {
			return errors.New(string(pvc.Status.Phase))
		}
		return nil
	})
	if err := w.c.Get(ctx, client.ObjectKeyFromObject(pv), pv); err != nil {
		w.t.Fatal(err)
	}
	return pvc, pv, data
}

func (w *world) heatUp(pvc *corev1.PersistentVolumeClaim, ec *corev1.PersistentVolume) *conversion.Record {
	rec, err := conversion.HeatUpRecord(ec, pvc, "cold-ec", 2, tiering.Warm, 800, 24*time.Hour, w.clock.Now())
	if err != nil {
		w.t.Fatal(err)
	}
	return rec
}

// provisionedPVs lists the PVs the stand-in provisioner made.
func (w *world) provisionedPVs() []string {
	var pvs corev1.PersistentVolumeList
	if err := w.c.List(context.Background(), &pvs); err != nil {
		w.t.Fatal(err)
	}
	var out []string
	for _, pv := range pvs.Items {
		if pv.Annotations[annProvisioned] == "true" {
			out = append(out, pv.Name)
		}
	}
	return out
}

// TestHeatUpConvertsAndSurvivesACrashAtEveryStep: a ToReplicated record
// started through Converter.Start, the operator killed the first time it
// reaches each step; the PVC ends on a new PV of the original StorageClass
// with the erasure-coded volume's bytes, the erasure-coded PV retained,
// then deleted with its ECVolume when the retention ends.
func TestHeatUpConvertsAndSurvivesACrashAtEveryStep(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	pvc, ec, data := w.ecVolume("hot")
	rec := w.heatUp(pvc, ec)
	op := w.startOperator(nil)
	if err := op.conv.Start(ctx, rec, time.Hour); err != nil {
		t.Fatal(err)
	}
	for _, s := range []conversion.Step{conversion.StepReleasingClaim, conversion.StepCopying, conversion.StepRebinding, conversion.StepRetaining} {
		w.waitStep(rec.Source, s)
		op.kill()
		t.Logf("operator killed at heat-up step %s", s)
		op = w.startOperator(nil)
	}
	var got corev1.PersistentVolumeClaim
	w.eventually("the PVC is rebound to the new replicated PV", func() error {
		if err := w.c.Get(ctx, client.ObjectKeyFromObject(pvc), &got); err != nil {
			return err
		}
		if got.Spec.VolumeName != rec.Target || got.Status.Phase != corev1.ClaimBound {
			return errors.New("volume " + got.Spec.VolumeName + " phase " + string(got.Status.Phase))
		}
		return nil
	})
	if got.UID == pvc.UID || got.Labels["app"] != "db" || got.Annotations["team"] != "storage" || *got.Spec.StorageClassName != "mayastor" {
		t.Fatalf("recreated PVC lost its identity: %+v %+v", got.ObjectMeta, got.Spec)
	}
	if _, ok := got.Annotations[conversion.AnnotationExcludeFromConversion]; ok {
		t.Fatal("a heat-up opted the PVC out of conversion")
	}
	var final corev1.PersistentVolume
	w.eventually("the new PV takes reclaim Delete", func() error {
		if err := w.c.Get(ctx, types.NamespacedName{Name: rec.Target}, &final); err != nil {
			return err
		}
		if final.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete {
			return errors.New(string(final.Spec.PersistentVolumeReclaimPolicy))
		}
		return nil
	})
	if final.Spec.CSI.Driver != "io.openebs.csi-mayastor" || !strings.HasPrefix(final.Spec.CSI.VolumeHandle, "new-") || final.Spec.StorageClassName != "mayastor" ||
		*final.Spec.VolumeMode != corev1.PersistentVolumeFilesystem || final.Spec.CSI.FSType != "ext4" || final.Spec.CSI.VolumeAttributes["protocol"] != "nvmf" {
		t.Fatalf("new PV: %+v", final.Spec)
	}
	if got := w.fileOf(final.Spec.CSI.VolumeHandle); !bytes.Equal(got, data) {
		t.Fatalf("the new volume's bytes differ from the erasure-coded volume's (sha256 %x, want %x)", sha256.Sum256(got), sha256.Sum256(data))
	}
	// The provisioned (raw-block) PV object is gone, its volume is the new PV's.
	if left := w.provisionedPVs(); len(left) != 0 {
		t.Fatalf("provisioned PV objects left: %v", left)
	}
	var src corev1.PersistentVolume
	if err := w.c.Get(ctx, types.NamespacedName{Name: rec.Source}, &src); err != nil || src.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimRetain {
		t.Fatalf("erasure-coded PV during retention: %v reclaim %s", err, src.Spec.PersistentVolumeReclaimPolicy)
	}
	w.eventually("one success erasure-coded → warm", func() error {
		rs := w.results(op)
		if len(rs) != 1 || !rs[0].Success() || rs[0].FromTier != "erasure-coded" || rs[0].ToTier != "warm" {
			return errors.New("results: " + fmtResults(rs))
		}
		return nil
	})
	if n := op.engine.ActiveCount("cold-ec"); n != 0 {
		t.Fatalf("a retained heat-up holds a slot: %d", n)
	}
	var pvcs corev1.PersistentVolumeClaimList
	if err := w.c.List(ctx, &pvcs, client.InNamespace(opNS)); err != nil || len(pvcs.Items) != 0 {
		t.Fatalf("temporary PVCs left: %v %d", err, len(pvcs.Items))
	}

	w.clock.Step(25 * time.Hour)
	w.eventually("the erasure-coded PV and its ECVolume are deleted after retention", func() error {
		var pv corev1.PersistentVolume
		if err := w.c.Get(ctx, types.NamespacedName{Name: rec.Source}, &pv); !apierrors.IsNotFound(err) {
			return fmt.Errorf("PV: %v", err)
		}
		var ev storagev1.ECVolume
		if err := w.c.Get(ctx, types.NamespacedName{Name: rec.Source}, &ev); !apierrors.IsNotFound(err) {
			return fmt.Errorf("ECVolume: %v", err)
		}
		return nil
	})
	if err := w.c.Get(ctx, client.ObjectKeyFromObject(pvc), &got); err != nil || got.Spec.VolumeName != rec.Target {
		t.Fatalf("PVC after retention: %v %s", err, got.Spec.VolumeName)
	}
}

// TestHeatUpRollsBackWhenAPodStartsFirst: a pod that uses the PVC before
// it is released makes the heat-up roll back: the new volume is removed,
// the PVC (same UID) stays on the erasure-coded PV, untouched.
func TestHeatUpRollsBackWhenAPodStartsFirst(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	pvc, ec, data := w.ecVolume("busy-hot")
	rec := w.heatUp(pvc, ec)
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: userNS, Name: "db-0"}, Spec: corev1.PodSpec{
		Containers: []corev1.Container{{Name: "db", Image: "db"}},
		Volumes:    []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: pvc.Name}}}}}}
	if err := w.c.Create(ctx, pod); err != nil {
		t.Fatal(err)
	}
	op := w.startOperator(nil)
	if err := op.conv.Start(ctx, rec, time.Hour); err != nil {
		t.Fatal(err)
	}
	w.eventually("the heat-up rolls back", func() error {
		rs := w.results(op)
		if len(rs) != 1 || rs[0].Outcome != migration.Aborted || rs[0].FromTier != "erasure-coded" {
			return errors.New(fmtResults(rs))
		}
		return nil
	})
	if s, _ := w.stepOf(rec.Source); s != "" {
		t.Fatalf("record left at %s", s)
	}
	var got corev1.PersistentVolumeClaim
	if err := w.c.Get(ctx, client.ObjectKeyFromObject(pvc), &got); err != nil || got.UID != pvc.UID || got.DeletionTimestamp != nil || got.Spec.VolumeName != rec.Source {
		t.Fatalf("PVC: %v uid %s (was %s) volume %s", err, got.UID, pvc.UID, got.Spec.VolumeName)
	}
	var src corev1.PersistentVolume
	if err := w.c.Get(ctx, types.NamespacedName{Name: rec.Source}, &src); err != nil || src.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete {
		t.Fatalf("erasure-coded PV after rollback: %v reclaim %s", err, src.Spec.PersistentVolumeReclaimPolicy)
	}
	w.eventually("the new volume is removed", func() error {
		if left := w.provisionedPVs(); len(left) != 0 {
			return fmt.Errorf("provisioned PVs: %v", left)
		}
		var pvcs corev1.PersistentVolumeClaimList
		if err := w.c.List(ctx, &pvcs, client.InNamespace(opNS)); err != nil || len(pvcs.Items) != 0 {
			return fmt.Errorf("temporary PVCs: %v %d", err, len(pvcs.Items))
		}
		return nil
	})
	var target corev1.PersistentVolume
	if err := w.c.Get(ctx, types.NamespacedName{Name: rec.Target}, &target); !apierrors.IsNotFound(err) {
		t.Fatalf("final PV of a rolled-back heat-up: %v", err)
	}
	var ev storagev1.ECVolume
	if err := w.c.Get(ctx, types.NamespacedName{Name: rec.Source}, &ev); err != nil {
		t.Fatalf("the ECVolume of a rolled-back heat-up: %v", err)
	}
	if !bytes.Equal(w.fileOf(rec.SourceHandle), data) {
		t.Fatal("the erasure-coded volume's bytes changed")
	}
	if op.engine.ActiveCount("cold-ec") != 0 {
		t.Fatal("slot not released")
	}
}
