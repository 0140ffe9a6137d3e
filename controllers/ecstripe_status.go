package controllers

import (
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
)

// computeStripeStatus is a stripe's status after a decision: state and
// healthy counts from the decision, the shards' health as judged,
// lastVerificationTime and lastModifiedTime moved only by a verifying read
// (a rebuilt shard modifies the stripe), rebuildProgress only while
// Rebuilding. What the decision did not see is kept from prev.
func computeStripeStatus(prev storagev1.ECStripeStatus, res stripeResult) storagev1.ECStripeStatus {
	st := *prev.DeepCopy()
	d := res.decision
	st.State = d.State
	st.HealthyShards, st.HealthyDataShards, st.HealthyParityShards = d.HealthyShards, d.HealthyDataShards, d.HealthyParityShards
	st.ShardHealth = res.shards
	if res.verifiedAt != nil {
		t := metav1.NewTime(*res.verifiedAt)
		st.LastVerificationTime = &t
	}
	if res.modifiedAt != nil {
		t := metav1.NewTime(*res.modifiedAt)
		st.LastModifiedTime = &t
	}
	if d.State == storagev1.StripeRebuilding {
		st.RebuildProgress = res.progress
	} else {
		st.RebuildProgress = nil
	}
	return st
}

// stripeStatusEqual compares two ECStripe statuses at the API's precision (times
// are stored to the second), so an unchanged decision writes nothing.
func stripeStatusEqual(a, b *storagev1.ECStripeStatus) bool {
	return equality.Semantic.DeepEqual(roundStatus(a), roundStatus(b))
}

func roundStatus(s *storagev1.ECStripeStatus) *storagev1.ECStripeStatus {
	c := s.DeepCopy()
	round := func(t *metav1.Time) *metav1.Time {
		if t == nil {
			return nil
		}
		r := metav1.NewTime(t.Time.Truncate(time.Second).UTC())
		return &r
	}
	c.LastVerificationTime = round(c.LastVerificationTime)
	c.LastModifiedTime = round(c.LastModifiedTime)
	for i := range c.ShardHealth {
		c.ShardHealth[i].LastVerified = round(c.ShardHealth[i].LastVerified)
	}
	if len(c.ShardHealth) == 0 {
		c.ShardHealth = nil
	}
	return c
}
