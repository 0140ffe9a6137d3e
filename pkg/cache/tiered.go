package cache

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TieredConfig configures a Tiered cache.
type TieredConfig struct {
	// Memory configures L1. Its Compression, Metrics and Now are replaced by
	// the fields below.
	Memory MemoryConfig
	// Disk configures L2. Its Compression, Metrics and Now are replaced by the
	// fields below.
	Disk DiskConfig
	// Store is L3, the source of truth. Required.
	Store Store
	// Compression is the storage form chosen when a value enters the cache
	// (Put or an L3 hit); the same bytes then move between L1 and L2.
	Compression Compression
	// Registerer receives the cache collectors; nil leaves them unregistered.
	Registerer prometheus.Registerer
	// Now is the clock for entry times; nil means time.Now.
	Now func() time.Time
	// MaxPendingDemotionBytes bounds the evicted L1 bytes waiting to be written
	// to L2; past it, evictions are dropped instead of demoted (L3 still has the
	// data). 0 means 64 MiB.
	MaxPendingDemotionBytes int64
}

// Tiered is the L1 → L2 → L3 cache. See the package documentation for the
// ordering and consistency rules.
type Tiered struct {
	l1   *MemoryCache
	l2   *DiskCache
	l3   Store
	comp Compression
	now  func() time.Time

	gen     atomic.Uint64
	stripes [stripeCount]stripe

	metrics     *Metrics
	tm3         *tierMetrics
	promotedL2  prometheus.Counter
	promotedL3  prometheus.Counter
	demotedL2   prometheus.Counter
	demoteFails prometheus.Counter
	scanSkips   atomic.Int64 // evictions not demoted because read only once

	// Demotion queue, fed by ristretto's policy goroutine, drained by one worker.
	qmu          sync.Mutex
	qcond        *sync.Cond
	queue        []l1Event
	queuedBytes  int64
	maxQueued    int64
	enqueued     uint64
	processed    uint64
	qclosed      bool
	workerDone   chan struct{}
	demoteErrMu  sync.Mutex
	lastDemoteEr error
}

// stripeCount is the number of key stripes (the schema's 1024-way sharding).
const stripeCount = 1024

// stripe serialises the multi-tier operations of its keys and records which
// of them L1 holds, with the held value (and so its generation). A demotion
// is written only if its generation is still the recorded one: a Put or
// Invalidate that came in between wins. A Get that waited for the lock while
// another promoted the key takes the recorded value, which ristretto may not
// have applied yet.
type stripe struct {
	mu sync.Mutex
	l1 map[CacheKey]*stored // the value L1 holds (or will, once ristretto applies the Set)
}

// l1Event is an L1 eviction (item set) or rejection (item nil) to process.
type l1Event struct {
	key  CacheKey
	gen  uint64
	item *memItem
}

// NewTiered opens L2, builds L1 and starts the demotion worker.
func NewTiered(cfg TieredConfig) (*Tiered, error) {
	if cfg.Store == nil {
		return nil, errors.New("tiered cache Store is nil: L3 is required (the cache never holds the only copy)")
	}
	if err := cfg.Compression.validate(); err != nil {
		return nil, fmt.Errorf("tiered cache: %w", err)
	}
	if cfg.MaxPendingDemotionBytes < 0 {
		return nil, fmt.Errorf("tiered cache MaxPendingDemotionBytes %d: must be >= 0", cfg.MaxPendingDemotionBytes)
	}
	m, err := NewMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	t := &Tiered{l3: cfg.Store, comp: cfg.Compression, now: cfg.Now, metrics: m, tm3: m.tier(TierL3),
		maxQueued: cfg.MaxPendingDemotionBytes, workerDone: make(chan struct{})}
	if t.now == nil {
		t.now = time.Now
	}
	if t.maxQueued == 0 {
		t.maxQueued = 64 << 20
	}
	t.qcond = sync.NewCond(&t.qmu)
	t.promotedL2 = m.promotions.WithLabelValues(TierL2.String())
	t.promotedL3 = m.promotions.WithLabelValues(TierL3.String())
	t.demotedL2 = m.demotions.WithLabelValues(TierL2.String())
	t.demoteFails = m.demotionFailures
	for i := range t.stripes {
		t.stripes[i].l1 = map[CacheKey]*stored{}
	}

	dcfg := cfg.Disk
	dcfg.Compression, dcfg.Metrics, dcfg.Now = Compression{}, m, t.now
	if t.l2, err = OpenDiskCache(dcfg); err != nil {
		return nil, err
	}
	// Generations must grow across restarts: L2 files carry theirs.
	t.gen.Store(t.l2.maxGeneration())

	mcfg := cfg.Memory
	mcfg.Compression, mcfg.Metrics, mcfg.Now = Compression{}, m, t.now
	mcfg.onEvict = func(it *memItem) { t.enqueue(it, true) }
	mcfg.onReject = func(it *memItem) { t.enqueue(it, false) }
	if t.l1, err = NewMemoryCache(mcfg); err != nil {
		_ = t.l2.Close()
		return nil, err
	}
	go t.demotionWorker()
	return t, nil
}

