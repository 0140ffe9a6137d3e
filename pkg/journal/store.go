package journal

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/zeebo/xxh3"

	"github.com/billyronks/couchestor/pkg/dirlock"
)

// Store is one replica of a volume's journal. Every mutating call is durable
// when it returns nil. FileStore is the local implementation; a remote one
// (a shard server) implements the same calls.
type Store interface {
	// Info returns the store's durable state.
	Info(ctx context.Context) (StoreInfo, error)
	// Scan calls fn, in sequence order, for every valid record with
	// Seq > after. fn must not keep rec.Data after returning.
	Scan(ctx context.Context, after uint64, fn func(rec Record) error) error
	// Read returns the record with sequence number seq (verified).
	Read(ctx context.Context, seq uint64) (Record, error)
	// Append appends records whose Seqs follow the store's last one.
	Append(ctx context.Context, recs []Record) error
	// TruncateAfter drops every record with Seq > seq.
	TruncateAfter(ctx context.Context, seq uint64) error
	// Trim drops every record with Seq <= through and remembers through.
	Trim(ctx context.Context, through uint64) error
	// Reset drops every record and sets the trim point to through.
	Reset(ctx context.Context, through uint64) error
	// SetEpoch durably records the epoch of a new writer.
	SetEpoch(ctx context.Context, epoch uint64) error
	Close() error
}

// StoreInfo is a store's durable state.
type StoreInfo struct {
	Epoch          uint64 // highest writer epoch recorded by SetEpoch
	TrimmedThrough uint64 // records with Seq <= this were destaged and dropped
	LastSeq        uint64 // Seq of the last record, or TrimmedThrough when empty
	LastEpoch      uint64 // Epoch of the last record, 0 when empty
}

// ErrNotFound is returned by Store.Read for a sequence number it does not hold.
var ErrNotFound = errors.New("journal: record not found")

// FileStore is a Store in a local directory: an append-only log split into
// segment files (journal.log, then journal-<n>.log), the last one appended to
// and fsynced on every Append, and a small meta file (epoch and trim point)
// replaced atomically. Opening it drops a torn tail: everything from the first
// record that does not verify. Trim reclaims space by deleting whole segments
// whose records are all trimmed, so no live byte is ever rewritten.
type FileStore struct {
	dir          string
	segmentBytes int64 // roll to a new segment once the last one reaches this

	mu      sync.Mutex
	segs    []*segment // by id; the last one takes appends
	locs    []recLoc   // live records, by Seq
	meta    storeMeta
	lastSeq uint64
	lastEp  uint64

	unlinks sync.WaitGroup // background deletions of trimmed segments

	lock *dirlock.Lock // no second process (or open) on dir
	// damaged is set when opening found a bad record with valid ones after
	// it (not a torn tail): every call fails with it until Reset moves the
	// damaged segments aside (the repair: the replica is then caught up
	// from the others).
	damaged      error
	damagedFiles []string
	// failed is set by the first failed fsync: the kernel may have dropped
	// the unwritten pages and a later fsync can succeed without them, so no
	// later mutation is acknowledged.
	failed error
}

// ErrDamaged is matched (errors.Is) by the errors of a replica whose log is
// damaged in the middle; Reset repairs it.
var ErrDamaged = errors.New("journal: replica damaged")

// segFile is what a store needs of a segment file (*os.File; tests inject
// failures through it).
type segFile interface {
	io.Reader
	io.ReaderAt
	io.WriterAt
	Sync() error
	Truncate(size int64) error
	Close() error
}

// segment is one log file.
type segment struct {
	id      uint64
	name    string
	f       segFile
	size    int64
	lastSeq uint64 // of its last record (0 when empty)
}

type recLoc struct {
	seq, epoch uint64
	seg        *segment
	off, n     int64
}

type storeMeta struct{ epoch, trimmed uint64 }

const (
	logName  = "journal.log" // the first segment (id 0)
	metaName = "journal.meta"
	// defaultSegmentBytes bounds a segment: the space Trim can free is whole
	// segments, so this is also how much trimmed data may linger on disk.
	defaultSegmentBytes = 16 << 20
)

