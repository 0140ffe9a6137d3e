package shardserver

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/billyronks/couchestor/pkg/dirlock"
	"github.com/billyronks/couchestor/pkg/erasure"
	"github.com/billyronks/couchestor/pkg/shardindex"
)

// Files of a pool's data directory.
const (
	storeFileName = "shards.dat"
	allocLogName  = "alloc.log"
)

// Errors a Store returns; the HTTP layer maps them to status codes and the
// client maps those back, so errors.Is works across the wire.
var (
	// ErrNotFound: no shard with the expected identity at that offset.
	ErrNotFound = errors.New("shard not found")
	// ErrStaleGeneration: a shard of the same slot with a newer generation,
	// or the same generation with different bytes, is already stored.
	ErrStaleGeneration = errors.New("stale shard generation")
	// ErrNoSpace: the pool cannot hold the shard.
	ErrNoSpace = errors.New("pool has no room for the shard")
	// ErrBadShard: the request itself is invalid (size or checksum mismatch).
	ErrBadShard = errors.New("invalid shard")
)

// StaleError carries the generation already held for the slot. It crosses
// the wire as the JSON body of a 409.
type StaleError struct {
	Key            Key
	Requested      int64
	HeldGeneration int64
	// HeldUnknown: a newer generation is held (the stripe index refused
	// the write) but the server could not read which one; HeldGeneration is
	// then -1 and means nothing. Use Held, which also reads a negative
	// HeldGeneration (what servers sent before this field) as unknown.
	HeldUnknown bool `json:",omitempty"`
	// Why says why the held generation is unknown.
	Why string `json:",omitempty"`
}

// Held is the generation held for the slot; ok is false when the server
// does not know it. A writer must not step past an unknown generation by
// guessing one: held+1 of an unknown -1 is 0, not a generation past it.
func (e *StaleError) Held() (gen int64, ok bool) {
	if e.HeldUnknown || e.HeldGeneration < 0 {
		return 0, false
	}
	return e.HeldGeneration, true
}

func (e *StaleError) Error() string {
	if _, ok := e.Held(); !ok {
		why := e.Why
		if why == "" {
			why = "the server did not say why"
		}
		return fmt.Sprintf("shard %s/%d/%d: generation %d refused, a newer generation is stored but which one is unknown (%s)", e.Key.Volume, e.Key.StripeID, e.Key.ShardIndex, e.Requested, why)
	}
	return fmt.Sprintf("shard %s/%d/%d: generation %d refused, generation %d is already stored", e.Key.Volume, e.Key.StripeID, e.Key.ShardIndex, e.Requested, e.HeldGeneration)
}

// Is makes errors.Is(err, ErrStaleGeneration) true.
func (e *StaleError) Is(target error) bool { return target == ErrStaleGeneration }

// extent is one allocated range of the store file.
type extent struct {
	offset, length int64
	allocated      time.Time
	// header is nil when the bytes at offset carry no valid header (a torn
	// write before a crash, or tampering); such extents stay allocated until
	// the orphan collector frees them.
	header  *ShardHeader
	hdrLen  int64
	pending bool // being written; not yet durable
}

type span struct{ offset, length int64 }

