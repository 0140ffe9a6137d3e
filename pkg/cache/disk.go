package cache

import (
	"container/list"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/zeebo/xxh3"

	"github.com/billyronks/couchestor/pkg/dirlock"
)

// DiskConfig configures the local-disk tier.
type DiskConfig struct {
	// Dir holds the entry files (an NVMe path in production). Created if missing.
	Dir string
	// CapacityBytes bounds the total size of the entry files. Required.
	CapacityBytes int64
	// Compression of values stored by DiskCache.Put. Tiered ignores it and
	// stores values in the form Tiered's own Compression produced.
	Compression Compression
	// Metrics receives the tier="l2" series; nil keeps unregistered counters.
	Metrics *Metrics
	// Now is the clock for created/last-accessed times; nil means time.Now.
	Now func() time.Time
	// Binding ties the directory's entries to what they cache (for a
	// volume: its UID and writer epoch). When it is set, OpenDiskCache reads
	// the binding the directory holds (file BINDING, "" when there is none)
	// and, unless it equals Binding or KeepBinding accepts it, removes every
	// entry: they may be another volume's bytes, or older than what another
	// writer wrote since. The directory is then bound to Binding, durably,
	// before the cache serves anything. Empty: entries are kept whatever
	// wrote them.
	Binding string
	// KeepBinding reports whether entries written under the stored binding
	// still hold current data (for a volume: same UID, and the writer epoch
	// just before this one). Nil accepts only Binding itself.
	KeepBinding func(stored string) bool
}

// DiskCache is the L2 tier: one file per entry under Dir, in 256 fan-out
// directories.
//
// Write protocol: the entry is written to a temp file in its directory and
// renamed over the final name. Put fsyncs the file and the directory before
// it returns; demotions from L1 (Tiered) skip both fsyncs — an entry that a
// crash loses or tears is only a miss (the checksum rejects a torn file, and
// L3 still holds the data), and two fsyncs per demoted entry would make every
// cold read pay for disk flushes. Delete is always durable: it unlinks and
// fsyncs the directory when the key has a file, or had one that was unlinked
// (eviction, corrupt entry) without an fsync since, so a crash can never
// bring back a file of the key once Delete returned; a Delete of a key with
// no file, pending or not, costs nothing. Together with Tiered's order (drop the L2 copy
// before writing L3) this keeps every file that survives a crash equal to the
// current L3 value.
//
// File layout (little endian): a 64-byte header — magic "CSC1", version,
// codec, 2 reserved bytes, generation, created, last accessed, access count,
// original size, payload length, bucket length, key length — then bucket,
// key, payload, and an xxh3-64 checksum of everything before it. A file whose
// size, magic, name or checksum does not match is a miss and is removed.
//
// The index (key → file, LRU order) lives in memory and is rebuilt on Open by
// reading every file's header; checksums are verified on each read, not at
// Open, so opening a large cache costs one small read per entry. Access
// statistics update in the index on every hit; the file keeps those it was
// written with, so after a restart they are the ones at write time.
type DiskCache struct {
	dir      string
	lock     *dirlock.Lock // held from Open to Close
	capacity int64
	comp     Compression
	now      func() time.Time
	tm       *tierMetrics

	mu     sync.Mutex
	index  map[CacheKey]*diskMeta
	lru    list.List // of *diskMeta, front = most recently used
	used   int64
	maxGen uint64
	closed bool
	// unbound counts the entries Open removed because the directory's
	// binding did not match.
	unbound int
	// dirs numbers the unlinks in each fan-out directory and records how
	// many of them an fsync covers; unsynced maps a key whose file was
	// unlinked without an fsync (eviction, a corrupt file) to its unlink's
	// number. Delete of such a key fsyncs the directory (see the write
	// protocol); other keys' Deletes do not pay for it.
	dirs        map[string]*dirChanges
	unsynced    map[CacheKey]uint64
	deleteSyncs int // directory fsyncs done by Delete (tests)
}

type dirChanges struct{ changed, synced uint64 }

// maxUnsynced bounds the unsynced map: past it, the demotion path fsyncs
// the directories and forgets the entries.
const maxUnsynced = 1 << 14