func segmentName(id uint64) string {
	if id == 0 {
		return logName
	}
	return fmt.Sprintf("journal-%016x.log", id)
}

// OpenFileStore opens (creating if needed) the store in dir and drops a torn tail.
func OpenFileStore(dir string) (*FileStore, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("journal store %s: %w", dir, err)
	}
	lock, err := dirlock.Acquire(dir)
	if err != nil {
		return nil, fmt.Errorf("journal store %s: %w", dir, err)
	}
	s := &FileStore{dir: dir, segmentBytes: defaultSegmentBytes, lock: lock}
	if err := s.readMeta(); err != nil {
		lock.Close()
		return nil, err
	}
	if err := s.load(); err != nil {
		s.closeSegments()
		lock.Close()
		return nil, err
	}
	return s, nil
}

// segmentIDs lists the segment files in dir, by id.
func (s *FileStore) segmentIDs() ([]uint64, error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("journal store %s: %w", s.dir, err)
	}
	var ids []uint64
	for _, e := range ents {
		if e.Name() == logName {
			ids = append(ids, 0)
			continue
		}
		var id uint64
		if n, _ := fmt.Sscanf(e.Name(), "journal-%016x.log", &id); n == 1 && e.Name() == segmentName(id) {
			ids = append(ids, id)
		}
	}
	sort.Slice(ids, func(a, b int) bool { return ids[a] < ids[b] })
	return ids, nil
}

func (s *FileStore) load() error {
	ids, err := s.segmentIDs()
	if err != nil {
		return err
	}
	s.lastSeq, s.lastEp = s.meta.trimmed, 0
	var prev uint64
	torn := false
	var drop []string // segments after a torn record, or wholly trimmed
	for _, id := range ids {
		name := segmentName(id)
		if torn {
			drop = append(drop, name)
			continue
		}
		f, err := os.OpenFile(filepath.Join(s.dir, name), os.O_RDWR, 0o640)
		if err != nil {
			return fmt.Errorf("journal store %s: %w", s.dir, err)
		}
		seg := &segment{id: id, name: name, f: f}
		s.segs = append(s.segs, seg)
		data, err := io.ReadAll(f)
		if err != nil {
			return fmt.Errorf("journal store %s: read %s: %w", s.dir, name, err)
		}
		var off int64
		for off < int64(len(data)) {
			rec, n, err := decodeRecord(data[off:])
			if err == nil && prev > 0 && rec.Seq <= prev {
				return s.markDamaged(ids, fmt.Sprintf("%s offset %d holds seq %d after seq %d", name, off, rec.Seq, prev))
			}
			if err != nil {
				// A torn tail (the last append, cut by a crash, never
				// acknowledged) is dropped. A bad record with a valid one
				// after it is damage: dropping the rest would lose
				// acknowledged records.
				if at, ok := s.validAfter(ids, id, data, off, prev); ok {
					return s.markDamaged(ids, fmt.Sprintf("%s offset %d does not hold a valid record, yet %s does", name, off, at))
				}
				torn = true
				break
			}
			prev = rec.Seq
			seg.lastSeq = rec.Seq
			if rec.Seq > s.meta.trimmed {
				s.locs = append(s.locs, recLoc{seq: rec.Seq, epoch: rec.Epoch, seg: seg, off: off, n: int64(n)})
				s.lastSeq, s.lastEp = rec.Seq, rec.Epoch
			}
			off += int64(n)
		}
		if off < int64(len(data)) {
			if err := f.Truncate(off); err != nil {
				return fmt.Errorf("journal store %s: drop torn tail of %s at %d: %w", s.dir, name, off, err)
			}
			if err := f.Sync(); err != nil {
				return fmt.Errorf("journal store %s: %w", s.dir, err)
			}
		}
		seg.size = off
	}
	// Segments after a torn record must go for good: their records would
	// otherwise follow a gap after the next Append.
	for _, name := range drop {
		if err := os.Remove(filepath.Join(s.dir, name)); err != nil {
			return fmt.Errorf("journal store %s: drop %s after a torn record: %w", s.dir, name, err)
		}
	}
	if len(drop) > 0 {
		if err := syncDir(s.dir); err != nil {
			return fmt.Errorf("journal store %s: %w", s.dir, err)
		}
	}
	s.dropTrimmedSegments()
	return nil
}

