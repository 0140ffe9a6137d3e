package conversion_test

// kcm is this test's stand-in for the parts of kube-controller-manager and
// the kubelet a conversion relies on (envtest runs only kube-apiserver and
// etcd): the PV binder (a PVC naming a PV whose claimRef names it binds; a
// PV whose claim is gone is Released), the pvc-protection and pv-protection
// controllers (a finalizer goes when nothing uses the object), and the Job
// controller with its pod, which runs the real `couchestor volume-copy`
// between two files that stand in for the raw block devices of the Job's
// two PVCs (a volume handle H is the file H.img). It acts only through the
// API, like the real ones. The real controllers run in tests/cluster.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

type kcm struct {
	t   *testing.T
	c   client.Client
	bin string
	dir string

	mu sync.Mutex
	// corrupt, when set, makes the next n copy pods report a digest
	// mismatch (a copy that does not verify).
	corrupt int
	// jobs counts copy Jobs run.
	jobs int
}

func (k *kcm) run(ctx context.Context) {
	for ctx.Err() == nil {
		k.pass(ctx)
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (k *kcm) pass(ctx context.Context) {
	var pvcs corev1.PersistentVolumeClaimList
	var pvs corev1.PersistentVolumeList
	var pods corev1.PodList
	if k.c.List(ctx, &pvcs) != nil || k.c.List(ctx, &pvs) != nil || k.c.List(ctx, &pods) != nil {
		return
	}
	claims := map[types.NamespacedName]*corev1.PersistentVolumeClaim{}
	for i := range pvcs.Items {
		claims[types.NamespacedName{Namespace: pvcs.Items[i].Namespace, Name: pvcs.Items[i].Name}] = &pvcs.Items[i]
	}
	used := func(pvc *corev1.PersistentVolumeClaim) bool {
		for _, p := range pods.Items {
			if p.Namespace != pvc.Namespace || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
				continue
			}
			for _, v := range p.Spec.Volumes {
				if v.PersistentVolumeClaim != nil && v.PersistentVolumeClaim.ClaimName == pvc.Name {
					return true
				}
			}
		}
		return false
	}
	k.provision(ctx, pvcs.Items, pvs.Items)
	// Binder.
	for i := range pvs.Items {
		pv := &pvs.Items[i]
		ref := pv.Spec.ClaimRef
		if ref == nil || pv.DeletionTimestamp != nil {
			continue
		}
		pvc := claims[types.NamespacedName{Namespace: ref.Namespace, Name: ref.Name}]
		switch {
		case pvc != nil && pvc.Spec.VolumeName == pv.Name && (ref.UID == "" || ref.UID == pvc.UID) && pvc.DeletionTimestamp == nil:
			if ref.UID == "" {
				pv.Spec.ClaimRef.UID = pvc.UID
				if k.c.Update(ctx, pv) != nil {
					continue
				}
			}
			if pv.Status.Phase != corev1.VolumeBound {
				pv.Status.Phase = corev1.VolumeBound
				_ = k.c.Status().Update(ctx, pv)
			}
			if pvc.Status.Phase != corev1.ClaimBound {
				pvc.Status.Phase = corev1.ClaimBound
				pvc.Status.AccessModes = pv.Spec.AccessModes
				pvc.Status.Capacity = pv.Spec.Capacity
				_ = k.c.Status().Update(ctx, pvc)
			}
		case ref.UID != "" && (pvc == nil || pvc.UID != ref.UID) && pv.Status.Phase == corev1.VolumeBound:
			pv.Status.Phase = corev1.VolumeReleased
			_ = k.c.Status().Update(ctx, pv)
		}
	}
	// pvc-protection and pv-protection.
	for i := range pvcs.Items {
		pvc := &pvcs.Items[i]
		if pvc.DeletionTimestamp != nil && slices.Contains(pvc.Finalizers, "kubernetes.io/pvc-protection") && !used(pvc) {
			pvc.Finalizers = slices.DeleteFunc(pvc.Finalizers, func(f string) bool { return f == "kubernetes.io/pvc-protection" })
			_ = k.c.Update(ctx, pvc)
		}
	}
	for i := range pvs.Items {
		pv := &pvs.Items[i]
		if pv.DeletionTimestamp != nil && slices.Contains(pv.Finalizers, "kubernetes.io/pv-protection") {
			if ref := pv.Spec.ClaimRef; ref != nil {
				if pvc := claims[types.NamespacedName{Namespace: ref.Namespace, Name: ref.Name}]; pvc != nil && pvc.UID == ref.UID {
					continue
				}
			}
			pv.Finalizers = slices.DeleteFunc(pv.Finalizers, func(f string) bool { return f == "kubernetes.io/pv-protection" })
			_ = k.c.Update(ctx, pv)
		}
	}
	// Jobs.
	var jobs batchv1.JobList
	if k.c.List(ctx, &jobs) != nil {
		return
	}
	for i := range jobs.Items {
		j := &jobs.Items[i]
		if j.DeletionTimestamp != nil || len(j.Status.Conditions) > 0 {
			continue
		}
		k.runJob(ctx, j, claims, pvs.Items)
	}
}

func (k *kcm) file(claim string, ns string, claims map[types.NamespacedName]*corev1.PersistentVolumeClaim, pvs []corev1.PersistentVolume) (string, error) {
	pvc := claims[types.NamespacedName{Namespace: ns, Name: claim}]
	if pvc == nil || pvc.Status.Phase != corev1.ClaimBound {
		return "", fmt.Errorf("PVC %s/%s not bound", ns, claim)
	}
	for _, pv := range pvs {
		if pv.Name == pvc.Spec.VolumeName && pv.Spec.CSI != nil {
			if pv.Spec.VolumeMode == nil || *pv.Spec.VolumeMode != corev1.PersistentVolumeBlock {
				return "", fmt.Errorf("PV %s is not a raw block volume", pv.Name)
			}
			return filepath.Join(k.dir, pv.Spec.CSI.VolumeHandle+".img"), nil
		}
	}
	return "", fmt.Errorf("PV %s of PVC %s/%s not found", pvc.Spec.VolumeName, ns, claim)
}

// runJob plays the Job controller and kubelet for one copy Job.
func (k *kcm) runJob(ctx context.Context, j *batchv1.Job, claims map[types.NamespacedName]*corev1.PersistentVolumeClaim, pvs []corev1.PersistentVolume) {
	spec := j.Spec.Template.Spec
	byName := map[string]string{}
	for _, v := range spec.Volumes {
		if v.PersistentVolumeClaim != nil {
			byName[v.Name] = v.PersistentVolumeClaim.ClaimName
		}
	}
	cont := spec.Containers[0]
	args := append([]string{}, cont.Args...)
	for _, d := range cont.VolumeDevices {
		f, err := k.file(byName[d.Name], j.Namespace, claims, pvs)
		if err != nil {
			return // not schedulable yet
		}
		for i, a := range args {
			args[i] = strings.ReplaceAll(a, d.DevicePath, f)
		}
	}
	res := filepath.Join(k.t.TempDir(), "result.json")
	args = append(args, "--result-file="+res)
	out, runErr := exec.CommandContext(ctx, k.bin, args...).CombinedOutput()
	if ctx.Err() != nil {
		return
	}
	msg, err := os.ReadFile(res)
	if err != nil {
		k.t.Logf("copy Job %s: no result (%v): %s", j.Name, err, out)
		return
	}
	k.mu.Lock()
	k.jobs++
	if k.corrupt > 0 && runErr == nil {
		k.corrupt--
		msg = []byte(strings.ReplaceAll(string(msg), `"targetDigest":"xxh3-128:`, `"targetDigest":"xxh3-128:ff`))
	}
	k.mu.Unlock()
	phase, exit := corev1.PodSucceeded, int32(0)
	if runErr != nil {
		phase, exit = corev1.PodFailed, 1
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: j.Namespace, Name: j.Name + "-pod",
		Labels: map[string]string{"batch.kubernetes.io/job-name": j.Name, "controller-uid": string(j.UID)}},
		Spec: *spec.DeepCopy()}
	if err := k.c.Create(ctx, pod); err != nil && !apierrors.IsAlreadyExists(err) {
		k.t.Logf("create pod of Job %s: %v", j.Name, err)
		return
	}
	now := metav1.Now()
	pod.Status = corev1.PodStatus{Phase: phase, ContainerStatuses: []corev1.ContainerStatus{{Name: cont.Name, Image: cont.Image,
		State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: exit, Message: string(msg), StartedAt: now, FinishedAt: now}}}}}
	if err := k.c.Status().Update(ctx, pod); err != nil {
		k.t.Logf("pod status of Job %s: %v", j.Name, err)
		return
	}
	j.Status.StartTime = &now
	if runErr == nil {
		j.Status.Succeeded = 1
		j.Status.CompletionTime = &now
		j.Status.Conditions = []batchv1.JobCondition{
			{Type: batchv1.JobSuccessCriteriaMet, Status: corev1.ConditionTrue, LastTransitionTime: now, LastProbeTime: now},
			{Type: batchv1.JobComplete, Status: corev1.ConditionTrue, LastTransitionTime: now, LastProbeTime: now}}
	} else {
		j.Status.Failed = 1
		j.Status.Conditions = []batchv1.JobCondition{
			{Type: batchv1.JobFailureTarget, Status: corev1.ConditionTrue, Reason: "BackoffLimitExceeded", LastTransitionTime: now, LastProbeTime: now},
			{Type: batchv1.JobFailed, Status: corev1.ConditionTrue, Reason: "BackoffLimitExceeded", Message: "copy failed", LastTransitionTime: now, LastProbeTime: now}}
	}
	if err := k.c.Status().Update(ctx, j); err != nil {
		k.t.Logf("Job %s status: %v", j.Name, err)
	}
}