// unlinkedLocked records that key's file in dir was unlinked, not yet durably.
func (d *DiskCache) unlinkedLocked(key CacheKey, dir string) {
	c := d.dirs[dir]
	if c == nil {
		c = &dirChanges{}
		d.dirs[dir] = c
	}
	c.changed++
	d.unsynced[key] = c.changed
}

// syncUnsynced fsyncs every directory with unlinks not yet durable and
// forgets the keys they cover (the bound of the unsynced map).
func (d *DiskCache) syncUnsynced() error {
	d.mu.Lock()
	upTo := map[string]uint64{}
	for dir, c := range d.dirs {
		if c.changed > c.synced {
			upTo[dir] = c.changed
		}
	}
	d.mu.Unlock()
	for dir, n := range upTo {
		if err := syncDir(dir); err != nil {
			return err
		}
		d.mu.Lock()
		d.dirs[dir].synced = max(d.dirs[dir].synced, n)
		d.mu.Unlock()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for key, n := range d.unsynced {
		if c := d.dirs[filepath.Join(d.dir, filepath.Dir(entryName(key)))]; c == nil || c.synced >= n {
			delete(d.unsynced, key)
		}
	}
	return nil
}

type diskMeta struct {
	key          CacheKey
	name         string // path relative to dir
	fileSize     int64
	gen          uint64
	codec        Codec
	originalSize int
	createdAt    int64
	lastAccessed int64
	accessCount  uint64
	elem         *list.Element
}

const (
	diskMagic      = "CSC1"
	diskVersion    = 1
	diskHeaderSize = 64
	diskSumSize    = 8
	diskExt        = ".ent"
	diskTmpMarker  = ".tmp-"
)

// errEntryTooLarge is returned by Put for an entry larger than the capacity.
var errEntryTooLarge = errors.New("entry larger than the disk cache capacity")

// OpenDiskCache opens (or creates) the tier at cfg.Dir and rebuilds its index.
// Leftover temp files from interrupted writes and files that fail the header
// checks are removed. If the files exceed CapacityBytes (the bound was
// lowered) the least recently used are evicted.
func OpenDiskCache(cfg DiskConfig) (*DiskCache, error) {
	if cfg.Dir == "" {
		return nil, errors.New("disk cache Dir is empty: must name a directory")
	}
	if cfg.CapacityBytes <= 0 {
		return nil, fmt.Errorf("disk cache CapacityBytes %d: must be > 0", cfg.CapacityBytes)
	}
	if err := cfg.Compression.validate(); err != nil {
		return nil, fmt.Errorf("disk cache: %w", err)
	}
	m := cfg.Metrics
	if m == nil {
		var err error
		if m, err = NewMetrics(nil); err != nil {
			return nil, err
		}
	}
	d := &DiskCache{dir: cfg.Dir, capacity: cfg.CapacityBytes, comp: cfg.Compression, now: cfg.Now,
		tm: m.tier(TierL2), index: map[CacheKey]*diskMeta{}, dirs: map[string]*dirChanges{}, unsynced: map[CacheKey]uint64{}}
	if d.now == nil {
		d.now = time.Now
	}
	if err := os.MkdirAll(cfg.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("create disk cache directory: %w", err)
	}
	// Two processes sharing the directory would serve each other's entries
	// and evict each other's files.
	lock, err := dirlock.Acquire(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("disk cache: %w", err)
	}
	d.lock = lock
	for i := range 256 {
		if err := os.MkdirAll(filepath.Join(cfg.Dir, fmt.Sprintf("%02x", i)), 0o750); err != nil {
			lock.Close()
			return nil, fmt.Errorf("create disk cache directory: %w", err)
		}
	}
	stored, err := readBinding(cfg.Dir)
	if err != nil {
		lock.Close()
		return nil, err
	}
	keep := cfg.Binding == "" || stored == cfg.Binding || cfg.KeepBinding != nil && cfg.KeepBinding(stored)
	if err := d.scan(!keep); err != nil {
		lock.Close()
		return nil, err
	}
	// What the last run or the scan unlinked may not be durable yet, and
	// those keys are not known any more: make it durable once, now.
	for i := range 256 {
		if err := syncDir(filepath.Join(cfg.Dir, fmt.Sprintf("%02x", i))); err != nil {
			lock.Close()
			return nil, err
		}
	}
	clear(d.unsynced)
	// Bound only after the removals above are durable: a crash in between
	// leaves the old binding, and the next Open removes them again.
	if cfg.Binding != "" && stored != cfg.Binding {
		if err := writeBinding(cfg.Dir, cfg.Binding); err != nil {
			lock.Close()
			return nil, err
		}
	}
	m.bytes.set(TierL2, d.UsedBytes)
	return d, nil
}

const (
	bindingFile = "BINDING"
	maxBinding  = 4096
)

// readBinding returns the binding dir holds, "" when it holds none.
func readBinding(dir string) (string, error) {
	f, err := os.Open(filepath.Join(dir, bindingFile))
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("disk cache: read binding: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxBinding+1))
	if err != nil {
		return "", fmt.Errorf("disk cache: read binding %s: %w", f.Name(), err)
	}
	return string(b), nil
}

// writeBinding replaces dir's binding durably (temp file, fsync, rename,
// directory fsync).
func writeBinding(dir, binding string) error {
	if len(binding) > maxBinding {
		return fmt.Errorf("disk cache: binding of %d bytes exceeds %d", len(binding), maxBinding)
	}
	path := filepath.Join(dir, bindingFile)
	tmp := path + diskTmpMarker
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("disk cache: write binding: %w", err)
	}
	_, err = f.WriteString(binding)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		err = syncDir(dir)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("disk cache: write binding %s: %w", path, err)
	}
	return nil
}

