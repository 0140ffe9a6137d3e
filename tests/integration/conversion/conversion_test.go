// Package conversion_test drives pkg/conversion's Converter against a real
// kube-apiserver and etcd (envtest) with this package's stand-in for
// kube-controller-manager's binder, protection and Job controllers (kcm),
// which runs the real `couchestor volume-copy` on files standing in for
// the block devices.
package conversion_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/conversion"
	"github.com/billyronks/couchestor/pkg/migration"
	"github.com/billyronks/couchestor/tests/testenv"
)

const (
	opNS   = "couchestor-system"
	userNS = "apps"
	size   = 3<<20 + 512*7 // not a multiple of the extent size
	wait   = 2 * time.Minute
)

type world struct {
	t     *testing.T
	env   *testenv.Env
	c     client.Client
	k     *kcm
	clock *clocktesting.FakeClock
}

func newWorld(t *testing.T) *world {
	env := testenv.Start(t)
	w := &world{t: t, env: env, c: env.Client, clock: clocktesting.NewFakeClock(time.Date(2026, 12, 5, 0, 0, 0, 0, time.UTC))}
	for _, ns := range []string{opNS, userNS} {
		if err := w.c.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			t.Fatal(err)
		}
	}
	w.k = &kcm{t: t, c: env.Client, bin: testenv.OperatorBinary(t), dir: t.TempDir()}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go w.k.run(ctx)
	return w
}

// unusedBackend: the converter shares only the migration engine's limits
// and results; no migration runs in these tests, so the engine never asks
// Mayastor anything (a call fails the test).
type unusedBackend struct{ t *testing.T }

func (b unusedBackend) Describe() string { return "none" }
func (b unusedBackend) ListVolumes(context.Context) ([]migration.Volume, error) {
	return nil, b.fail()
}
func (b unusedBackend) GetVolume(context.Context, string) (migration.Volume, error) {
	return migration.Volume{}, b.fail()
}
func (b unusedBackend) SetReplicas(context.Context, string, int32, *migration.Topology) error {
	return b.fail()
}
func (b unusedBackend) ListPools(context.Context) ([]migration.Pool, error) { return nil, b.fail() }
func (b unusedBackend) Rules() migration.Rules                              { return migration.Rules{} }
func (b unusedBackend) fail() error {
	b.t.Error("the migration engine asked the Mayastor backend during a conversion test")
	return errors.New("unused")
}

// operator is one run of the conversion part of the operator.
type operator struct {
	engine *migration.Engine
	conv   *conversion.Converter
	stop   context.CancelFunc
	done   chan struct{}
}

