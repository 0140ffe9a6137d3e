package conversion

import (
	"maps"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/csi"
)

// The objects a conversion creates, built here (pure) so that the rules of
// their shape live in one place and have table tests.

// bindingAnnotations are written by Kubernetes' binder and provisioners on
// a PVC; a recreated PVC must not carry its predecessor's.
var bindingAnnotations = []string{
	"pv.kubernetes.io/bind-completed",
	"pv.kubernetes.io/bound-by-controller",
	"volume.beta.kubernetes.io/storage-provisioner",
	"volume.kubernetes.io/storage-provisioner",
	"volume.kubernetes.io/selected-node",
	"kubectl.kubernetes.io/last-applied-configuration",
}

// ClaimOf records what the recreated PVC keeps.
func ClaimOf(pvc *corev1.PersistentVolumeClaim) Claim {
	c := Claim{
		Namespace: pvc.Namespace, Name: pvc.Name, UID: pvc.UID,
		Labels: maps.Clone(pvc.Labels), Annotations: maps.Clone(pvc.Annotations),
		AccessModes: append([]corev1.PersistentVolumeAccessMode(nil), pvc.Spec.AccessModes...),
		VolumeMode:  ptr.Deref(pvc.Spec.VolumeMode, corev1.PersistentVolumeFilesystem),
		Request:     pvc.Spec.Resources.Requests[corev1.ResourceStorage],
	}
	c.StorageClassName = ptr.Deref(pvc.Spec.StorageClassName, "")
	for _, k := range bindingAnnotations {
		delete(c.Annotations, k)
	}
	if len(c.Annotations) == 0 {
		c.Annotations = nil
	}
	return c
}

// RecreatedClaim is the user's PVC again, bound to pv: same name, namespace,
// labels, annotations (without the binder's), access modes, volume mode,
// StorageClass and requested size.
func RecreatedClaim(c Claim, pv string) *corev1.PersistentVolumeClaim {
	return &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: c.Namespace, Name: c.Name, Labels: maps.Clone(c.Labels), Annotations: maps.Clone(c.Annotations)},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      append([]corev1.PersistentVolumeAccessMode(nil), c.AccessModes...),
			VolumeMode:       ptr.To(c.VolumeMode),
			StorageClassName: ptr.To(c.StorageClassName),
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: c.Request}},
			VolumeName:       pv,
		},
	}
}

// ECVolume is the conversion's target volume.
func (r *Record) ECVolume() *storagev1.ECVolume {
	return &storagev1.ECVolume{
		ObjectMeta: metav1.ObjectMeta{Name: r.Target,
			Labels:      map[string]string{csi.LabelManaged: "true", LabelConversion: r.ID},
			Annotations: map[string]string{AnnotationConvertedFrom: r.Source}},
		Spec: storagev1.ECVolumeSpec{SizeBytes: r.SizeBytes, PolicyRef: r.ECPolicy},
	}
}

// ECSource is the CSI source of the conversion's ECVolume.
func (r *Record) ECSource(fsType string) *corev1.CSIPersistentVolumeSource {
	return &corev1.CSIPersistentVolumeSource{Driver: csi.DriverName, VolumeHandle: r.Target, FSType: fsType,
		VolumeAttributes: map[string]string{csi.ParamPolicy: r.ECPolicy}}
}

// FinalPV is the PV the recreated PVC binds to: the target volume (its CSI
// source) in the claim's volume mode and access modes, pre-bound to the
// claim by name. It starts with reclaim policy Retain (the conversion sets
// the source's original policy once the PVC is bound).
func (r *Record) FinalPV(src *corev1.CSIPersistentVolumeSource, nodeAffinity *corev1.VolumeNodeAffinity, originalStorageClass string) *corev1.PersistentVolume {
	ann := map[string]string{AnnotationConvertedFrom: r.Source, "pv.kubernetes.io/provisioned-by": src.Driver}
	if originalStorageClass != "" {
		ann[AnnotationOriginalStorageClass] = originalStorageClass
	}
	return &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: r.Target, Annotations: ann, Labels: map[string]string{LabelConversion: r.ID}},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: *resource.NewQuantity(r.SizeBytes, resource.BinarySI)},
			AccessModes:                   append([]corev1.PersistentVolumeAccessMode(nil), r.Claim.AccessModes...),
			VolumeMode:                    ptr.To(r.Claim.VolumeMode),
			StorageClassName:              r.Claim.StorageClassName,
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
			PersistentVolumeSource:        corev1.PersistentVolumeSource{CSI: src.DeepCopy()},
			NodeAffinity:                  nodeAffinity.DeepCopy(),
			ClaimRef:                      &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: r.Claim.Namespace, Name: r.Claim.Name},
		},
	}
}

// AliasPV is a raw-block view of a volume for the copy Job: a second PV of
// the same CSI volume in volume mode Block (a PV's volume mode is
// immutable, and a filesystem PV cannot be attached raw), reclaim policy
// Retain (deleting it never touches the volume), no StorageClass,
// pre-bound to the temporary claim.
func (r *Record) AliasPV(name string, src *corev1.CSIPersistentVolumeSource, nodeAffinity *corev1.VolumeNodeAffinity, size int64, ns, claim string) *corev1.PersistentVolume {
	return &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{LabelConversion: r.ID}},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: *resource.NewQuantity(size, resource.BinarySI)},
			AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			VolumeMode:                    ptr.To(corev1.PersistentVolumeBlock),
			StorageClassName:              "",
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
			PersistentVolumeSource:        corev1.PersistentVolumeSource{CSI: src.DeepCopy()},
			NodeAffinity:                  nodeAffinity.DeepCopy(),
			ClaimRef:                      &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: ns, Name: claim},
		},
	}
}

// TempClaim is a temporary raw-block PVC in the operator's namespace:
// bound to pv when pv is set (an alias), else provisioned from
// storageClass (heat-up's new replicated volume).
func (r *Record) TempClaim(ns, name, pv, storageClass string, size int64) *corev1.PersistentVolumeClaim {
	return &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{LabelConversion: r.ID},
			Annotations: map[string]string{AnnotationConvertedFrom: r.Source, "storage.billyronks.io/conversion-size": strconv.FormatInt(size, 10)}},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			VolumeMode:       ptr.To(corev1.PersistentVolumeBlock),
			StorageClassName: ptr.To(storageClass),
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: *resource.NewQuantity(size, resource.BinarySI)}},
			VolumeName:       pv,
		},
	}
}
