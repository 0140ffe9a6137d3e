package conversion

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
)

// +kubebuilder:rbac:groups="",resources=persistentvolumes,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=persistentvolumeclaims,verbs=get;list;watch;create;delete
// +kubebuilder:rbac:groups="",resources=pods,verbs=list
// +kubebuilder:rbac:groups=storage.billyronks.io,resources=ecvolumes,verbs=get;list;watch;create;delete
// +kubebuilder:rbac:groups=batch,namespace=couchestor-system,resources=jobs,verbs=get;create;delete

// SetupWithManager registers the Converter: PVs carrying a record (the
// elected leader only, as every controller). Jobs and pods are read
// uncached (Reader) and polled, so the operator watches no Job or pod.
func (c *Converter) SetupWithManager(mgr ctrl.Manager, skipNameValidation bool) error {
	if c.Client == nil || c.Engine == nil || c.Copier == nil || c.Namespace == "" {
		return fmt.Errorf("conversion: Client, Engine, Copier and Namespace are required")
	}
	if c.Reader == nil {
		c.Reader = mgr.GetAPIReader()
	}
	hasRecord := func(o client.Object) bool { return o != nil && o.GetAnnotations()[AnnotationConversion] != "" }
	asksUndo := func(o client.Object) bool {
		if o == nil {
			return false
		}
		_, ok := o.GetAnnotations()[AnnotationUndoConversion]
		return ok
	}
	// Undos: PVCs that ask for one (the Converter then runs it as a PV
	// with a record).
	if err := ctrl.NewControllerManagedBy(mgr).
		Named("conversion-undo").
		For(&corev1.PersistentVolumeClaim{}, builder.WithPredicates(predicate.Funcs{
			CreateFunc:  func(e event.CreateEvent) bool { return asksUndo(e.Object) },
			UpdateFunc:  func(e event.UpdateEvent) bool { return asksUndo(e.ObjectNew) },
			DeleteFunc:  func(event.DeleteEvent) bool { return false },
			GenericFunc: func(e event.GenericEvent) bool { return asksUndo(e.Object) },
		})).
		WithOptions(controller.Options{SkipNameValidation: ptr.To(skipNameValidation), MaxConcurrentReconciles: 1}).
		Complete(UndoReconciler{Converter: c}); err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("conversion").
		For(&corev1.PersistentVolume{}, builder.WithPredicates(predicate.Funcs{
			CreateFunc:  func(e event.CreateEvent) bool { return hasRecord(e.Object) },
			UpdateFunc:  func(e event.UpdateEvent) bool { return hasRecord(e.ObjectNew) || hasRecord(e.ObjectOld) },
			DeleteFunc:  func(e event.DeleteEvent) bool { return hasRecord(e.Object) },
			GenericFunc: func(e event.GenericEvent) bool { return hasRecord(e.Object) },
		})).
		WithOptions(controller.Options{SkipNameValidation: ptr.To(skipNameValidation), MaxConcurrentReconciles: 2}).
		Complete(c)
}
