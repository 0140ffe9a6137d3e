// Package cache owns CoucheStor's read cache: a RAM tier (L1, ristretto), a
// persistent local-disk tier (L2, one checksummed file per entry on an NVMe
// path) and the interface of the backing store (L3, the erasure-coded store,
// plugged in from outside; MemoryStore stands in for it in tests).
//
// The data model is section 5.1 of the schema: CacheKey{Bucket, Key} and
// CacheEntry{Data, Metadata} where EntryMetadata carries the size, created and
// last-accessed time, access count, compression flag, codec and original size.
//
// # Truth and ordering
//
// L3 is the source of truth: the cache never holds the only copy of data.
// Tiered.Put writes L3 first and only then refreshes the cache tiers; if the L3
// write fails the cached copies are dropped and the error is returned. Data that
// changes in L3 behind the cache's back must be announced with Invalidate.
// Every mutation of one key (Put, Invalidate, Delete, promotion, demotion) runs
// under that key's stripe lock, so tiers change in a fixed order and a read
// never sees bytes older than the last completed Put or Invalidate.
//
// # Tiers
//
//   - L1 (MemoryCache) uses github.com/dgraph-io/ristretto/v2 with cost = bytes.
//     Ristretto applies Set asynchronously through a buffer: a value just Set may
//     not be readable yet (Get misses), and a Set may be dropped under contention
//     or refused by the TinyLFU admission policy. MemoryCache.Wait applies the
//     buffer; tests call it where they need determinism. Tiered calls it inside
//     Put and Invalidate so that an old value still sitting in the buffer cannot
//     surface after the call returns.
//   - L2 (DiskCache) stores one file per entry, written as temp file + rename,
//     each with an xxh3 checksum over header, key and payload. DiskCache.Put
//     also fsyncs file and directory; demotions from L1 do not (a lost or torn
//     demoted entry is only a miss, and an fsync per evicted entry made cold
//     reads pay for disk flushes). Deletes are always durable, including for
//     entries evicted or demoted without an fsync before. A corrupt, truncated or torn file is reported as a miss and
//     removed, never returned. The index is rebuilt on open by scanning the
//     directory; it is bounded in bytes with least-recently-used eviction.
//   - L3 (Store) is an interface; its Get returns ErrNotFound for a missing key.
//
// Promotion: an L2 hit is copied into L1 (the L2 copy stays, so a later L1
// eviction need not rewrite it); an L3 hit is copied into L1. Demotion: an entry
// evicted from L1 is written to L2 by a background worker (ristretto's OnEvict
// runs on its own goroutine, which must not block on disk), except an entry
// that entered on an L3 read and was never read again before its eviction:
// that is what a sequential scan leaves behind, and writing every block of a
// scan to L2 costs more than it saves. L2 eviction drops.
//
// # Access statistics (schema 5.1, honoured field by field)
//
// The schema's L1 is a 1024-way sharded map of CacheKey -> CacheEntry; here
// ristretto's own sharded map holds it, keyed by the 128-bit hash of
// CacheKey (see hashKey): ristretto compares the high half (its conflict
// hash) on every Get, Set and Del, so a hit never serves another key's
// value unless two keys agree in 127 bits. What ristretto holds per entry is
// what a hit returns, in 24 bytes (l1Value: the size of the []byte slice
// header bare ristretto would hold), so a hit reads ristretto's map slot and
// nothing else. EntryMetadata is honoured so:
//
//   - data: exact; zero copy when stored uncompressed (CacheEntry).
//   - size, compressed, compression_algorithm, original_size, created_at:
//     exact, fixed when the value enters the cache and carried between tiers.
//   - access_count and last_accessed: approximate and lagging in L1 (the
//     schema's statistics may be, issue 22), so that a hit writes nothing
//     of its entry. They live beside ristretto's map, in a table a hit does
//     not touch. A hit is recorded with probability 1/64 (accessSampleBits;
//     the draw mixes the key's hash with the hitting goroutine's hit
//     counter), and a recorded hit adds 64 to the count and sets
//     last_accessed to now. So after n hits the count is an unbiased
//     estimate of n with standard deviation sqrt(63n) (±25 % at 1,000 hits,
//     ±7.9 % at 10,000, ±2.5 % at 100,000), always a multiple of 64 above
//     what the entry brought in; last_accessed is the time of the latest
//     recorded hit: never later than the true last hit, and behind it by a
//     geometric number of hits (64 on average; more than 192 with
//     probability (63/64)^192 ≈ 4.9 %), and the entry's creation time until
//     the first recorded hit. A recorded hit that races a Set of the same
//     key may be counted for neither value. An L1 hit's returned Metadata
//     leaves both zero (the hit does not read them); MemoryCache.Stat reads
//     them on demand. L2 counts every Get exactly (its Get rewrites the
//     index anyway) and keeps what a demoted entry brought from L1.
//
// The scan rule (an entry filled by an L3 read and never read again is not
// demoted) needs "read again" exactly, not sampled: a hit on such an entry
// sets a bit in a bitmap with about ten slots per expected item (cleared when
// an entry of that slot is filled). Two keys sharing a slot can make a
// scanned entry look re-read (one needless L2 write) or, when the second is
// filled, a re-read one look scanned (its next read goes to L3): neither
// serves a wrong byte.
//
// # Compression
//
// LZ4 or zstd, applied only to values of at least MinSize bytes and kept only
// when the result is smaller; otherwise the raw bytes are stored and the entry
// records CodecNone. The codec is recorded per entry, so entries written with
// different settings stay readable.
//
// # Metrics
//
// Prometheus collectors per tier (label tier="l1","l2","l3"): hits, misses,
// evictions, bytes and a Get latency histogram. The latency of L1 Gets is
// sampled (1 in 64, from the same draw as the access sample, other bits) because
// two clock reads would cost a measurable share of a sub-microsecond Get; L2
// and L3 Gets are all timed.
//
// This package imports nothing from Kubernetes.
package cache
