package tiering

import (
	"context"
	"fmt"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/billyronks/couchestor/pkg/tiering"
	"github.com/billyronks/couchestor/tests/mayastorsim/sim"
)

func expr(key string, op metav1.LabelSelectorOperator, values ...string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: key, Operator: op, Values: values}}}
}

// Pool and volume selectors with matchExpressions decide through the API as
// matchLabels do; a second StoragePolicy selecting the same volumes owns
// none of them and says so in its Conflict condition (the older one owns
// them, ties broken by name), while the older one reports no conflict.
func TestMatchExpressionSelectorsAndTwoPoliciesOnOneVolume(t *testing.T) {
	w := newWorld(t, &sim.Scenario{Pools: pools(), Volumes: []sim.VolumeSpec{
		volume("pv-busy", 9000, "cold-n1"), // on a cold pool (media hdd), hot IOPS
		volume("pv-calm", 1000, "warm-n1"), // dead band: stays warm
	}})
	c := w.env.Client
	engine := &recordingEngine{}
	startOperator(t, w.env, w.prom.URL(), engine, false)

	older := newPolicy("a-older", "1h", false)
	older.Spec.HotPoolSelector = expr("media", metav1.LabelSelectorOpIn, "nvme")
	older.Spec.WarmPoolSelector = expr("media", metav1.LabelSelectorOpIn, "ssd")
	older.Spec.ColdPoolSelector = expr("media", metav1.LabelSelectorOpNotIn, "nvme", "ssd")
	older.Spec.VolumeSelector = expr("tiering", metav1.LabelSelectorOpExists)
	if err := c.Create(context.Background(), older); err != nil {
		t.Fatal(err)
	}
	eventually(t, waitLong, "a-older measures both volumes through its matchExpressions selectors", func() (bool, string) {
		p := getPolicy(t, c, "a-older")
		return p.Status.WatchedVolumes == 2 && p.Status.ColdVolumes == 1 && p.Status.WarmVolumes == 1,
			fmt.Sprintf("phase %s watched/hot/warm/cold %d/%d/%d/%d", p.Status.Phase, p.Status.WatchedVolumes, p.Status.HotVolumes, p.Status.WarmVolumes, p.Status.ColdVolumes)
	})
	eventually(t, waitLong, "pv-busy (cold pool by NotIn, 9000 IOPS) decided cold → hot (pool by In)", func() (bool, string) {
		return engine.find("pv-busy", tiering.Hot), "not yet"
	})
	if engine.find("pv-calm", tiering.Hot) || engine.find("pv-calm", tiering.Cold) {
		t.Fatal("pv-calm moved at 1000 IOPS (dead band)")
	}

	newer := newPolicy("b-newer", "1h", false) // matchLabels tiering=on: the same volumes
	if err := c.Create(context.Background(), newer); err != nil {
		t.Fatal(err)
	}
	eventually(t, waitLong, "b-newer reports the volumes a-older owns", func() (bool, string) {
		p := getPolicy(t, c, "b-newer")
		cond := condition(p, "Conflict")
		ok := cond != nil && cond.Status == metav1.ConditionTrue && cond.Reason == "OwnedByOlderPolicy" &&
			strings.Contains(cond.Message, "a-older (2)") && cond.ObservedGeneration == p.Generation && p.Status.WatchedVolumes == 0
		return ok, fmt.Sprintf("watched %d, Conflict %+v", p.Status.WatchedVolumes, cond)
	})
	eventually(t, waitLong, "a-older keeps both volumes and reports no conflict", func() (bool, string) {
		p := getPolicy(t, c, "a-older")
		cond := condition(p, "Conflict")
		return cond != nil && cond.Status == metav1.ConditionFalse && p.Status.WatchedVolumes == 2,
			fmt.Sprintf("watched %d, Conflict %+v", p.Status.WatchedVolumes, cond)
	})
}
