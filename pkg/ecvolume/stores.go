package ecvolume

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"

	"github.com/billyronks/couchestor/pkg/journal"
)

// StripeStore is the stripe path of one volume as VolumeBackend uses it.
// Implementations must be safe for concurrent use.
type StripeStore interface {
	// ReadAt fills p with the volume's bytes at off as the stripes hold them
	// (ranges never written read as zeros).
	ReadAt(ctx context.Context, p []byte, off int64) error
	// WriteStripe merges extents (absolute LBAs inside stripe stripeIndex)
	// into the stripe and stores it durably; see journal.StripeSink.
	journal.StripeSink
}

// MemoryStripeStore is a StripeStore in RAM (not erasure coded, not
// durable): the stand-in for the stripe path in tests. Stripes are replaced
// whole (copy on write), so a read sees either the old or the new version.
type MemoryStripeStore struct {
	stripeSize int64
	mu         sync.RWMutex
	stripes    map[int64][]byte
	writes     atomic.Int64
	reads      atomic.Int64
}

// NewMemoryStripeStore returns an empty store of stripes of stripeSize bytes.
func NewMemoryStripeStore(stripeSize int64) *MemoryStripeStore {
	return &MemoryStripeStore{stripeSize: stripeSize, stripes: map[int64][]byte{}}
}

// ReadAt implements StripeStore.
func (m *MemoryStripeStore) ReadAt(_ context.Context, p []byte, off int64) error {
	m.reads.Add(1)
	m.mu.RLock()
	defer m.mu.RUnlock()
	for len(p) > 0 {
		si, so := off/m.stripeSize, off%m.stripeSize
		n := min(int64(len(p)), m.stripeSize-so)
		if s, ok := m.stripes[si]; ok {
			copy(p[:n], s[so:so+n])
		} else {
			clear(p[:n])
		}
		p, off = p[n:], off+n
	}
	return nil
}

// WriteStripe implements journal.StripeSink.
func (m *MemoryStripeStore) WriteStripe(_ context.Context, idx int64, extents []journal.Extent) error {
	m.writes.Add(1)
	m.mu.Lock()
	defer m.mu.Unlock()
	next := make([]byte, m.stripeSize)
	if old, ok := m.stripes[idx]; ok {
		copy(next, old)
	}
	base := idx * m.stripeSize
	for _, e := range extents {
		o := int64(e.LBA)*journal.LBASize - base
		if o < 0 || o+int64(len(e.Data)) > m.stripeSize {
			return fmt.Errorf("memory stripe store: extent at LBA %d (+%d bytes) outside stripe %d", e.LBA, len(e.Data), idx)
		}
		copy(next[o:], e.Data)
	}
	m.stripes[idx] = next
	return nil
}

// StripeWrites is the number of WriteStripe calls so far.
func (m *MemoryStripeStore) StripeWrites() int64 { return m.writes.Load() }

// Reads is the number of ReadAt calls so far.
func (m *MemoryStripeStore) Reads() int64 { return m.reads.Load() }

// FileStripeStore keeps a volume's stripe bytes in one local file (sparse,
// fsynced after each stripe write): a durable but not erasure-coded
// stand-in for the stripe path, for crash tests and development. A crash in
// the middle of WriteStripe may leave the stripe partly updated; that is
// safe here because the journal still holds those records (it is trimmed
// only after WriteStripe returns) and the destager writes them again.
type FileStripeStore struct {
	f          *os.File
	stripeSize int64
	writes     atomic.Int64
}

// OpenFileStripeStore opens (creating if needed) the store file at path.
func OpenFileStripeStore(path string, stripeSize int64) (*FileStripeStore, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open file stripe store: %w", err)
	}
	return &FileStripeStore{f: f, stripeSize: stripeSize}, nil
}

// ReadAt implements StripeStore; bytes past the file's end read as zeros.
func (s *FileStripeStore) ReadAt(_ context.Context, p []byte, off int64) error {
	n, err := s.f.ReadAt(p, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("file stripe store: read at %d: %w", off, err)
	}
	clear(p[n:])
	return nil
}

// WriteStripe implements journal.StripeSink.
func (s *FileStripeStore) WriteStripe(_ context.Context, idx int64, extents []journal.Extent) error {
	s.writes.Add(1)
	base := idx * s.stripeSize
	for _, e := range extents {
		off := int64(e.LBA) * journal.LBASize
		if off < base || off+int64(len(e.Data)) > base+s.stripeSize {
			return fmt.Errorf("file stripe store: extent at LBA %d (+%d bytes) outside stripe %d", e.LBA, len(e.Data), idx)
		}
		if _, err := s.f.WriteAt(e.Data, off); err != nil {
			return fmt.Errorf("file stripe store: write stripe %d: %w", idx, err)
		}
	}
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("file stripe store: sync stripe %d: %w", idx, err)
	}
	return nil
}

// StripeWrites is the number of WriteStripe calls so far.
func (s *FileStripeStore) StripeWrites() int64 { return s.writes.Load() }

// Close closes the file.
func (s *FileStripeStore) Close() error { return s.f.Close() }
