// Package journal owns the write journal of an erasure-coded volume
// (ErasureCodingPolicy.spec.journalConfig): an append-only log of writes,
// replicated to replicationFactor stores and acknowledged once durable on a
// majority of them, replayed by sequence number after a crash (torn tail
// records fail their checksum and are dropped), with lagging or divergent
// replicas caught up on Open; the newest-data lookup that lets reads see
// journaled writes over the stripes; and the Destager that moves journaled
// writes into full stripes through a caller-supplied StripeSink and trims
// the journal only after the sink confirms.
//
// journalSizeBytes is a hard bound: Append blocks (respecting its context)
// until destaging frees space. The package does not own stripes, shards or
// their placement (pkg/erasure and the stripe writer do), nor any Kubernetes
// object; it imports nothing from Kubernetes.
//
// Lookup uses an interval index (a B-tree of non-overlapping LBA spans, each
// naming the newest live record that wrote it): O(log n + spans) per call.
// Undestaged write data is also held in RAM up to Options.MaxHeldBytes, so
// reads and destaging need not read the stores back; beyond that, records
// are read from a store. The Destager writes up to DestagerConfig.Parallel
// stripes at once and trims only after all of them succeeded.
//
// Replicas heal (replicas.go): a write is acknowledged once a quorum has it
// durable, without waiting for a slower or hung replica; a replica that
// fails or falls too far behind leaves the quorum set and is caught up under
// the current epoch and re-admitted once it answers; a write that finds no
// quorum waits for one instead of failing.
package journal
