package controllers

import (
	"fmt"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/stripeindex"
)

// volumeEvidence is what an ECVolume's status is computed from.
type volumeEvidence struct {
	vol *storagev1.ECVolume
	// policy is the volume's ErasureCodingPolicy, nil when it does not exist.
	policy *storagev1.ErasureCodingPolicy
	// stripes are the counts of the volume's ECStripes.
	stripes stripeindex.VolumeCounts
}

// computeVolumeStatus is the whole status of a live ECVolume: phase and
// Ready from its policy (Pending while the policy is missing, Error while it
// is Invalid: spec.policyRef is immutable, so the policy must be fixed), the
// stripe count and bytes they hold, and Degraded from the stripes' states.
// Conditions carry the volume's generation and keep their
// lastTransitionTime while they hold.
func computeVolumeStatus(ev volumeEvidence) storagev1.ECVolumeStatus {
	vol := ev.vol
	st := storagev1.ECVolumeStatus{ObservedGeneration: vol.Generation}
	for _, c := range vol.Status.Conditions {
		if c.Type == storagev1.ConditionReady || c.Type == storagev1.ConditionDegraded {
			st.Conditions = append(st.Conditions, c)
		}
	}
	set := func(t string, s metav1.ConditionStatus, reason, msg string) {
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: t, Status: s, Reason: reason, Message: msg, ObservedGeneration: vol.Generation})
	}
	switch pol := ev.policy; {
	case pol == nil:
		st.Phase = storagev1.ECVolumePending
		set(storagev1.ConditionReady, metav1.ConditionFalse, "PolicyNotFound", fmt.Sprintf("spec.policyRef: ErasureCodingPolicy %q does not exist", vol.Spec.PolicyRef))
	case pol.Status.Phase == storagev1.ECPolicyInvalid:
		st.Phase = storagev1.ECVolumeError
		set(storagev1.ConditionReady, metav1.ConditionFalse, "PolicyInvalid", fmt.Sprintf("spec.policyRef: ErasureCodingPolicy %q is Invalid: %s", pol.Name, pol.Status.Message))
	default:
		st.Phase = storagev1.ECVolumeReady
		set(storagev1.ConditionReady, metav1.ConditionTrue, "PolicyFound", "stripes can be written under ErasureCodingPolicy "+pol.Name)
	}
	st.Stripes, st.BytesWritten = ev.stripes.Stripes, ev.stripes.Bytes
	by := ev.stripes.ByState
	counts := fmt.Sprintf("%d Degraded, %d Rebuilding, %d Failed of %d stripes",
		by[storagev1.StripeDegraded], by[storagev1.StripeRebuilding], by[storagev1.StripeFailed], st.Stripes)
	switch {
	case by[storagev1.StripeFailed] > 0:
		set(storagev1.ConditionDegraded, metav1.ConditionTrue, "StripesFailed", counts+": reads of a Failed stripe fail until its shards return")
	case by[storagev1.StripeDegraded]+by[storagev1.StripeRebuilding] > 0:
		set(storagev1.ConditionDegraded, metav1.ConditionTrue, "StripesDegraded", counts+": reads reconstruct around the lost shards")
	default:
		set(storagev1.ConditionDegraded, metav1.ConditionFalse, "AllStripesHealthy", counts)
	}
	return st
}

// volumeStatusEqual compares two statuses by everything but the conditions'
// lastTransitionTime, so an unchanged volume writes nothing.
func volumeStatusEqual(a, b *storagev1.ECVolumeStatus) bool {
	return a.Phase == b.Phase && a.Stripes == b.Stripes && a.BytesWritten == b.BytesWritten &&
		a.ObservedGeneration == b.ObservedGeneration && conditionsEqual(a.Conditions, b.Conditions)
}
