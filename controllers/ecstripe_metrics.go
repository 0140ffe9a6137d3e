package controllers

import (
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// Erasure-coding metrics (prefix couchestor_), on controller-runtime's registry.
var (
	ecStripesByState = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "couchestor_ecstripes",
		Help: "ECStripes by ErasureCodingPolicy and status.state (\"\" until the writer sets one), from the informer.",
	}, []string{"policy", "state"})
	ecScrubFindings = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "couchestor_ec_scrub_findings_total",
		Help: "Shards a scrub or read found bad, by kind (Corrupt, NotFound).",
	}, []string{"kind"})
	ecProbeFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "couchestor_shard_server_probe_failures_total",
		Help: "Failed probes of a pool's shard server (unregistered, unreachable or unhealthy), by pool.",
	}, []string{"pool"})
	ecPoolsDown = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "couchestor_ec_pools",
		Help: "Pools holding shards by verdict: Up, Suspect (down, within the down-out delay), Out.",
	}, []string{"verdict"})
	ecStripeOverlaps = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "couchestor_ecstripe_overlaps",
		Help: "ECStripes whose LBA range overlaps (or whose stripeId repeats) another stripe of the same volume: a race past admission. They are reported, never deleted.",
	})
	ecStripeOverlapsDetected = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "couchestor_ecstripe_overlaps_detected_total",
		Help: "Overlapping ECStripe pairs detected.",
	})
	ecStripeTransitions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "couchestor_ecstripe_transitions_total",
		Help: "Stripe state transitions that raise an Event, by transition (Degraded, Failed, Recovered, Rebuilt, Healed).",
	}, []string{"transition"})
)

func init() {
	metrics.Registry.MustRegister(ecStripesByState, ecScrubFindings, ecProbeFailures, ecPoolsDown, ecStripeOverlaps,
		ecStripeOverlapsDetected, ecStripeTransitions)
}
