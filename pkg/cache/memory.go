package cache

import (
	"fmt"
	"math"
	"math/rand/v2"
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
	// Now is the clock for created/last-accessed times; nil means time.Now.
	// A hit reads it only when it is sampled (see accessSampleBits).
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
	c *ristretto.Cache[uint64, *memItem]
	// reread has one bit per hash slot: set by a hit on an entry that
	// entered on an L3 read (readFill), cleared when such an entry is
	// stored. See "Access statistics" in the package doc.
	reread  []atomic.Uint64
	mask    uint64 // len(reread)*64 - 1
	comp    Compression
	now     func() time.Time
	tm      *tierMetrics
	gen     atomic.Uint64 // generation of values Set directly on this tier
	metrics *Metrics
	// closing silences the hooks: ristretto's Close "evicts" every entry.
	closing atomic.Bool
}

// memItem is what L1 stores (ristretto's value is a pointer to it).
//
// Layout: a hit reads the item right after ristretto's map lookup, and with
// thousands of items that read is usually a CPU cache miss. Everything a hit
// reads is in the first 64 bytes and is never written after the item is
// built; the access statistics, written only by sampled hits, and the
// fields of eviction and demotion are in the second half. The struct is
// exactly 128 bytes, so the allocator's 128-byte size class puts each half
// on its own cache line: a hit costs one shared read, and hits on other
// cores never invalidate it. TestMemItemLayout pins this.
//
// (Storing the hit's fields inline as ristretto's value type, a 48-byte
// struct instead of a pointer, was measured 4-5x slower per Get in
// ristretto v2.4.2: BenchmarkCacheMixed90Read's history in the README.)
type memItem struct {
	// hot: read by every hit, written only when the item is built.
	check        uint64 // high half of key's hash128
	payload      []byte
	createdAt    int64
	originalSize uint32 // at most maxL1ValueSize
	codec        Codec
	readFill     bool // see stored.readFill
	_            [18]byte

	// cold: sampled hits, Set, eviction and demotion.
	accessCount  atomic.Uint64
	lastAccessed atomic.Int64
	key          CacheKey
	hash         uint64 // low half of key's hash128: ristretto's key
	gen          uint64
}

// accessSampleBits: a hit is recorded on its item with probability
// 1/2^accessSampleBits and then counts 2^accessSampleBits accesses.
const accessSampleBits = 4

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
	// One bit per admission counter, rounded up to a power of two: for a
	// full cache of ExpectedItemSize items, about 10 slots per item.
	words := uint64(1)
	for words*64 < uint64(counters) {
		words <<= 1
	}
	mc.reread, mc.mask = make([]atomic.Uint64, words), words*64-1
	if mc.now == nil {
		mc.now = time.Now
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
		return nil, fmt.Errorf("create ristretto cache (%d bytes): %w", cfg.CapacityBytes, err)
	}
	mc.c = rc
	m.bytes.set(TierL1, mc.UsedBytes)
	return mc, nil
}

// Get returns the entry and true on a hit. The hit path does not read the
// access statistics: the returned Metadata has LastAccessed and AccessCount
// zero (Stat reads them, approximate; see the package doc).
func (c *MemoryCache) Get(key CacheKey) (CacheEntry, bool) {
	lo, hi := key.hash128()
	// One draw decides both samples: the access record (low bits) and the
	// latency observation (1 in 64, the next bits). Neither the clock nor
	// the item is read on the other hits.
	r := rand.Uint64()
	var start time.Time
	timed := (r>>accessSampleBits)&63 == 0
	if timed {
		start = time.Now()
	}
	v, ok := c.c.Get(lo)
	if !ok || v == nil || v.check != hi {
		c.tm.misses.add(lo)
		if timed {
			c.tm.observeSince(start)
		}
		return CacheEntry{}, false
	}
	if v.readFill {
		w, bit := c.rereadBit(lo)
		if w.Load()&bit == 0 {
			w.Or(bit)
		}
	}
	if r&(1<<accessSampleBits-1) == 0 {
		c.record(v)
	}
	data, err := decode(v.payload, v.codec, int(v.originalSize))
	if err != nil {
		// Only a bug can corrupt RAM-held bytes; still, never return them.
		c.tm.corrupt.Inc()
		c.Del(key)
		c.tm.misses.add(0)
		return CacheEntry{}, false
	}
	c.tm.hits.add(hi)
	if timed {
		c.tm.observeSince(start)
	}
	return CacheEntry{Data: data, Metadata: EntryMetadata{
		Size:                 uint64(len(v.payload)),
		CreatedAt:            time.Unix(0, v.createdAt),
		Compressed:           v.codec != CodecNone,
		CompressionAlgorithm: v.codec,
		OriginalSize:         uint64(v.originalSize),
	}}, true
}

// record is a sampled hit: it counts 2^accessSampleBits accesses and moves
// lastAccessed to now.
func (c *MemoryCache) record(it *memItem) {
	now := c.now().UnixNano()
	it.accessCount.Add(1 << accessSampleBits)
	// A racing sampled hit may store an older time after ours; the error is
	// bounded by how far apart the two read the clock.
	if it.lastAccessed.Load() < now {
		it.lastAccessed.Store(now)
	}
}

func (c *MemoryCache) rereadBit(lo uint64) (*atomic.Uint64, uint64) {
	slot := lo & c.mask
	return &c.reread[slot>>6], 1 << (slot & 63)
}

// rereadSince reports whether an entry of it's hash slot that entered on an L3
// read was hit since it was stored (or a colliding key's was).
func (c *MemoryCache) rereadSince(it *memItem) bool {
	w, bit := c.rereadBit(it.hash)
	return w.Load()&bit != 0
}

// Stat returns key's metadata with its access statistics, without counting
// an access. They are approximate (see the package doc).
func (c *MemoryCache) Stat(key CacheKey) (EntryMetadata, bool) {
	lo, hi := key.hash128()
	v, ok := c.c.Get(lo)
	if !ok || v == nil || v.check != hi {
		return EntryMetadata{}, false
	}
	return v.stored().metadata(), true
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
	if it.readFill {
		// Not re-read yet: the bit is this entry's from now on.
		w, bit := c.rereadBit(h)
		w.And(^bit)
	}
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
}