// Store is one pool's shard store: a single store file whose ranges are
// handed out by a persisted allocator. The allocation log (alloc.log) is an
// append-only, CRC-protected record of allocations and frees, fsynced before
// a write or free is acknowledged and compacted on open; a torn tail record is
// dropped. Allocation is logged only after the shard's bytes are written, so
// after a crash every logged extent holds what was acknowledged, and an
// unlogged range is free (its write was never acknowledged). Ranges are never
// handed out twice: the in-memory map is the only allocator and it is rebuilt
// from the log before serving. Beside the log, the stripe index (index.go)
// records every slot's newest shard; it is committed before a write or free
// is acknowledged and rebuilt from the headers when it disagrees with them.
type Store struct {
	dir      string
	capacity int64
	data     storeFile
	log      storeFile
	lock     *dirlock.Lock // no second process (or open) on dir

	mu      sync.Mutex
	extents map[int64]*extent // by offset
	slots   map[Key][]*extent // live shards by slot, any generation
	free    []span            // sorted by offset, coalesced, all below end
	end     int64             // store file high-water mark
	used    int64
	// unreadable counts extents without a valid header, so Space needs no
	// walk of the extents.
	unreadable int

	seq    atomic.Uint64 // completed mutations
	syncMu sync.Mutex
	synced uint64
	// broken is set by the first failed fsync: the kernel may have dropped
	// the pages it could not write and a later fsync can succeed without
	// them, so nothing is acknowledged any more (Err, /healthz) until the
	// server restarts and reads what the disk really holds.
	broken atomic.Pointer[error]
	now    func() time.Time
	fences *fences // writer epochs per volume (fence.go)

	// index is the pool's stripe index (index.go); nil WithoutIndex.
	index        *shardindex.Index
	indexRebuilt string
	// unindexable holds, by offset, why the index cannot hold the header
	// of a stored shard (errUnindexable; found on open, never written).
	unindexable map[int64]string
	// unindexMu makes a free's delete of its entry and the put-back of the
	// slot's older generation one step: two frees of one slot's generations
	// at once would otherwise put back a generation the other just freed.
	unindexMu sync.Mutex
}

// StoreOptions are OpenStoreWith's options.
type StoreOptions struct {
	// WithoutIndex keeps no stripe index: the write path as it was before
	// the index, for benchmarks that measure the index's cost. Servers
	// always keep one.
	WithoutIndex bool
}

// Err reports why the store stopped acknowledging writes, or nil. It takes
// no lock.
func (s *Store) Err() error {
	if p := s.broken.Load(); p != nil {
		return *p
	}
	return nil
}

// extentLength is the length of the extent at off (0 when there is none).
func (s *Store) extentLength(off int64) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.extents[off]; ok {
		return e.length
	}
	return 0
}

// storeFile is what the store needs of its two files (*os.File; tests
// inject failures through it).
type storeFile interface {
	io.ReaderAt
	io.WriterAt
	io.Writer
	Sync() error
	Close() error
}

// Space is what a pool reports about itself.
type Space struct {
	CapacityBytes int64 `json:"capacityBytes"`
	UsedBytes     int64 `json:"usedBytes"`
	FreeBytes     int64 `json:"freeBytes"`
	Shards        int   `json:"shards"`
	// Unreadable counts allocated extents without a valid header.
	Unreadable int `json:"unreadable"`
	// Unindexable counts shards (of Shards) held without a stripe index
	// entry: their headers cannot be indexed (Store.UnindexableReport).
	Unindexable int `json:"unindexable"`
}

// OpenStore opens (or creates) the store in dir with room for capacity bytes
// (headers included), replays and compacts the allocation log, reads the
// shard headers and opens the stripe index (rebuilding it from the headers
// when it is missing or disagrees with them: IndexRebuilt says why).
func OpenStore(dir string, capacity int64) (*Store, error) {
	return OpenStoreWith(dir, capacity, StoreOptions{})
}

