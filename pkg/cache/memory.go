package cache

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

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
	// Now is the clock for created/last-accessed times; nil means the wall
	// clock read when the cache is built, advanced by the monotonic clock
	// (one clock read per Set instead of time.Now's two). A hit reads it
	// only when it is sampled (see accessSampleBits).
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
//
// Ristretto's map holds what a hit returns (l1Value, the size of the slice
// header bare ristretto would hold for a []byte value) under the key's
// 128-bit hash: ristretto itself compares the high half (its "conflict"
// hash), so a hit reads nothing but ristretto's own map slot. What only
// Stat, sampled hits and eviction need lives beside it in cold, keyed by
// the same 128 bits: the access statistics, and, for Tiered (owned), the
// CacheKey and generation its demotions need.
type MemoryCache struct {
	c    *ristretto.Cache[string, l1Value]
	cold [coldShards]coldShard
	// owned: every stored value has its cold entry, written by setAt (Tiered
	// needs the key of every eviction). Otherwise a value's cold entry is
	// made by its first sampled hit, and a Set writes none.
	owned bool
	// reread has one bit per hash slot: set by a hit on an entry that
	// entered on an L3 read (readFill), cleared when such an entry is
	// stored. See "Access statistics" in the package doc.
	reread  []atomic.Uint64
	mask    uint64 // len(reread)*64 - 1
	comp    Compression
	now     func() time.Time // nil: epoch + monotonic time since
	epoch   time.Time
	tm      *tierMetrics
	metrics *Metrics
	// closing silences the hooks: ristretto's Close "evicts" every entry.
	closing atomic.Bool
}

// l1Value is ristretto's value: everything an uncompressed hit reads, in
// 24 bytes, so that ristretto's map slot is no larger than with a bare
// []byte value (TestL1ValueLayout). It is compared whole (==) to tell the
// value ristretto holds from an older one of the same key.
type l1Value struct {
	// data is the first byte of the payload for CodecNone (whose original
	// size is its length), else a *compressedPayload.
	data unsafe.Pointer
	// meta packs len(payload) (bits 0-31), the codec (32-33), readFill (34)
	// and the low 29 bits of the generation (35-63).
	meta      uint64
	createdAt int64 // unix nanoseconds
}

// compressedPayload is a compressed entry's bytes and the length they
// decode to. A compressed hit decodes anyway, so it may follow a pointer.
type compressedPayload struct {
	payload      []byte
	originalSize int
}

const (
	metaLenMask   = 1<<32 - 1
	metaCodecBit  = 32
	metaReadFill  = 1 << 34
	metaGenShift  = 35
	coldShards    = 256
	ristrettoKeyN = 16 // bytes of the key ristretto sees: the 128-bit hash
)

func newL1Value(s *stored) l1Value {
	v := l1Value{
		meta:      uint64(len(s.payload)) | uint64(s.codec)<<metaCodecBit | s.gen<<metaGenShift,
		createdAt: s.createdAt,
	}
	if s.readFill {
		v.meta |= metaReadFill
	}
	if s.codec == CodecNone {
		v.data = unsafe.Pointer(unsafe.SliceData(s.payload))
	} else {
		v.data = unsafe.Pointer(&compressedPayload{payload: s.payload, originalSize: s.originalSize})
	}
	return v
}

func (v l1Value) codec() Codec    { return Codec(v.meta >> metaCodecBit & 3) }
func (v l1Value) readFill() bool  { return v.meta&metaReadFill != 0 }
func (v l1Value) payloadLen() int { return int(v.meta & metaLenMask) }

// payload is the stored bytes and the length they decode to.
func (v l1Value) payload() ([]byte, int) {
	if v.codec() == CodecNone {
		n := v.payloadLen()
		return unsafe.Slice((*byte)(v.data), n), n
	}
	cp := (*compressedPayload)(v.data)
	return cp.payload, cp.originalSize
}

// coldEntry is what L1 knows of an entry beyond what a hit reads.
type coldEntry struct {
	v            l1Value // the value this entry describes
	accessCount  uint64
	lastAccessed int64
	owner        *coldOwner // owned only
}

// coldOwner is what Tiered needs of an evicted or refused entry.
type coldOwner struct {
	key CacheKey
	gen uint64
}

type coldShard struct {
	mu sync.Mutex
	m  map[hashKey]coldEntry
	_  [48]byte // one shard per 64-byte cache line: neighbours do not share it
}

func (c *MemoryCache) coldShard(h hashKey) *coldShard { return &c.cold[(h.lo>>32)%coldShards] }

