package ecvolume

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/billyronks/couchestor/pkg/cache"
	"github.com/billyronks/couchestor/pkg/journal"
	"github.com/billyronks/couchestor/pkg/nbd"
)

const lba = journal.LBASize

// Options describe one volume: its geometry (from the ECVolume and its
// ErasureCodingPolicy), its journal stores and its stripe store.
type Options struct {
	// Name is the ECVolume's name; it also names the volume's cache bucket.
	Name string
	// SizeBytes is spec.sizeBytes: a positive multiple of 512.
	SizeBytes int64
	// StripeSizeBytes is the policy's stripeSizeBytes.
	StripeSizeBytes int64
	// JournalStores are the replicationFactor replicas of the journal
	// (journal.FileStore locally, shard-server stores remotely). Open takes
	// ownership: Close closes them.
	JournalStores []journal.Store
	// Journal is journalConfig.journalSizeBytes (and the batch bound).
	Journal journal.Options
	// DestageThresholdPercent and DestageInterval are journalConfig's.
	DestageThresholdPercent int
	DestageInterval         time.Duration
	// DestageParallel is how many stripes the destager writes at once (0
	// means 8): a stripe write waits mostly on shard servers and the API
	// server (measured on the stripe path: 31 stripes/s with 4 in flight,
	// 40/s with 12, API latencies rising), so a few in flight hide that.
	DestageParallel int
	// Stripes is the volume's stripe path.
	Stripes StripeStore
	// Cache configures the read cache; nil reads the stripes directly.
	Cache *CacheOptions
	// VolumeUID is the ECVolume's metadata.uid. The disk cache's entries are
	// bound to it and to the journal's writer epoch: entries of another
	// volume of the same name, or older than another writer's epoch, are
	// removed at Open (cacheBinding).
	VolumeUID string
	// MaxRecordBytes splits larger writes into several journal records
	// (0 means 4 MiB, bounded by an eighth of the journal).
	MaxRecordBytes int64
	// WriteTimeout bounds how long a write waits for journal space before it
	// fails with ENOSPC; 0 waits as long as it takes (back-pressure).
	WriteTimeout time.Duration
	// OnDestageError hears destage failures (the destager retries at its next
	// trigger; writes back-pressure meanwhile). Wire it to an alert.
	OnDestageError func(error)
	// OnDestageSuccess hears a destage pass that wrote every stripe it
	// touched (n, 0 when idle) and trimmed the journal.
	OnDestageSuccess func(n int)
}

// CacheOptions configure the volume's L1/L2 read cache.
type CacheOptions struct {
	// BlockBytes is the unit cached (0 means 64 KiB); it must divide the
	// stripe size and be a multiple of 512.
	BlockBytes  int64
	MemoryBytes int64 // L1 (RAM) capacity
	DiskDir     string
	DiskBytes   int64 // L2 (local disk) capacity
	Compression cache.Compression
	// ReadAheadBytes is how far past a sequential read the cache is filled
	// in the background (0 means 4 MiB but at least 2 blocks, and at most a
	// quarter of MemoryBytes; negative: none),
	// so a sequential reader finds the next blocks cached instead of
	// waiting a stripe read per request.
	ReadAheadBytes int64
	// ConcurrentMisses fetches the blocks of one read concurrently rather
	// than in turn: right for a stripe store whose misses wait on the
	// network (shard servers), wasted work for one in RAM.
	ConcurrentMisses bool
	// Tiered replaces the cache built from the fields above (tests); its L3
	// must be the volume's CacheStore.
	Tiered func(l3 cache.Store) (*cache.Tiered, error)
}

// VolumeBackend is an ECVolume as an nbd.Backend; see the package doc.
type VolumeBackend struct {
	name       string
	size       int64
	stripeSize int64
	maxRecord  int64
	writeTO    time.Duration
	j          *journal.Journal
	stripes    StripeStore
	cache      *cache.Tiered
	block      int64
	bucket     string
	locks      rangeLock
	zeros      []byte
	journaled  journaledMap
	ahead      readAhead
	concurrent bool // CacheOptions.ConcurrentMisses

	destager *journal.Destager
	cancel   context.CancelFunc
	done     chan struct{}
	closeMu  sync.Once
	closeErr error
}

var _ nbd.Backend = (*VolumeBackend)(nil)