// OpenStoreWith is OpenStore with options.
func OpenStoreWith(dir string, capacity int64, opt StoreOptions) (*Store, error) {
	if capacity <= 0 {
		return nil, fmt.Errorf("open shard store %s: capacity %d must be > 0", dir, capacity)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("open shard store: %w", err)
	}
	lock, err := dirlock.Acquire(dir)
	if err != nil {
		return nil, fmt.Errorf("open shard store: %w", err)
	}
	data, err := os.OpenFile(filepath.Join(dir, storeFileName), os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("open shard store: %w", err)
	}
	s := &Store{dir: dir, capacity: capacity, data: data, lock: lock, extents: map[int64]*extent{}, slots: map[Key][]*extent{}, unindexable: map[int64]string{}, now: time.Now, fences: newFences(dir)}
	if err := s.replayLog(); err != nil {
		data.Close()
		lock.Close()
		return nil, err
	}
	if err := s.compactLog(); err != nil {
		data.Close()
		lock.Close()
		return nil, err
	}
	if err := s.indexHeaders(); err != nil {
		s.Close()
		return nil, err
	}
	s.rebuildFree()
	if !opt.WithoutIndex {
		if err := s.openIndex(); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

// Close closes the store's files.
func (s *Store) Close() error {
	var ierr error
	if s.index != nil {
		ierr = s.index.Close()
	}
	return errors.Join(s.data.Close(), s.log.Close(), ierr, s.lock.Close())
}

// log record: op(1) offset(8) length(8) unixNano(8) crc32c(4) = 29 bytes.
const logRecLen = 29

var crcTable = crc32.MakeTable(crc32.Castagnoli)

func encodeLogRec(op byte, off, length int64, t time.Time) []byte {
	b := make([]byte, logRecLen)
	b[0] = op
	binary.BigEndian.PutUint64(b[1:], uint64(off))
	binary.BigEndian.PutUint64(b[9:], uint64(length))
	binary.BigEndian.PutUint64(b[17:], uint64(t.UnixNano()))
	binary.BigEndian.PutUint32(b[25:], crc32.Checksum(b[:25], crcTable))
	return b
}

func logRecValid(r []byte) bool {
	return crc32.Checksum(r[:25], crcTable) == binary.BigEndian.Uint32(r[25:])
}

func (s *Store) replayLog() error {
	p := filepath.Join(s.dir, allocLogName)
	raw, err := os.ReadFile(p)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("read allocation log: %w", err)
	}
	for i := 0; i+logRecLen <= len(raw); i += logRecLen {
		r := raw[i : i+logRecLen]
		if !logRecValid(r) {
			// A torn tail (the last append, cut by a crash, never
			// acknowledged) is dropped. A bad record with valid ones after
			// it is damage: dropping the rest would free live extents and
			// hand them out again over acknowledged shards.
			for j := i + logRecLen; j+logRecLen <= len(raw); j += logRecLen {
				if logRecValid(raw[j : j+logRecLen]) {
					return fmt.Errorf("allocation log %s: the record at byte %d is damaged and a valid record follows at byte %d: refusing to open the store "+
						"(truncating the log would hand out live extents again); restore the file from a backup, or take the pool out of service (wipe the data directory) so the operator rebuilds its shards on other pools", p, i, j)
				}
			}
			break
		}
		off := int64(binary.BigEndian.Uint64(r[1:]))
		length := int64(binary.BigEndian.Uint64(r[9:]))
		at := time.Unix(0, int64(binary.BigEndian.Uint64(r[17:])))
		switch r[0] {
		case 'A':
			s.extents[off] = &extent{offset: off, length: length, allocated: at}
		case 'F':
			delete(s.extents, off)
		default:
			return fmt.Errorf("allocation log %s: unknown record %q at byte %d", p, r[0], i)
		}
	}
	return nil
}

// compactLog rewrites the log as one 'A' record per live extent, atomically.
func (s *Store) compactLog() error {
	p := filepath.Join(s.dir, allocLogName)
	tmp := p + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return fmt.Errorf("compact allocation log: %w", err)
	}
	offs := make([]int64, 0, len(s.extents))
	for off := range s.extents {
		offs = append(offs, off)
	}
	sort.Slice(offs, func(i, j int) bool { return offs[i] < offs[j] })
	buf := make([]byte, 0, len(offs)*logRecLen)
	for _, off := range offs {
		e := s.extents[off]
		buf = append(buf, encodeLogRec('A', e.offset, e.length, e.allocated)...)
	}
	if _, err := f.Write(buf); err != nil {
		f.Close()
		return fmt.Errorf("compact allocation log: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("compact allocation log: %w", err)
	}
	f.Close()
	if err := os.Rename(tmp, p); err != nil {
		return fmt.Errorf("compact allocation log: %w", err)
	}
	if err := syncDir(s.dir); err != nil {
		return err
	}
	s.log, err = os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("open allocation log: %w", err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	return nil
}

// indexHeaders reads the header of every allocated extent.
func (s *Store) indexHeaders() error {
	for _, e := range s.extents {
		s.used += e.length
		s.end = max(s.end, e.offset+e.length)
		h, hdrLen, err := s.readHeader(e.offset)
		if err != nil {
			if errors.Is(err, errNoHeader) {
				s.unreadable++
				continue // kept allocated, reported as unreadable
			}
			return err
		}
		if hdrLen+h.SizeBytes != e.length {
			s.unreadable++
			continue // header does not describe this extent: unreadable
		}
		e.header, e.hdrLen = h, hdrLen
		s.slots[h.Key()] = append(s.slots[h.Key()], e)
	}
	return nil
}

func (s *Store) readHeader(off int64) (*ShardHeader, int64, error) {
	prefix := make([]byte, recordPrefixLen)
	if _, err := s.data.ReadAt(prefix, off); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, 0, errNoHeader
		}
		return nil, 0, fmt.Errorf("read shard header at %d: %w", off, err)
	}
	n, sum, err := decodePrefix(prefix)
	if err != nil {
		return nil, 0, err
	}
	js := make([]byte, n)
	if _, err := s.data.ReadAt(js, off+recordPrefixLen); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, 0, errNoHeader
		}
		return nil, 0, fmt.Errorf("read shard header at %d: %w", off, err)
	}
	h, err := decodeHeaderJSON(js, sum)
	if err != nil {
		return nil, 0, err
	}
	return h, headerBlockSize(n), nil
}