func (w *world) startOperator(stepHook func(*corev1.PersistentVolume) bool) *operator {
	skip := true
	mgr, err := ctrl.NewManager(w.env.Config, ctrl.Options{Scheme: w.env.Scheme, Controller: config.Controller{SkipNameValidation: &skip},
		Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0"})
	if err != nil {
		w.t.Fatal(err)
	}
	engine, err := migration.NewEngine(migration.Options{Client: mgr.GetClient(), Backend: unusedBackend{w.t}})
	if err != nil {
		w.t.Fatal(err)
	}
	if err := mgr.Add(engine); err != nil {
		w.t.Fatal(err)
	}
	conv := &conversion.Converter{Client: mgr.GetClient(), Engine: engine, Recorder: mgr.GetEventRecorder("test"),
		Copier: conversion.JobCopier{Image: "couchestor:test", ExtentSize: 1 << 20, Deadline: time.Hour}, Namespace: opNS,
		Poll: 200 * time.Millisecond, Clock: w.clock}
	if err := conv.SetupWithManager(mgr, true); err != nil {
		w.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	op := &operator{engine: engine, conv: conv, stop: cancel, done: make(chan struct{})}
	go func() { defer close(op.done); _ = mgr.Start(ctx) }()
	w.t.Cleanup(op.kill)
	w.eventually("the engine runs", func() error {
		if !engine.Running() {
			return errors.New("not yet")
		}
		return nil
	})
	return op
}

func (op *operator) kill() {
	op.stop()
	<-op.done
}

func (w *world) eventually(what string, f func() error) {
	w.t.Helper()
	deadline := time.Now().Add(wait)
	var err error
	for time.Now().Before(deadline) {
		if err = f(); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond) // polling a condition, not a fixed wait
	}
	w.t.Fatalf("%s: not within %s: %v", what, wait, err)
}

// volume makes a replicated volume's PV (Mayastor's CSI driver, volume
// handle h, reclaim Delete, Filesystem) bound to PVC name in userNS, and
// its bytes (random) in h.img.
func (w *world) volume(name, h string) (*corev1.PersistentVolumeClaim, []byte) {
	ctx := context.Background()
	data := make([]byte, size)
	if _, err := rand.Read(data); err != nil {
		w.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(w.k.dir, h+".img"), data, 0o600); err != nil {
		w.t.Fatal(err)
	}
	pvName := "pvc-" + h
	pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: userNS, Name: name,
		Labels: map[string]string{"app": "db"}, Annotations: map[string]string{"team": "storage"}},
		Spec: corev1.PersistentVolumeClaimSpec{AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: ptr.To("mayastor"), VolumeName: pvName,
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: *resource.NewQuantity(size, resource.BinarySI)}}}}
	if err := w.c.Create(ctx, pvc); err != nil {
		w.t.Fatal(err)
	}
	pv := &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: pvName, Annotations: map[string]string{"pv.kubernetes.io/provisioned-by": "io.openebs.csi-mayastor"}},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: *resource.NewQuantity(size, resource.BinarySI)},
			AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName:              "mayastor",
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimDelete,
			VolumeMode:                    ptr.To(corev1.PersistentVolumeFilesystem),
			PersistentVolumeSource:        corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: "io.openebs.csi-mayastor", VolumeHandle: h, FSType: "ext4"}},
			ClaimRef:                      &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: userNS, Name: name, UID: pvc.UID},
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
	return pvc, data
}

func (w *world) record(pvc *corev1.PersistentVolumeClaim, h string) *conversion.Record {
	var pv corev1.PersistentVolume
	if err := w.c.Get(context.Background(), types.NamespacedName{Name: pvc.Spec.VolumeName}, &pv); err != nil {
		w.t.Fatal(err)
	}
	rec := &conversion.Record{Direction: conversion.ToErasureCoded, Policy: "cold-ec", MaxConcurrent: 2, Step: conversion.StepPreparing,
		StartedAt: w.clock.Now(), TriggerIOPS: 3, FromTier: conversion.TierCold, ToTier: conversion.TierErasureCoded,
		Source: pv.Name, SourceHandle: h, SizeBytes: size, SourceReclaimPolicy: pv.Spec.PersistentVolumeReclaimPolicy,
		Claim: conversion.ClaimOf(pvc), ECPolicy: "rs-4-2", Target: "ec-" + pv.Name, Retain: "24h"}
	rec.ID = conversion.ConversionID(rec.Source, rec.StartedAt)
	// The ECVolume's bytes: a blank target of its size (what a new ECVolume reads).
	if err := os.WriteFile(filepath.Join(w.k.dir, rec.Target+".img"), make([]byte, size), 0o600); err != nil {
		w.t.Fatal(err)
	}
	return rec
}

func (w *world) stepOf(pv string) (conversion.Step, error) {
	var p corev1.PersistentVolume
	if err := w.c.Get(context.Background(), types.NamespacedName{Name: pv}, &p); err != nil {
		return "", err
	}
	raw := p.Annotations[conversion.AnnotationConversion]
	if raw == "" {
		return "", nil
	}
	r, err := conversion.Parse(raw)
	if err != nil {
		return "", err
	}
	return r.Step, nil
}