// Unbound is how many entries Open removed because the directory was bound
// to something else (DiskConfig.Binding).
func (d *DiskCache) Unbound() int { return d.unbound }

// scan rebuilds the index from the files on disk; with wipe it removes
// every entry instead.
func (d *DiskCache) scan(wipe bool) error {
	var metas []*diskMeta
	for i := range 256 {
		sub := fmt.Sprintf("%02x", i)
		ents, err := os.ReadDir(filepath.Join(d.dir, sub))
		if err != nil {
			return fmt.Errorf("scan disk cache %s: %w", d.dir, err)
		}
		for _, e := range ents {
			name := filepath.Join(sub, e.Name())
			path := filepath.Join(d.dir, name)
			if wipe {
				if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
					return fmt.Errorf("disk cache %s: remove %s of another binding: %w", d.dir, name, err)
				}
				if strings.HasSuffix(e.Name(), diskExt) && !strings.Contains(e.Name(), diskTmpMarker) {
					d.unbound++
				}
				continue
			}
			if strings.Contains(e.Name(), diskTmpMarker) || !strings.HasSuffix(e.Name(), diskExt) {
				// An interrupted write (or a stranger): never part of the cache.
				_ = os.Remove(path)
				continue
			}
			meta, err := readDiskHeader(path)
			if err != nil || meta.name != name {
				d.tm.corrupt.Inc()
				_ = os.Remove(path)
				continue
			}
			metas = append(metas, meta)
		}
	}
	// Oldest access last in the LRU list, so eviction takes it first.
	slices.SortFunc(metas, func(a, b *diskMeta) int {
		switch {
		case a.lastAccessed > b.lastAccessed:
			return -1
		case a.lastAccessed < b.lastAccessed:
			return 1
		}
		return 0
	})
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, meta := range metas {
		if old := d.index[meta.key]; old != nil { // cannot happen: the name is the key's hash
			continue
		}
		meta.elem = d.lru.PushBack(meta)
		d.index[meta.key] = meta
		d.used += meta.fileSize
		d.maxGen = max(d.maxGen, meta.gen)
	}
	d.evictLocked(nil)
	return nil
}

// entryName is the file of key: its 128-bit xxh3 in hex, fanned out by the first byte.
func entryName(key CacheKey) string {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(len(key.Bucket)))
	h := xxh3.New128()
	_, _ = h.Write(b[:])
	_, _ = h.WriteString(key.Bucket)
	_, _ = h.WriteString(key.Key)
	sum := h.Sum128().Bytes()
	s := hex.EncodeToString(sum[:])
	return filepath.Join(s[:2], s+diskExt)
}

