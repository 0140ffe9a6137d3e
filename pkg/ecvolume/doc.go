// Package ecvolume owns the block device view of one erasure-coded volume
// (ECVolume): VolumeBackend joins the volume's write journal, its read cache
// and its stripe store into an nbd.Backend, and runs the destager that moves
// journaled writes into stripes.
//
// It does not own the journal's replication (pkg/journal), the cache tiers
// (pkg/cache), the placement and encoding of stripes or their ECStripe
// objects (pkg/stripe, behind the StripeStore interface), nor the NBD wire
// protocol (pkg/nbd). It imports nothing from Kubernetes.
//
// # Write path
//
// A write is appended to the journal and acknowledged once the journal says it
// is durable on a write quorum (a majority of journalConfig.replicationFactor
// stores). Writes that do not start or end on a 512-byte LBA boundary are
// read-modify-written for their first and last LBA; every write holds a lock
// over its LBA range while it does so, so two overlapping writes never merge
// stale bytes into each other. Writes larger than MaxRecordBytes become
// several records (NBD does not promise atomic writes; the reply goes out only
// after the last one is durable). When the journal is full, writes wait for
// the destager (back-pressure, never loss); journal.ErrJournalFull (a
// WriteTimeout passed) surfaces as ENOSPC.
//
// FLUSH has nothing left to do: no write is acknowledged before it is durable
// on a journal quorum, so Flush returns at once. TRIM is accepted and ignored
// (the stripes have no holes to punch; the protocol lets a server ignore it).
// WRITE_ZEROES journals zeros like any write.
//
// # Read path
//
// Newest data first: the journal (Lookup) supplies every LBA it still holds;
// the rest is read from the cache (L1 RAM, then L2 local disk) or, on a miss,
// from the stripe store, which fills the cache. The cache holds clean data
// only: bytes as the stripe store holds them, in blocks of CacheBlockBytes.
// Journaled data is never cached, so a write needs no invalidation while its
// data is in the journal; the stripe bytes change only when the destager
// writes a stripe, and then exactly the cache blocks overlapping the
// destaged extents are invalidated — before the stripe write (so a crash in
// between cannot leave an older L2 copy behind) and again after it (so a
// read that fetched the old stripe bytes concurrently cannot leave them
// cached). The journal is trimmed only after that, and a read looks up the
// journal before the stripes, so no read sees data older than the last
// acknowledged write (pkg/journal documents the trim ordering).
//
// Read-ahead: when a read continues a sequential run, the next blocks
// (CacheOptions.ReadAheadBytes, at most a quarter of L1) are fetched into the
// cache in the background through the same Tiered.Get as a read miss, so the
// invalidation rules above cover them too; a read of a block being
// prefetched waits for that fetch instead of repeating it.
//
// Destaging writes DestageParallel stripes at once (a stripe write mostly
// waits on shard servers and the API server); the journal is trimmed only
// after every stripe of the pass is written.
//
// # Stripe store
//
// StripeStore is what the erasure-coded stripe path (pkg/stripe) provides for
// one volume: ReadAt over the volume's byte range (unwritten ranges read as
// zeros, degraded reads inside) and journal.StripeSink's WriteStripe (merge
// the extents into the stripe's current bytes, re-encode, store as a new
// copy-on-write generation, idempotent). MemoryStripeStore and
// FileStripeStore are local stand-ins for tests and development: they are not
// erasure coded.
package ecvolume
