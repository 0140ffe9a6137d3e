package webhooks

import (
	"context"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	dataplanev1alpha1 "github.com/billyronks/couchestor/apis/dataplane/v1alpha1"
)

// +kubebuilder:webhook:path=/validate-storage-billyronks-io-v1alpha1-dataplane,mutating=false,failurePolicy=fail,sideEffects=None,groups=storage.billyronks.io,resources=dataplanes,verbs=create;update,versions=v1alpha1,name=vdataplane.storage.billyronks.io,admissionReviewVersions=v1,timeoutSeconds=5

var gkDataPlane = schema.GroupKind{Group: dataplanev1alpha1.GroupVersion.Group, Kind: "DataPlane"}

// DataPlaneWebhook refuses a DataPlane that asks for more than the
// operator's Policy allows (namespace, image, host directory, tolerations):
// the chart renders it with the operator's identity. The Helm value
// translator applies the same Policy, for DataPlanes admitted before a
// policy change or without the webhook.
type DataPlaneWebhook struct {
	Policy dataplanev1alpha1.Policy
}

var _ admission.Validator[*dataplanev1alpha1.DataPlane] = &DataPlaneWebhook{}

// ValidateCreate judges a new DataPlane.
func (w *DataPlaneWebhook) ValidateCreate(_ context.Context, dp *dataplanev1alpha1.DataPlane) (admission.Warnings, error) {
	return nil, invalid(gkDataPlane, dp.Name, w.Policy.Validate(dp))
}

// ValidateUpdate judges a changed spec. Metadata-only updates (the Helm
// reconciler's finalizer, labels) of a DataPlane admitted under an older
// policy pass, so the reconciler can report the refusal as a condition and
// deletion is never blocked.
func (w *DataPlaneWebhook) ValidateUpdate(_ context.Context, old, dp *dataplanev1alpha1.DataPlane) (admission.Warnings, error) {
	if equality.Semantic.DeepEqual(old.Spec, dp.Spec) {
		return nil, nil
	}
	return nil, invalid(gkDataPlane, dp.Name, w.Policy.Validate(dp))
}

// ValidateDelete allows every deletion.
func (w *DataPlaneWebhook) ValidateDelete(context.Context, *dataplanev1alpha1.DataPlane) (admission.Warnings, error) {
	return nil, nil
}