// validAfter looks for a valid record with a sequence number above prev
// after the bad one at off of segment id (data), in that segment and the
// later ones (ids); it says where the first one is.
func (s *FileStore) validAfter(ids []uint64, id uint64, data []byte, off int64, prev uint64) (string, bool) {
	find := func(b []byte) (int, bool) {
		var magic [4]byte
		binary.LittleEndian.PutUint32(magic[:], recordMagic)
		for i := 0; ; i++ {
			j := bytes.Index(b[i:], magic[:])
			if j < 0 {
				return 0, false
			}
			i += j
			if rec, _, err := decodeRecord(b[i:]); err == nil && rec.Seq > prev {
				return i, true
			}
		}
	}
	if i, ok := find(data[off+1:]); ok {
		return fmt.Sprintf("offset %d", off+1+int64(i)), true
	}
	for _, later := range ids {
		if later <= id {
			continue
		}
		b, err := os.ReadFile(filepath.Join(s.dir, segmentName(later)))
		if err != nil {
			return fmt.Sprintf("%s (unreadable: %v)", segmentName(later), err), true
		}
		if i, ok := find(b); ok {
			return fmt.Sprintf("%s offset %d", segmentName(later), i), true
		}
	}
	return "", false
}

// markDamaged puts the store in the damaged state: no records, every call
// but Reset and Close refused with ErrDamaged naming what was found.
func (s *FileStore) markDamaged(ids []uint64, what string) error {
	s.closeSegments()
	s.segs, s.locs = nil, nil
	s.lastSeq, s.lastEp = s.meta.trimmed, 0
	for _, id := range ids {
		s.damagedFiles = append(s.damagedFiles, segmentName(id))
	}
	s.damaged = fmt.Errorf("%w: journal store %s: %s; nothing is read from this replica until it is reset and caught up from the others", ErrDamaged, s.dir, what)
	return nil
}

// Damaged returns the damage found on open (nil when none, or once Reset repaired it).
func (s *FileStore) Damaged() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.damaged
}

// usable is the error a call must fail with, if any. Caller holds mu.
func (s *FileStore) usable(mutation bool) error {
	if s.damaged != nil {
		return s.damaged
	}
	if mutation && s.failed != nil {
		return s.failed
	}
	return nil
}

// fsyncFailed records a failed fsync (see failed) and returns err.
func (s *FileStore) fsyncFailed(err error) error {
	err = fmt.Errorf("journal store %s: fsync: %w; the replica acknowledges nothing more until it is reopened", s.dir, err)
	if s.failed == nil {
		s.failed = err
	}
	return err
}

// dropTrimmedSegments closes and deletes every segment but the last whose
// records are all trimmed. The deletions need no fsync, and run in the
// background (unlinking a large file can take milliseconds, more with online
// discard): the meta file's trim point already makes those records dead if a
// segment comes back. The caller guarantees no read of those records is in
// flight (the Journal trims under its trim lock).
func (s *FileStore) dropTrimmedSegments() {
	keep := s.segs[:0]
	for i, seg := range s.segs {
		if i < len(s.segs)-1 && seg.lastSeq <= s.meta.trimmed {
			seg.f.Close()
			s.unlinks.Add(1)
			go func() {
				defer s.unlinks.Done()
				_ = os.Remove(filepath.Join(s.dir, seg.name))
			}()
			continue
		}
		keep = append(keep, seg)
	}
	clear(s.segs[len(keep):])
	s.segs = keep
}

func (s *FileStore) closeSegments() {
	for _, seg := range s.segs {
		seg.f.Close()
	}
}

