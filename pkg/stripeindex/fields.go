package stripeindex

import (
	"context"
	"fmt"
	"strings"

	"sigs.k8s.io/controller-runtime/pkg/client"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
)

// Field indexes on the manager's cache, for lookups by reference instead of a
// List of everything. Controllers use the same names (client.MatchingFields).
const (
	IndexECStripeByVolumeRef        = "spec.volumeRef"
	IndexECStripeByPolicyRef        = "spec.policyRef"
	IndexStoragePolicyByECPolicyRef = "spec.ecPolicyRef"
)

// RegisterFieldIndexes adds the three field indexes to the cache. A second
// registration of the same name (a controller that registered it first, with
// these same functions) is not an error.
func RegisterFieldIndexes(ctx context.Context, fi client.FieldIndexer) error {
	for _, ix := range []struct {
		obj   client.Object
		field string
		fn    client.IndexerFunc
	}{
		{&storagev1.ECStripe{}, IndexECStripeByVolumeRef, func(o client.Object) []string {
			return nonEmpty(o.(*storagev1.ECStripe).Spec.VolumeRef)
		}},
		{&storagev1.ECStripe{}, IndexECStripeByPolicyRef, func(o client.Object) []string {
			return nonEmpty(o.(*storagev1.ECStripe).Spec.PolicyRef)
		}},
		{&storagev1.StoragePolicy{}, IndexStoragePolicyByECPolicyRef, func(o client.Object) []string {
			return nonEmpty(o.(*storagev1.StoragePolicy).Spec.ECPolicyRef)
		}},
	} {
		if err := fi.IndexField(ctx, ix.obj, ix.field, ix.fn); err != nil && !strings.Contains(err.Error(), "indexer conflict") {
			return fmt.Errorf("index %T by %s: %w", ix.obj, ix.field, err)
		}
	}
	return nil
}

func nonEmpty(s string) []string {
	if s == "" {
		return nil
	}
	return []string{s}
}