func (t *Tiered) stripe(key CacheKey) *stripe { return &t.stripes[key.hash64()%stripeCount] }

// Get returns key's value and the tier that served it: L1, else L2 (then
// promoted to L1), else L3 (then promoted to L1). A key absent from L3 gives
// an error wrapping ErrNotFound and TierNone.
func (t *Tiered) Get(ctx context.Context, key CacheKey) (CacheEntry, Tier, error) {
	if e, ok := t.l1.Get(key); ok {
		return e, TierL1, nil
	}
	st := t.stripe(key)
	st.mu.Lock()
	defer st.mu.Unlock()
	if s, ok := st.l1[key]; ok {
		// Another Get promoted key while this one waited for the lock (a
		// read-ahead and a read of the same block), and ristretto has not
		// applied the Set yet: take that value instead of fetching it again.
		if data, err := decode(s.payload, s.codec, s.originalSize); err == nil {
			return CacheEntry{Data: data, Metadata: s.metadata()}, TierL1, nil
		}
	}

	if s, ok := t.l2.getStored(key); ok {
		data, err := decode(s.payload, s.codec, s.originalSize)
		if err == nil {
			// Keep the L2 generation: if L1 evicts it unchanged, L2 already has it.
			t.promoteLocked(st, key, s)
			t.promotedL2.Inc()
			return CacheEntry{Data: data, Metadata: s.metadata()}, TierL2, nil
		}
		// Checksummed bytes that do not decode: drop them, fall through to L3.
		t.metrics.corrupt.WithLabelValues(TierL2.String()).Inc()
		if derr := t.l2.Delete(key); derr != nil {
			return CacheEntry{}, TierNone, fmt.Errorf("drop undecodable l2 entry: %w", derr)
		}
	}

	start := time.Now()
	data, err := t.l3.Get(ctx, key)
	t.tm3.observeSince(start)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			t.tm3.misses.add(0)
			return CacheEntry{}, TierNone, fmt.Errorf("get %s/%s: %w", key.Bucket, key.Key, err)
		}
		return CacheEntry{}, TierNone, fmt.Errorf("get %s/%s from l3: %w", key.Bucket, key.Key, err)
	}
	t.tm3.hits.add(0)
	// L3's Get hands over its bytes (Store's contract), so the cache keeps
	// them without a copy; the caller gets the cached buffer, as on an L1 hit.
	s, err := t.newStored(data, true)
	if err != nil {
		return CacheEntry{}, TierNone, fmt.Errorf("get %s/%s: %w", key.Bucket, key.Key, err)
	}
	s.accessCount = 1 // this read
	s.readFill = true
	t.promoteLocked(st, key, s)
	t.promotedL3.Inc()
	return CacheEntry{Data: data, Metadata: s.metadata()}, TierL3, nil
}

// newStored builds the cache's storage form of data, a value that has just
// entered the cache. It aliases data only when owned says the cache owns it.
func (t *Tiered) newStored(data []byte, owned bool) (*stored, error) {
	payload, codec, err := t.comp.encode(data)
	if err != nil {
		return nil, err
	}
	if codec == CodecNone && !owned {
		payload = slices.Clone(data)
	}
	now := t.now().UnixNano()
	return &stored{payload: payload, codec: codec, originalSize: len(data), gen: t.gen.Add(1), createdAt: now, lastAccessed: now}, nil
}

// promoteLocked puts s into L1 and records it in the stripe.
func (t *Tiered) promoteLocked(st *stripe, key CacheKey, s *stored) {
	if t.l1.setStored(key, s) {
		st.l1[key] = s
	} else {
		delete(st.l1, key)
	}
}

// dropCachedLocked removes key from L1 and L2. Wait makes sure an older value
// still in ristretto's buffer is applied and then deleted now, not surfacing
// later; the L2 delete is durable before L3 is touched.
func (t *Tiered) dropCachedLocked(st *stripe, key CacheKey) error {
	t.l1.Del(key)
	t.l1.Wait()
	delete(st.l1, key)
	if err := t.l2.Delete(key); err != nil {
		return err
	}
	return nil
}

// Put writes data to L3 and then caches it in L1 (write-through). The cached
// copies of the previous value are dropped before L3 is written, so a failed
// or interrupted Put leaves no stale copy. The cache keeps its own copy of data.
func (t *Tiered) Put(ctx context.Context, key CacheKey, data []byte) error {
	st := t.stripe(key)
	st.mu.Lock()
	defer st.mu.Unlock()
	if err := t.dropCachedLocked(st, key); err != nil {
		return fmt.Errorf("put %s/%s: drop cached copy: %w", key.Bucket, key.Key, err)
	}
	if err := t.l3.Put(ctx, key, data); err != nil {
		return fmt.Errorf("put %s/%s to l3: %w", key.Bucket, key.Key, err)
	}
	s, err := t.newStored(data, false)
	if err != nil {
		return fmt.Errorf("put %s/%s: %w", key.Bucket, key.Key, err)
	}
	t.promoteLocked(st, key, s)
	return nil
}

