package controllers

import (
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
)

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

func metav1Time(t time.Time) metav1.Time { return metav1.NewTime(t) }