func (s *Store) rebuildFree() {
	offs := make([]int64, 0, len(s.extents))
	for off := range s.extents {
		offs = append(offs, off)
	}
	sort.Slice(offs, func(i, j int) bool { return offs[i] < offs[j] })
	s.free = s.free[:0]
	var pos int64
	for _, off := range offs {
		if off > pos {
			s.free = append(s.free, span{pos, off - pos})
		}
		pos = max(pos, off+s.extents[off].length)
	}
}

// allocate hands out length bytes (first fit, then the end). Caller holds mu.
func (s *Store) allocate(length int64) (int64, error) {
	for i, sp := range s.free {
		if sp.length < length {
			continue
		}
		off := sp.offset
		if sp.length == length {
			s.free = append(s.free[:i], s.free[i+1:]...)
		} else {
			s.free[i] = span{sp.offset + length, sp.length - length}
		}
		return off, nil
	}
	if s.end+length > s.capacity {
		return 0, fmt.Errorf("%w: need %d bytes, %d of %d in use", ErrNoSpace, length, s.used, s.capacity)
	}
	off := s.end
	s.end += length
	return off, nil
}

// release returns a range to the free list, coalescing. Caller holds mu.
func (s *Store) release(off, length int64) {
	i := sort.Search(len(s.free), func(i int) bool { return s.free[i].offset > off })
	s.free = append(s.free, span{})
	copy(s.free[i+1:], s.free[i:])
	s.free[i] = span{off, length}
	if i+1 < len(s.free) && s.free[i].offset+s.free[i].length == s.free[i+1].offset {
		s.free[i].length += s.free[i+1].length
		s.free = append(s.free[:i+1], s.free[i+2:]...)
	}
	if i > 0 && s.free[i-1].offset+s.free[i-1].length == s.free[i].offset {
		s.free[i-1].length += s.free[i].length
		s.free = append(s.free[:i], s.free[i+1:]...)
		i--
	}
	if last := s.free[len(s.free)-1]; last.offset+last.length == s.end {
		s.end = last.offset
		s.free = s.free[:len(s.free)-1]
	}
}