// Invalidate drops key from L1 and L2, so the next Get reads L3. Call it
// when L3 changed behind the cache's back — before the change, to be safe
// against a crash in between.
func (t *Tiered) Invalidate(key CacheKey) error {
	st := t.stripe(key)
	st.mu.Lock()
	defer st.mu.Unlock()
	if err := t.dropCachedLocked(st, key); err != nil {
		return fmt.Errorf("invalidate %s/%s: %w", key.Bucket, key.Key, err)
	}
	return nil
}

// Delete removes key from every tier, L3 included.
func (t *Tiered) Delete(ctx context.Context, key CacheKey) error {
	st := t.stripe(key)
	st.mu.Lock()
	defer st.mu.Unlock()
	if err := t.dropCachedLocked(st, key); err != nil {
		return fmt.Errorf("delete %s/%s: %w", key.Bucket, key.Key, err)
	}
	if err := t.l3.Delete(ctx, key); err != nil {
		return fmt.Errorf("delete %s/%s from l3: %w", key.Bucket, key.Key, err)
	}
	return nil
}

// enqueue runs on ristretto's policy goroutine: it must not block on locks
// held across ristretto calls, so it only appends to the queue.
func (t *Tiered) enqueue(it *memItem, evicted bool) {
	t.qmu.Lock()
	defer t.qmu.Unlock()
	if t.qclosed {
		return
	}
	ev := l1Event{key: it.key, gen: it.gen}
	if evicted && t.queuedBytes+int64(len(it.payload)) <= t.maxQueued {
		ev.item = it
		t.queuedBytes += int64(len(it.payload))
	}
	t.queue = append(t.queue, ev)
	t.enqueued++
	t.qcond.Broadcast()
}

func (t *Tiered) demotionWorker() {
	defer close(t.workerDone)
	for {
		t.qmu.Lock()
		for len(t.queue) == 0 && !t.qclosed {
			t.qcond.Wait()
		}
		batch := t.queue
		t.queue = nil
		closed := t.qclosed
		t.qmu.Unlock()

		var bytes int64
		for _, ev := range batch {
			t.handle(ev)
			if ev.item != nil {
				bytes += int64(len(ev.item.payload))
			}
		}
		t.qmu.Lock()
		t.queuedBytes -= bytes
		t.processed += uint64(len(batch))
		t.qcond.Broadcast()
		t.qmu.Unlock()
		if closed && len(batch) == 0 {
			return
		}
	}
}

// handle applies one L1 eviction or rejection, unless a newer Put, promotion
// or Invalidate of the key has happened since (the generations differ).
func (t *Tiered) handle(ev l1Event) {
	st := t.stripe(ev.key)
	st.mu.Lock()
	defer st.mu.Unlock()
	if s, ok := st.l1[ev.key]; !ok || s.gen != ev.gen {
		return
	}
	delete(st.l1, ev.key)
	if ev.item == nil || t.l2.has(ev.key, ev.gen) {
		return
	}
	if ev.item.readFill && !t.l1.rereadSince(ev.item) {
		// Read once and evicted: scan data, not worth an L2 write (L3 has it).
		t.scanSkips.Add(1)
		return
	}
	// Not fsynced: a demoted entry a crash loses or tears is only a miss
	// (see DiskCache's write protocol); Invalidate's Delete stays durable.
	if err := t.l2.putStored(ev.key, ev.item.stored(), false); err != nil {
		// Too large for L2, or a disk error: the value is still in L3.
		t.demoteFails.Inc()
		t.demoteErrMu.Lock()
		t.lastDemoteEr = err
		t.demoteErrMu.Unlock()
		return
	}
	t.demotedL2.Inc()
}

// Flush applies ristretto's buffered writes and waits until every L1
// eviction so far has been demoted (or dropped). For tests and shutdown.
func (t *Tiered) Flush() {
	t.l1.Wait()
	t.qmu.Lock()
	target := t.enqueued
	for t.processed < target && !t.qclosed {
		t.qcond.Wait()
	}
	t.qmu.Unlock()
}

// LastDemotionError is the most recent failure to write an evicted entry to
// L2 (nil if none): demotion is best effort, since L3 holds the data.
func (t *Tiered) LastDemotionError() error {
	t.demoteErrMu.Lock()
	defer t.demoteErrMu.Unlock()
	return t.lastDemoteEr
}

// Close drains pending demotions, then releases L1 and L2. L2's files stay.
func (t *Tiered) Close() error {
	t.Flush()
	t.qmu.Lock()
	t.qclosed = true
	t.qcond.Broadcast()
	t.qmu.Unlock()
	<-t.workerDone
	t.l1.Close()
	return t.l2.Close()
}
