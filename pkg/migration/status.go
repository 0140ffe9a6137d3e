package migration

import (
	"sort"
	"time"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
)

// FoldResults returns status with results folded in; status itself is not
// modified. It is pure and idempotent:
//   - totalMigrations and failedMigrations grow by the results not already in
//     the history (same volumeName and timestamp, not a dry-run entry): they
//     never decrease, and a result folded twice (a crash between the status
//     write and Engine.Acknowledge) counts once;
//   - activeMigrations becomes active (Engine.ActiveCount);
//   - migrationHistory keeps every existing entry, dry-run ones included, adds
//     one entry per new result, is ordered newest first by timestamp and cut
//     to storagev1.MaxMigrationHistory entries.
func FoldResults(status storagev1.StoragePolicyStatus, results []Result, active int32) storagev1.StoragePolicyStatus {
	out := *status.DeepCopy()
	out.ActiveMigrations = active
	type key struct {
		volume string
		ts     time.Time
	}
	seen := map[key]bool{}
	for _, h := range out.MigrationHistory {
		if !h.DryRun {
			seen[key{h.VolumeName, h.Timestamp.UTC()}] = true
		}
	}
	for _, r := range results {
		h := r.HistoryEntry()
		k := key{h.VolumeName, h.Timestamp.UTC()}
		if seen[k] {
			continue
		}
		seen[k] = true
		out.TotalMigrations++
		if !h.Success {
			out.FailedMigrations++
		}
		out.MigrationHistory = append(out.MigrationHistory, h)
	}
	sort.SliceStable(out.MigrationHistory, func(i, j int) bool {
		return out.MigrationHistory[j].Timestamp.Before(&out.MigrationHistory[i].Timestamp)
	})
	if len(out.MigrationHistory) > storagev1.MaxMigrationHistory {
		out.MigrationHistory = out.MigrationHistory[:storagev1.MaxMigrationHistory]
	}
	return out
}