// durable makes every mutation completed so far durable (group commit: one
// fsync pair covers every writer waiting at the same time).
func (s *Store) durable(mySeq uint64) error {
	s.syncMu.Lock()
	defer s.syncMu.Unlock()
	if err := s.Err(); err != nil {
		return err
	}
	if s.synced >= mySeq {
		return nil
	}
	target := s.seq.Load()
	err := s.data.Sync()
	if err != nil {
		err = fmt.Errorf("fsync shard store %s: %w", filepath.Join(s.dir, storeFileName), err)
	} else if err = s.log.Sync(); err != nil {
		err = fmt.Errorf("fsync allocation log %s: %w", filepath.Join(s.dir, allocLogName), err)
	}
	if err != nil {
		err = fmt.Errorf("%w; the store acknowledges nothing more until the server restarts", err)
		s.broken.Store(&err)
		return err
	}
	s.synced = target
	return nil
}

// Location is where a shard was stored.
type Location struct {
	Offset    int64  `json:"offset"`
	SizeBytes int64  `json:"sizeBytes"`
	Checksum  string `json:"checksum"`
	// Existing is true when an identical shard was already stored (an
	// idempotent retry).
	Existing bool `json:"existing,omitempty"`
}

// Write stores a shard durably and returns its offset. It refuses a
// generation older than one already stored for the same slot, and the same
// generation with different bytes; an identical shard is not stored twice.
func (s *Store) Write(h *ShardHeader, payload []byte) (Location, error) {
	if err := s.Err(); err != nil {
		return Location{}, err
	}
	if err := h.Validate(); err != nil {
		return Location{}, fmt.Errorf("%w: %v", ErrBadShard, err)
	}
	if int64(len(payload)) != h.SizeBytes {
		return Location{}, fmt.Errorf("%w: payload has %d bytes, header says %d", ErrBadShard, len(payload), h.SizeBytes)
	}
	if got := erasure.ShardChecksum(payload); got != h.Checksum {
		return Location{}, fmt.Errorf("%w: payload checksum %s does not match header checksum %s", ErrBadShard, got, h.Checksum)
	}
	release, err := s.fences.enter(h.Volume, h.VolumeUID, h.WriterEpoch)
	if err != nil {
		return Location{}, err
	}
	defer release()
	hdr, err := encodeHeader(h)
	if err != nil {
		return Location{}, fmt.Errorf("%w: %v", ErrBadShard, err)
	}
	length := int64(len(hdr)) + h.SizeBytes
	rec, err := indexRecord(h, 0)
	if err != nil {
		return Location{}, err
	}

	s.mu.Lock()
	for _, e := range s.slots[h.Key()] {
		switch {
		case e.header.Generation > h.Generation:
			s.mu.Unlock()
			return Location{}, &StaleError{Key: h.Key(), Requested: h.Generation, HeldGeneration: e.header.Generation}
		case e.header.Generation == h.Generation && e.header.Checksum == h.Checksum && !e.pending:
			s.mu.Unlock()
			return Location{Offset: e.offset, SizeBytes: h.SizeBytes, Checksum: h.Checksum, Existing: true}, nil
		case e.header.Generation == h.Generation:
			s.mu.Unlock()
			return Location{}, &StaleError{Key: h.Key(), Requested: h.Generation, HeldGeneration: e.header.Generation}
		}
	}
	off, err := s.allocate(length)
	if err != nil {
		s.mu.Unlock()
		return Location{}, err
	}
	rec.Offset = uint64(off)
	e := &extent{offset: off, length: length, allocated: s.now(), header: h, hdrLen: int64(len(hdr)), pending: true}
	s.extents[off] = e
	s.slots[h.Key()] = append(s.slots[h.Key()], e)
	s.used += length
	s.mu.Unlock()

	fail := func(err error) (Location, error) {
		s.mu.Lock()
		s.dropLocked(e)
		s.release(off, length)
		s.mu.Unlock()
		return Location{}, err
	}
	if _, err := s.data.WriteAt(hdr, off); err != nil {
		return fail(fmt.Errorf("write shard header at %d: %w", off, err))
	}
	if _, err := s.data.WriteAt(payload, off+int64(len(hdr))); err != nil {
		return fail(fmt.Errorf("write shard at %d: %w", off, err))
	}
	// Log the allocation only after the bytes are written: a logged extent
	// never points at bytes that were not written before the next fsync.
	s.mu.Lock()
	_, err = s.log.Write(encodeLogRec('A', off, length, e.allocated))
	s.mu.Unlock()
	if err != nil {
		return fail(fmt.Errorf("append allocation log: %w", err))
	}
	if err := s.durable(s.seq.Add(1)); err != nil {
		// The record may or may not be durable; keep the extent allocated
		// (it is an orphan at worst) rather than risk handing it out twice.
		return Location{}, err
	}
	if s.index != nil {
		if err := s.index.Put([]shardindex.Record{rec}); err != nil {
			return Location{}, s.unindexed(e, h, err)
		}
	}
	s.mu.Lock()
	e.pending = false
	s.mu.Unlock()
	return Location{Offset: off, SizeBytes: h.SizeBytes, Checksum: h.Checksum}, nil
}

