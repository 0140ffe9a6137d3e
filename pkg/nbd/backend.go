package nbd

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"syscall"
)

// Backend is the device behind an export. Offsets and lengths are in bytes;
// the server checks every request against Size before calling, so a Backend
// sees only in-range, non-empty requests. Implementations must be safe for
// concurrent use: requests of one connection, and of several connections,
// run at the same time.
type Backend interface {
	// Size is the export's size in bytes. It must not change.
	Size() int64
	// ReadAt fills p with the bytes at off.
	ReadAt(ctx context.Context, p []byte, off int64) error
	// WriteAt stores p at off. p must not be kept after it returns.
	WriteAt(ctx context.Context, p []byte, off int64) error
	// Flush makes every write that completed before it was called durable,
	// whichever connection it came through (the server advertises
	// NBD_FLAG_CAN_MULTI_CONN on that promise).
	Flush(ctx context.Context) error
	// Trim is a hint that [off, off+length) is no longer needed. Doing nothing
	// is correct: a client makes no assumption about trimmed bytes.
	Trim(ctx context.Context, off, length int64) error
	// WriteZeroes makes [off, off+length) read as zeros.
	WriteZeroes(ctx context.Context, off, length int64) error
}

// ErrNoSpace is matched (errors.Is) by backend errors that mean "no space":
// the reply carries ENOSPC instead of EIO.
var ErrNoSpace = errors.New("nbd: no space left on the backend")

// errnoOf maps a backend error to an NBD error value.
func errnoOf(err error) uint32 {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, ErrNoSpace), errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT), errors.Is(err, syscall.EFBIG):
		return ENOSPC
	case errors.Is(err, syscall.ENOMEM):
		return ENOMEM
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EROFS):
		return EPERM
	case errors.Is(err, syscall.EINVAL):
		return EINVAL
	case errors.Is(err, errShutdown):
		return ESHUTDOWN
	default:
		return EIO
	}
}

var errShutdown = errors.New("nbd: server shutting down")

// MemoryBackend is a Backend held in RAM, allocated in 1 MiB chunks on first
// write (so a large, mostly unwritten export costs little). It is the
// reference backend for tests and for measuring the protocol's own ceiling.
type MemoryBackend struct {
	size   int64
	mu     sync.RWMutex
	chunks map[int64][]byte
}

const memChunk = 1 << 20

// NewMemoryBackend returns a zero-filled backend of size bytes.
func NewMemoryBackend(size int64) (*MemoryBackend, error) {
	if size <= 0 {
		return nil, fmt.Errorf("memory backend size %d: must be > 0", size)
	}
	return &MemoryBackend{size: size, chunks: map[int64][]byte{}}, nil
}

// Size implements Backend.
func (m *MemoryBackend) Size() int64 { return m.size }

func (m *MemoryBackend) check(off, n int64) error {
	if off < 0 || n < 0 || off > m.size || n > m.size-off {
		return fmt.Errorf("memory backend: range [%d, %d) outside [0, %d): %w", off, off+n, m.size, syscall.EINVAL)
	}
	return nil
}

// ReadAt implements Backend.
func (m *MemoryBackend) ReadAt(_ context.Context, p []byte, off int64) error {
	if err := m.check(off, int64(len(p))); err != nil {
		return err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	for len(p) > 0 {
		ci, co := off/memChunk, off%memChunk
		n := min(int64(len(p)), memChunk-co)
		if c, ok := m.chunks[ci]; ok {
			copy(p[:n], c[co:co+n])
		} else {
			clear(p[:n])
		}
		p, off = p[n:], off+n
	}
	return nil
}

// WriteAt implements Backend.
func (m *MemoryBackend) WriteAt(_ context.Context, p []byte, off int64) error {
	if err := m.check(off, int64(len(p))); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for len(p) > 0 {
		ci, co := off/memChunk, off%memChunk
		n := min(int64(len(p)), memChunk-co)
		c, ok := m.chunks[ci]
		if !ok {
			c = make([]byte, memChunk)
			m.chunks[ci] = c
		}
		copy(c[co:co+n], p[:n])
		p, off = p[n:], off+n
	}
	return nil
}

// Flush implements Backend: RAM has nothing to persist.
func (m *MemoryBackend) Flush(context.Context) error { return nil }

// Trim implements Backend by zeroing (and freeing whole chunks).
func (m *MemoryBackend) Trim(ctx context.Context, off, length int64) error {
	return m.WriteZeroes(ctx, off, length)
}

// WriteZeroes implements Backend.
func (m *MemoryBackend) WriteZeroes(_ context.Context, off, length int64) error {
	if err := m.check(off, length); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for length > 0 {
		ci, co := off/memChunk, off%memChunk
		n := min(length, memChunk-co)
		if c, ok := m.chunks[ci]; ok {
			if n == memChunk {
				delete(m.chunks, ci)
			} else {
				clear(c[co : co+n])
			}
		}
		off, length = off+n, length-n
	}
	return nil
}
