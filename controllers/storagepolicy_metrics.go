package controllers

import (
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/billyronks/couchestor/pkg/iops"
)

// Tiering metrics (prefix couchestor_), registered once on controller-runtime's
// registry, so they appear on the manager's /metrics.
var (
	policyEvaluations = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "couchestor_policy_evaluations_total",
		Help: "StoragePolicy evaluations by result (ok, metrics_unavailable, invalid, disabled, error).",
	}, []string{"policy", "result"})
	policyEvaluationDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "couchestor_policy_evaluation_duration_seconds",
		Help:    "Time of one StoragePolicy evaluation: listing, the IOPS query, decisions and the status write.",
		Buckets: prometheus.ExponentialBuckets(0.005, 2, 14),
	}, []string{"policy"})
	policyVolumes = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "couchestor_policy_volumes",
		Help: "Volumes a StoragePolicy owns, by the tier their replicas are on now (none: on no tier).",
	}, []string{"policy", "tier"})
	policyDecisions = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "couchestor_tiering_decisions",
		Help: "Decisions of the latest evaluation by action (Move, Stay, Skip) and code (e.g. Cooldown, IOPSUnknown, DeadBand).",
	}, []string{"policy", "action", "code"})
	policyUnknownVolumes = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "couchestor_policy_unknown_iops_volumes",
		Help: "Volumes whose IOPS were unknown in the latest evaluation, by reason. They are never moved.",
	}, []string{"policy", "reason"})
)

func init() {
	metrics.Registry.MustRegister(policyEvaluations, policyEvaluationDuration, policyVolumes, policyDecisions, policyUnknownVolumes)
	metrics.Registry.MustRegister(iops.Collectors()...)
}

func forgetPolicyMetrics(policy string) {
	for _, v := range []interface {
		DeletePartialMatch(prometheus.Labels) int
	}{policyEvaluations, policyEvaluationDuration, policyVolumes, policyDecisions, policyUnknownVolumes} {
		v.DeletePartialMatch(prometheus.Labels{"policy": policy})
	}
}