func (w *world) waitStep(pv string, want conversion.Step) {
	w.t.Helper()
	w.eventually("step "+string(want), func() error {
		s, err := w.stepOf(pv)
		if err != nil {
			return err
		}
		if s != want {
			return errors.New("at step " + string(s))
		}
		return nil
	})
}

// converted checks the end state of a successful conversion.
func (w *world) converted(rec *conversion.Record, orig *corev1.PersistentVolumeClaim, data []byte) {
	w.t.Helper()
	ctx := context.Background()
	var pvc corev1.PersistentVolumeClaim
	w.eventually("the PVC is rebound to the erasure-coded PV", func() error {
		if err := w.c.Get(ctx, client.ObjectKeyFromObject(orig), &pvc); err != nil {
			return err
		}
		if pvc.Spec.VolumeName != rec.Target || pvc.Status.Phase != corev1.ClaimBound {
			return errors.New("volume " + pvc.Spec.VolumeName + " phase " + string(pvc.Status.Phase))
		}
		return nil
	})
	if pvc.UID == orig.UID {
		w.t.Fatal("the PVC was not recreated")
	}
	if pvc.Labels["app"] != "db" || pvc.Annotations["team"] != "storage" || *pvc.Spec.StorageClassName != "mayastor" ||
		pvc.Spec.AccessModes[0] != corev1.ReadWriteOnce || pvc.Spec.Resources.Requests.Storage().Value() != size {
		w.t.Fatalf("recreated PVC lost its identity: %+v %+v", pvc.ObjectMeta, pvc.Spec)
	}
	got, err := os.ReadFile(filepath.Join(w.k.dir, rec.Target+".img"))
	if err != nil {
		w.t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		w.t.Fatalf("the erasure-coded volume's bytes differ from the source's (sha256 %x, want %x)", sha256.Sum256(got), sha256.Sum256(data))
	}
	var target corev1.PersistentVolume
	if err := w.c.Get(ctx, types.NamespacedName{Name: rec.Target}, &target); err != nil {
		w.t.Fatal(err)
	}
	if target.Spec.CSI.Driver != "ec.csi.storage.billyronks.io" || target.Spec.CSI.VolumeHandle != rec.Target ||
		*target.Spec.VolumeMode != corev1.PersistentVolumeFilesystem || target.Spec.CSI.FSType != "ext4" {
		w.t.Fatalf("target PV: %+v", target.Spec)
	}
	w.eventually("the target takes the source's reclaim policy", func() error {
		if err := w.c.Get(ctx, types.NamespacedName{Name: rec.Target}, &target); err != nil {
			return err
		}
		if target.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete {
			return errors.New(string(target.Spec.PersistentVolumeReclaimPolicy))
		}
		return nil
	})
	var ev storagev1.ECVolume
	if err := w.c.Get(ctx, types.NamespacedName{Name: rec.Target}, &ev); err != nil || ev.Spec.SizeBytes != size || ev.Spec.PolicyRef != "rs-4-2" {
		w.t.Fatalf("ECVolume: %v %+v", err, ev.Spec)
	}
	// The source is retained, untouched, Retain.
	var src corev1.PersistentVolume
	if err := w.c.Get(ctx, types.NamespacedName{Name: rec.Source}, &src); err != nil {
		w.t.Fatal(err)
	}
	if src.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimRetain {
		w.t.Fatalf("source reclaim policy %s during retention", src.Spec.PersistentVolumeReclaimPolicy)
	}
	raw, _ := os.ReadFile(filepath.Join(w.k.dir, rec.SourceHandle+".img"))
	if !bytes.Equal(raw, data) {
		w.t.Fatal("the source's bytes changed")
	}
	// No temporaries left.
	var pvcs corev1.PersistentVolumeClaimList
	if err := w.c.List(ctx, &pvcs, client.InNamespace(opNS)); err != nil || len(pvcs.Items) != 0 {
		w.t.Fatalf("temporary PVCs left: %v %d", err, len(pvcs.Items))
	}
}