// Open recovers the volume's journal (replaying every acknowledged write),
// builds the cache and starts the destager.
func Open(ctx context.Context, o Options) (*VolumeBackend, error) {
	switch {
	case o.Name == "":
		return nil, errors.New("ecvolume: Name is empty")
	case o.SizeBytes <= 0 || o.SizeBytes%lba != 0:
		return nil, fmt.Errorf("ecvolume %s: sizeBytes %d must be a positive multiple of %d", o.Name, o.SizeBytes, lba)
	case o.StripeSizeBytes <= 0 || o.StripeSizeBytes%lba != 0:
		return nil, fmt.Errorf("ecvolume %s: stripeSizeBytes %d must be a positive multiple of %d", o.Name, o.StripeSizeBytes, lba)
	case o.Stripes == nil:
		return nil, fmt.Errorf("ecvolume %s: no stripe store", o.Name)
	case len(o.JournalStores) == 0:
		return nil, fmt.Errorf("ecvolume %s: no journal stores", o.Name)
	}
	v := &VolumeBackend{name: o.Name, size: o.SizeBytes, stripeSize: o.StripeSizeBytes, stripes: o.Stripes,
		writeTO: o.WriteTimeout, bucket: "ecvolume/" + o.Name}
	v.locks.cond = sync.NewCond(&v.locks.mu)
	v.maxRecord = o.MaxRecordBytes
	if v.maxRecord <= 0 {
		v.maxRecord = 4 << 20
		if o.Journal.SizeBytes > 0 {
			v.maxRecord = min(v.maxRecord, o.Journal.SizeBytes/8)
		}
	}
	v.maxRecord -= v.maxRecord % lba
	if v.maxRecord < lba {
		return nil, fmt.Errorf("ecvolume %s: record bound %d below one LBA (journalSizeBytes %d too small)", o.Name, v.maxRecord, o.Journal.SizeBytes)
	}
	v.zeros = make([]byte, v.maxRecord)
	v.journaled.init(o.SizeBytes)

	j, err := journal.Open(ctx, o.JournalStores, o.Journal)
	if err != nil {
		v.closeCache()
		return nil, fmt.Errorf("ecvolume %s: open journal: %w", o.Name, err)
	}
	v.j = j
	// The cache opens after the journal: its disk entries are bound to the
	// writer epoch the journal just took.
	if c := o.Cache; c != nil {
		v.block = c.BlockBytes
		if v.block == 0 {
			v.block = 64 << 10
		}
		if v.block%lba != 0 || v.stripeSize%v.block != 0 {
			_ = j.Close()
			return nil, fmt.Errorf("ecvolume %s: cache block %d must be a multiple of %d dividing stripeSizeBytes %d", o.Name, v.block, lba, v.stripeSize)
		}
		bind, keep := cacheBinding(o.Name, o.VolumeUID, j.Epoch())
		if c.Tiered != nil {
			v.cache, err = c.Tiered(v.CacheStore())
		} else {
			v.cache, err = cache.NewTiered(cache.TieredConfig{
				Memory:      cache.MemoryConfig{CapacityBytes: c.MemoryBytes, ExpectedItemSize: v.block},
				Disk:        cache.DiskConfig{Dir: c.DiskDir, CapacityBytes: c.DiskBytes, Binding: bind, KeepBinding: keep},
				Store:       v.CacheStore(),
				Compression: c.Compression,
			})
		}
		if err != nil {
			_ = j.Close()
			return nil, fmt.Errorf("ecvolume %s: cache: %w", o.Name, err)
		}
		v.concurrent = c.ConcurrentMisses
		ra := c.ReadAheadBytes
		if ra == 0 {
			ra = max(4<<20, 2*v.block)
			if c.MemoryBytes > 0 {
				// Prefetched blocks must survive in L1 until they are read.
				ra = min(ra, c.MemoryBytes/4)
			}
		}
		v.ahead.init(max(ra, 0)/v.block, v.prefetch)
	}

	if used, _ := j.Fill(); used != 0 {
		// Replayed records: where they lie is not known here, so every read
		// consults the journal until the destager has emptied it.
		v.journaled.mark(0, v.size)
	}
	v.destager, err = journal.NewDestager(j, v.Sink(), journal.DestagerConfig{
		StripeSizeBytes:  o.StripeSizeBytes,
		ThresholdPercent: o.DestageThresholdPercent,
		Interval:         o.DestageInterval,
		OnError:          o.OnDestageError,
		OnSuccess:        o.OnDestageSuccess,
		Parallel:         cmp.Or(o.DestageParallel, 8),
	})
	if err != nil {
		_ = j.Close()
		v.closeCache()
		return nil, fmt.Errorf("ecvolume %s: %w", o.Name, err)
	}
	dctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	v.cancel, v.done = cancel, make(chan struct{})
	go func() {
		defer close(v.done)
		_ = v.destager.Run(dctx)
	}()
	return v, nil
}