// memItem is an L1 entry as Tiered sees it on eviction or rejection.
type memItem struct {
	key          CacheKey
	hash         uint64 // low half of key's 128-bit hash
	gen          uint64
	payload      []byte
	codec        Codec
	originalSize int
	createdAt    int64
	accessCount  uint64
	lastAccessed int64
	readFill     bool
}

func (it *memItem) stored() *stored {
	return &stored{
		payload: it.payload, codec: it.codec, originalSize: it.originalSize, gen: it.gen,
		createdAt: it.createdAt, lastAccessed: it.lastAccessed, accessCount: it.accessCount, readFill: it.readFill,
	}
}

// accessSampleBits: a hit is recorded on its entry with probability
// 1/2^accessSampleBits and then counts 2^accessSampleBits accesses.
const accessSampleBits = 6

// maxL1ValueSize is the largest original value L1 holds (a payload's
// length is stored in 32 bits of l1Value). Larger values skip L1; nothing
// of that size belongs in a RAM block cache.
const maxL1ValueSize = math.MaxUint32

func cost(key CacheKey, payloadLen int) int64 {
	return int64(payloadLen + len(key.Bucket) + len(key.Key))
}

// ristrettoKey is h as the 16-byte string that ristretto's KeyToHash (see
// NewMemoryCache) splits back into its key (lo) and conflict (hi) hashes.
// The string points into *buf, which stays on the caller's stack: ristretto
// only hashes the keys it is given (Get, Set, Del and GetTTL pass them to
// KeyToHash and keep the two numbers), and hiding the pointer from escape
// analysis keeps a Get free of allocations (TestMemoryGetDoesNotAllocate).
func (h hashKey) ristrettoKey(buf *[ristrettoKeyN]byte) string {
	binary.LittleEndian.PutUint64(buf[:8], h.lo)
	binary.LittleEndian.PutUint64(buf[8:], h.hi)
	u := uintptr(unsafe.Pointer(buf))
	p := *(*unsafe.Pointer)(unsafe.Pointer(&u)) // the same pointer, not seen to flow from buf
	return unsafe.String((*byte)(p), ristrettoKeyN)
}