func (w *world) results(op *operator) []migration.Result { return op.engine.PendingResults("cold-ec") }

// TestConvertsAndSurvivesACrashAtEveryStep converts one volume, killing
// the operator the first time the record reaches each step and starting
// a new one, then a second volume with no crash; both end converted,
// byte for byte, with one history result each.
func TestConvertsAndSurvivesACrashAtEveryStep(t *testing.T) {
	w := newWorld(t)
	pvc, data := w.volume("data-db-0", "0b5c7a3e-1111-4a4e-9a59-000000000001")
	rec := w.record(pvc, "0b5c7a3e-1111-4a4e-9a59-000000000001")
	op := w.startOperator(nil)
	if err := op.conv.Start(context.Background(), rec, time.Hour); err != nil {
		t.Fatal(err)
	}
	for _, s := range []conversion.Step{conversion.StepReleasingClaim, conversion.StepCopying, conversion.StepRebinding, conversion.StepRetaining} {
		w.waitStep(rec.Source, s)
		op.kill()
		t.Logf("operator killed at step %s", s)
		op = w.startOperator(nil)
	}
	w.converted(rec, pvc, data)
	w.eventually("one success in the results", func() error {
		rs := w.results(op)
		if len(rs) != 1 || !rs[0].Success() || rs[0].FromTier != "cold" || rs[0].ToTier != "erasure-coded" {
			return errors.New("results: " + fmtResults(rs))
		}
		return nil
	})
	if op.engine.ActiveCount("cold-ec") != 0 {
		t.Fatalf("a retained conversion still holds a slot: %d", op.engine.ActiveCount("cold-ec"))
	}

	// Retention: the source goes when it ends (fake clock), and only then.
	w.clock.Step(23 * time.Hour)
	if s, _ := w.stepOf(rec.Source); s != conversion.StepRetaining {
		t.Fatalf("step %s before the retention ended", s)
	}
	w.clock.Step(2 * time.Hour)
	w.eventually("the source PV is deleted after retention", func() error {
		var pv corev1.PersistentVolume
		err := w.c.Get(context.Background(), types.NamespacedName{Name: rec.Source}, &pv)
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err == nil {
			if pv.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete {
				return errors.New("reclaim " + string(pv.Spec.PersistentVolumeReclaimPolicy))
			}
			return errors.New("still there")
		}
		return err
	})
	w.converted2(rec)
}

// converted2: after the source is gone, the PVC is still on the target.
func (w *world) converted2(rec *conversion.Record) {
	var pvc corev1.PersistentVolumeClaim
	if err := w.c.Get(context.Background(), types.NamespacedName{Namespace: rec.Claim.Namespace, Name: rec.Claim.Name}, &pvc); err != nil || pvc.Spec.VolumeName != rec.Target {
		w.t.Fatalf("PVC after retention: %v %s", err, pvc.Spec.VolumeName)
	}
}

