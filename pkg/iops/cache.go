package iops

import (
	"sync"
	"time"
)

// CachedMetric is one volume's IOPS and when it was measured (schema 5.2).
type CachedMetric struct {
	IOPS      float64
	Timestamp time.Time
}

// MetricsCache maps volume -> CachedMetric for a TTL (schema 5.2). Entries are
// kept per sampling window, since two policies with different windows measure
// different things. Safe for concurrent use. Only known measurements are
// cached: an unknown volume is asked again at the next evaluation.
type MetricsCache struct {
	ttl time.Duration
	now func() time.Time

	mu      sync.RWMutex
	entries map[cacheKey]CachedMetric
}

type cacheKey struct {
	window time.Duration
	volume string
}

// DefaultCacheTTL is the schema's default TTL.
const DefaultCacheTTL = 30 * time.Second

// NewMetricsCache returns an empty cache. ttl <= 0 disables caching (every
// lookup misses). now is the clock; nil means time.Now.
func NewMetricsCache(ttl time.Duration, now func() time.Time) *MetricsCache {
	if now == nil {
		now = time.Now
	}
	return &MetricsCache{ttl: ttl, now: now, entries: map[cacheKey]CachedMetric{}}
}

// Get returns the volume's fresh entry for window, counting a hit or a miss.
func (c *MetricsCache) Get(window time.Duration, volume string) (CachedMetric, bool) {
	c.mu.RLock()
	e, ok := c.entries[cacheKey{window, volume}]
	c.mu.RUnlock()
	if ok && c.ttl > 0 && c.now().Sub(e.Timestamp) < c.ttl {
		cacheHits.Inc()
		return e, true
	}
	cacheMisses.Inc()
	return CachedMetric{}, false
}

// Put stores measurements taken at `at` for window.
func (c *MetricsCache) Put(window time.Duration, at time.Time, iops map[string]float64) {
	if c.ttl <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.expireLocked()
	for v, x := range iops {
		c.entries[cacheKey{window, v}] = CachedMetric{IOPS: x, Timestamp: at}
	}
}

// Len is the number of entries, fresh or not.
func (c *MetricsCache) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.entries)
}

// expireLocked drops stale entries so deleted volumes do not accumulate.
func (c *MetricsCache) expireLocked() {
	now := c.now()
	for k, e := range c.entries {
		if now.Sub(e.Timestamp) >= c.ttl {
			delete(c.entries, k)
		}
	}
}