// unindexed undoes a write whose index entry was not committed: its extent
// is freed durably before the error is returned, so the shard never becomes
// live. A newer generation in the index (a concurrent write of the slot
// committed first) is a StaleError; any other failure stops the store.
func (s *Store) unindexed(e *extent, h *ShardHeader, ierr error) error {
	s.mu.Lock()
	ferr := s.freeLocked(e)
	var out error
	if errors.Is(ierr, shardindex.ErrStaleGeneration) {
		out = s.heldBy(h, e.offset)
	} else {
		out = s.indexFailed(fmt.Errorf("commit the entry of shard %s/%d/%d generation %d: %w", h.Volume, h.StripeID, h.ShardIndex, h.Generation, ierr))
	}
	if ferr != nil {
		return errors.Join(out, fmt.Errorf("free its extent at %d: %w", e.offset, ferr))
	}
	return out
}

// heldBy is the StaleError of a write of h the stripe index refused as
// stale: the generation the index holds for the slot or, when it cannot be
// read (or was freed since), the newest the store holds of the slot if that
// is not older than h. Otherwise the held generation is unknown and the
// error says so: a writer reading a guess as the held generation would step
// to a generation it has not established is past it.
func (s *Store) heldBy(h *ShardHeader, off int64) *StaleError {
	if staleHook != nil {
		staleHook()
	}
	se := &StaleError{Key: h.Key(), Requested: h.Generation, HeldGeneration: -1}
	var why string
	if r, err := indexRecord(h, off); err != nil {
		why = fmt.Sprintf("its index key: %v", err)
	} else if got, ok, err := s.index.Get(r.Key); err != nil {
		why = fmt.Sprintf("reading the index entry of %s: %v", r.Key, err)
	} else if ok {
		se.HeldGeneration = int64(got.Generation)
		return se
	} else {
		why = fmt.Sprintf("the index holds no entry of %s any more", r.Key)
	}
	s.mu.Lock()
	prev := s.newestLocked(h)
	s.mu.Unlock()
	if prev != nil && prev.header.Generation >= h.Generation {
		se.HeldGeneration = prev.header.Generation
		return se
	}
	se.HeldUnknown, se.Why = true, why+", and the store holds no generation of the slot at or past it"
	return se
}

// staleHook, when set (tests only), runs in heldBy before the held
// generation is read.
var staleHook func()

// dropLocked removes e from the indexes (not from the free list). Caller holds mu.
func (s *Store) dropLocked(e *extent) {
	delete(s.extents, e.offset)
	s.used -= e.length
	if e.header == nil {
		s.unreadable--
	}
	delete(s.unindexable, e.offset)
	if e.header != nil {
		k := e.header.Key()
		list := s.slots[k]
		for i, x := range list {
			if x == e {
				list = append(list[:i], list[i+1:]...)
				break
			}
		}
		if len(list) == 0 {
			delete(s.slots, k)
		} else {
			s.slots[k] = list
		}
	}
}

