package controllers

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
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
	// generation is the policy's metadata.generation; prev its stored
	// conditions (their lastTransitionTime is kept while they hold).
	generation int64
	prev       []metav1.Condition
}

// computePolicyStatus is the whole status of a policy: schema 2.2's fields
// (computePolicyPhase) and the conditions Ready and Degraded, both stamped
// with the generation they describe.
func computePolicyStatus(ev policyEvidence) storagev1.ErasureCodingPolicyStatus {
	st, reason := computePolicyPhase(ev)
	st.Conditions = make([]metav1.Condition, 0, 2)
	for _, c := range ev.prev {
		if c.Type == storagev1.ConditionReady || c.Type == storagev1.ConditionDegraded {
			st.Conditions = append(st.Conditions, c)
		}
	}
	set := func(t string, s metav1.ConditionStatus, reason, msg string) {
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: t, Status: s, Reason: reason, Message: msg, ObservedGeneration: ev.generation})
	}
	if st.Phase == storagev1.ECPolicyReady || st.Phase == storagev1.ECPolicyActive {
		set(storagev1.ConditionReady, metav1.ConditionTrue, reason, st.Message)
	} else {
		set(storagev1.ConditionReady, metav1.ConditionFalse, reason, st.Message)
	}
	failed := ev.counts.ByState[storagev1.StripeFailed]
	switch counts := fmt.Sprintf("%d Degraded, %d Rebuilding, %d Failed of %d stripes", st.DegradedStripes, st.RebuildingStripes, failed, st.TotalStripes); {
	case failed > 0:
		set(storagev1.ConditionDegraded, metav1.ConditionTrue, "StripesFailed", counts+": a Failed stripe's data cannot be decoded until shards return")
	case st.DegradedStripes+st.RebuildingStripes > 0:
		set(storagev1.ConditionDegraded, metav1.ConditionTrue, "StripesDegraded", counts)
	default:
		set(storagev1.ConditionDegraded, metav1.ConditionFalse, "AllStripesHealthy", counts)
	}
	return st
}

// computePolicyPhase is schema 2.2's status of a policy and the reason for
// its Ready condition: phase
// Invalid when the spec breaks a rule (message names the rule) or, while no
// stripe uses it, when fewer shard servers are registered than a stripe needs
// pools (k+m); Active once stripes use it; Ready otherwise; Pending while the
// registry cannot be read and nothing uses the policy.
func computePolicyPhase(ev policyEvidence) (storagev1.ErasureCodingPolicyStatus, string) {
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
		return st, "InvalidSpec"
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
	var reason string
	switch {
	case ev.counts.Total > 0:
		st.Phase, reason = storagev1.ECPolicyActive, "InUse"
		notes = append([]string{fmt.Sprintf("%d stripes in %d volumes", ev.counts.Total, ev.counts.Volumes)}, notes...)
		if !placeable {
			placement = "warning: " + placement + "; new stripes and rebuilds cannot be placed"
		}
	case ev.serversErr != nil:
		st.Phase, reason = storagev1.ECPolicyPending, "RegistryUnreadable"
	case !placeable:
		st.Phase, reason = storagev1.ECPolicyInvalid, "TooFewShardServers"
	default:
		st.Phase, reason = storagev1.ECPolicyReady, "Placeable"
	}
	st.Message = strings.Join(append(notes, placement), "; ")
	return st, reason
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

// policyStatusEqual compares everything but lastValidationTime and the
// conditions' lastTransitionTime (kept by computePolicyStatus while a
// condition holds).
func policyStatusEqual(a, b storagev1.ErasureCodingPolicyStatus) bool {
	a.LastValidationTime, b.LastValidationTime = nil, nil
	ac, bc := a.Conditions, b.Conditions
	a.Conditions, b.Conditions = nil, nil
	return equality.Semantic.DeepEqual(a, b) && conditionsEqual(ac, bc)
}

// conditionsEqual compares conditions by everything but lastTransitionTime.
func conditionsEqual(a, b []metav1.Condition) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if x.Type != y.Type || x.Status != y.Status || x.Reason != y.Reason || x.Message != y.Message || x.ObservedGeneration != y.ObservedGeneration {
			return false
		}
	}
	return true
}