// cacheBinding is what the disk cache's entries are bound to: the volume's
// name, UID and the writer epoch that fills the cache. Entries written under
// the epoch just before (this export's previous run, or its crash) are still
// exact: every write of that epoch went through the cache's invalidation,
// and this writer replays the journal before reading. Any other binding is
// removed: another volume of the same name (UID), or a gap in epochs, where
// another writer may have changed the stripes since.
func cacheBinding(name, uid string, epoch uint64) (string, func(string) bool) {
	bound := func(e uint64) string { return fmt.Sprintf("ecvolume %s uid %q epoch %d", name, uid, e) }
	prev := bound(epoch - 1)
	return bound(epoch), func(stored string) bool { return epoch > 1 && stored == prev }
}

// Journal is the volume's journal (fill, health, sequence numbers).
func (v *VolumeBackend) Journal() *journal.Journal { return v.j }

// Destager is the volume's destager; DestageOnce forces a pass.
func (v *VolumeBackend) Destager() *journal.Destager { return v.destager }

// Cache is the volume's read cache, or nil.
func (v *VolumeBackend) Cache() *cache.Tiered { return v.cache }

// Close stops the destager (a destage in progress finishes or is abandoned
// before the journal trim, which is safe), then closes the journal and cache.
func (v *VolumeBackend) Close() error {
	v.closeMu.Do(func() {
		v.cancel()
		<-v.done
		v.ahead.stop()
		v.closeErr = v.j.Close()
		v.closeCache()
	})
	return v.closeErr
}

func (v *VolumeBackend) closeCache() {
	if v.cache != nil {
		_ = v.cache.Close()
	}
}

// Size implements nbd.Backend.
func (v *VolumeBackend) Size() int64 { return v.size }

func (v *VolumeBackend) check(off, n int64) error {
	if off < 0 || n < 0 || off > v.size || n > v.size-off {
		return fmt.Errorf("ecvolume %s: range [%d, %d) outside the volume's %d bytes", v.name, off, off+n, v.size)
	}
	return nil
}

// ReadAt implements nbd.Backend: journal first, then cache, then stripes.
func (v *VolumeBackend) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := v.check(off, int64(len(p))); err != nil {
		return err
	}
	if len(p) == 0 {
		return nil
	}
	end := off + int64(len(p))
	first, last := uint64(off/lba), uint64((end+lba-1)/lba)
	var exts []journal.Extent
	if v.mayBeJournaled(off, end) {
		var err error
		if exts, err = v.j.Lookup(ctx, first, last); err != nil {
			return fmt.Errorf("ecvolume %s: journal lookup [%d, %d): %w", v.name, first, last, err)
		}
	}
	// Fill the gaps between journal extents from the clean tiers.
	pos := off
	for _, e := range exts {
		es, ee := int64(e.LBA)*lba, int64(e.LBA)*lba+int64(len(e.Data))
		if es > pos {
			if err := v.readClean(ctx, p[pos-off:min(es, end)-off], pos); err != nil {
				return err
			}
		}
		a, b := max(es, off), min(ee, end)
		copy(p[a-off:b-off], e.Data[a-es:b-es])
		pos = max(pos, b)
	}
	if pos < end {
		return v.readClean(ctx, p[pos-off:], pos)
	}
	return nil
}