// readDiskHeader reads the header and key of an entry file and checks that the
// sizes agree with the file; the checksum is left to the read path.
func readDiskHeader(path string) (*diskMeta, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	var hdr [diskHeaderSize]byte
	if _, err := io.ReadFull(f, hdr[:]); err != nil {
		return nil, fmt.Errorf("read header: %w", err)
	}
	meta, bucketLen, keyLen, err := parseDiskHeader(hdr[:], st.Size())
	if err != nil {
		return nil, err
	}
	kb := make([]byte, bucketLen+keyLen)
	if _, err := io.ReadFull(f, kb); err != nil {
		return nil, fmt.Errorf("read key: %w", err)
	}
	meta.key = CacheKey{Bucket: string(kb[:bucketLen]), Key: string(kb[bucketLen:])}
	meta.name = entryName(meta.key)
	return meta, nil
}

func parseDiskHeader(h []byte, fileSize int64) (meta *diskMeta, bucketLen, keyLen int, err error) {
	if string(h[0:4]) != diskMagic {
		return nil, 0, 0, errors.New("bad magic")
	}
	if h[4] != diskVersion {
		return nil, 0, 0, fmt.Errorf("version %d unknown", h[4])
	}
	le := binary.LittleEndian
	payloadLen := le.Uint64(h[48:])
	bl, kl := le.Uint32(h[56:]), le.Uint32(h[60:])
	want := uint64(diskHeaderSize) + uint64(bl) + uint64(kl) + payloadLen + diskSumSize
	if payloadLen > uint64(fileSize) || want != uint64(fileSize) {
		return nil, 0, 0, fmt.Errorf("file has %d bytes, header describes %d (torn or truncated)", fileSize, want)
	}
	orig := le.Uint64(h[40:])
	if orig > 1<<40 {
		return nil, 0, 0, fmt.Errorf("original size %d implausible", orig)
	}
	meta = &diskMeta{
		fileSize:     fileSize,
		codec:        Codec(h[5]),
		gen:          le.Uint64(h[8:]),
		createdAt:    int64(le.Uint64(h[16:])),
		lastAccessed: int64(le.Uint64(h[24:])),
		accessCount:  le.Uint64(h[32:]),
		originalSize: int(orig),
	}
	return meta, int(bl), int(kl), nil
}

// encodeDiskEntry lays out a whole entry file.
func encodeDiskEntry(key CacheKey, s *stored) []byte {
	n := diskHeaderSize + len(key.Bucket) + len(key.Key) + len(s.payload) + diskSumSize
	b := make([]byte, n)
	le := binary.LittleEndian
	copy(b, diskMagic)
	b[4] = diskVersion
	b[5] = byte(s.codec)
	le.PutUint64(b[8:], s.gen)
	le.PutUint64(b[16:], uint64(s.createdAt))
	le.PutUint64(b[24:], uint64(s.lastAccessed))
	le.PutUint64(b[32:], s.accessCount)
	le.PutUint64(b[40:], uint64(s.originalSize))
	le.PutUint64(b[48:], uint64(len(s.payload)))
	le.PutUint32(b[56:], uint32(len(key.Bucket)))
	le.PutUint32(b[60:], uint32(len(key.Key)))
	off := diskHeaderSize
	off += copy(b[off:], key.Bucket)
	off += copy(b[off:], key.Key)
	off += copy(b[off:], s.payload)
	le.PutUint64(b[off:], xxh3.Hash(b[:off]))
	return b
}

// decodeDiskEntry verifies a whole entry file and returns its content.
func decodeDiskEntry(key CacheKey, b []byte) (*stored, error) {
	if len(b) < diskHeaderSize+diskSumSize {
		return nil, fmt.Errorf("file has %d bytes, shorter than a header", len(b))
	}
	meta, bl, kl, err := parseDiskHeader(b[:diskHeaderSize], int64(len(b)))
	if err != nil {
		return nil, err
	}
	end := len(b) - diskSumSize
	if got, want := xxh3.Hash(b[:end]), binary.LittleEndian.Uint64(b[end:]); got != want {
		return nil, fmt.Errorf("checksum %016x, stored %016x", got, want)
	}
	kb := b[diskHeaderSize : diskHeaderSize+bl+kl]
	if string(kb[:bl]) != key.Bucket || string(kb[bl:]) != key.Key {
		return nil, errors.New("file belongs to another key")
	}
	return &stored{
		payload: b[diskHeaderSize+bl+kl : end], codec: meta.codec, originalSize: meta.originalSize, gen: meta.gen,
		createdAt: meta.createdAt, lastAccessed: meta.lastAccessed, accessCount: meta.accessCount,
	}, nil
}