// active returns the segment to append n bytes to, rolling to a new one when
// the last is full. A new segment's directory entry is made durable before
// any record in it is acknowledged.
func (s *FileStore) active(n int64) (*segment, error) {
	if k := len(s.segs); k > 0 && (s.segs[k-1].size == 0 || s.segs[k-1].size+n <= s.segmentBytes) {
		return s.segs[k-1], nil
	}
	var id uint64
	if k := len(s.segs); k > 0 {
		id = s.segs[k-1].id + 1
	} else if ids, err := s.segmentIDs(); err != nil {
		return nil, err
	} else if len(ids) > 0 {
		id = ids[len(ids)-1] + 1
	}
	name := segmentName(id)
	f, err := os.OpenFile(filepath.Join(s.dir, name), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return nil, fmt.Errorf("journal store %s: new segment: %w", s.dir, err)
	}
	if err := syncDir(s.dir); err != nil {
		f.Close()
		return nil, fmt.Errorf("journal store %s: new segment: %w", s.dir, err)
	}
	seg := &segment{id: id, name: name, f: f}
	s.segs = append(s.segs, seg)
	return seg, nil
}

func (s *FileStore) readMeta() error {
	b, err := os.ReadFile(filepath.Join(s.dir, metaName))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("journal store %s: %w", s.dir, err)
	}
	if len(b) != 24 || xxh3.Hash(b[:16]) != binary.LittleEndian.Uint64(b[16:]) {
		return fmt.Errorf("journal store %s: meta file is corrupt", s.dir)
	}
	s.meta = storeMeta{epoch: binary.LittleEndian.Uint64(b), trimmed: binary.LittleEndian.Uint64(b[8:])}
	return nil
}

// writeMeta replaces the meta file atomically: temp file, fsync, rename, fsync dir.
func (s *FileStore) writeMeta(m storeMeta) error {
	b := binary.LittleEndian.AppendUint64(nil, m.epoch)
	b = binary.LittleEndian.AppendUint64(b, m.trimmed)
	b = binary.LittleEndian.AppendUint64(b, xxh3.Hash(b))
	if err := writeFileDurably(s.dir, metaName, b); err != nil {
		return fmt.Errorf("journal store %s: write meta: %w", s.dir, err)
	}
	s.meta = m
	return nil
}

func writeFileDurably(dir, name string, b []byte) error {
	tmp := filepath.Join(dir, name+".tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func (s *FileStore) Info(context.Context) (StoreInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.usable(false); err != nil {
		return StoreInfo{}, err
	}
	return StoreInfo{Epoch: s.meta.epoch, TrimmedThrough: s.meta.trimmed, LastSeq: s.lastSeq, LastEpoch: s.lastEp}, nil
}

func (s *FileStore) find(seq uint64) int {
	return sort.Search(len(s.locs), func(i int) bool { return s.locs[i].seq >= seq })
}

func (s *FileStore) Scan(ctx context.Context, after uint64, fn func(Record) error) error {
	s.mu.Lock()
	if err := s.usable(false); err != nil {
		s.mu.Unlock()
		return err
	}
	locs := append([]recLoc(nil), s.locs[s.find(after+1):]...)
	s.mu.Unlock()
	var buf []byte
	for _, l := range locs {
		if err := ctx.Err(); err != nil {
			return err
		}
		rec, err := s.readAt(l, &buf)
		if err != nil {
			return err
		}
		if err := fn(rec); err != nil {
			return err
		}
	}
	return nil
}