// readClean reads bytes the journal does not hold: from the cache, or the
// stripes when there is no cache.
func (v *VolumeBackend) readClean(ctx context.Context, p []byte, off int64) error {
	if v.cache == nil {
		if err := v.stripes.ReadAt(ctx, p, off); err != nil {
			return fmt.Errorf("ecvolume %s: read stripes at %d+%d: %w", v.name, off, len(p), err)
		}
		return nil
	}
	firstB, lastB := off/v.block, (off+int64(len(p))-1)/v.block
	v.ahead.read(firstB, lastB, (v.size-1)/v.block)
	if lastB > firstB && v.concurrent {
		// Several blocks: fetch them at once (each miss waits on the stripe
		// path), then copy in order.
		return v.readBlocks(ctx, p, off, firstB, lastB)
	}
	for len(p) > 0 {
		bi, bo := off/v.block, off%v.block
		e, _, err := v.cache.Get(ctx, v.key(bi))
		if err != nil {
			return fmt.Errorf("ecvolume %s: read block %d: %w", v.name, bi, err)
		}
		if int64(len(e.Data)) <= bo {
			return fmt.Errorf("ecvolume %s: cached block %d holds %d bytes, need offset %d", v.name, bi, len(e.Data), bo)
		}
		n := copy(p, e.Data[bo:])
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// readBlocks fills p (at volume offset off, spanning cache blocks
// firstB..lastB) with one concurrent cache Get per block.
func (v *VolumeBackend) readBlocks(ctx context.Context, p []byte, off, firstB, lastB int64) error {
	errs := make([]error, lastB-firstB+1)
	var wg sync.WaitGroup
	for bi := firstB; bi <= lastB; bi++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e, _, err := v.cache.Get(ctx, v.key(bi))
			if err != nil {
				errs[bi-firstB] = fmt.Errorf("ecvolume %s: read block %d: %w", v.name, bi, err)
				return
			}
			// The part of p this block covers.
			a, b := max(off, bi*v.block), min(off+int64(len(p)), (bi+1)*v.block)
			if int64(len(e.Data)) < b-bi*v.block {
				errs[bi-firstB] = fmt.Errorf("ecvolume %s: cached block %d holds %d bytes, need %d", v.name, bi, len(e.Data), b-bi*v.block)
				return
			}
			copy(p[a-off:b-off], e.Data[a-bi*v.block:])
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (v *VolumeBackend) key(block int64) cache.CacheKey {
	return cache.CacheKey{Bucket: v.bucket, Key: strconv.FormatInt(block, 10)}
}

// WriteAt implements nbd.Backend: the write is journaled and durable on a
// quorum when WriteAt returns nil.
func (v *VolumeBackend) WriteAt(ctx context.Context, p []byte, off int64) error {
	if err := v.check(off, int64(len(p))); err != nil {
		return err
	}
	if len(p) == 0 {
		return nil
	}
	if v.writeTO > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, v.writeTO)
		defer cancel()
	}
	end := off + int64(len(p))
	first, last := off/lba, (end+lba-1)/lba
	v.locks.lock(first, last)
	defer v.locks.unlock(first, last)

	data := p
	if off%lba != 0 || end%lba != 0 {
		// Read-modify-write of the partial first and last LBA, under the range
		// lock so no overlapping write slips in between.
		data = make([]byte, (last-first)*lba)
		if off%lba != 0 {
			if err := v.ReadAt(ctx, data[:lba], first*lba); err != nil {
				return err
			}
		}
		if end%lba != 0 && (last-1 > first || off%lba == 0) {
			if err := v.ReadAt(ctx, data[len(data)-lba:], (last-1)*lba); err != nil {
				return err
			}
		}
		copy(data[off-first*lba:], p)
	}
	// Mark the range before appending, and keep resets out until the append
	// returned (see journaledMap).
	v.journaled.mu.RLock()
	defer v.journaled.mu.RUnlock()
	v.journaled.mark(first*lba, last*lba)
	for len(data) > 0 {
		n := min(int64(len(data)), v.maxRecord)
		if _, err := v.j.Append(ctx, uint64(first), data[:n]); err != nil {
			if errors.Is(err, journal.ErrJournalFull) {
				return fmt.Errorf("ecvolume %s: write at LBA %d: %w: %w", v.name, first, nbd.ErrNoSpace, err)
			}
			return fmt.Errorf("ecvolume %s: write at LBA %d: %w", v.name, first, err)
		}
		data, first = data[n:], first+n/lba
	}
	return nil
}

// Flush implements nbd.Backend. Every acknowledged write is already durable
// on a journal write quorum, so there is nothing to wait for.
func (v *VolumeBackend) Flush(context.Context) error { return nil }

// Trim implements nbd.Backend by ignoring the hint (allowed by the protocol).
func (v *VolumeBackend) Trim(_ context.Context, off, length int64) error {
	return v.check(off, length)
}

// WriteZeroes implements nbd.Backend by journaling zeros.
func (v *VolumeBackend) WriteZeroes(ctx context.Context, off, length int64) error {
	if err := v.check(off, length); err != nil {
		return err
	}
	for length > 0 {
		n := min(length, v.maxRecord)
		if err := v.WriteAt(ctx, v.zeros[:n], off); err != nil {
			return err
		}
		off, length = off+n, length-n
	}
	return nil
}

// Sink is the journal.StripeSink the destager writes through: the stripe
// store, plus exact invalidation of the cache blocks each stripe write
// changes.
func (v *VolumeBackend) Sink() journal.StripeSink { return invalidatingSink{v} }

type invalidatingSink struct{ v *VolumeBackend }

func (s invalidatingSink) WriteStripe(ctx context.Context, idx int64, extents []journal.Extent) error {
	v := s.v
	blocks := v.blocksOf(extents)
	// Before: a crash between the stripe write and the second pass must not
	// leave an older copy in the persistent L2.
	if err := v.invalidate(blocks); err != nil {
		return err
	}
	if err := v.stripes.WriteStripe(ctx, idx, extents); err != nil {
		return fmt.Errorf("ecvolume %s: write stripe %d: %w", v.name, idx, err)
	}
	// After: a read that fetched the old stripe bytes while the write ran
	// may have cached them. The journal is trimmed only after this returns.
	return v.invalidate(blocks)
}

// blocksOf lists the cache blocks the extents overlap, in order, once each.
func (v *VolumeBackend) blocksOf(extents []journal.Extent) []int64 {
	if v.cache == nil {
		return nil
	}
	var out []int64
	for _, e := range extents {
		a := int64(e.LBA) * lba
		b := a + int64(len(e.Data))
		for bi := a / v.block; bi*v.block < b; bi++ {
			if len(out) == 0 || out[len(out)-1] < bi {
				out = append(out, bi)
			}
		}
	}
	return out
}

func (v *VolumeBackend) invalidate(blocks []int64) error {
	for _, b := range blocks {
		if err := v.cache.Invalidate(v.key(b)); err != nil {
			return fmt.Errorf("ecvolume %s: invalidate cache block %d: %w", v.name, b, err)
		}
	}
	return nil
}

// CacheStore is the cache's L3 view of the stripe store: one key per cache
// block of this volume. It is read-only: writes go through the journal.
func (v *VolumeBackend) CacheStore() cache.Store { return cacheStore{v} }

type cacheStore struct{ v *VolumeBackend }

func (c cacheStore) Get(ctx context.Context, key cache.CacheKey) ([]byte, error) {
	v := c.v
	bi, err := strconv.ParseInt(key.Key, 10, 64)
	if key.Bucket != v.bucket || err != nil || bi < 0 || bi*v.block >= v.size {
		return nil, fmt.Errorf("ecvolume %s: cache key %s/%s: %w", v.name, key.Bucket, key.Key, cache.ErrNotFound)
	}
	p := make([]byte, min(v.block, v.size-bi*v.block))
	if err := v.stripes.ReadAt(ctx, p, bi*v.block); err != nil {
		return nil, fmt.Errorf("ecvolume %s: read stripes for cache block %d: %w", v.name, bi, err)
	}
	return p, nil
}

func (c cacheStore) Put(context.Context, cache.CacheKey, []byte) error {
	return errors.New("ecvolume: the cache's stripe store is read-only; writes go through the journal")
}

func (c cacheStore) Delete(context.Context, cache.CacheKey) error {
	return errors.New("ecvolume: the cache's stripe store is read-only; stripes are removed with their ECVolume")
}

// rangeLock serialises writes whose LBA ranges overlap.
type rangeLock struct {
	mu   sync.Mutex
	cond *sync.Cond
	held [][2]int64
}

func (l *rangeLock) lock(a, b int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.overlaps(a, b) {
		l.cond.Wait()
	}
	l.held = append(l.held, [2]int64{a, b})
}

func (l *rangeLock) overlaps(a, b int64) bool {
	for _, h := range l.held {
		if h[0] < b && a < h[1] {
			return true
		}
	}
	return false
}

func (l *rangeLock) unlock(a, b int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, h := range l.held {
		if h[0] == a && h[1] == b {
			l.held = append(l.held[:i], l.held[i+1:]...)
			break
		}
	}
	l.cond.Broadcast()
}

// mayBeJournaled says whether the journal may hold data in [off, end). When
// it sees the journal empty it forgets every mark, so reads stop paying for
// journal lookups once the destager has caught up.
func (v *VolumeBackend) mayBeJournaled(off, end int64) bool {
	m := &v.journaled
	if !m.any(off, end) {
		return false
	}
	if used, _ := v.j.Fill(); used != 0 || !m.mu.TryLock() {
		return true
	}
	defer m.mu.Unlock()
	if used, _ := v.j.Fill(); used != 0 {
		return true
	}
	m.clear()
	return false
}

// journaledMap marks the regions (unit bytes each) that may have records in
// the journal, so a read of a region never written since the journal was
// last seen empty skips the journal lookup (pkg/journal's Lookup scans every
// live record). A writer marks its range before Append and holds mu shared
// until Append returns; clear runs with mu held exclusively and only when
// the journal's fill is zero, i.e. no record is undestaged and no append is
// in flight. A mark can therefore only disappear once the stripes (and the
// cache invalidation in Sink) hold its data.
type journaledMap struct {
	mu    sync.RWMutex
	unit  int64
	words []atomic.Uint64
}

func (m *journaledMap) init(size int64) {
	m.unit = 64 << 10
	for size/m.unit > 1<<21 { // at most 2 Mi bits (256 KiB)
		m.unit *= 2
	}
	units := (size + m.unit - 1) / m.unit
	m.words = make([]atomic.Uint64, (units+63)/64)
}

func (m *journaledMap) mark(off, end int64) {
	for u := off / m.unit; u*m.unit < end; u++ {
		m.words[u/64].Or(1 << (u % 64))
	}
}

func (m *journaledMap) any(off, end int64) bool {
	for u := off / m.unit; u*m.unit < end; u++ {
		if m.words[u/64].Load()&(1<<(u%64)) != 0 {
			return true
		}
	}
	return false
}

func (m *journaledMap) clear() {
	for i := range m.words {
		m.words[i].Store(0)
	}
}

// prefetch fills the cache with one block (read-ahead). Errors are left to
// the demand read, which retries and reports them.
func (v *VolumeBackend) prefetch(ctx context.Context, block int64) {
	_, _, _ = v.cache.Get(ctx, v.key(block))
}

// readAhead detects sequential reads and fills the cache ahead of them.
// Prefetching only fills the cache through Tiered.Get, the same path as a
// read miss, so the cache's invalidation rules cover it: a block fetched
// while the destager rewrites its stripe is dropped by the Sink's second
// invalidation.
type readAhead struct {
	window int64 // blocks ahead; 0 disables
	fetch  func(context.Context, int64)

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	slots  chan struct{} // bounds prefetches in flight

	mu     sync.Mutex
	high   int64 // highest block a recent read reached
	issued int64 // highest block prefetched for the current run
}

func (r *readAhead) init(window int64, fetch func(context.Context, int64)) {
	r.window, r.fetch = window, fetch
	r.ctx, r.cancel = context.WithCancel(context.Background())
	r.slots = make(chan struct{}, max(window, 1))
	r.high, r.issued = -2, -1
}

// read notes a read of blocks [first, last] (last block of the volume:
// maxBlock) and starts prefetches when it continues a sequential run.
// Concurrent requests of one stream arrive slightly out of order, so a read
// that starts within a window behind the run's head still counts.
func (r *readAhead) read(first, last, maxBlock int64) {
	if r.window == 0 {
		return
	}
	r.mu.Lock()
	sequential := first <= r.high+1 && first >= r.high-r.window
	if !sequential {
		r.high, r.issued = last, last
		r.mu.Unlock()
		return
	}
	r.high = max(r.high, last)
	from, to := max(r.issued+1, r.high+1), min(r.high+r.window, maxBlock)
	if to >= from {
		r.issued = to
	}
	r.mu.Unlock()
	for b := from; b <= to; b++ {
		select {
		case r.slots <- struct{}{}:
		default:
			return // enough in flight; the demand reads fetch the rest
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			defer func() { <-r.slots }()
			r.fetch(r.ctx, b)
		}()
	}
}

// stop cancels prefetches and waits for them (before the cache closes).
func (r *readAhead) stop() {
	if r.cancel != nil {
		r.cancel()
	}
	r.wg.Wait()
}
