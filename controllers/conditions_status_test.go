package controllers

import (
	"fmt"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/pkg/stripeindex"
)

func servers(n int) []registry.Entry {
	var out []registry.Entry
	for i := range n {
		out = append(out, registry.Entry{Pool: fmt.Sprintf("p%d", i), Node: fmt.Sprintf("n%d", i)})
	}
	return out
}

func condOf(cs []metav1.Condition, typ string) string {
	c := meta.FindStatusCondition(cs, typ)
	if c == nil {
		return "none"
	}
	return fmt.Sprintf("%s/%s@%d", c.Status, c.Reason, c.ObservedGeneration)
}

// The policy's Ready follows its phase and Degraded its stripes' states,
// both at the policy's generation.
func TestPolicyConditions(t *testing.T) {
	spec := storagev1.ErasureCodingPolicySpec{DataShards: ptr.To[int32](2), ParityShards: ptr.To[int32](1)}
	bad := storagev1.ErasureCodingPolicySpec{DataShards: ptr.To[int32](0), ParityShards: ptr.To[int32](1)}
	by := func(d, r, f int64) StripeCounts {
		return StripeCounts{Total: 10, Volumes: 1, ByState: map[storagev1.ECStripeState]int64{
			storagev1.StripeHealthy: 10 - d - r - f, storagev1.StripeDegraded: d, storagev1.StripeRebuilding: r, storagev1.StripeFailed: f}}
	}
	for _, tc := range []struct {
		name            string
		spec            storagev1.ErasureCodingPolicySpec
		servers         []registry.Entry
		err             error
		counts          StripeCounts
		ready, degraded string
	}{
		{"invalid spec", bad, servers(3), nil, StripeCounts{}, "False/InvalidSpec@3", "False/AllStripesHealthy@3"},
		{"too few servers", spec, servers(2), nil, StripeCounts{}, "False/TooFewShardServers@3", "False/AllStripesHealthy@3"},
		{"registry unreadable", spec, nil, fmt.Errorf("boom"), StripeCounts{}, "False/RegistryUnreadable@3", "False/AllStripesHealthy@3"},
		{"placeable", spec, servers(3), nil, StripeCounts{}, "True/Placeable@3", "False/AllStripesHealthy@3"},
		{"in use, healthy", spec, servers(3), nil, by(0, 0, 0), "True/InUse@3", "False/AllStripesHealthy@3"},
		{"in use, rebuilding", spec, servers(3), nil, by(0, 1, 0), "True/InUse@3", "True/StripesDegraded@3"},
		{"in use, degraded and failed", spec, servers(3), nil, by(2, 0, 1), "True/InUse@3", "True/StripesFailed@3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := computePolicyStatus(policyEvidence{spec: &tc.spec, counts: tc.counts, servers: tc.servers, serversErr: tc.err, checked: true, now: time.Unix(1000, 0), generation: 3})
			if r, d := condOf(st.Conditions, storagev1.ConditionReady), condOf(st.Conditions, storagev1.ConditionDegraded); r != tc.ready || d != tc.degraded {
				t.Fatalf("phase %s: Ready %s Degraded %s; want %s, %s", st.Phase, r, d, tc.ready, tc.degraded)
			}
		})
	}
}

// A condition that holds keeps its lastTransitionTime, so an unchanged
// policy compares equal and writes nothing; a new generation does not.
func TestPolicyConditionsKeepTransitionTime(t *testing.T) {
	spec := storagev1.ErasureCodingPolicySpec{DataShards: ptr.To[int32](2), ParityShards: ptr.To[int32](1)}
	ev := policyEvidence{spec: &spec, servers: servers(3), checked: true, now: time.Unix(1000, 0), generation: 1}
	first := computePolicyStatus(ev)
	ev.prev, ev.now = first.Conditions, time.Unix(2000, 0)
	second := computePolicyStatus(ev)
	if !policyStatusEqual(first, second) {
		t.Fatalf("unchanged policy differs:\n%+v\n%+v", first, second)
	}
	for _, c := range second.Conditions {
		if p := meta.FindStatusCondition(first.Conditions, c.Type); p == nil || !p.LastTransitionTime.Equal(&c.LastTransitionTime) {
			t.Fatalf("%s: lastTransitionTime moved", c.Type)
		}
	}
	ev.generation = 2
	if policyStatusEqual(second, computePolicyStatus(ev)) {
		t.Fatal("a new generation compared equal: it would never be written")
	}
}

// A volume's Degraded follows its own stripes only.
func TestVolumeConditions(t *testing.T) {
	vol := &storagev1.ECVolume{ObjectMeta: metav1.ObjectMeta{Name: "v", Generation: 4}, Spec: storagev1.ECVolumeSpec{PolicyRef: "ec"}}
	pol := &storagev1.ErasureCodingPolicy{ObjectMeta: metav1.ObjectMeta{Name: "ec"}, Status: storagev1.ErasureCodingPolicyStatus{Phase: storagev1.ECPolicyActive}}
	stripe := func(volume string, state storagev1.ECStripeState) storagev1.ECStripe {
		return storagev1.ECStripe{Spec: storagev1.ECStripeSpec{VolumeRef: volume, LbaRange: storagev1.LbaRange{StartLba: 0, EndLba: 2048}}, Status: storagev1.ECStripeStatus{State: state}}
	}
	for _, tc := range []struct {
		name            string
		policy          *storagev1.ErasureCodingPolicy
		stripes         []storagev1.ECStripe
		ready, degraded string
	}{
		{"no policy", nil, nil, "False/PolicyNotFound@4", "False/AllStripesHealthy@4"},
		{"healthy", pol, []storagev1.ECStripe{stripe("v", storagev1.StripeHealthy), stripe("other", storagev1.StripeFailed)}, "True/PolicyFound@4", "False/AllStripesHealthy@4"},
		{"degraded", pol, []storagev1.ECStripe{stripe("v", storagev1.StripeHealthy), stripe("v", storagev1.StripeDegraded)}, "True/PolicyFound@4", "True/StripesDegraded@4"},
		{"failed", pol, []storagev1.ECStripe{stripe("v", storagev1.StripeRebuilding), stripe("v", storagev1.StripeFailed)}, "True/PolicyFound@4", "True/StripesFailed@4"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := stripeindex.NewStripeIndex()
			for i := range tc.stripes {
				es := tc.stripes[i].DeepCopy()
				es.Name = fmt.Sprintf("s%d", i)
				x.Add(es)
			}
			st := computeVolumeStatus(volumeEvidence{vol: vol, policy: tc.policy, stripes: x.VolumeCounts("v")})
			if r, d := condOf(st.Conditions, storagev1.ConditionReady), condOf(st.Conditions, storagev1.ConditionDegraded); r != tc.ready || d != tc.degraded {
				t.Fatalf("Ready %s Degraded %s; want %s, %s", r, d, tc.ready, tc.degraded)
			}
			if st.ObservedGeneration != 4 {
				t.Fatalf("observedGeneration %d", st.ObservedGeneration)
			}
		})
	}
}
