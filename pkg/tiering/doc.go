// Package tiering is CoucheStor's brain: pure decisions about which tier a
// volume belongs on and whether it should move. It reads nothing and writes
// nothing; the StoragePolicy controller feeds it facts and acts on its
// answers, and the migration engine (tiering part 2) executes its Move
// decisions. Everything here is table-tested.
//
// # Classification (Classify)
//
// With watermarks high > warm > low (IOPS averaged over the sampling window):
//
//	IOPS >= high                        -> hot
//	IOPS <= low                         -> cold
//	warm <= IOPS < high, with warm tier -> warm
//	otherwise                           -> dead band: the volume stays where it is
//
// Without a warm tier (no warmPoolSelector) everything strictly between low and
// high is the dead band.
//
// # Hysteresis (Demote)
//
// Promotion happens at a watermark; demotion only below it by a margin
// (Policy.Hysteresis, 10 % by default, set by the operator flag
// --tiering-hysteresis-percent or the StoragePolicy annotation
// storage.billyronks.io/hysteresis-percent). Precisely: when a volume's IOPS
// classify onto a slower tier than its current one, they are classified again
// divided by (1 - margin), i.e. against every watermark lowered by the margin,
// and the volume moves only if that still lands on a slower tier, to that
// tier; otherwise it stays (code Hysteresis). With 5000/2000/500 and 10 %: a
// warm volume is promoted at 5000, a hot one demoted below 4500, a warm one
// moved to cold below 450. Pinned volumes ignore the margin.
//
// # Sudden jumps
//
// A volume goes straight to the tier of its latest full window (cold at 6000
// IOPS goes hot, not warm). A window that straddles a jump averages both sides
// and may name an intermediate tier; a migration already started is not
// retargeted, so such a volume can finish there and moves on after its
// residency (the cooldown).
//
// # Current tier (CurrentTier)
//
// A volume's tier is where its replicas really are: each replica's DiskPool's
// spec.topology.labelled is matched against the policy's tier selectors
// (metav1.LabelSelectorAsSelector semantics: matchLabels and matchExpressions
// ANDed; an absent selector means the tier does not exist). A volume whose
// replicas span tiers counts at the tier holding most of them, ties going to
// the slower tier, and is reported as mixed. Replicas on pools that match no
// tier (or whose DiskPool is missing) do not vote; a pool matching more than
// one tier selector is ambiguous and does not vote either. A volume with no
// voting replica has no current tier and is never moved. A change of tier is
// the only reason to move: a volume is never shuffled within a tier, and a
// mixed volume whose majority is already on its tier stays.
//
// # Cooldown (Cooldown)
//
// No volume moves again within cooldownPeriod of its last migration attempt,
// read from the PV annotation storage.billyronks.io/last-migration (RFC 3339,
// written by the migration engine after every attempt, success or failure).
// Repeated failures back off: with n consecutive failed attempts recorded in
// storage.billyronks.io/migration-failures (reset to 0 on success), the wait is
// cooldownPeriod x 2^min(n,4), i.e. at most 16 cooldown periods. An annotation
// that does not parse blocks the move (the cooldown cannot be proven to be
// over) and says so.
//
// # Opt-outs (annotations on the PV or its PVC)
//
//   - storage.billyronks.io/exclude-from-tiering: "true" — the volume is
//     watched and counted but never moved.
//   - storage.billyronks.io/pin-tier: hot | warm | cold — the volume belongs on
//     that tier whatever its IOPS (it is moved there, cooldown permitting, even
//     while its IOPS are unknown). When both objects carry a pin, the PV's wins
//     (the PV is the administrator's object).
//
// # Volume selection and ownership (Selects, Owner)
//
// A policy watches the PVs of its storageClassName provisioned by Mayastor's
// CSI driver (io.openebs.csi-mayastor) whose PVC's labels match volumeSelector
// (absent: all of them; a PV without a PVC matches only an absent selector).
// When several enabled policies select one volume, the oldest policy
// (creationTimestamp, then name) owns it; the others skip it and report a
// Conflict condition.
//
// # Dry run (DryRunDue)
//
// In dry run each Move decision is recorded in migrationHistory with dryRun:
// true, at most once per volume per cooldownPeriod. The memory of that is the
// history itself (newest dry-run entry per volume), so an operator restart
// does not record it again; volumes whose entry has rotated out of the 50-entry
// history are remembered by the running operator only.
package tiering
