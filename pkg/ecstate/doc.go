// Package ecstate owns the pure decisions about the health of erasure-coded
// stripes: when a pool that stopped answering counts as lost (the down-out
// delay), what state each shard of a stripe is in given the evidence (pool
// verdicts, reads and scrub findings, a rebuild in flight), which lifecycle
// state the stripe is in (schema 7.2: Writing → Healthy → Degraded →
// Rebuilding → Healthy, Failed when the loss pattern is not decodable), which
// transitions deserve an Event, and when a stripe is due for a scrub.
//
// It performs no I/O and reads no clock of its own: the ECStripe controller
// gathers the evidence and passes the time. It must not talk to the API
// server or to shard servers.
//
// Decisions, written down:
//   - A pool that is down (DiskPool Faulted/Unknown/absent, shard server not
//     registered or not answering) is Suspect for the down-out delay and Out
//     after it. A Suspect pool's shards keep the state they had, so a
//     restart or rolling upgrade of a shard server triggers no rebuild. The
//     delay restarts when the pool comes back, and after an operator restart
//     (down-since times live in memory: a restart can only delay a rebuild,
//     never hasten one).
//   - Evidence from a read beats the pool's state: a checksum mismatch makes
//     the shard Corrupted and an answer "no such shard" makes it Missing at
//     once; a read whose bytes match the recorded checksum makes it Healthy.
//   - Corrupted is sticky: only a later verification that passes, or a
//     rebuild, clears it.
//   - A stripe whose state is empty or Writing belongs to its writer; the
//     controller does not change its state.
package ecstate
