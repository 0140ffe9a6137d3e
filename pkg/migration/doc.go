// Package migration is CoucheStor's hands: the MigrationEngine moves a volume's
// replicas from the pools of one tier to the pools of another, safely, off the
// reconcile path, and survives operator crashes.
//
// What it owns:
//   - MigrationState (data-model schema section 5.3): the active map
//     volume -> task, a concurrency limit of maxConcurrentMigrations per policy
//     and an optional global limit. A migration runs in its own goroutine; the
//     StoragePolicy reconciler only calls Engine.Migrate and returns.
//   - The move, replica by replica, until every replica is on the new tier:
//     (1) choose a target pool of the new tier (ChooseTarget: matches the tier's
//     selector, pool_status Online, room for the volume under the headroom
//     limit, on a node holding no other replica of the volume except the one
//     being replaced; most free space, then name); (2) write the pool's labels
//     into the volume's topology inclusion and raise numReplicas by one; (3)
//     wait until the new replica is Online and synced; (4) lower numReplicas
//     with a topology that only the new tier's pools match, so the replica
//     outside the tier is the least preferred, and verify which replica the
//     control plane removed. A removed replica on the new tier is "the wrong
//     one": the move is retried (MaxWrongRemovals times), then the migration
//     fails. In preservation mode step (4) never happens.
//   - Safety: numReplicas is lowered only after the added replica is Online and
//     synced, so a volume never has fewer healthy replicas than it had. A move
//     that does not finish within migrationTimeout, or whose new replica
//     faults or lands where it must not, is rolled back: numReplicas and the
//     topology return to their original values; the unsynced or faulted added
//     replica is what Mayastor removes first, and the engine checks that every
//     original replica is still there.
//   - Crash safety: the intent and step of every migration live in the PV
//     annotation storage.billyronks.io/migration (never in Mayastor's status,
//     which Mayastor owns). Every step is written there before it is acted on,
//     and every action is idempotent, so Engine.Start (run by the elected
//     leader) resumes each in-flight migration from its step; a move past its
//     deadline is rolled back. The in-memory state is only a cache.
//   - Results: a finished attempt, success or failure, is written to the PV in
//     one update that removes the intent, appends the result to
//     storage.billyronks.io/migration-results and sets the cooldown annotation
//     storage.billyronks.io/last-migration (RFC 3339). Results stay there until
//     the StoragePolicy controller has folded them into status (FoldResults)
//     and calls Engine.Acknowledge, so a crash between the two loses nothing;
//     FoldResults skips a result already in the history, so a crash after the
//     status write and before the acknowledgement counts nothing twice.
//   - Events (MigrationStarted, MigrationCompleted, MigrationFailed,
//     MigrationAborted, WrongReplicaRemoved) on the PV and on the policy, and
//     the metrics couchestor_migrations_total{result,from,to},
//     couchestor_active_migrations{policy} and
//     couchestor_migration_duration_seconds{result}.
//
// What it must not touch: Mayastor's status (read only), the StoragePolicy
// object (the controller writes its status), tier decisions (pkg/tiering
// decides what moves; this package only moves it).
//
// Volumes are reached through VolumeBackend; MayastorVolumeBackend implements
// it over the MayastorVolume CRD (openebs.io/v1alpha1) so that a backend over
// Mayastor 2.x's REST API can replace it.
//
// Decisions written down here:
//   - Migrate never queues: when the policy's or the global limit is reached it
//     returns ErrAtCapacity and the caller tries again at its next evaluation,
//     with fresh IOPS (a queued decision goes stale).
//   - A migration that fails after some replicas moved leaves those replicas on
//     the new tier (the data is safe; the volume is "mixed") and restores the
//     original topology; the tier decisions see the mixed volume next time.
//   - History timestamp is the start of the attempt; duration is start to end.
package migration
