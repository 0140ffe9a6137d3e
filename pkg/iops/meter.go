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
	// ReasonInsufficientCoverage: a published volume's series covers too little of the window.
	ReasonInsufficientCoverage UnknownReason = "InsufficientCoverage"
)

// Measurement is what is known about one volume's IOPS.
type Measurement struct {
	IOPS  float64
	Known bool
	// Reason is set when Known is false.
	Reason UnknownReason
	// Coverage is the fraction of the window the series covers (0..1), when measured.
	Coverage float64
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

// DefaultMinCoverage is the fraction of the window a published volume's
// series must cover for its rate to count.
const DefaultMinCoverage = 0.75

// Meter applies the package's rules (see the package doc) on top of a Querier
// and a MetricsCache.
type Meter struct {
	Querier Querier
	// Cache may be nil (no caching).
	Cache *MetricsCache
	// ScrapeInterval is Prometheus's scrape interval for the exporter.
	ScrapeInterval time.Duration
	// MinCoverage: 0 means DefaultMinCoverage.
	MinCoverage float64
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
	minCov := m.MinCoverage
	if minCov <= 0 {
		minCov = DefaultMinCoverage
	}
	known := make(map[string]float64, len(vols))
	for _, v := range vols {
		ms := Decide(v, ans, window, m.ScrapeInterval, minCov)
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

// Decide applies the rules to one volume given a successful answer.
func Decide(v Volume, ans Answer, window, scrapeInterval time.Duration, minCoverage float64) Measurement {
	rate, hasSeries := ans.IOPS[v.Name]
	cov := 1.0
	if ans.Samples != nil && scrapeInterval > 0 && window > 0 {
		cov = ans.Samples[v.Name] * scrapeInterval.Seconds() / window.Seconds()
		if cov > 1 {
			cov = 1
		}
	}
	if !hasSeries {
		cov = 0
	}
	switch {
	case !v.Published && !hasSeries:
		return Measurement{IOPS: 0, Known: true}
	case !v.Published:
		return Measurement{IOPS: rate, Known: true, Coverage: cov}
	case !hasSeries:
		return Measurement{Reason: ReasonNoSeries}
	case cov < minCoverage:
		return Measurement{Reason: ReasonInsufficientCoverage, Coverage: cov}
	default:
		return Measurement{IOPS: rate, Known: true, Coverage: cov}
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
		return "its series covers too little of the sampling window"
	}
	return fmt.Sprintf("unknown (%s)", string(r))
}
