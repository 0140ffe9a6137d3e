package cache

import (
	"errors"
	"time"

	"github.com/zeebo/xxh3"
)

// ErrNotFound is returned when no tier holds the key.
var ErrNotFound = errors.New("cache: key not found")

// CacheKey names a cached object: a bucket (namespace) and a key inside it.
type CacheKey struct {
	Bucket string
	Key    string
}

// hashKey is a key's 128-bit hash. lo is ristretto's key (it picks
// ristretto's shard and names the entry in its admission policy); hi is
// ristretto's conflict hash, which ristretto stores beside the value and
// compares on every Get, Set, Del and update, so L1 never dereferences a
// key's strings to verify a hit. hi's lowest bit is always set, because
// ristretto skips the comparison for a conflict hash of 0: two keys equal
// in the other 127 bits would be confused (2^-127 a pair).
type hashKey struct{ lo, hi uint64 }

func (k CacheKey) hash() hashKey {
	h := xxh3.HashString128Seed(k.Key, xxh3.HashString(k.Bucket)^uint64(len(k.Bucket)))
	return hashKey{lo: h.Lo, hi: h.Hi | 1}
}

func (k CacheKey) hash64() uint64 { return k.hash().lo }

// CacheEntry is a cached value and its metadata. Data is the original
// (decompressed) value; when the entry is stored uncompressed in L1 it is the
// cached buffer itself (zero copy), so callers must not modify it.
type CacheEntry struct {
	Data     []byte
	Metadata EntryMetadata
}

// EntryMetadata is the access statistics and storage form of an entry
// (schema section 5.1).
type EntryMetadata struct {
	// Size is the number of bytes stored (compressed size when Compressed).
	Size uint64
	// CreatedAt is when the value was first written into the cache.
	CreatedAt time.Time
	// LastAccessed is the time of the most recent Get that returned the
	// entry; in L1, of the most recent sampled one, and zero in the Metadata
	// an L1 hit returns (MemoryCache.Stat reads it; see the package doc).
	LastAccessed time.Time
	// AccessCount counts the Gets that returned the entry; in L1 it is a
	// sampled estimate, zero in the Metadata an L1 hit returns.
	AccessCount uint64
	// Compressed says whether the stored bytes are compressed.
	Compressed bool
	// CompressionAlgorithm is the codec of the stored bytes (CodecNone when not compressed).
	CompressionAlgorithm Codec
	// OriginalSize is the length of the value before compression.
	OriginalSize uint64
}

// Tier names the tier that served a read.
type Tier uint8

const (
	// TierNone means no tier served the read (miss everywhere or error).
	TierNone Tier = iota
	// TierL1 is RAM.
	TierL1
	// TierL2 is local disk.
	TierL2
	// TierL3 is the backing (erasure-coded) store.
	TierL3
)

func (t Tier) String() string {
	switch t {
	case TierL1:
		return "l1"
	case TierL2:
		return "l2"
	case TierL3:
		return "l3"
	default:
		return "none"
	}
}

// stored is the storage form of a value, decided once when it enters the cache
// and carried unchanged between tiers.
type stored struct {
	payload      []byte
	codec        Codec
	originalSize int
	gen          uint64
	createdAt    int64 // unix nanoseconds
	lastAccessed int64
	accessCount  uint64
	// readFill: the value entered the cache on an L3 read (not a Put). Such
	// an entry evicted from L1 without a second access is not demoted: it
	// is what a sequential scan leaves behind, and writing every block of a
	// scan to L2 would cost more than it could save.
	readFill bool
}

func (s *stored) metadata() EntryMetadata {
	return EntryMetadata{
		Size:                 uint64(len(s.payload)),
		CreatedAt:            time.Unix(0, s.createdAt),
		LastAccessed:         time.Unix(0, s.lastAccessed),
		AccessCount:          s.accessCount,
		Compressed:           s.codec != CodecNone,
		CompressionAlgorithm: s.codec,
		OriginalSize:         uint64(s.originalSize),
	}
}