// Get returns the entry and true on a hit. A file that is missing, torn or
// corrupt is a miss (and is removed); its bytes are never returned.
func (d *DiskCache) Get(key CacheKey) (CacheEntry, bool) {
	s, ok := d.getStored(key)
	if !ok {
		return CacheEntry{}, false
	}
	data, err := decode(s.payload, s.codec, s.originalSize)
	if err != nil {
		// The checksum matched, so this is a codec bug or a forged file.
		d.tm.corrupt.Inc()
		_ = d.Delete(key)
		return CacheEntry{}, false
	}
	return CacheEntry{Data: data, Metadata: s.metadata()}, true
}

// getStored reads and verifies key's file, records the access, and returns
// the stored form with the up-to-date statistics.
func (d *DiskCache) getStored(key CacheKey) (*stored, bool) {
	start := time.Now()
	defer d.tm.observeSince(start)
	d.mu.Lock()
	meta := d.index[key]
	if meta == nil || d.closed {
		d.mu.Unlock()
		d.tm.misses.add(0)
		return nil, false
	}
	d.lru.MoveToFront(meta.elem)
	d.mu.Unlock()

	b, err := os.ReadFile(filepath.Join(d.dir, meta.name))
	var s *stored
	if err == nil {
		s, err = decodeDiskEntry(key, b)
	}
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			d.tm.corrupt.Inc()
		}
		d.mu.Lock()
		if d.index[key] == meta { // not replaced meanwhile
			d.removeLocked(meta)
		}
		d.mu.Unlock()
		d.tm.misses.add(0)
		return nil, false
	}
	now := d.now().UnixNano()
	d.mu.Lock()
	if cur := d.index[key]; cur != nil && cur.gen == s.gen {
		cur.accessCount++
		cur.lastAccessed = now
		s.accessCount, s.lastAccessed = cur.accessCount, cur.lastAccessed
	}
	d.mu.Unlock()
	d.tm.hits.add(0)
	return s, true
}

// Put stores data under key, compressed per the configured Compression,
// replacing any previous entry. The write is durable when Put returns.
func (d *DiskCache) Put(key CacheKey, data []byte) error {
	payload, codec, err := d.comp.encode(data)
	if err != nil {
		return fmt.Errorf("l2 put %s/%s: %w", key.Bucket, key.Key, err)
	}
	now := d.now().UnixNano()
	d.mu.Lock()
	d.maxGen++
	gen := d.maxGen
	d.mu.Unlock()
	return d.putStored(key, &stored{payload: payload, codec: codec, originalSize: len(data), gen: gen, createdAt: now, lastAccessed: now}, true)
}