func (s *FileStore) readAt(l recLoc, buf *[]byte) (Record, error) {
	if int64(cap(*buf)) < l.n {
		*buf = make([]byte, l.n)
	}
	b := (*buf)[:l.n]
	if _, err := l.seg.f.ReadAt(b, l.off); err != nil {
		return Record{}, fmt.Errorf("journal store %s: read seq %d: %w", s.dir, l.seq, err)
	}
	rec, _, err := decodeRecord(b)
	if err != nil || rec.Seq != l.seq {
		// Bytes that verified on open do not any more: the replica is
		// damaged from now on (Reset repairs it), never served.
		err = fmt.Errorf("%w: journal store %s: seq %d at %s offset %d does not verify any more; nothing is read from this replica until it is reset and caught up from the others", ErrDamaged, s.dir, l.seq, l.seg.name, l.off)
		s.mu.Lock()
		if s.damaged == nil {
			s.damaged = err
		}
		s.mu.Unlock()
		return Record{}, err
	}
	return rec, nil
}

func (s *FileStore) Read(_ context.Context, seq uint64) (Record, error) {
	s.mu.Lock()
	if err := s.usable(false); err != nil {
		s.mu.Unlock()
		return Record{}, err
	}
	i := s.find(seq)
	if i == len(s.locs) || s.locs[i].seq != seq {
		s.mu.Unlock()
		return Record{}, fmt.Errorf("journal store %s: seq %d: %w", s.dir, seq, ErrNotFound)
	}
	l := s.locs[i]
	s.mu.Unlock()
	var buf []byte
	return s.readAt(l, &buf)
}

func (s *FileStore) Append(_ context.Context, recs []Record) error {
	return s.append(recs, nil)
}

// AppendEncoded is Append for records that arrive encoded: encoded must be
// exactly recs encoded back to back (as DecodeRecord parsed them from it),
// and is written as is instead of being encoded again. A shard server
// receives journal appends this way.
func (s *FileStore) AppendEncoded(_ context.Context, recs []Record, encoded []byte) error {
	var total int64
	for i := range recs {
		total += recs[i].encodedSize()
	}
	if total != int64(len(encoded)) {
		return fmt.Errorf("journal store %s: %d encoded bytes for records that encode to %d", s.dir, len(encoded), total)
	}
	return s.append(recs, encoded)
}

func (s *FileStore) append(recs []Record, encoded []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.usable(true); err != nil {
		return err
	}
	var total int64
	for i := range recs {
		total += recs[i].encodedSize()
	}
	seg, err := s.active(total)
	if err != nil {
		return err
	}
	var buf []byte
	if encoded == nil {
		buf = make([]byte, 0, total) // one allocation: appending would regrow (and clear) it repeatedly
	}
	last := s.lastSeq
	locs := make([]recLoc, 0, len(recs))
	var off int64
	for i := range recs {
		if recs[i].Seq <= last {
			return fmt.Errorf("journal store %s: append seq %d after %d", s.dir, recs[i].Seq, last)
		}
		last = recs[i].Seq
		n := recs[i].encodedSize()
		if encoded == nil {
			buf = appendRecord(buf, &recs[i])
		}
		locs = append(locs, recLoc{seq: recs[i].Seq, epoch: recs[i].Epoch, seg: seg, off: seg.size + off, n: n})
		off += n
	}
	if encoded != nil {
		buf = encoded
	}
	if _, err := seg.f.WriteAt(buf, seg.size); err != nil {
		return fmt.Errorf("journal store %s: append: %w", s.dir, err)
	}
	if err := seg.f.Sync(); err != nil {
		return s.fsyncFailed(err)
	}
	seg.size += int64(len(buf))
	seg.lastSeq = last
	s.locs = append(s.locs, locs...)
	s.lastSeq, s.lastEp = last, recs[len(recs)-1].Epoch
	return nil
}

