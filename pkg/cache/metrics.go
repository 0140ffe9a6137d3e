package cache

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics holds the Prometheus collectors of every tier, labelled tier="l1",
// "l2" or "l3". One Metrics serves one Tiered cache (or standalone tiers).
type Metrics struct {
	hits       *counterFamily
	misses     *counterFamily
	evictions  *prometheus.CounterVec
	corrupt    *prometheus.CounterVec
	promotions *prometheus.CounterVec
	demotions  *prometheus.CounterVec
	latency    *prometheus.HistogramVec
	bytes      *bytesCollector
	// demotionFailures counts L1 evictions that could not be written to L2.
	demotionFailures prometheus.Counter
}

// NewMetrics creates the cache collectors and registers them on reg. A nil
// reg leaves them unregistered (they still count, nobody scrapes them).
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		hits:   newCounterFamily("couchestor_cache_hits_total", "Gets served by the tier."),
		misses: newCounterFamily("couchestor_cache_misses_total", "Gets the tier could not serve (absent, or corrupt and dropped)."),
		evictions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "couchestor_cache_evictions_total", Help: "Entries evicted by the tier's capacity bound.",
		}, []string{"tier"}),
		corrupt: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "couchestor_cache_corrupt_entries_total", Help: "Entries found corrupt, torn or truncated (served as a miss and removed).",
		}, []string{"tier"}),
		promotions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "couchestor_cache_promotions_total", Help: "Entries copied into L1 after a hit in the labelled lower tier.",
		}, []string{"tier"}),
		demotions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "couchestor_cache_demotions_total", Help: "Entries written into the labelled tier after eviction from the tier above.",
		}, []string{"tier"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "couchestor_cache_get_duration_seconds",
			Help:    "Get latency per tier, hit or miss. L1 is sampled 1 in 64.",
			Buckets: prometheus.ExponentialBuckets(100e-9, 4, 12), // 100 ns .. 0.4 s
		}, []string{"tier"}),
		demotionFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "couchestor_cache_demotion_failures_total", Help: "L1 evictions not written to L2 (too large or disk error; L3 still has the data).",
		}),
		bytes: &bytesCollector{
			desc:  prometheus.NewDesc("couchestor_cache_bytes", "Bytes held by the tier (payload bytes, after compression).", []string{"tier"}, nil),
			funcs: map[string]func() int64{},
		},
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.hits, m.misses, m.evictions, m.corrupt, m.promotions, m.demotions, m.latency, m.bytes, m.demotionFailures} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register cache metrics: %w", err)
			}
		}
	}
	return m, nil
}

// tierMetrics is one tier's resolved children, so the hot path does no label lookup.
type tierMetrics struct {
	hits, misses                              *stripedCounter
	evictions, corrupt, promotions, demotions prometheus.Counter
	latency                                   prometheus.Observer
}

func (m *Metrics) tier(t Tier) *tierMetrics {
	l := t.String()
	return &tierMetrics{
		hits:       m.hits.tier(l),
		misses:     m.misses.tier(l),
		evictions:  m.evictions.WithLabelValues(l),
		corrupt:    m.corrupt.WithLabelValues(l),
		promotions: m.promotions.WithLabelValues(l),
		demotions:  m.demotions.WithLabelValues(l),
		latency:    m.latency.WithLabelValues(l),
	}
}

func (tm *tierMetrics) observeSince(start time.Time) {
	tm.latency.Observe(time.Since(start).Seconds())
}

// bytesCollector reports each tier's byte count at scrape time, so the hot
// path never updates a gauge.
type bytesCollector struct {
	desc  *prometheus.Desc
	mu    sync.Mutex
	funcs map[string]func() int64
}

func (b *bytesCollector) set(t Tier, f func() int64) {
	b.mu.Lock()
	b.funcs[t.String()] = f
	b.mu.Unlock()
}

func (b *bytesCollector) Describe(ch chan<- *prometheus.Desc) { ch <- b.desc }

func (b *bytesCollector) Collect(ch chan<- prometheus.Metric) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for tier, f := range b.funcs {
		ch <- prometheus.MustNewConstMetric(b.desc, prometheus.GaugeValue, float64(f()), tier)
	}
}

// stripedCounter is a counter split over cache lines, so that goroutines on
// different cores counting L1 hits do not fight over one line (a shared
// atomic cost a visible share of a sub-microsecond Get).
type stripedCounter struct {
	slots [counterStripes]struct {
		n atomic.Uint64
		_ [56]byte
	}
}

// counterStripes: 64, so that two goroutines busy on two cores share a
// stripe (and trade its line on every hit) in 1 case of 64, not 16.
const counterStripes = 64

// add counts one event; spread is any well-mixed number (a key hash).
func (c *stripedCounter) add(spread uint64) { c.slots[spread%counterStripes].n.Add(1) }

// local is the calling goroutine's stripe, picked by its stack address
// (goroutine stacks are at least 2 KiB apart): goroutines running on
// different cores keep to their own cache lines instead of trading them on
// every other event, as a stripe per key hash does.
func (c *stripedCounter) local() *atomic.Uint64 {
	var anchor byte
	return &c.slots[(uintptr(unsafe.Pointer(&anchor))>>11)*0x9e3779b97f4a7c15>>58].n
}

func (c *stripedCounter) value() uint64 {
	var sum uint64
	for i := range c.slots {
		sum += c.slots[i].n.Load()
	}
	return sum
}

// counterFamily is a counter metric with a tier label backed by stripedCounters.
type counterFamily struct {
	desc  *prometheus.Desc
	mu    sync.Mutex
	tiers map[string]*stripedCounter
}

func newCounterFamily(name, help string) *counterFamily {
	return &counterFamily{desc: prometheus.NewDesc(name, help, []string{"tier"}, nil), tiers: map[string]*stripedCounter{}}
}

func (f *counterFamily) tier(label string) *stripedCounter {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.tiers[label]
	if c == nil {
		c = new(stripedCounter)
		f.tiers[label] = c
	}
	return c
}

func (f *counterFamily) Describe(ch chan<- *prometheus.Desc) { ch <- f.desc }

func (f *counterFamily) Collect(ch chan<- prometheus.Metric) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for label, c := range f.tiers {
		ch <- prometheus.MustNewConstMetric(f.desc, prometheus.CounterValue, float64(c.value()), label)
	}
}
