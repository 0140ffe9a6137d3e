package tiering

import (
	"context"
	"fmt"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/tests/mayastorsim/sim"
)

// A policy that is disabled evaluates nothing, so the conditions about what
// it observed (MayastorAvailable, MetricsAvailable, Conflict,
// SamplingWindowAdequate) describe an earlier generation: they are removed,
// and Ready=False/Disabled carries the new generation. Enabled again, they
// come back with it.
func TestDisabledPolicyClearsStaleConditions(t *testing.T) {
	w := newWorld(t, &sim.Scenario{Pools: pools(), Volumes: []sim.VolumeSpec{volume("pv-a", 1000, "warm-n1")}})
	c := w.env.Client
	startOperator(t, w.env, w.prom.URL(), &recordingEngine{}, false)
	if err := c.Create(context.Background(), newPolicy("off", "1h", false)); err != nil {
		t.Fatal(err)
	}
	observed := []string{"MayastorAvailable", "MetricsAvailable", "Conflict", "SamplingWindowAdequate"}
	eventually(t, waitLong, "the policy Active with its observation conditions", func() (bool, string) {
		p := getPolicy(t, c, "off")
		for _, typ := range observed {
			if condition(p, typ) == nil {
				return false, fmt.Sprintf("phase %s, no %s in %+v", p.Status.Phase, typ, p.Status.Conditions)
			}
		}
		return p.Status.Phase == storagev1.StoragePolicyActive, fmt.Sprintf("phase %s", p.Status.Phase)
	})

	p := getPolicy(t, c, "off")
	p.Spec.Enabled = ptr.To(false)
	if err := c.Update(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	eventually(t, waitLong, "Disabled with Ready as its only condition, at the new generation", func() (bool, string) {
		p := getPolicy(t, c, "off")
		r := condition(p, "Ready")
		ok := p.Status.Phase == storagev1.StoragePolicyDisabled && len(p.Status.Conditions) == 1 && r != nil &&
			r.Status == metav1.ConditionFalse && r.Reason == "Disabled" && r.ObservedGeneration == p.Generation
		return ok, fmt.Sprintf("generation %d phase %s conditions %+v", p.Generation, p.Status.Phase, p.Status.Conditions)
	})

	p = getPolicy(t, c, "off")
	p.Spec.Enabled = ptr.To(true)
	if err := c.Update(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	eventually(t, waitLong, "enabled again: the observation conditions back, at the new generation", func() (bool, string) {
		p := getPolicy(t, c, "off")
		for _, typ := range append(observed, "Ready") {
			if cd := condition(p, typ); cd == nil || cd.ObservedGeneration != p.Generation {
				return false, fmt.Sprintf("generation %d: %s = %+v", p.Generation, typ, cd)
			}
		}
		return p.Status.Phase == storagev1.StoragePolicyActive, fmt.Sprintf("phase %s", p.Status.Phase)
	})
}
