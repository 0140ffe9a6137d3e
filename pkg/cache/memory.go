package cache

import (
	"fmt"
	"math"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/ristretto/v2"
)

// MemoryConfig configures the RAM tier.
type MemoryConfig struct {
	// CapacityBytes bounds the bytes held (payload plus key strings). Required.
	CapacityBytes int64
	// ExpectedItemSize sizes ristretto's admission counters (10 per expected
	// item, as its authors advise); 0 means 4 KiB.
	ExpectedItemSize int64
	// Compression of values stored by MemoryCache.Set. Tiered ignores it and
	// stores values in the form Tiered's own Compression produced.
	Compression Compression
	// Metrics receives the tier="l1" series; nil keeps unregistered counters.
	Metrics *Metrics
	// Now is the clock for created/last-accessed times. nil means a coarse
	// clock that ticks every millisecond: reading the system clock on every Get
	// cost about a tenth of an L1 hit.
	Now func() time.Time

	// onEvict / onReject are Tiered's hooks. They run on ristretto's policy
	// goroutine and must not block.
	onEvict  func(*memItem)
	onReject func(*memItem)
}

// MemoryCache is the L1 tier: a ristretto cache with cost = bytes.
//
// Like ristretto, Set is asynchronous: the value becomes readable once
// ristretto's policy goroutine has applied it (Wait forces that), and it may
// be dropped under contention or refused by admission. When the key is not
// readable, Set deletes it first, because ristretto refuses (and would keep
// the older value) a second Set of a key whose first Set is still buffered.
type MemoryCache struct {
	c       *ristretto.Cache[uint64, *memItem]
	comp    Compression
	now     func() time.Time
	coarse  *coarseClock
	tm      *tierMetrics
	gen     atomic.Uint64 // generation of values Set directly on this tier
	metrics *Metrics
	// closing silences the hooks: ristretto's Close "evicts" every entry.
	closing atomic.Bool
}

// memItem is what L1 stores. Payload and identity are immutable; the access
// statistics update in place on every hit.
//
// Layout: a hit reads the item's memory right after ristretto's map lookup,
// and with thousands of items that read is usually a cache miss (it was
// about a fifth of an L1 hit). Everything a hit reads or writes is in the
// first 64 bytes, and the struct is exactly 128 bytes, so the allocator's
// 128-byte size class puts that half on one cache line: one miss per hit,
// not two. TestMemItemLayout pins this.
type memItem struct {
	// hot: read (and the statistics written) by every hit.
	check        uint64 // high half of key's hash128
	accessCount  atomic.Uint64
	lastAccessed atomic.Int64
	createdAt    int64
	payload      []byte
	originalSize uint32 // at most maxL1ValueSize
	codec        Codec
	_            [3]byte

	// cold: Set, eviction and demotion only.
	key      CacheKey
	hash     uint64 // low half of key's hash128: ristretto's key
	gen      uint64
	readFill bool // see stored.readFill
	_        [15]byte
}

// maxL1ValueSize is the largest original value L1 holds (originalSize is
// stored in 32 bits to keep an item's hot half on one cache line). Larger
// values skip L1; nothing of that size belongs in a RAM block cache.
const maxL1ValueSize = math.MaxUint32

func (it *memItem) cost() int64 {
	return int64(len(it.payload) + len(it.key.Bucket) + len(it.key.Key))
}

func (it *memItem) stored() *stored {
	return &stored{
		payload: it.payload, codec: it.codec, originalSize: int(it.originalSize), gen: it.gen,
		createdAt: it.createdAt, lastAccessed: it.lastAccessed.Load(), accessCount: it.accessCount.Load(), readFill: it.readFill,
	}
}

// newMemItem builds the L1 item of s, or returns nil when s is larger than
// L1 holds (maxL1ValueSize).
func newMemItem(key CacheKey, s *stored) *memItem {
	if s.originalSize < 0 || s.originalSize > maxL1ValueSize {
		return nil
	}
	lo, hi := key.hash128()
	it := &memItem{key: key, hash: lo, check: hi, gen: s.gen, payload: s.payload, codec: s.codec, originalSize: uint32(s.originalSize), createdAt: s.createdAt, readFill: s.readFill}
	it.lastAccessed.Store(s.lastAccessed)
	it.accessCount.Store(s.accessCount)
	return it
}