func ristrettoKeyToHash(k string) (uint64, uint64) {
	if len(k) != ristrettoKeyN {
		panic(fmt.Sprintf("l1 ristretto key of %d bytes: must be %d", len(k), ristrettoKeyN))
	}
	b := unsafe.Slice(unsafe.StringData(k), ristrettoKeyN)
	return binary.LittleEndian.Uint64(b[:8]), binary.LittleEndian.Uint64(b[8:])
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
	mc := &MemoryCache{comp: cfg.Compression, now: cfg.Now, tm: m.tier(TierL1), metrics: m,
		owned: cfg.onEvict != nil || cfg.onReject != nil}
	for i := range mc.cold {
		mc.cold[i].m = map[hashKey]coldEntry{}
	}
	// One bit per admission counter, rounded up to a power of two: for a
	// full cache of ExpectedItemSize items, about 10 slots per item.
	words := uint64(1)
	for words*64 < uint64(counters) {
		words <<= 1
	}
	mc.reread, mc.mask = make([]atomic.Uint64, words), words*64-1
	mc.epoch = time.Now()
	rc, err := ristretto.NewCache(&ristretto.Config[string, l1Value]{
		NumCounters:        counters,
		MaxCost:            cfg.CapacityBytes,
		BufferItems:        64,
		IgnoreInternalCost: true, // cost is our byte count, nothing else
		KeyToHash:          ristrettoKeyToHash,
		OnEvict: func(item *ristretto.Item[l1Value]) {
			if mc.closing.Load() {
				return
			}
			mc.tm.evictions.Inc()
			if it := mc.leave(hashKey{item.Key, item.Conflict}, item.Value); it != nil && cfg.onEvict != nil {
				cfg.onEvict(it)
			}
		},
		OnReject: func(item *ristretto.Item[l1Value]) {
			if mc.closing.Load() {
				return
			}
			if it := mc.leave(hashKey{item.Key, item.Conflict}, item.Value); it != nil && cfg.onReject != nil {
				cfg.onReject(it)
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

// leave runs when ristretto evicted or refused v, its value under h: it
// removes v's cold entry and, when owned, returns it as Tiered sees it
// (nil when the cold entry describes a later value of the key, or none:
// Del). Without owned, a cold entry of another value is stale (ristretto
// holds no value under h now: a later one would have replaced v in place)
// and is removed too.
func (c *MemoryCache) leave(h hashKey, v l1Value) *memItem {
	// A victim ristretto's map no longer held comes with conflict 0, which
	// no hashKey has: it finds no cold entry.
	sh := c.coldShard(h)
	sh.mu.Lock()
	e, ok := sh.m[h]
	match := ok && e.v == v
	if match || ok && !c.owned {
		delete(sh.m, h)
	}
	sh.mu.Unlock()
	if !match || !c.owned {
		return nil
	}
	payload, orig := v.payload()
	return &memItem{
		key: e.owner.key, hash: h.lo, gen: e.owner.gen, payload: payload, codec: v.codec(), originalSize: orig,
		createdAt: v.createdAt, accessCount: e.accessCount, lastAccessed: e.lastAccessed, readFill: v.readFill(),
	}
}

// Get returns the entry and true on a hit. The hit path does not read the
// access statistics: the returned Metadata has LastAccessed and AccessCount
// zero (Stat reads them, approximate; see the package doc).
func (c *MemoryCache) Get(key CacheKey) (e CacheEntry, ok bool) {
	ok = c.getInto(key.hash(), &e) // fills the result in place: no copy of it
	return e, ok
}

func (c *MemoryCache) getAt(h hashKey) (e CacheEntry, ok bool) {
	ok = c.getInto(h, &e)
	return e, ok
}

// getInto is Get of the key whose hash is h; on a hit it sets *e, which
// must be zero, and returns true.
func (c *MemoryCache) getInto(h hashKey, e *CacheEntry) bool {
	// One number decides both samples: the access record (low bits) and
	// the latency observation (1 in 64, the next bits). It mixes the key's
	// hash with this goroutine's stripe of the hit counter, which the hit
	// then advances: a fresh draw per hit without a random-number
	// generator's cost. Neither the clock nor the cold entry is read on the
	// other hits.
	hits := c.tm.hits.local()
	r := mix64(hits.Load() ^ h.lo)
	var start time.Time
	timed := (r>>accessSampleBits)&63 == 0
	if timed {
		start = time.Now()
	}
	var kb [ristrettoKeyN]byte
	v, ok := c.c.Get(h.ristrettoKey(&kb)) // ristretto compares h.hi
	if !ok {
		c.tm.misses.add(h.lo)
		if timed {
			c.tm.observeSince(start)
		}
		return false
	}
	if v.readFill() {
		w, bit := c.rereadBit(h.lo)
		if w.Load()&bit == 0 {
			w.Or(bit)
		}
	}
	if r&(1<<accessSampleBits-1) == 0 {
		c.record(h, v)
	}
	codec := v.codec()
	var data []byte
	var orig int
	if codec == CodecNone {
		orig = v.payloadLen()
		data = unsafe.Slice((*byte)(v.data), orig)
	} else {
		var payload []byte
		payload, orig = v.payload()
		var err error
		if data, err = decode(payload, codec, orig); err != nil {
			// Only a bug can corrupt RAM-held bytes; still, never return them.
			c.tm.corrupt.Inc()
			c.delAt(h)
			c.tm.misses.add(0)
			return false
		}
	}
	hits.Add(1)
	if timed {
		c.tm.observeSince(start)
	}
	e.Data = data
	e.Metadata.Size = uint64(v.payloadLen())
	e.Metadata.CreatedAt = time.Unix(0, v.createdAt)
	e.Metadata.Compressed = codec != CodecNone
	e.Metadata.CompressionAlgorithm = codec
	e.Metadata.OriginalSize = uint64(orig)
	return true
}

// nowNano is the time for created and last-accessed times, in unix
// nanoseconds.
func (c *MemoryCache) nowNano() int64 {
	if c.now != nil {
		return c.now().UnixNano()
	}
	return c.epoch.UnixNano() + int64(time.Since(c.epoch))
}

// record is a sampled hit on v: it counts 2^accessSampleBits accesses and
// moves lastAccessed to now. Owned, it leaves alone a cold entry of another
// value (a later one, still in ristretto's buffer); otherwise such an
// entry is an earlier value's and v's replaces it.
func (c *MemoryCache) record(h hashKey, v l1Value) {
	now := c.nowNano()
	sh := c.coldShard(h)
	sh.mu.Lock()
	e, ok := sh.m[h]
	if !ok || e.v != v {
		if c.owned {
			sh.mu.Unlock()
			return
		}
		e = coldEntry{v: v, lastAccessed: v.createdAt}
	}
	e.accessCount += 1 << accessSampleBits
	e.lastAccessed = max(e.lastAccessed, now)
	sh.m[h] = e
	sh.mu.Unlock()
}

// mix64 is a bijective bit mixer (the finalizer of MurmurHash3): every
// input bit flips each output bit with probability about 1/2.
func mix64(x uint64) uint64 {
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	return x ^ x>>33
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
func (c *MemoryCache) Stat(key CacheKey) (EntryMetadata, bool) { return c.statAt(key.hash()) }

func (c *MemoryCache) statAt(h hashKey) (EntryMetadata, bool) {
	var kb [ristrettoKeyN]byte
	v, ok := c.c.Get(h.ristrettoKey(&kb))
	if !ok {
		return EntryMetadata{}, false
	}
	payload, orig := v.payload()
	s := stored{payload: payload, codec: v.codec(), originalSize: orig, createdAt: v.createdAt, lastAccessed: v.createdAt}
	sh := c.coldShard(h)
	sh.mu.Lock()
	if e, ok := sh.m[h]; ok && e.v == v {
		s.accessCount, s.lastAccessed = e.accessCount, e.lastAccessed
	}
	sh.mu.Unlock()
	return s.metadata(), true
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
	now := c.nowNano()
	// The generation only tells this value's l1Value from another of the
	// same key (see leave and record): a random one needs no shared counter.
	s := stored{payload: payload, codec: codec, originalSize: len(data), gen: rand.Uint64(), createdAt: now, lastAccessed: now}
	return c.setStored(key, &s), nil
}

// setStored stores s under key; a value larger than L1 holds
// (maxL1ValueSize) is refused.
func (c *MemoryCache) setStored(key CacheKey, s *stored) bool {
	return c.setAt(key.hash(), key, s)
}

func (c *MemoryCache) setAt(h hashKey, key CacheKey, s *stored) bool {
	if s.originalSize < 0 || s.originalSize > maxL1ValueSize || len(s.payload) > maxL1ValueSize {
		return false
	}
	v := newL1Value(s)
	if s.readFill {
		// Not re-read yet: the bit is this entry's from now on.
		w, bit := c.rereadBit(h.lo)
		w.And(^bit)
	}
	// A plain Set brings no statistics (count 0, last access = creation):
	// its cold entry, if any hit is sampled, is made then.
	sh := c.coldShard(h)
	cold := c.owned || s.accessCount != 0 || s.lastAccessed != s.createdAt
	if cold {
		sh.mu.Lock()
		e := coldEntry{v: v, accessCount: s.accessCount, lastAccessed: s.lastAccessed}
		if c.owned {
			e.owner = &coldOwner{key: key, gen: s.gen}
		}
		sh.m[h] = e
		sh.mu.Unlock()
	}
	var kb [ristrettoKeyN]byte
	rk := h.ristrettoKey(&kb)
	// See the type comment: without this Del, a second Set racing the first
	// through ristretto's buffer is refused and the older value stays. A key
	// already readable is replaced in place by Set, so the Del (a blocking
	// send into ristretto's buffer) is only paid when the key is not.
	// GetTTL is the existence check because, unlike Get, it does not count
	// an access in ristretto's admission policy: a Set is not a read.
	if _, ok := c.c.GetTTL(rk); !ok {
		c.c.Del(rk)
	}
	if c.c.Set(rk, v, cost(key, len(s.payload))) {
		return true
	}
	if cold {
		sh.mu.Lock()
		if e, ok := sh.m[h]; ok && e.v == v {
			delete(sh.m, h)
		}
		sh.mu.Unlock()
	}
	return false
}

// Del removes key. Its effect on the readable map is immediate for values
// already applied; a value still buffered is removed when Wait returns.
func (c *MemoryCache) Del(key CacheKey) { c.delAt(key.hash()) }

func (c *MemoryCache) delAt(h hashKey) {
	var kb [ristrettoKeyN]byte
	c.c.Del(h.ristrettoKey(&kb))
	sh := c.coldShard(h)
	sh.mu.Lock()
	delete(sh.m, h)
	sh.mu.Unlock()
}

// Wait blocks until every buffered Set and Del has been applied.
func (c *MemoryCache) Wait() { c.c.Wait() }

// UsedBytes is the bytes currently accounted in the tier.
func (c *MemoryCache) UsedBytes() int64 { return c.c.MaxCost() - c.c.RemainingCost() }

// Close releases ristretto's goroutines. The cache is unusable afterwards.
func (c *MemoryCache) Close() {
	c.closing.Store(true)
	c.c.Close()
}