// Expect names the shard a caller believes is at an offset. Reads and frees
// check it against the stored header, so a stale location (freed and reused)
// never returns or frees someone else's shard.
type Expect struct {
	Volume     string
	StripeID   int64
	ShardIndex int
	Generation int64
}

func (x Expect) matches(h *ShardHeader) bool {
	return h != nil && h.Volume == x.Volume && h.StripeID == x.StripeID && h.ShardIndex == x.ShardIndex && h.Generation == x.Generation
}

// matchesRead accepts an older generation too: a stripe whose shards were
// partly rewritten (rebuild) records its newest generation, and the reader
// binds the bytes by their recorded checksum anyway.
func (x Expect) matchesRead(h *ShardHeader) bool {
	return h != nil && h.Volume == x.Volume && h.StripeID == x.StripeID && h.ShardIndex == x.ShardIndex && h.Generation <= x.Generation
}

func (s *Store) lookup(off int64, x Expect, read bool) (*extent, error) {
	e, ok := s.extents[off]
	match := x.matches
	if read {
		match = x.matchesRead
	}
	if !ok || e.pending || !match(e.header) {
		return nil, fmt.Errorf("%w: %s/%d/%d generation %d at offset %d", ErrNotFound, x.Volume, x.StripeID, x.ShardIndex, x.Generation, off)
	}
	return e, nil
}

// Read returns the shard's payload as stored (callers verify its checksum
// against the ECStripe) and its header as read from disk now.
func (s *Store) Read(off int64, x Expect) (*ShardHeader, []byte, error) {
	s.mu.Lock()
	e, err := s.lookup(off, x, true)
	var length, hdrLen int64
	if err == nil {
		length, hdrLen = e.length, e.hdrLen
	}
	s.mu.Unlock()
	if err != nil {
		return nil, nil, err
	}
	return s.readExtent(off, x, length, hdrLen, make([]byte, length))
}

// ReadBuffered is Read into buf when it is large enough (else a new
// buffer); the payload aliases the buffer returned as whole, which the
// caller may reuse once it is done with the payload.
func (s *Store) ReadBuffered(off int64, x Expect, buf []byte) (h *ShardHeader, payload, whole []byte, err error) {
	s.mu.Lock()
	e, err := s.lookup(off, x, true)
	var length, hdrLen int64
	if err == nil {
		length, hdrLen = e.length, e.hdrLen
	}
	s.mu.Unlock()
	if err != nil {
		return nil, nil, buf, err
	}
	if int64(cap(buf)) < length {
		buf = make([]byte, length)
	}
	buf = buf[:length]
	h, payload, err = s.readExtent(off, x, length, hdrLen, buf)
	return h, payload, buf, err
}

func (s *Store) readExtent(off int64, x Expect, length, hdrLen int64, buf []byte) (*ShardHeader, []byte, error) {
	if _, err := s.data.ReadAt(buf, off); err != nil {
		return nil, nil, fmt.Errorf("read shard at %d: %w", off, err)
	}
	n, sum, err := decodePrefix(buf)
	if err != nil || headerBlockSize(n) != hdrLen {
		return nil, nil, fmt.Errorf("%w: header at offset %d is damaged", ErrNotFound, off)
	}
	h, err := decodeHeaderJSON(buf[recordPrefixLen:recordPrefixLen+n], sum)
	if err != nil || !x.matchesRead(h) {
		return nil, nil, fmt.Errorf("%w: header at offset %d is damaged or names another shard", ErrNotFound, off)
	}
	return h, buf[hdrLen:], nil
}

// Free releases the shard at off after checking it is the expected one.
func (s *Store) Free(off int64, x Expect) error {
	if err := s.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	e, err := s.lookup(off, x, false)
	if err != nil {
		s.mu.Unlock()
		return err
	}
	h := e.header
	if err := s.freeLocked(e); err != nil {
		return err
	}
	if s.index == nil {
		return nil
	}
	return s.unindex(h, off)
}