// NewMemoryCache builds the RAM tier.
func NewMemoryCache(cfg MemoryConfig) (*MemoryCache, error) {
	if cfg.CapacityBytes <= 0 {
		return nil, fmt.Errorf("memory cache CapacityBytes %d: must be > 0", cfg.CapacityBytes)
	}
	if cfg.ExpectedItemSize < 0 {
		return nil, fmt.Errorf("memory cache ExpectedItemSize %d: must be >= 0", cfg.ExpectedItemSize)
	}
	if err := cfg.Compression.validate(); err != nil {
		return nil, fmt.Errorf("memory cache: %w", err)
	}
	itemSize := cfg.ExpectedItemSize
	if itemSize == 0 {
		itemSize = 4096
	}
	counters := max(10*cfg.CapacityBytes/itemSize, 1000)
	m := cfg.Metrics
	if m == nil {
		var err error
		if m, err = NewMetrics(nil); err != nil {
			return nil, err
		}
	}
	mc := &MemoryCache{comp: cfg.Compression, now: cfg.Now, tm: m.tier(TierL1), metrics: m}
	if mc.now == nil {
		mc.coarse = newCoarseClock(time.Millisecond)
		mc.now = mc.coarse.Now
	}
	rc, err := ristretto.NewCache(&ristretto.Config[uint64, *memItem]{
		NumCounters:        counters,
		MaxCost:            cfg.CapacityBytes,
		BufferItems:        64,
		IgnoreInternalCost: true, // cost is our byte count, nothing else
		KeyToHash:          func(h uint64) (uint64, uint64) { return h, 0 },
		OnEvict: func(item *ristretto.Item[*memItem]) {
			if mc.closing.Load() {
				return
			}
			mc.tm.evictions.Inc()
			if cfg.onEvict != nil && item.Value != nil {
				cfg.onEvict(item.Value)
			}
		},
		OnReject: func(item *ristretto.Item[*memItem]) {
			if mc.closing.Load() {
				return
			}
			if cfg.onReject != nil && item.Value != nil {
				cfg.onReject(item.Value)
			}
		},
	})
	if err != nil {
		if mc.coarse != nil {
			mc.coarse.stop()
		}
		return nil, fmt.Errorf("create ristretto cache (%d bytes): %w", cfg.CapacityBytes, err)
	}
	mc.c = rc
	m.bytes.set(TierL1, mc.UsedBytes)
	return mc, nil
}

// Get returns the entry and true on a hit, updating its access statistics.
func (c *MemoryCache) Get(key CacheKey) (CacheEntry, bool) {
	lo, hi := key.hash128()
	now := c.nowNanos()
	var start time.Time
	timed := sampleLatency(lo, now)
	if timed {
		start = time.Now()
	}
	it, count := c.lookup(lo, hi, now)
	if it == nil {
		c.tm.misses.add(lo)
		if timed {
			c.tm.observeSince(start)
		}
		return CacheEntry{}, false
	}
	e, err := c.entry(it, count, now)
	if err != nil {
		// Only a bug can corrupt RAM-held bytes; still, never return them.
		c.tm.corrupt.Inc()
		c.Del(key)
		c.tm.misses.add(0)
		return CacheEntry{}, false
	}
	c.tm.hits.add(it.check)
	if timed {
		c.tm.observeSince(start)
	}
	return e, true
}

// nowNanos is the clock in unix nanoseconds. The default coarse clock is
// read straight from its atomic (no indirect call, no time.Time).
func (c *MemoryCache) nowNanos() int64 {
	if c.coarse != nil {
		return c.coarse.nanos.Load()
	}
	return c.now().UnixNano()
}

// lookup finds the item of key and records an access at now on it. It
// returns the access count this access left on the item.
func (c *MemoryCache) lookup(lo, hi uint64, now int64) (*memItem, uint64) {
	it, ok := c.c.Get(lo)
	if !ok || it == nil || it.check != hi {
		return nil, 0
	}
	count := it.accessCount.Add(1)
	// Skip the store when the (coarse) time has not moved: fewer dirty lines.
	// A racing Get may store an older coarse time after ours; the error is
	// bounded by how far apart the two Gets read the clock.
	if it.lastAccessed.Load() != now {
		it.lastAccessed.Store(now)
	}
	return it, count
}

