// Package iops is CoucheStor's eyes: it measures the IOPS of Mayastor volumes
// from Prometheus and says honestly when it does not know.
//
// What it owns:
//   - PrometheusSource: ONE batched instant query per call (per policy per
//     evaluation), not one per volume. The default query, for Mayastor 2.x's
//     io-engine exporter, is
//     sum by (pv_name) (rate(volume_num_read_ops[W]) + rate(volume_num_write_ops[W]))
//     with W the sampling window in whole seconds ("[5400s]"). Metric names, the
//     volume label and the whole query template are configurable.
//   - MetricsCache (data-model schema section 5.2): volume -> (iops, timestamp)
//     with a TTL (30 s by default), safe for concurrent use, with hit/miss metrics.
//   - Meter: the rules that turn an answer (or its absence) into a Measurement
//     per volume.
//
// The rules (the reason this package exists; the Rust CoucheStor CE scored a
// Prometheus outage as 0 IOPS and demoted every volume):
//
//  1. Unknown is never zero. If Prometheus is unreachable or answers with an
//     error, every volume is unknown. If Prometheus answers but has no series
//     for a volume that is published (its MayastorVolume has a nexus), that
//     volume is unknown. Unknown volumes are never moved.
//  2. A volume that is not published has no I/O: it is known, at the rate its
//     series shows if one exists in the window (it was published earlier in the
//     window), else 0 IOPS. This rule only applies when Prometheus answered.
//  3. Coverage. rate() over a window that a series covers only in part (a new
//     volume, a restarted exporter, a Prometheus outage) does not extrapolate
//     to the whole window, so it under-reports: a busy volume that appeared ten
//     minutes into a one-hour window would look 6x colder than it is and could
//     be demoted. The same query therefore also asks, for every volume, how
//     many samples the window holds (count_over_time of the read counter,
//     summed over its series). coverage = samples x scrapeInterval / W, capped
//     at 1. A published volume whose coverage is below MinCoverage (default
//     0.75) is unknown ("insufficient coverage"); an unpublished one keeps rule 2.
//     The scrape interval is configuration (it must match Prometheus's), and a
//     wrong value shows up as low coverage on every volume, which the policy
//     reports in its MetricsAvailable condition.
//
// Both parts travel in one request: the IOPS expression and the coverage
// expression are each tagged with a couchestor_kind label by label_replace and
// joined with "or", so Prometheus evaluates them together and the operator
// still sends exactly one query per policy per evaluation.
//
// The package has no Kubernetes imports: callers describe volumes as Volume
// values (name, published).
package iops
