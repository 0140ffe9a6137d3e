package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"log"
	"os"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// provisioner plays the external-provisioner of Mayastor's StorageClasses
// (the stand-in's part of dynamic provisioning): it polls, which is enough
// for a test double and survives restarts without state of its own (the
// PV's claimRef UID is the record).
type provisioner struct {
	c   kubernetes.Interface
	dir string
}

func newProvisioner(kubeconfig, dir string) (*provisioner, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, err
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &provisioner{c: c, dir: dir}, nil
}

func (p *provisioner) run(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		if err := p.once(ctx); err != nil && ctx.Err() == nil {
			log.Printf("provisioner: %v", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (p *provisioner) once(ctx context.Context) error {
	classes, err := p.c.StorageV1().StorageClasses().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	ours := map[string]int{}
	for i, sc := range classes.Items {
		if sc.Provisioner == Driver {
			ours[sc.Name] = i
		}
	}
	pvcs, err := p.c.CoreV1().PersistentVolumeClaims("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for i := range pvcs.Items {
		pvc := &pvcs.Items[i]
		sc := ""
		if pvc.Spec.StorageClassName != nil {
			sc = *pvc.Spec.StorageClassName
		}
		idx, ok := ours[sc]
		if !ok || pvc.Spec.VolumeName != "" || pvc.Status.Phase != corev1.ClaimPending || pvc.DeletionTimestamp != nil {
			continue
		}
		if err := p.provision(ctx, pvc, &classes.Items[idx]); err != nil {
			log.Printf("provisioner: PVC %s/%s: %v", pvc.Namespace, pvc.Name, err)
		}
	}
	pvs, err := p.c.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for i := range pvs.Items {
		pv := &pvs.Items[i]
		if pv.Annotations["pv.kubernetes.io/provisioned-by"] != Driver || pv.Annotations[annProvisionedHere] != "true" ||
			pv.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete || pv.Status.Phase != corev1.VolumeReleased || pv.Spec.CSI == nil {
			continue
		}
		if err := os.Remove(VolumeFile(p.dir, pv.Spec.CSI.VolumeHandle)); err != nil && !os.IsNotExist(err) {
			log.Printf("provisioner: delete volume of PV %s: %v", pv.Name, err)
			continue
		}
		if err := p.c.CoreV1().PersistentVolumes().Delete(ctx, pv.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &pv.UID}}); err != nil && !apierrors.IsNotFound(err) {
			log.Printf("provisioner: delete PV %s: %v", pv.Name, err)
			continue
		}
		log.Printf("provisioner: deleted PV %s and its file (reclaim policy Delete)", pv.Name)
	}
	return nil
}

// annProvisionedHere marks the PVs this stand-in provisioned (only those
// it deletes).
const annProvisionedHere = "mayastorsim.test/provisioned-by-standin"

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func (p *provisioner) provision(ctx context.Context, pvc *corev1.PersistentVolumeClaim, class *storagev1.StorageClass) error {
	size, ok := pvc.Spec.Resources.Requests[corev1.ResourceStorage]
	if !ok || size.Value() <= 0 {
		return fmt.Errorf("spec.resources.requests.storage: missing or not positive")
	}
	// One PV per claim UID: a retry after a crash finds it.
	existing, err := p.c.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, pv := range existing.Items {
		if r := pv.Spec.ClaimRef; r != nil && r.UID == pvc.UID {
			return nil
		}
	}
	uuid := newUUID()
	file := VolumeFile(p.dir, uuid)
	f, err := os.OpenFile(file, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600)
	if err != nil {
		return err
	}
	err = f.Truncate(size.Value())
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(file)
		return err
	}
	fsType := class.Parameters["csi.storage.k8s.io/fstype"]
	if fsType == "" {
		fsType = "ext4"
	}
	reclaim := corev1.PersistentVolumeReclaimDelete
	if class.ReclaimPolicy != nil {
		reclaim = *class.ReclaimPolicy
	}
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: "pvc-" + uuid, Annotations: map[string]string{
			"pv.kubernetes.io/provisioned-by": Driver, annProvisionedHere: "true"}},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: size},
			AccessModes:                   pvc.Spec.AccessModes,
			VolumeMode:                    pvc.Spec.VolumeMode,
			StorageClassName:              class.Name,
			PersistentVolumeReclaimPolicy: reclaim,
			ClaimRef:                      &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: pvc.Namespace, Name: pvc.Name, UID: pvc.UID},
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{
				Driver: Driver, VolumeHandle: uuid, FSType: fsType,
				VolumeAttributes: map[string]string{"protocol": "nvmf", "repl": class.Parameters["repl"]},
			}},
		},
	}
	if _, err := p.c.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{}); err != nil {
		_ = os.Remove(file)
		return fmt.Errorf("create PV %s: %w", pv.Name, err)
	}
	log.Printf("provisioner: PVC %s/%s (%s, %d bytes) → PV %s, file %s", pvc.Namespace, pvc.Name, class.Name, size.Value(), pv.Name, file)
	return nil
}