// TestAPodThatStartsFirstRollsBackUntouched: a pod that starts using the
// PVC between the decision and the release makes the conversion roll back
// with nothing deleted; the PVC (same UID) stays on the source.
func TestAPodThatStartsFirstRollsBackUntouched(t *testing.T) {
	w := newWorld(t)
	pvc, data := w.volume("busy", "0b5c7a3e-2222-4a4e-9a59-000000000002")
	rec := w.record(pvc, "0b5c7a3e-2222-4a4e-9a59-000000000002")
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: userNS, Name: "db-0"}, Spec: corev1.PodSpec{
		Containers: []corev1.Container{{Name: "db", Image: "db"}},
		Volumes:    []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "busy"}}}}}}
	if err := w.c.Create(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	op := w.startOperator(nil)
	if err := op.conv.Start(context.Background(), rec, time.Hour); err != nil {
		t.Fatal(err)
	}
	w.eventually("the conversion rolls back", func() error {
		rs := w.results(op)
		if len(rs) != 1 || rs[0].Outcome != migration.Aborted {
			return errors.New(fmtResults(rs))
		}
		return nil
	})
	if s, _ := w.stepOf(rec.Source); s != "" {
		t.Fatalf("record left at %s", s)
	}
	var got corev1.PersistentVolumeClaim
	if err := w.c.Get(context.Background(), client.ObjectKeyFromObject(pvc), &got); err != nil || got.UID != pvc.UID || got.DeletionTimestamp != nil {
		t.Fatalf("PVC: %v uid %s (was %s)", err, got.UID, pvc.UID)
	}
	var src corev1.PersistentVolume
	_ = w.c.Get(context.Background(), types.NamespacedName{Name: rec.Source}, &src)
	if src.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete || src.Annotations["storage.billyronks.io/migration-failures"] != "1" {
		t.Fatalf("source after rollback: reclaim %s, annotations %v", src.Spec.PersistentVolumeReclaimPolicy, src.Annotations)
	}
	var ev storagev1.ECVolume
	if err := w.c.Get(context.Background(), types.NamespacedName{Name: rec.Target}, &ev); !apierrors.IsNotFound(err) {
		t.Fatalf("ECVolume of a rolled-back conversion: %v", err)
	}
	raw, _ := os.ReadFile(filepath.Join(w.k.dir, rec.SourceHandle+".img"))
	if !bytes.Equal(raw, data) {
		t.Fatal("source bytes changed")
	}
	if op.engine.ActiveCount("cold-ec") != 0 {
		t.Fatal("slot not released")
	}
}

// TestACopyThatDoesNotVerifyIsRetriedThenRolledBack: copy results whose
// digests differ are never accepted: the Job is retried, and after the
// last attempt the PVC is recreated on the source, which is never touched.
func TestACopyThatDoesNotVerifyIsRetriedThenRolledBack(t *testing.T) {
	w := newWorld(t)
	w.k.corrupt = 3
	pvc, data := w.volume("flaky", "0b5c7a3e-3333-4a4e-9a59-000000000003")
	rec := w.record(pvc, "0b5c7a3e-3333-4a4e-9a59-000000000003")
	op := w.startOperator(nil)
	if err := op.conv.Start(context.Background(), rec, time.Hour); err != nil {
		t.Fatal(err)
	}
	var got corev1.PersistentVolumeClaim
	w.eventually("the PVC is recreated on the source", func() error {
		rs := w.results(op)
		if len(rs) != 1 || rs[0].Outcome != migration.Aborted {
			return errors.New(fmtResults(rs))
		}
		if err := w.c.Get(context.Background(), client.ObjectKeyFromObject(pvc), &got); err != nil {
			return err
		}
		if got.Spec.VolumeName != rec.Source || got.Status.Phase != corev1.ClaimBound {
			return errors.New("PVC on " + got.Spec.VolumeName)
		}
		return nil
	})
	if w.k.jobs != 3 {
		t.Fatalf("%d copy Jobs ran, want 3 (MaxCopyAttempts)", w.k.jobs)
	}
	if got.UID == pvc.UID || got.Labels["app"] != "db" {
		t.Fatalf("PVC not recreated with its identity: %+v", got.ObjectMeta)
	}
	raw, _ := os.ReadFile(filepath.Join(w.k.dir, rec.SourceHandle+".img"))
	if !bytes.Equal(raw, data) {
		t.Fatal("source bytes changed")
	}
	var ev storagev1.ECVolume
	if err := w.c.Get(context.Background(), types.NamespacedName{Name: rec.Target}, &ev); !apierrors.IsNotFound(err) {
		t.Fatalf("ECVolume of a rolled-back conversion: %v", err)
	}
}

func fmtResults(rs []migration.Result) string {
	var b bytes.Buffer
	for _, r := range rs {
		b.WriteString(string(r.Outcome) + " " + r.FromTier + "→" + r.ToTier + " " + r.Error + "; ")
	}
	return b.String()
}
