package iops

import (
	"context"
	"fmt"
	"time"
)

// Volume is what the meter needs to know about one volume.
type Volume struct {
	// Name is the value of the volume label (the PV name for Mayastor).
	Name string
	// Published: the volume has a nexus, so it can do I/O and must have a series.
	Published bool
}

// UnknownReason says why a volume's IOPS are unknown.
type UnknownReason string

const (
	// ReasonPrometheusUnavailable: the query failed; nothing is known.
	ReasonPrometheusUnavailable UnknownReason = "PrometheusUnavailable"
	// ReasonNoSeries: a published volume has no series in the window.
	ReasonNoSeries UnknownReason = "NoSeries"
	// ReasonInsufficientCoverage: a published volume's samples do not cover
	// the whole window, or have a gap longer than the allowed one.
	ReasonInsufficientCoverage UnknownReason = "InsufficientCoverage"
)

// Measurement is what is known about one volume's IOPS.
type Measurement struct {
	IOPS  float64
	Known bool
	// Reason is set when Known is false.
	Reason UnknownReason
	// Coverage is the fraction of the window the series covers from its
	// first sample on (0..1), when measured.
	Coverage float64
	// MaxGap is the longest wait for a sample within the window, when measured.
	MaxGap time.Duration
}

// Report is the result of one Measure call.
type Report struct {
	Measurements map[string]Measurement
	// Queried: Prometheus was asked (false when the cache answered everything).
	Queried bool
	// Err is the query error, if the query failed.
	Err error
	// Unknown counts the unknown volumes by reason.
	Unknown map[UnknownReason]int
}

// DefaultMaxGap is the longest gap between samples that a window may hold for
// its rate to count, given the scrape interval: three intervals, and never
// less than one interval plus 5 s (scrapes of a busy exporter run late by a
// second or two; an outage is longer than that).
func DefaultMaxGap(scrapeInterval time.Duration) time.Duration {
	return max(3*scrapeInterval, scrapeInterval+5*time.Second)
}

// Meter applies the package's rules (see the package doc) on top of a Querier
// and a MetricsCache.
type Meter struct {
	Querier Querier
	// Cache may be nil (no caching).
	Cache *MetricsCache
	// ScrapeInterval is Prometheus's scrape interval for the exporter.
	ScrapeInterval time.Duration
	// MaxGap is the longest gap between samples a window may hold; 0 means
	// DefaultMaxGap(ScrapeInterval).
	MaxGap time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// WindowTooShort reports whether window holds fewer than four scrape
// intervals, too few samples for rate() to be meaningful.
func WindowTooShort(window, scrapeInterval time.Duration) bool {
	return scrapeInterval > 0 && window < 4*scrapeInterval
}

// Measure returns a Measurement for every volume, asking Prometheus at most
// once, and not at all when the cache holds a fresh entry for every volume.
func (m *Meter) Measure(ctx context.Context, window time.Duration, vols []Volume) Report {
	now := time.Now
	if m.Now != nil {
		now = m.Now
	}
	r := Report{Measurements: make(map[string]Measurement, len(vols)), Unknown: map[UnknownReason]int{}}
	if m.Cache != nil {
		all := true
		for _, v := range vols {
			e, ok := m.Cache.Get(window, v.Name)
			if !ok {
				all = false
				break
			}
			r.Measurements[v.Name] = Measurement{IOPS: e.IOPS, Known: true, Coverage: 1}
		}
		if all {
			return r
		}
		clear(r.Measurements)
	}
	r.Queried = true
	at := now()
	ans, err := m.Querier.QueryIOPS(ctx, window)
	if err != nil {
		r.Err = err
		for _, v := range vols {
			r.Measurements[v.Name] = Measurement{Reason: ReasonPrometheusUnavailable}
		}
		r.Unknown[ReasonPrometheusUnavailable] = len(vols)
		return r
	}
	maxGap := m.MaxGap
	if maxGap <= 0 {
		maxGap = DefaultMaxGap(m.ScrapeInterval)
	}
	if ans.At.IsZero() {
		ans.At = at
	}
	known := make(map[string]float64, len(vols))
	for _, v := range vols {
		ms := Decide(v, ans, window, Coverage{ScrapeInterval: m.ScrapeInterval, MaxGap: maxGap})
		r.Measurements[v.Name] = ms
		if ms.Known {
			known[v.Name] = ms.IOPS
		} else {
			r.Unknown[ms.Reason]++
		}
	}
	if m.Cache != nil {
		m.Cache.Put(window, at, known)
	}
	return r
}

// Coverage are the parameters of the coverage rule.
type Coverage struct {
	// ScrapeInterval is Prometheus's; the series must have a sample within
	// 1.5 intervals of both ends of the window, which is what rate() needs to
	// extrapolate to the whole window instead of under-reporting.
	ScrapeInterval time.Duration
	// MaxGap is the longest gap between samples inside the window.
	MaxGap time.Duration
}

// edge is how far from each end of the window the nearest sample may be.
func (c Coverage) edge() float64 { return 1.5 * c.ScrapeInterval.Seconds() }

// Decide applies the rules to one volume given a successful answer. A
// published volume's rate counts only when its samples cover the whole window:
// a sample no later than 1.5 scrape intervals after the window's start, the
// newest one no older than 1.5 intervals, and no point of the window waiting
// longer than MaxGap for a sample.
func Decide(v Volume, ans Answer, window time.Duration, c Coverage) Measurement {
	rate, hasSeries := ans.IOPS[v.Name]
	covered, cov, gap := true, 1.0, time.Duration(0)
	if ans.First != nil && hasSeries {
		first, okF := ans.First[v.Name]
		g, okG := ans.MaxGap[v.Name]
		age, okA := ans.Age[v.Name]
		switch {
		case !okF || !okG || !okA:
			covered, cov = false, 0 // coverage not measured: not known to cover
		default:
			start := float64(ans.At.UnixNano())/1e9 - window.Seconds()
			gap = time.Duration(g * float64(time.Second))
			late := first - start // how long after the window's start the series begins
			if window > 0 {
				cov = min(1, max(0, 1-late/window.Seconds()))
			}
			covered = late <= c.edge() && age <= c.edge() && gap <= c.MaxGap
		}
	}
	if !hasSeries {
		cov = 0
	}
	switch {
	case !v.Published && !hasSeries:
		return Measurement{IOPS: 0, Known: true}
	case !v.Published:
		return Measurement{IOPS: rate, Known: true, Coverage: cov, MaxGap: gap}
	case !hasSeries:
		return Measurement{Reason: ReasonNoSeries}
	case !covered:
		return Measurement{Reason: ReasonInsufficientCoverage, Coverage: cov, MaxGap: gap}
	default:
		return Measurement{IOPS: rate, Known: true, Coverage: cov, MaxGap: gap}
	}
}

// Describe is a short human text for a reason, used in conditions and Events.
func (r UnknownReason) Describe() string {
	switch r {
	case ReasonPrometheusUnavailable:
		return "Prometheus did not answer"
	case ReasonNoSeries:
		return "published but Prometheus has no series for it"
	case ReasonInsufficientCoverage:
		return "its samples do not cover the whole sampling window without a gap (new series, exporter or Prometheus restart)"
	}
	return fmt.Sprintf("unknown (%s)", string(r))
}
