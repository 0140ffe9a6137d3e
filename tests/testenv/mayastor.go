package testenv

import (
	"fmt"
	"sort"
	"strings"

	"k8s.io/utils/ptr"

	"github.com/billyronks/couchestor/pkg/mayastorrest"
)

// Helpers over volumes as the REST double of Mayastor 2.x's control plane
// (tests/mayastorsim --api=rest) shows them, shared by the suites that drive
// the tiering story through it (tests/e2e, tests/cluster).

// HealthyReplicas counts replicas holding a full copy: Online, their nexus
// child Online and not rebuilding. (MAYASTOR.md's sync predicate also wants
// the volume Online, which it is not while any replica rebuilds, so it would
// count 0 full copies in the middle of every move.)
func HealthyReplicas(v *mayastorrest.Volume) int {
	n := 0
	for _, r := range v.State.ReplicaTopology {
		if r.State == "Online" && ptr.Deref(r.ChildStatus, "") == "Online" && r.RebuildProgress == nil && ptr.Deref(r.Healthy, true) {
			n++
		}
	}
	return n
}

// OnTier reports whether v has want replicas, all on pools of tier (pool
// names end in -hot, -warm or -cold in these suites' scenarios) and synced,
// and asks for no more.
func OnTier(v *mayastorrest.Volume, tier string, want int) bool {
	if len(v.State.ReplicaTopology) != want || int(v.Spec.NumReplicas) != want {
		return false
	}
	for id, r := range v.State.ReplicaTopology {
		if r.Pool == nil || !strings.HasSuffix(*r.Pool, "-"+tier) || r.State != "Online" || !mayastorrest.ReplicaSynced(*v, id) {
			return false
		}
	}
	return true
}

// ReplicaPools describes v's replicas for a failure message:
// "pool(state,synced=…) … num_replicas=n".
func ReplicaPools(v *mayastorrest.Volume) string {
	var ps []string
	for id, r := range v.State.ReplicaTopology {
		ps = append(ps, fmt.Sprintf("%s(%s,synced=%v)", ptr.Deref(r.Pool, "?"), r.State, mayastorrest.ReplicaSynced(*v, id)))
	}
	sort.Strings(ps)
	return fmt.Sprintf("%s num_replicas=%d", strings.Join(ps, " "), v.Spec.NumReplicas)
}
