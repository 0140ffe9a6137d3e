package ecrebuild

import (
	"fmt"
	"strings"
	"testing"
	"time"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/controllers"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/tests/testenv"
)

// The policy's phase follows the registry and its stripes, and its counts
// follow every stripe created, moved between states and deleted.
func TestPolicyPhaseAndCountsFollowRegistryAndStripes(t *testing.T) {
	env := testenv.Start(t)
	c := env.Client
	ctx := testCtx(t)
	ensureNamespace(t, c, registryNS)

	startManager(t, env, func(mgr ctrl.Manager) error {
		return (&controllers.ErasureCodingPolicyReconciler{
			Client:             mgr.GetClient(),
			Recorder:           mgr.GetEventRecorder("couchestor-ecpolicy"),
			Servers:            &registry.Lookup{Client: mgr.GetClient(), Namespace: registryNS},
			ValidationInterval: 500 * time.Millisecond,
			MinStatusInterval:  10 * time.Millisecond,
		}).SetupWithManager(mgr)
	})

	get := func(name string) storagev1.ErasureCodingPolicyStatus {
		var p storagev1.ErasureCodingPolicy
		if err := c.Get(ctx, client.ObjectKey{Name: name}, &p); err != nil {
			t.Fatal(err)
		}
		return p.Status
	}
	waitStatus := func(name, what string, cond func(storagev1.ErasureCodingPolicyStatus) error) {
		t.Helper()
		eventually(t, 30*time.Second, what, func() error { return cond(get(name)) })
	}

	// Five shard servers for a 4+2 policy: Invalid, and the message says why.
	pools, nodes := []string{}, []string{}
	for i := range 6 {
		pools = append(pools, fmt.Sprintf("pool-%d", i))
		nodes = append(nodes, fmt.Sprintf("node-%d", i))
	}
	for i := range 5 {
		registerLease(t, c, pools[i], nodes[i])
	}
	if err := c.Create(ctx, policy("rs42", 4, 2)); err != nil {
		t.Fatal(err)
	}
	waitStatus("rs42", "Invalid with 5 shard servers", func(s storagev1.ErasureCodingPolicyStatus) error {
		if s.Phase != storagev1.ECPolicyInvalid || !strings.Contains(s.Message, "5 shard servers registered") || !strings.Contains(s.Message, "4+2 = 6") {
			return fmt.Errorf("phase %q message %q", s.Phase, s.Message)
		}
		if s.StorageEfficiency != 0.667 || s.LastValidationTime == nil {
			return fmt.Errorf("efficiency %v lastValidationTime %v", s.StorageEfficiency, s.LastValidationTime)
		}
		return nil
	})

	// The sixth registers: Ready (re-validated without any change to the policy).
	registerLease(t, c, pools[5], nodes[5])
	waitStatus("rs42", "Ready with 6 shard servers", func(s storagev1.ErasureCodingPolicyStatus) error {
		if s.Phase != storagev1.ECPolicyReady || s.TotalStripes != 0 {
			return fmt.Errorf("phase %q total %d message %q", s.Phase, s.TotalStripes, s.Message)
		}
		return nil
	})

	// Stripes in various states in two volumes: Active, counts by state.
	states := []storagev1.ECStripeState{
		storagev1.StripeHealthy, storagev1.StripeHealthy, storagev1.StripeHealthy,
		storagev1.StripeDegraded, storagev1.StripeRebuilding, storagev1.StripeFailed, storagev1.StripeWriting, "",
	}
	for i, st := range states {
		vol := "vol-a"
		if i%2 == 1 {
			vol = "vol-b"
		}
		createStripe(t, c, newStripe(fmt.Sprintf("s-%d", i), vol, "rs42", int64(i), int64(i)*2048, int64(i+1)*2048, 4, pools, nodes), st)
	}
	type counts struct {
		total, healthy, degraded, rebuilding int64
		volumes                              int32
	}
	want := func(w counts) func(storagev1.ErasureCodingPolicyStatus) error {
		return func(s storagev1.ErasureCodingPolicyStatus) error {
			got := counts{s.TotalStripes, s.HealthyStripes, s.DegradedStripes, s.RebuildingStripes, s.ActiveVolumes}
			if got != w || s.Phase != storagev1.ECPolicyActive {
				return fmt.Errorf("phase %q counts %+v, want %+v", s.Phase, got, w)
			}
			return nil
		}
	}
	waitStatus("rs42", "Active with 8 stripes", want(counts{8, 3, 1, 1, 2}))
	if s := get("rs42"); !strings.Contains(s.Message, "1 stripes Failed") {
		t.Fatalf("message must report the failed stripe: %q", s.Message)
	}

	// State changes move the counts.
	setStripeState(t, c, "s-3", storagev1.StripeRebuilding) // Degraded → Rebuilding
	setStripeState(t, c, "s-4", storagev1.StripeHealthy)    // Rebuilding → Healthy
	setStripeState(t, c, "s-7", storagev1.StripeDegraded)   // "" → Degraded
	waitStatus("rs42", "counts after state changes", want(counts{8, 4, 1, 1, 2}))

	// Deletion moves them too; a volume without stripes is no longer active.
	for _, n := range []string{"s-1", "s-3", "s-5", "s-7"} { // every vol-b stripe
		s := &storagev1.ECStripe{}
		s.Name = n
		if err := c.Delete(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	waitStatus("rs42", "counts after deletes", want(counts{4, 3, 0, 0, 1}))

	// A policy with no stripes is untouched by the other's stripes.
	if err := c.Create(ctx, policy("rs21", 2, 1)); err != nil {
		t.Fatal(err)
	}
	waitStatus("rs21", "other policy Ready with no stripes", func(s storagev1.ErasureCodingPolicyStatus) error {
		if s.Phase != storagev1.ECPolicyReady || s.TotalStripes != 0 || s.StorageEfficiency != 0.667 {
			return fmt.Errorf("%+v", s)
		}
		return nil
	})

	// Shard servers going away: an Active policy stays Active but warns.
	for i := range 3 {
		deleteLease(t, c, pools[i])
	}
	waitStatus("rs42", "Active with a placement warning", func(s storagev1.ErasureCodingPolicyStatus) error {
		if s.Phase != storagev1.ECPolicyActive || !strings.Contains(s.Message, "warning: 3 shard servers registered") {
			return fmt.Errorf("phase %q message %q", s.Phase, s.Message)
		}
		return nil
	})
	waitStatus("rs21", "unused policy Ready with 3 servers for 2+1", func(s storagev1.ErasureCodingPolicyStatus) error {
		if s.Phase != storagev1.ECPolicyReady {
			return fmt.Errorf("phase %q message %q", s.Phase, s.Message)
		}
		return nil
	})
}
