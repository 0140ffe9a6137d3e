package ecrebuild

import (
	"fmt"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/controllers"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/tests/testenv"
)

// want is one condition as a test expects it: status and reason, at the
// object's current generation.
type want struct {
	status metav1.ConditionStatus
	reason string
}

func checkConditions(gen int64, got []metav1.Condition, ready, degraded want) error {
	for typ, w := range map[string]want{storagev1.ConditionReady: ready, storagev1.ConditionDegraded: degraded} {
		c := meta.FindStatusCondition(got, typ)
		if c == nil || c.Status != w.status || c.Reason != w.reason || c.ObservedGeneration != gen {
			return fmt.Errorf("generation %d: %s = %+v, want %s/%s at generation %d (all: %+v)", gen, typ, c, w.status, w.reason, gen, got)
		}
	}
	return nil
}

// ErasureCodingPolicy and ECVolume carry Ready and Degraded conditions with
// the generation they describe: Ready follows the policy's phase (and the
// volume's policy), Degraded the states of the stripes (the policy's, the
// volume's), and a spec change is observed at its new generation.
func TestPolicyAndVolumeConditionsFollowStripesAndGeneration(t *testing.T) {
	env := testenv.Start(t)
	c := env.Client
	ctx := testCtx(t)
	ensureNamespace(t, c, registryNS)
	startManager(t, env, func(mgr ctrl.Manager) error {
		if err := (&controllers.ErasureCodingPolicyReconciler{
			Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("couchestor-ecpolicy"),
			Servers:            &registry.Lookup{Client: mgr.GetClient(), Namespace: registryNS},
			ValidationInterval: 500 * time.Millisecond, MinStatusInterval: 10 * time.Millisecond,
		}).SetupWithManager(mgr); err != nil {
			return err
		}
		// No shard-client Secret: orphan collection is skipped, status is not.
		return (&controllers.ECVolumeReconciler{Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("test"), MayastorNamespace: "mayastor"}).SetupWithManager(mgr)
	})
	pools, nodes := []string{"p0", "p1", "p2"}, []string{"n0", "n1", "n2"}
	for i := range 2 {
		registerLease(t, c, pools[i], nodes[i])
	}
	if err := c.Create(ctx, policy("c21", 2, 1)); err != nil {
		t.Fatal(err)
	}
	pol := func() *storagev1.ErasureCodingPolicy {
		var p storagev1.ErasureCodingPolicy
		if err := c.Get(ctx, client.ObjectKey{Name: "c21"}, &p); err != nil {
			t.Fatal(err)
		}
		return &p
	}
	vol := func() *storagev1.ECVolume {
		var v storagev1.ECVolume
		if err := c.Get(ctx, client.ObjectKey{Name: "cv"}, &v); err != nil {
			t.Fatal(err)
		}
		return &v
	}
	both := func(what string, pReady, vReady, degraded want) {
		t.Helper()
		eventually(t, 60*time.Second, what, func() error {
			p := pol()
			if err := checkConditions(p.Generation, p.Status.Conditions, pReady, degraded); err != nil {
				return fmt.Errorf("policy: %w", err)
			}
			v := vol()
			if err := checkConditions(v.Generation, v.Status.Conditions, vReady, degraded); err != nil {
				return fmt.Errorf("volume: %w", err)
			}
			return nil
		})
	}
	healthy := want{metav1.ConditionFalse, "AllStripesHealthy"}
	eventually(t, 60*time.Second, "two shard servers for 2+1: policy Ready=False", func() error {
		p := pol()
		return checkConditions(p.Generation, p.Status.Conditions, want{metav1.ConditionFalse, "TooFewShardServers"}, healthy)
	})
	registerLease(t, c, pools[2], nodes[2])
	if err := c.Create(ctx, &storagev1.ECVolume{ObjectMeta: metav1.ObjectMeta{Name: "cv"}, Spec: storagev1.ECVolumeSpec{SizeBytes: 4 << 20, PolicyRef: "c21"}}); err != nil {
		t.Fatal(err)
	}
	both("three shard servers: policy and volume Ready, nothing degraded",
		want{metav1.ConditionTrue, "Placeable"}, want{metav1.ConditionTrue, "PolicyFound"}, healthy)

	createStripe(t, c, newStripe("cv-0", "cv", "c21", 0, 0, 2048, 2, pools, nodes), storagev1.StripeHealthy)
	createStripe(t, c, newStripe("cv-1", "cv", "c21", 1, 2048, 4096, 2, pools, nodes), storagev1.StripeDegraded)
	inUse, found := want{metav1.ConditionTrue, "InUse"}, want{metav1.ConditionTrue, "PolicyFound"}
	both("a Degraded stripe: Degraded=True on both", inUse, found, want{metav1.ConditionTrue, "StripesDegraded"})
	setStripeState(t, c, "cv-1", storagev1.StripeFailed)
	both("a Failed stripe: Degraded=True/StripesFailed on both", inUse, found, want{metav1.ConditionTrue, "StripesFailed"})

	// Spec changes: the conditions follow to the new generation.
	p := pol()
	p.Spec.ScrubbingEnabled = ptr.To(true)
	if err := c.Update(ctx, p); err != nil {
		t.Fatal(err)
	}
	v := vol()
	v.Spec.SizeBytes = 8 << 20
	if err := c.Update(ctx, v); err != nil {
		t.Fatal(err)
	}
	if pol().Generation < 2 || vol().Generation < 2 {
		t.Fatalf("spec updates did not bump the generations: policy %d volume %d", pol().Generation, vol().Generation)
	}
	both("spec changes observed at the new generations", inUse, found, want{metav1.ConditionTrue, "StripesFailed"})

	setStripeState(t, c, "cv-1", storagev1.StripeHealthy)
	both("every stripe Healthy again: Degraded=False on both", inUse, found, healthy)
}