// putStored writes an entry; durable says whether to fsync the file and the
// directory (Put) or leave that to the next Delete in the directory (demotion).
func (d *DiskCache) putStored(key CacheKey, s *stored, durable bool) error {
	b := encodeDiskEntry(key, s)
	if int64(len(b)) > d.capacity {
		return fmt.Errorf("l2 put %s/%s (%d bytes, capacity %d): %w", key.Bucket, key.Key, len(b), d.capacity, errEntryTooLarge)
	}
	name := entryName(key)
	path := filepath.Join(d.dir, name)
	sub := filepath.Dir(path)
	f, err := os.CreateTemp(sub, filepath.Base(name)+diskTmpMarker+"*")
	if err != nil {
		return fmt.Errorf("l2 put %s/%s: %w", key.Bucket, key.Key, err)
	}
	tmp := f.Name()
	_, err = f.Write(b)
	if err == nil && durable {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("l2 write %s: %w", tmp, err)
	}

	meta := &diskMeta{key: key, name: name, fileSize: int64(len(b)), gen: s.gen, codec: s.codec,
		originalSize: s.originalSize, createdAt: s.createdAt, lastAccessed: s.lastAccessed, accessCount: s.accessCount}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		_ = os.Remove(tmp)
		return errors.New("l2 put: disk cache is closed")
	}
	// Rename under the lock so the index and the file agree on which write won.
	if err := os.Rename(tmp, path); err != nil {
		d.mu.Unlock()
		_ = os.Remove(tmp)
		return fmt.Errorf("l2 rename %s: %w", tmp, err)
	}
	if old := d.index[key]; old != nil {
		d.lru.Remove(old.elem)
		d.used -= old.fileSize
	}
	meta.elem = d.lru.PushFront(meta)
	d.index[key] = meta
	d.used += meta.fileSize
	d.maxGen = max(d.maxGen, s.gen)
	dirs := d.evictLocked(meta)
	dirs = append(dirs, sub)
	prune := false
	if !durable {
		dirs = nil
		prune = len(d.unsynced) > maxUnsynced
	}
	d.mu.Unlock()
	if prune {
		if err := d.syncUnsynced(); err != nil {
			return fmt.Errorf("l2 put %s/%s: %w", key.Bucket, key.Key, err)
		}
	}

	for _, dir := range dirs {
		if err := syncDir(dir); err != nil {
			return fmt.Errorf("l2 put %s/%s: %w", key.Bucket, key.Key, err)
		}
	}
	return nil
}

// evictLocked drops least recently used entries (never keep) until the bound
// holds, and returns the directories to fsync.
func (d *DiskCache) evictLocked(keep *diskMeta) []string {
	var dirs []string
	for d.used > d.capacity {
		back := d.lru.Back()
		if back == nil {
			break
		}
		victim := back.Value.(*diskMeta)
		if victim == keep {
			break
		}
		d.removeLocked(victim)
		d.tm.evictions.Inc()
		dirs = append(dirs, filepath.Join(d.dir, filepath.Dir(victim.name)))
	}
	return dirs
}

// removeLocked forgets meta and unlinks its file, and marks its directory
// dirty until the caller (or the next Delete there) fsyncs it.
func (d *DiskCache) removeLocked(meta *diskMeta) {
	d.lru.Remove(meta.elem)
	delete(d.index, meta.key)
	d.used -= meta.fileSize
	_ = os.Remove(filepath.Join(d.dir, meta.name))
	d.unlinkedLocked(meta.key, filepath.Join(d.dir, filepath.Dir(meta.name)))
}

// Delete removes key's entry, durably: when Delete returns, a crash cannot
// bring the file back — also a file of key that was evicted (or demoted)
// without an fsync before.
func (d *DiskCache) Delete(key CacheKey) error {
	dir := filepath.Join(d.dir, filepath.Dir(entryName(key)))
	d.mu.Lock()
	if meta := d.index[key]; meta != nil {
		d.removeLocked(meta)
	}
	n, pending := d.unsynced[key]
	c := d.dirs[dir]
	if pending && (c == nil || c.synced >= n) {
		delete(d.unsynced, key)
		pending = false
	}
	var upTo uint64
	if c != nil {
		upTo = c.changed
	}
	d.mu.Unlock()
	if !pending {
		return nil
	}
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("l2 delete %s/%s: %w", key.Bucket, key.Key, err)
	}
	d.mu.Lock()
	d.deleteSyncs++
	c.synced = max(c.synced, upTo)
	if d.unsynced[key] <= c.synced {
		delete(d.unsynced, key)
	}
	d.mu.Unlock()
	return nil
}

// has reports whether key is stored with generation gen.
func (d *DiskCache) has(key CacheKey, gen uint64) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	m := d.index[key]
	return m != nil && m.gen == gen
}

// maxGeneration is the highest generation stored, for Tiered's counter.
func (d *DiskCache) maxGeneration() uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.maxGen
}

// Len is the number of entries.
func (d *DiskCache) Len() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.index)
}

// UsedBytes is the total size of the entry files.
func (d *DiskCache) UsedBytes() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.used
}

// Close stops the tier; the files stay for the next Open.
func (d *DiskCache) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	return d.lock.Close()
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open directory %s for fsync: %w", dir, err)
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	return nil
}
