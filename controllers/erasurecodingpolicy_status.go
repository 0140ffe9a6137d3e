package controllers

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/utils/ptr"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/registry"
)

// policyEvidence is what an ErasureCodingPolicy's status is computed from.
type policyEvidence struct {
	spec   *storagev1.ErasureCodingPolicySpec
	counts StripeCounts
	// servers are the live shard servers; checked is false when no registry
	// is configured, serversErr set when it could not be read.
	servers    []registry.Entry
	checked    bool
	serversErr error
	now        time.Time
}

// computePolicyStatus is the whole status of a policy (schema 2.2): phase
// Invalid when the spec breaks a rule (message names the rule) or, while no
// stripe uses it, when fewer shard servers are registered than a stripe needs
// pools (k+m); Active once stripes use it; Ready otherwise; Pending while the
// registry cannot be read and nothing uses the policy.
func computePolicyStatus(ev policyEvidence) storagev1.ErasureCodingPolicyStatus {
	spec := ev.spec.DeepCopy()
	storagev1.DefaultErasureCodingPolicySpec(spec)
	k, m := int(ptr.Deref(spec.DataShards, 0)), int(ptr.Deref(spec.ParityShards, 0))
	now := metav1.NewTime(ev.now)
	st := storagev1.ErasureCodingPolicyStatus{
		ActiveVolumes:      ev.counts.Volumes,
		TotalStripes:       ev.counts.Total,
		HealthyStripes:     ev.counts.ByState[storagev1.StripeHealthy],
		DegradedStripes:    ev.counts.ByState[storagev1.StripeDegraded],
		RebuildingStripes:  ev.counts.ByState[storagev1.StripeRebuilding],
		LastValidationTime: &now,
	}
	if k > 0 && m > 0 {
		// Rounded to 3 decimals, as the schema's example (0.667 for 4+2).
		st.StorageEfficiency = math.Round(float64(k)/float64(k+m)*1000) / 1000
	}
	var notes []string
	if failed := ev.counts.ByState[storagev1.StripeFailed]; failed > 0 {
		notes = append(notes, fmt.Sprintf("%d stripes Failed (loss not decodable)", failed))
	}
	if errs, _ := storagev1.ValidateErasureCodingPolicySpec(ev.spec, field.NewPath("spec")); len(errs) > 0 {
		st.Phase = storagev1.ECPolicyInvalid
		st.Message = errs.ToAggregate().Error()
		return st
	}
	need := k + m
	var placement string
	placeable := true
	switch {
	case !ev.checked:
		placement = "shard-server registry not configured: placement not checked"
	case ev.serversErr != nil:
		placement = "shard-server registry unreadable: " + ev.serversErr.Error()
	default:
		nodes := map[string]bool{}
		for _, s := range ev.servers {
			nodes[s.Node] = true
		}
		switch {
		case len(ev.servers) < need:
			placeable = false
			placement = fmt.Sprintf("%d shard servers registered (%s), fewer than dataShards + parityShards = %d+%d = %d: a stripe needs %d distinct pools",
				len(ev.servers), poolList(ev.servers), k, m, need, need)
		case len(nodes) < need:
			placement = fmt.Sprintf("%d shard servers on %d nodes, fewer nodes than dataShards + parityShards = %d: shards of a stripe share nodes (distinct pools)", len(ev.servers), len(nodes), need)
		default:
			placement = fmt.Sprintf("%d shard servers on %d nodes", len(ev.servers), len(nodes))
		}
	}
	switch {
	case ev.counts.Total > 0:
		st.Phase = storagev1.ECPolicyActive
		notes = append([]string{fmt.Sprintf("%d stripes in %d volumes", ev.counts.Total, ev.counts.Volumes)}, notes...)
		if !placeable {
			placement = "warning: " + placement + "; new stripes and rebuilds cannot be placed"
		}
	case ev.serversErr != nil:
		st.Phase = storagev1.ECPolicyPending
	case !placeable:
		st.Phase = storagev1.ECPolicyInvalid
	default:
		st.Phase = storagev1.ECPolicyReady
	}
	st.Message = strings.Join(append(notes, placement), "; ")
	return st
}

func poolList(servers []registry.Entry) string {
	if len(servers) == 0 {
		return "none"
	}
	p := make([]string, len(servers))
	for i, s := range servers {
		p[i] = s.Pool
	}
	sort.Strings(p)
	return strings.Join(p, ", ")
}

// policyStatusEqual compares everything but lastValidationTime.
func policyStatusEqual(a, b storagev1.ErasureCodingPolicyStatus) bool {
	a.LastValidationTime, b.LastValidationTime = nil, nil
	return a == b
}