// unindex removes the entry of the freed shard h (at off) from the index,
// if it is the one held, and records instead the newest generation of the
// slot the store still holds, if older (a newer version was abandoned and
// freed, the older one is live again).
func (s *Store) unindex(h *ShardHeader, off int64) error {
	s.unindexMu.Lock()
	defer s.unindexMu.Unlock()
	rec, err := indexRecord(h, off)
	if errors.Is(err, errUnindexable) {
		return nil // never indexed (expectedIndex): no entry to delete
	}
	if err != nil {
		return s.indexFailed(err)
	}
	if err := s.index.Delete([]shardindex.Record{rec}); err != nil {
		return s.indexFailed(fmt.Errorf("delete the entry of shard %s/%d/%d generation %d: %w", h.Volume, h.StripeID, h.ShardIndex, h.Generation, err))
	}
	s.mu.Lock()
	prev := s.newestLocked(h)
	var back shardindex.Record
	if prev != nil && prev.header.Generation < h.Generation {
		back, err = indexRecord(prev.header, prev.offset)
	}
	s.mu.Unlock()
	if prev == nil || prev.header.Generation >= h.Generation {
		return nil
	}
	if unindexHook != nil {
		unindexHook()
	}
	if errors.Is(err, errUnindexable) {
		return nil // the older generation stays without an entry, as on open
	}
	if err == nil {
		err = s.index.Put([]shardindex.Record{back})
	}
	if err != nil && !errors.Is(err, shardindex.ErrStaleGeneration) { // stale: a newer write came first
		return s.indexFailed(fmt.Errorf("record generation %d of shard %s/%d/%d again: %w", prev.header.Generation, h.Volume, h.StripeID, h.ShardIndex, err))
	}
	return nil
}

// unindexHook, when set (tests only), runs in unindex between choosing the
// generation to put back and putting it.
var unindexHook func()

// FreeUnreadable releases an allocated extent that carries no valid header.
func (s *Store) FreeUnreadable(off int64) error {
	s.mu.Lock()
	e, ok := s.extents[off]
	if !ok || e.header != nil || e.pending {
		s.mu.Unlock()
		return fmt.Errorf("%w: no unreadable extent at offset %d", ErrNotFound, off)
	}
	return s.freeLocked(e)
}

// freeLocked logs the free, drops e and waits for durability. Called with mu
// held; releases it.
func (s *Store) freeLocked(e *extent) error {
	if _, err := s.log.Write(encodeLogRec('F', e.offset, e.length, s.now())); err != nil {
		s.mu.Unlock()
		return fmt.Errorf("append allocation log: %w", err)
	}
	s.dropLocked(e)
	s.release(e.offset, e.length)
	s.mu.Unlock()
	return s.durable(s.seq.Add(1))
}

// StoredShard is one entry of a listing.
type StoredShard struct {
	Offset int64 `json:"offset"`
	// Header is nil for an extent without a valid header.
	Header            *ShardHeader `json:"header,omitempty"`
	ExtentBytes       int64        `json:"extentBytes"`
	AllocatedUnixNano int64        `json:"allocatedUnixNano"`
}

// List returns the stored shards of volume ("" = all), plus every extent
// without a valid header, sorted by offset.
func (s *Store) List(volume string) []StoredShard {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []StoredShard{}
	for _, e := range s.extents {
		if e.pending {
			continue
		}
		if e.header != nil && volume != "" && e.header.Volume != volume {
			continue
		}
		out = append(out, StoredShard{Offset: e.offset, Header: e.header, ExtentBytes: e.length, AllocatedUnixNano: e.allocated.UnixNano()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Offset < out[j].Offset })
	return out
}

// Space reports capacity and use.
func (s *Store) Space() Space {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Space{CapacityBytes: s.capacity, UsedBytes: s.used, FreeBytes: s.capacity - s.used,
		Shards: len(s.extents) - s.unreadable, Unreadable: s.unreadable, Unindexable: len(s.unindexable)}
}
