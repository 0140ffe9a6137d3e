package stripe

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
)

func es(volume string, id int64, rv string) *storagev1.ECStripe {
	return &storagev1.ECStripe{ObjectMeta: metav1.ObjectMeta{Name: StripeName(volume, id), ResourceVersion: rv},
		Spec: storagev1.ECStripeSpec{VolumeRef: volume, StripeID: id}}
}

func TestKnownTellsKnownFromUnknown(t *testing.T) {
	k := &Known{}
	if _, ok := k.get("v", 0); ok {
		t.Fatal("a volume never primed must be unknown")
	}
	k.learn(es("v", 0, "1"))
	if got, ok := k.get("v", 0); !ok || got.ResourceVersion != "1" {
		t.Fatalf("learned stripe: %v %v", got, ok)
	}
	if _, ok := k.get("v", 1); ok {
		t.Fatal("a stripe not learned must be unknown while the volume is not complete")
	}
	// Complete (as after a Prime that fit): absence is knowledge.
	k.volumes["v"].complete = true
	if got, ok := k.get("v", 1); !ok || got != nil {
		t.Fatalf("absent stripe of a complete volume: %v %v", got, ok)
	}
	// A write with an unknown outcome puts the stripe in doubt.
	k.forget("v", 1)
	if _, ok := k.get("v", 1); ok {
		t.Fatal("a forgotten stripe must be unknown even in a complete volume")
	}
	k.learnAbsent("v", 1)
	if got, ok := k.get("v", 1); !ok || got != nil {
		t.Fatalf("a stripe a GET found absent: %v %v", got, ok)
	}
	k.forget("v", 0)
	if _, ok := k.get("v", 0); ok {
		t.Fatal("forget must drop a learned stripe")
	}
	k.learn(es("v", 0, "2"))
	if got, ok := k.get("v", 0); !ok || got.ResourceVersion != "2" {
		t.Fatalf("relearned stripe: %v %v", got, ok)
	}
}

func TestKnownStaysWithinMaxStripesAndStopsClaimingCompleteness(t *testing.T) {
	k := &Known{MaxStripes: 3}
	k.learn(es("v", 0, "1"))
	k.volumes["v"].complete = true
	for id := int64(1); id < 10; id++ {
		k.learn(es("v", id, "1"))
	}
	if k.n != 3 || len(k.volumes["v"].stripes) != 3 {
		t.Fatalf("holds %d (%d) stripes, MaxStripes is 3", k.n, len(k.volumes["v"].stripes))
	}
	var unknown int
	for id := int64(0); id < 10; id++ {
		if _, ok := k.get("v", id); !ok {
			unknown++
		}
	}
	// Dropped stripes must read as unknown (asked again), never as absent.
	if unknown != 7 {
		t.Fatalf("%d of 10 stripes unknown after dropping 7", unknown)
	}
}
