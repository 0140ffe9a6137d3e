package iops

import "github.com/prometheus/client_golang/prometheus"

var (
	queryErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "couchestor_prometheus_query_errors_total",
		Help: "IOPS queries to Prometheus that failed (unreachable, error answer, unexpected type).",
	})
	queryDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "couchestor_prometheus_query_duration_seconds",
		Help:    "Latency of the batched IOPS query to Prometheus.",
		Buckets: prometheus.ExponentialBuckets(0.005, 2, 12),
	})
	cacheHits = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "couchestor_metrics_cache_hits_total",
		Help: "Volume IOPS lookups answered from the metrics cache.",
	})
	cacheMisses = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "couchestor_metrics_cache_misses_total",
		Help: "Volume IOPS lookups the metrics cache could not answer.",
	})
)

// Collectors are the package's metrics, for the caller to register once
// (the operator registers them on controller-runtime's metrics.Registry).
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{queryErrors, queryDuration, cacheHits, cacheMisses}
}
