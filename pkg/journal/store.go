package journal

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"github.com/zeebo/xxh3"
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

// FileStore is a Store in a local directory: an append-only log file
// (journal.log) fsynced on every Append, and a small meta file (epoch and
// trim point) replaced atomically. Opening it drops a torn tail: everything
// from the first record that does not verify. Trimmed space is reclaimed by
// rewriting the log once dead bytes outweigh live ones.
type FileStore struct {
	dir string

	mu      sync.Mutex
	f       *os.File
	size    int64
	locs    []recLoc // live records, by Seq
	dead    int64    // bytes of trimmed records still in the file
	meta    storeMeta
	lastSeq uint64
	lastEp  uint64
}

type recLoc struct {
	seq, epoch uint64
	off, n     int64
}

type storeMeta struct{ epoch, trimmed uint64 }

const (
	logName  = "journal.log"
	metaName = "journal.meta"
)

// OpenFileStore opens (creating if needed) the store in dir and drops a torn tail.
func OpenFileStore(dir string) (*FileStore, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("journal store %s: %w", dir, err)
	}
	s := &FileStore{dir: dir}
	if err := s.readMeta(); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, logName), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("journal store %s: %w", dir, err)
	}
	s.f = f
	if err := s.load(); err != nil {
		f.Close()
		return nil, err
	}
	return s, nil
}

func (s *FileStore) load() error {
	data, err := io.ReadAll(s.f)
	if err != nil {
		return fmt.Errorf("journal store %s: read log: %w", s.dir, err)
	}
	var off int64
	var prev uint64
	s.lastSeq, s.lastEp = s.meta.trimmed, 0
	for off < int64(len(data)) {
		rec, n, err := decodeRecord(data[off:])
		if err != nil || off > 0 && rec.Seq <= prev {
			break // torn tail (or out-of-order garbage): drop from here
		}
		prev = rec.Seq
		if rec.Seq > s.meta.trimmed {
			s.locs = append(s.locs, recLoc{seq: rec.Seq, epoch: rec.Epoch, off: off, n: int64(n)})
			s.lastSeq, s.lastEp = rec.Seq, rec.Epoch
		} else {
			s.dead += int64(n)
		}
		off += int64(n)
	}
	if off < int64(len(data)) {
		if err := s.f.Truncate(off); err != nil {
			return fmt.Errorf("journal store %s: drop torn tail at %d: %w", s.dir, off, err)
		}
		if err := s.f.Sync(); err != nil {
			return fmt.Errorf("journal store %s: %w", s.dir, err)
		}
	}
	s.size = off
	return nil
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
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
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
	return StoreInfo{Epoch: s.meta.epoch, TrimmedThrough: s.meta.trimmed, LastSeq: s.lastSeq, LastEpoch: s.lastEp}, nil
}

func (s *FileStore) find(seq uint64) int {
	return sort.Search(len(s.locs), func(i int) bool { return s.locs[i].seq >= seq })
}

func (s *FileStore) Scan(ctx context.Context, after uint64, fn func(Record) error) error {
	s.mu.Lock()
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
	if _, err := s.f.ReadAt(b, l.off); err != nil {
		return Record{}, fmt.Errorf("journal store %s: read seq %d: %w", s.dir, l.seq, err)
	}
	rec, _, err := decodeRecord(b)
	if err != nil || rec.Seq != l.seq {
		return Record{}, fmt.Errorf("journal store %s: seq %d at offset %d: %w", s.dir, l.seq, l.off, errTorn)
	}
	return rec, nil
}

