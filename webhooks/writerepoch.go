package webhooks

import (
	"context"
	"fmt"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/utils/ptr"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/fence"
)

// checkWriterEpoch fences ECStripe writes of an export that lost its volume
// (issue 17 item 1). An export stamps every stripe version it writes with its
// writer epoch (annotation fence.AnnotationEpoch); a create that carries one,
// or an update that changes it, is refused when the epoch is below the one
// on the volume's writer Lease (fence.LeaseName, read live, never from a
// cache). Writes that carry no epoch or keep the stored one (rebuild, the
// ECStripe controller, recovery tools) are not fenced: they are not an
// export's destage. An export that lost the Lease and re-stamps its own epoch
// on a stripe no newer export has written yet writes data the newer export
// replayed from the journal and will destage over it; the moment the newer
// export wrote the stripe, the stored epoch is the newer one and the stale
// write changes it, so it is judged and refused.
func (w *ECStripeWebhook) checkWriterEpoch(ctx context.Context, old, s *storagev1.ECStripe) error {
	path := field.NewPath("metadata", "annotations").Key(fence.AnnotationEpoch)
	epoch, err := fence.Epoch(s)
	if err != nil {
		return invalid(gkECStripe, s.Name, field.ErrorList{field.Invalid(path, s.Annotations[fence.AnnotationEpoch], "must be a positive integer (the writer epoch of the export that wrote this version)")})
	}
	if epoch == 0 {
		return nil
	}
	if old != nil {
		if prev, err := fence.Epoch(old); err == nil && prev == epoch {
			return nil
		}
	}
	if w.r.live == nil {
		return apierrors.NewServiceUnavailable(fmt.Sprintf("ECStripe %s: no API reader to check the writer Lease of ECVolume %s", s.Name, s.Spec.VolumeRef))
	}
	key := types.NamespacedName{Namespace: w.leaseNamespace, Name: fence.LeaseName(s.Spec.VolumeRef)}
	lease := &coordinationv1.Lease{}
	switch err := w.r.live.Get(ctx, key, lease); {
	case apierrors.IsNotFound(err):
		return nil // no export ever held the volume
	case err != nil:
		return apierrors.NewServiceUnavailable(fmt.Sprintf("ECStripe %s: cannot read the writer Lease %s of ECVolume %s: %v", s.Name, key, s.Spec.VolumeRef, err))
	}
	current, err := fence.Epoch(lease)
	if err != nil {
		return apierrors.NewInternalError(fmt.Errorf("writer Lease %s of ECVolume %s: %w", key, s.Spec.VolumeRef, err))
	}
	if epoch < current {
		return apierrors.NewForbidden(storagev1.GroupVersion.WithResource("ecstripes").GroupResource(), s.Name,
			fmt.Errorf("%s: writer epoch %d is below epoch %d of ECVolume %s's writer Lease %s (held by %q): a newer export took the volume over and this writer is fenced",
				path, epoch, current, s.Spec.VolumeRef, key, ptr.Deref(lease.Spec.HolderIdentity, "")))
	}
	return nil
}
