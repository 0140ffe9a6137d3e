package cache

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
)

// Store is the L3 tier: the source of truth behind the cache (the
// erasure-coded store in production). Implementations must be safe for
// concurrent use. Get returns an error wrapping ErrNotFound for a missing key.
// The cache keeps no reference to a slice it passes to Put, and may keep the
// slice Get returns, so Get must return bytes its caller may own.
type Store interface {
	Get(ctx context.Context, key CacheKey) ([]byte, error)
	Put(ctx context.Context, key CacheKey, data []byte) error
	Delete(ctx context.Context, key CacheKey) error
}

// MemoryStore is an in-memory Store for tests and examples. It copies on Put
// and Get, and counts calls so tests can see which tier did the work.
type MemoryStore struct {
	mu   sync.RWMutex
	data map[CacheKey][]byte

	gets, puts atomic.Int64
}

// NewMemoryStore returns an empty MemoryStore.
func NewMemoryStore() *MemoryStore { return &MemoryStore{data: map[CacheKey][]byte{}} }

// Get returns a copy of key's bytes, or ErrNotFound.
func (s *MemoryStore) Get(_ context.Context, key CacheKey) ([]byte, error) {
	s.gets.Add(1)
	s.mu.RLock()
	defer s.mu.RUnlock()
	b, ok := s.data[key]
	if !ok {
		return nil, ErrNotFound
	}
	return slices.Clone(b), nil
}

// Put stores a copy of data.
func (s *MemoryStore) Put(_ context.Context, key CacheKey, data []byte) error {
	s.puts.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.data[key] = slices.Clone(data)
	return nil
}

// Delete removes key; deleting a missing key is not an error.
func (s *MemoryStore) Delete(_ context.Context, key CacheKey) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.data, key)
	return nil
}

// Gets is the number of Get calls so far.
func (s *MemoryStore) Gets() int64 { return s.gets.Load() }

// Puts is the number of Put calls so far.
func (s *MemoryStore) Puts() int64 { return s.puts.Load() }