func (s *FileStore) TruncateAfter(_ context.Context, seq uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.usable(true); err != nil {
		return err
	}
	i := s.find(seq + 1)
	if i == len(s.locs) {
		return nil
	}
	at := s.locs[i]
	// Later segments go first (durably), so no crash leaves a gap before them.
	k := len(s.segs)
	for k > 0 && s.segs[k-1] != at.seg {
		k--
	}
	if k > 0 && k < len(s.segs) {
		for _, seg := range s.segs[k:] {
			seg.f.Close()
			if err := os.Remove(filepath.Join(s.dir, seg.name)); err != nil {
				return fmt.Errorf("journal store %s: truncate after %d: %w", s.dir, seq, err)
			}
		}
		if err := syncDir(s.dir); err != nil {
			return fmt.Errorf("journal store %s: %w", s.dir, err)
		}
		clear(s.segs[k:])
		s.segs = s.segs[:k]
	}
	if err := at.seg.f.Truncate(at.off); err != nil {
		return fmt.Errorf("journal store %s: truncate after %d: %w", s.dir, seq, err)
	}
	if err := at.seg.f.Sync(); err != nil {
		return s.fsyncFailed(err)
	}
	at.seg.size = at.off
	s.locs = s.locs[:i]
	s.lastSeq, s.lastEp = s.meta.trimmed, 0
	if i > 0 {
		s.lastSeq, s.lastEp = s.locs[i-1].seq, s.locs[i-1].epoch
	}
	at.seg.lastSeq = 0
	if i > 0 && s.locs[i-1].seg == at.seg {
		at.seg.lastSeq = s.locs[i-1].seq
	}
	return nil
}

func (s *FileStore) Trim(_ context.Context, through uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.usable(true); err != nil {
		return err
	}
	if through <= s.meta.trimmed {
		return nil
	}
	if err := s.writeMeta(storeMeta{epoch: s.meta.epoch, trimmed: through}); err != nil {
		return err
	}
	i := s.find(through + 1)
	s.locs = append([]recLoc(nil), s.locs[i:]...)
	if len(s.locs) == 0 && s.lastSeq < through {
		s.lastSeq, s.lastEp = through, 0
	}
	s.dropTrimmedSegments()
	return nil
}

func (s *FileStore) Reset(_ context.Context, through uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failed != nil {
		return s.failed
	}
	if s.damaged != nil {
		// The repair: the damaged segments go aside (kept for inspection),
		// the replica restarts empty at through.
		aside := filepath.Join(s.dir, fmt.Sprintf("damaged-%d", time.Now().UnixNano()))
		if err := os.Mkdir(aside, 0o750); err != nil {
			return fmt.Errorf("journal store %s: set damaged segments aside: %w", s.dir, err)
		}
		names := s.damagedFiles
		for _, seg := range s.segs { // damage found after open: segments still open
			seg.f.Close()
			names = append(names, seg.name)
		}
		s.segs, s.locs = nil, nil
		for _, name := range names {
			if err := os.Rename(filepath.Join(s.dir, name), filepath.Join(aside, name)); err != nil {
				return fmt.Errorf("journal store %s: set damaged segments aside: %w", s.dir, err)
			}
		}
		if err := syncDir(s.dir); err != nil {
			return s.fsyncFailed(err)
		}
		s.damaged, s.damagedFiles = nil, nil
	}
	for _, seg := range s.segs {
		seg.f.Close()
		if err := os.Remove(filepath.Join(s.dir, seg.name)); err != nil {
			return fmt.Errorf("journal store %s: reset: %w", s.dir, err)
		}
	}
	if err := syncDir(s.dir); err != nil {
		return fmt.Errorf("journal store %s: reset: %w", s.dir, err)
	}
	s.segs, s.locs = nil, nil
	if err := s.writeMeta(storeMeta{epoch: s.meta.epoch, trimmed: through}); err != nil {
		return err
	}
	s.lastSeq, s.lastEp = through, 0
	return nil
}

func (s *FileStore) SetEpoch(_ context.Context, epoch uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.usable(true); err != nil {
		return err
	}
	if epoch <= s.meta.epoch {
		return fmt.Errorf("journal store %s: epoch %d is not above %d", s.dir, epoch, s.meta.epoch)
	}
	return s.writeMeta(storeMeta{epoch: epoch, trimmed: s.meta.trimmed})
}

// Close closes the segment files once pending deletions are done.
func (s *FileStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.unlinks.Wait()
	var errs []error
	for _, seg := range s.segs {
		if err := seg.f.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	s.segs = nil
	errs = append(errs, s.lock.Close())
	return errors.Join(errs...)
}