// provisionedClass is the StorageClass the stand-in provisions
// dynamically (heat-up's new replicated volumes), as Mayastor's CSI
// controller with external-provisioner would.
const (
	provisionedClass = "mayastor"
	annProvisioned   = "test.billyronks.io/provisioned"
)

// provision plays the dynamic provisioner of provisionedClass: a PVC of
// the class with no volume gets a new PV (handle "new-<uid>", a blank file
// of the requested size, reclaim Delete) bound to it; a Released PV it
// made whose reclaim policy is Delete is deleted with its file.
func (k *kcm) provision(ctx context.Context, pvcs []corev1.PersistentVolumeClaim, pvs []corev1.PersistentVolume) {
	for i := range pvcs {
		pvc := &pvcs[i]
		if pvc.Spec.VolumeName != "" || pvc.DeletionTimestamp != nil || pvc.Spec.StorageClassName == nil || *pvc.Spec.StorageClassName != provisionedClass {
			continue
		}
		handle := "new-" + string(pvc.UID)
		size := pvc.Spec.Resources.Requests.Storage().Value()
		f := filepath.Join(k.dir, handle+".img")
		if _, err := os.Stat(f); err != nil {
			if err := os.WriteFile(f, make([]byte, size), 0o600); err != nil {
				k.t.Logf("provision %s: %v", f, err)
				continue
			}
		}
		mode := corev1.PersistentVolumeFilesystem
		if pvc.Spec.VolumeMode != nil {
			mode = *pvc.Spec.VolumeMode
		}
		pv := &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "pvc-" + string(pvc.UID),
			Annotations: map[string]string{"pv.kubernetes.io/provisioned-by": "io.openebs.csi-mayastor", annProvisioned: "true"}},
			Spec: corev1.PersistentVolumeSpec{
				Capacity:                      corev1.ResourceList{corev1.ResourceStorage: *pvc.Spec.Resources.Requests.Storage()},
				AccessModes:                   pvc.Spec.AccessModes,
				StorageClassName:              provisionedClass,
				PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimDelete,
				VolumeMode:                    &mode,
				PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: "io.openebs.csi-mayastor", VolumeHandle: handle,
					VolumeAttributes: map[string]string{"protocol": "nvmf"}}},
				ClaimRef: &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: pvc.Namespace, Name: pvc.Name, UID: pvc.UID},
			}}
		if err := k.c.Create(ctx, pv); err != nil && !apierrors.IsAlreadyExists(err) {
			k.t.Logf("provision PV for PVC %s/%s: %v", pvc.Namespace, pvc.Name, err)
			continue
		}
		pvc.Spec.VolumeName = pv.Name
		_ = k.c.Update(ctx, pvc)
	}
	for i := range pvs {
		pv := &pvs[i]
		if pv.Annotations[annProvisioned] != "true" || pv.DeletionTimestamp != nil || pv.Status.Phase != corev1.VolumeReleased ||
			pv.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete {
			continue
		}
		if err := k.c.Delete(ctx, pv); err == nil && pv.Spec.CSI != nil {
			_ = os.Remove(filepath.Join(k.dir, pv.Spec.CSI.VolumeHandle+".img"))
		}
	}
}