// entry is the CacheEntry of a hit. It reads only the item's hot half.
func (c *MemoryCache) entry(it *memItem, count uint64, last int64) (CacheEntry, error) {
	data, err := decode(it.payload, it.codec, int(it.originalSize))
	if err != nil {
		return CacheEntry{}, fmt.Errorf("l1 entry %s/%s: %w", it.key.Bucket, it.key.Key, err)
	}
	return CacheEntry{Data: data, Metadata: EntryMetadata{
		Size:                 uint64(len(it.payload)),
		CreatedAt:            time.Unix(0, it.createdAt),
		LastAccessed:         time.Unix(0, last),
		AccessCount:          count,
		Compressed:           it.codec != CodecNone,
		CompressionAlgorithm: it.codec,
		OriginalSize:         uint64(it.originalSize),
	}}, nil
}

// Set stores data under key (compressed per the configured Compression). It
// returns false when the write was dropped outright; true means it was
// buffered, and admission may still refuse it. data must not be modified
// afterwards when it is stored uncompressed.
func (c *MemoryCache) Set(key CacheKey, data []byte) (bool, error) {
	payload, codec, err := c.comp.encode(data)
	if err != nil {
		return false, fmt.Errorf("l1 set %s/%s: %w", key.Bucket, key.Key, err)
	}
	if len(data) > maxL1ValueSize {
		return false, fmt.Errorf("l1 set %s/%s: value of %d bytes: must be at most %d", key.Bucket, key.Key, len(data), maxL1ValueSize)
	}
	now := c.now().UnixNano()
	s := &stored{payload: payload, codec: codec, originalSize: len(data), gen: c.gen.Add(1), createdAt: now, lastAccessed: now}
	return c.setItem(newMemItem(key, s)), nil
}

// setItem stores it; a nil it (too large for L1) is refused.
func (c *MemoryCache) setItem(it *memItem) bool {
	if it == nil {
		return false
	}
	h := it.hash
	// See the type comment: without this Del, a second Set racing the first
	// through ristretto's buffer is refused and the older value stays. A key
	// already readable is replaced in place by Set, so the Del (a blocking
	// send into ristretto's buffer) is only paid when the key is not.
	// GetTTL is the existence check because, unlike Get, it does not count
	// an access in ristretto's admission policy: a Set is not a read.
	if _, ok := c.c.GetTTL(h); !ok {
		c.c.Del(h)
	}
	return c.c.Set(h, it, it.cost())
}

// Del removes key. Its effect on the readable map is immediate for values
// already applied; a value still buffered is removed when Wait returns.
func (c *MemoryCache) Del(key CacheKey) { c.c.Del(key.hash64()) }

// Wait blocks until every buffered Set and Del has been applied.
func (c *MemoryCache) Wait() { c.c.Wait() }

// UsedBytes is the bytes currently accounted in the tier.
func (c *MemoryCache) UsedBytes() int64 { return c.c.MaxCost() - c.c.RemainingCost() }

// Close releases ristretto's goroutines. The cache is unusable afterwards.
func (c *MemoryCache) Close() {
	c.closing.Store(true)
	c.c.Close()
	if c.coarse != nil {
		c.coarse.stop()
	}
}

// coarseClock is a clock read from memory, advanced by a ticker.
type coarseClock struct {
	nanos atomic.Int64
	done  chan struct{}
}

func newCoarseClock(tick time.Duration) *coarseClock {
	c := &coarseClock{done: make(chan struct{})}
	c.nanos.Store(time.Now().UnixNano())
	go func() {
		t := time.NewTicker(tick)
		defer t.Stop()
		for {
			select {
			case now := <-t.C:
				c.nanos.Store(now.UnixNano())
			case <-c.done:
				return
			}
		}
	}()
	return c
}

func (c *coarseClock) Now() time.Time { return time.Unix(0, c.nanos.Load()) }

func (c *coarseClock) stop() { close(c.done) }