func (s *FileStore) Read(_ context.Context, seq uint64) (Record, error) {
	s.mu.Lock()
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
	s.mu.Lock()
	defer s.mu.Unlock()
	var total int64
	for i := range recs {
		total += recs[i].encodedSize()
	}
	buf := make([]byte, 0, total) // one allocation: appending would regrow (and clear) it repeatedly
	last := s.lastSeq
	locs := make([]recLoc, 0, len(recs))
	for i := range recs {
		if recs[i].Seq <= last {
			return fmt.Errorf("journal store %s: append seq %d after %d", s.dir, recs[i].Seq, last)
		}
		last = recs[i].Seq
		off := int64(len(buf))
		buf = appendRecord(buf, &recs[i])
		locs = append(locs, recLoc{seq: recs[i].Seq, epoch: recs[i].Epoch, off: s.size + off, n: int64(len(buf)) - off})
	}
	if _, err := s.f.WriteAt(buf, s.size); err != nil {
		return fmt.Errorf("journal store %s: append: %w", s.dir, err)
	}
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("journal store %s: fsync: %w", s.dir, err)
	}
	s.size += int64(len(buf))
	s.locs = append(s.locs, locs...)
	s.lastSeq, s.lastEp = last, recs[len(recs)-1].Epoch
	return nil
}

func (s *FileStore) TruncateAfter(_ context.Context, seq uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := s.find(seq + 1)
	if i == len(s.locs) {
		return nil
	}
	off := s.locs[i].off
	if err := s.f.Truncate(off); err != nil {
		return fmt.Errorf("journal store %s: truncate after %d: %w", s.dir, seq, err)
	}
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("journal store %s: %w", s.dir, err)
	}
	s.size = off
	s.locs = s.locs[:i]
	s.lastSeq, s.lastEp = s.meta.trimmed, 0
	if i > 0 {
		s.lastSeq, s.lastEp = s.locs[i-1].seq, s.locs[i-1].epoch
	}
	return nil
}

func (s *FileStore) Trim(_ context.Context, through uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if through <= s.meta.trimmed {
		return nil
	}
	if err := s.writeMeta(storeMeta{epoch: s.meta.epoch, trimmed: through}); err != nil {
		return err
	}
	i := s.find(through + 1)
	for _, l := range s.locs[:i] {
		s.dead += l.n
	}
	s.locs = append([]recLoc(nil), s.locs[i:]...)
	if len(s.locs) == 0 && s.lastSeq < through {
		s.lastSeq, s.lastEp = through, 0
	}
	if s.dead > 1<<20 && s.dead > s.size-s.dead {
		return s.compact()
	}
	return nil
}

// compact rewrites the log with only the live records. The new log is made
// durable before it replaces the old one, so a crash leaves one or the other.
func (s *FileStore) compact() error {
	var buf []byte
	var tmp []byte
	locs := make([]recLoc, 0, len(s.locs))
	for _, l := range s.locs {
		rec, err := s.readAt(l, &tmp)
		if err != nil {
			return err
		}
		off := int64(len(buf))
		buf = appendRecord(buf, &rec)
		locs = append(locs, recLoc{seq: l.seq, epoch: l.epoch, off: off, n: int64(len(buf)) - off})
	}
	if err := writeFileDurably(s.dir, logName, buf); err != nil {
		return fmt.Errorf("journal store %s: compact: %w", s.dir, err)
	}
	f, err := os.OpenFile(filepath.Join(s.dir, logName), os.O_RDWR, 0o644)
	if err != nil {
		return fmt.Errorf("journal store %s: reopen after compaction: %w", s.dir, err)
	}
	s.f.Close()
	s.f, s.size, s.locs, s.dead = f, int64(len(buf)), locs, 0
	return nil
}

func (s *FileStore) Reset(_ context.Context, through uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.f.Truncate(0); err != nil {
		return fmt.Errorf("journal store %s: reset: %w", s.dir, err)
	}
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("journal store %s: %w", s.dir, err)
	}
	s.size, s.locs, s.dead = 0, nil, 0
	if err := s.writeMeta(storeMeta{epoch: s.meta.epoch, trimmed: through}); err != nil {
		return err
	}
	s.lastSeq, s.lastEp = through, 0
	return nil
}

func (s *FileStore) SetEpoch(_ context.Context, epoch uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if epoch <= s.meta.epoch {
		return fmt.Errorf("journal store %s: epoch %d is not above %d", s.dir, epoch, s.meta.epoch)
	}
	return s.writeMeta(storeMeta{epoch: epoch, trimmed: s.meta.trimmed})
}

func (s *FileStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.f.Close()
}
