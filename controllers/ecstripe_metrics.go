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
	ecRebuilds = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "couchestor_ec_rebuilds_total",
		Help: "Stripe rebuilds by event: started, completed, failed.",
	}, []string{"event"})
	ecRebuiltBytes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "couchestor_ec_rebuilt_bytes_total",
		Help: "Shard bytes written by rebuilds.",
	})
	ecRebuildsActive = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "couchestor_ec_rebuilds_active",
		Help: "Rebuilds in flight.",
	})
	ecScrubbedStripes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "couchestor_ec_scrubbed_stripes_total",
		Help: "Stripes whose shards a scrub read and verified, by ErasureCodingPolicy.",
	}, []string{"policy"})
	ecScrubbedBytes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "couchestor_ec_scrubbed_bytes_total",
		Help: "Shard bytes read by scrubs.",
	})
	ecScrubPending = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "couchestor_ec_scrub_pending_stripes",
		Help: "Stripes due for a scrub and not yet scrubbed (scrub progress: falls to 0 as a pass completes).",
	})
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
	metrics.Registry.MustRegister(ecStripesByState, ecRebuilds, ecRebuiltBytes, ecRebuildsActive, ecScrubbedStripes,
		ecScrubbedBytes, ecScrubPending, ecScrubFindings, ecProbeFailures, ecPoolsDown, ecStripeOverlaps,
		ecStripeOverlapsDetected, ecStripeTransitions)
}
