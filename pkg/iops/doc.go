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
//  3. Coverage: a window with a gap is not a measurement of that window.
//     rate() over a window that a series covers only in part (a new volume, a
//     restarted exporter, a Prometheus outage) does not extrapolate to the
//     whole window, so it under-reports: right after a 40 s Prometheus outage
//     a steady 6000-IOPS volume read 4428 over a 20 s window. A sample count
//     cannot see this (75 % of the samples can be there while the rate misses
//     a quarter), so the same request asks, per volume, for the timestamp of
//     the earliest sample from the window's start on,
//     min_over_time(timestamp(sel)[W:S]), and for the longest any point of the
//     window waited for its latest sample,
//     max_over_time((time() - timestamp(sel))[W:S]), where sel is the
//     coverage selector (the read counter by default) and S the scrape
//     interval, and for the age of the newest sample. A published volume is
//     known only when it has a sample within 1.5 S of both ends of the window
//     (what rate() needs to extrapolate to the whole window) and that longest
//     wait is at most MaxGap (default max(3 S, S + 5 s)). Otherwise it is unknown
//     ("insufficient coverage") until a whole window has been scraped again.
//     An unpublished volume keeps rule 2. The scrape interval is configuration
//     (it must match Prometheus's): too small a value shows up as unknown
//     volumes, which the policy reports in its MetricsAvailable condition.
//
// All parts travel in one request: the IOPS expression and the two coverage
// expressions are each tagged with a couchestor_kind label by label_replace and
// joined with "or", so Prometheus evaluates them together and the operator
// still sends exactly one query per policy per evaluation.
//
// The package has no Kubernetes imports: callers describe volumes as Volume
// values (name, published).
package iops
