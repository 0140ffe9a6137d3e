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
// Known limits: Lookup scans the live records (O(records) per call); an
// interval index is the next step if profiles show it. A store that fails is
// left out until the next Open, which catches it up.
package journal
