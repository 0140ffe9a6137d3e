package migration

import (
	"errors"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/tiering"
)

// PV annotations the engine reads and writes.
const (
	// AnnotationMigration holds the JSON Intent of an in-flight migration.
	AnnotationMigration = "storage.billyronks.io/migration"
	// AnnotationResults holds the JSON list of finished attempts not yet folded
	// into the StoragePolicy status (see Engine.Acknowledge).
	AnnotationResults = "storage.billyronks.io/migration-results"
	// AnnotationLastMigration is the cooldown annotation: the RFC 3339 time of
	// the end of the last migration attempt, success or failure (read by
	// pkg/tiering.Cooldown).
	AnnotationLastMigration = tiering.AnnotationLastMigration
	// AnnotationMigrationFailures counts consecutive failed attempts (the
	// cooldown back-off of pkg/tiering); a success removes it.
	AnnotationMigrationFailures = tiering.AnnotationMigrationFailures
)

// Event reasons.
const (
	ReasonStarted             = "MigrationStarted"
	ReasonCompleted           = "MigrationCompleted"
	ReasonFailed              = "MigrationFailed"
	ReasonAborted             = "MigrationAborted"
	ReasonWrongReplicaRemoved = "WrongReplicaRemoved"
)

// Request asks the engine to move one volume to another tier.
type Request struct {
	// Policy is the StoragePolicy name; MaxConcurrent its maxConcurrentMigrations.
	Policy        string
	MaxConcurrent int32
	// PVName is the PersistentVolume (its annotations hold the intent);
	// VolumeID the Mayastor volume (the PV's CSI volume handle).
	PVName   string
	VolumeID string
	// FromTier and ToTier name the tiers ("hot", "warm", "cold").
	FromTier string
	ToTier   string
	// TargetPools is the pool selector of ToTier (matched against the
	// DiskPools' spec.topology.labelled).
	TargetPools *metav1.LabelSelector
	// TriggerIOPS is the measured IOPS that caused the decision.
	TriggerIOPS float64
	// Timeout bounds one replica move (the policy's migrationTimeout).
	Timeout time.Duration
	// Cooldown is the policy's cooldownPeriod. The engine checks it (with the
	// failure back-off of pkg/tiering.Cooldown) against the PV it writes the
	// intent to, in the same optimistic-concurrency update, so a decision
	// made on a stale cache can never start a move early.
	Cooldown time.Duration
}

func (r Request) validate() error {
	switch {
	case r.Policy == "":
		return errors.New("request: policy must not be empty")
	case r.PVName == "":
		return errors.New("request: pvName must not be empty")
	case r.VolumeID == "":
		return errors.New("request: volumeID must not be empty")
	case r.ToTier == "":
		return errors.New("request: toTier must not be empty")
	case r.TargetPools == nil:
		return fmt.Errorf("request: the pool selector of tier %q is absent: the policy has no %s tier", r.ToTier, r.ToTier)
	case r.MaxConcurrent < 1:
		return fmt.Errorf("request: maxConcurrentMigrations is %d, must be > 0", r.MaxConcurrent)
	case r.Timeout <= 0:
		return fmt.Errorf("request: migrationTimeout is %s, must be > 0", r.Timeout)
	}
	return nil
}

// Sentinel errors of Engine.Migrate.
var (
	ErrNotRunning    = errors.New("migration engine is not running (not the leader, or still resuming)")
	ErrAlreadyActive = errors.New("volume is already migrating")
	ErrAtCapacity    = errors.New("migration limit reached")
)

// SkipError says why a migration was not started (e.g. no target pool); the
// caller reports the reason and does not count an attempt.
type SkipError struct{ Reason string }

func (e *SkipError) Error() string { return "migration skipped: " + e.Reason }

// Outcome of a finished attempt.
type Outcome string

const (
	// Succeeded: every replica is on the new tier (in preservation mode: as
	// many healthy replicas on the new tier as the volume had).
	Succeeded Outcome = "success"
	// Failed: the migration stopped without rollback of a move (no target
	// pool, wrong replica removed too often); moved replicas stay moved.
	Failed Outcome = "failed"
	// Aborted: a replica move was rolled back (timeout, new replica faulted or
	// misplaced).
	Aborted Outcome = "aborted"
)

// Result is one finished migration attempt.
type Result struct {
	Policy      string    `json:"policy"`
	VolumeName  string    `json:"volumeName"` // the PV
	VolumeID    string    `json:"volumeID"`
	FromTier    string    `json:"fromTier"`
	ToTier      string    `json:"toTier"`
	TriggerIOPS float64   `json:"triggerIOPS"`
	StartedAt   time.Time `json:"startedAt"`
	FinishedAt  time.Time `json:"finishedAt"`
	Outcome     Outcome   `json:"outcome"`
	Error       string    `json:"error,omitempty"`
	// ReplicasMoved counts replicas that reached the new tier.
	ReplicasMoved int `json:"replicasMoved"`
}

// Success is Outcome == Succeeded.
func (r Result) Success() bool { return r.Outcome == Succeeded }

// Duration of the attempt.
func (r Result) Duration() time.Duration { return r.FinishedAt.Sub(r.StartedAt) }

// HistoryEntry is the result as a MigrationHistoryEntry, every field filled.
func (r Result) HistoryEntry() storagev1.MigrationHistoryEntry {
	return storagev1.MigrationHistoryEntry{
		VolumeName:  r.VolumeName,
		Timestamp:   metav1.NewTime(r.StartedAt.UTC().Truncate(time.Second)),
		FromTier:    r.FromTier,
		ToTier:      r.ToTier,
		TriggerIOPS: r.TriggerIOPS,
		Duration:    r.Duration().Round(time.Millisecond).String(),
		Success:     r.Success(),
		Error:       r.Error,
	}
}

// Step is where a migration is; persisted in the Intent.
type Step string

const (
	// StepPlanning: between replica moves; the next move is chosen.
	StepPlanning Step = "Planning"
	// StepScalingUp: the move's target is chosen; numReplicas+1 and the
	// target's labels are being written.
	StepScalingUp Step = "ScalingUp"
	// StepSyncing: waiting for the added replica to be Online and synced.
	StepSyncing Step = "Syncing"
	// StepScalingDown: numReplicas-1 written; waiting for and verifying the removal.
	StepScalingDown Step = "ScalingDown"
	// StepRollingBack: the move is being undone (Intent.Failure says why).
	StepRollingBack Step = "RollingBack"
	// StepFinishing: the final topology is being written and the result recorded.
	StepFinishing Step = "Finishing"
)

// Point names a moment in a migration for Options.StepHook (tests use it to
// cancel the engine there, which is what a crash at that point looks like).
type Point string

const (
	PointStarted    Point = "started"     // intent persisted, nothing written to the volume yet
	PointScaledUp   Point = "scaled-up"   // numReplicas+1 written
	PointSyncing    Point = "syncing"     // the added replica exists and is not yet synced (once per move)
	PointScaledDown Point = "scaled-down" // numReplicas-1 written
	PointRolledBack Point = "rolled-back" // rollback spec written
	PointFinished   Point = "finished"    // result recorded, intent removed
)

// Intent is the persisted state of one in-flight migration (PV annotation
// AnnotationMigration). It holds everything needed to resume without the
// StoragePolicy: the engine cannot rely on the policy still being the same.
type Intent struct {
	Policy        string                `json:"policy"`
	MaxConcurrent int32                 `json:"maxConcurrent"`
	VolumeID      string                `json:"volumeID"`
	FromTier      string                `json:"fromTier"`
	ToTier        string                `json:"toTier"`
	TargetPools   *metav1.LabelSelector `json:"targetPools"`
	// TierLabels are the topology labels every pool of ToTier carries: the
	// topology inclusion that makes the new tier preferred.
	TierLabels  map[string]string `json:"tierLabels"`
	TriggerIOPS float64           `json:"triggerIOPS"`
	Timeout     string            `json:"timeout"`
	Preserve    bool              `json:"preserve,omitempty"`
	StartedAt   time.Time         `json:"startedAt"`

	OriginalNumReplicas int32     `json:"originalNumReplicas"`
	OriginalTopology    *Topology `json:"originalTopology,omitempty"`
	OriginalReplicas    []string  `json:"originalReplicas"`

	Step           Step       `json:"step"`
	Move           *MoveState `json:"move,omitempty"`
	Moves          int        `json:"moves"`
	ReplicasMoved  int        `json:"replicasMoved"`
	WrongRemovals  int        `json:"wrongRemovals,omitempty"`
	Failure        string     `json:"failure,omitempty"`
	FailureOutcome Outcome    `json:"failureOutcome,omitempty"`
}

// MoveState is the replica move in progress.
type MoveState struct {
	// TargetPool is the pool the engine chose; its labels are the topology
	// inclusion. The control plane may place the replica on another pool with
	// the same labels; AddedPool is where it really went.
	TargetPool string `json:"targetPool"`
	// Replacing is the replica outside the new tier this move replaces.
	Replacing string `json:"replacing,omitempty"`
	// TargetLabels are TargetPool's topology labels, the scale-up inclusion.
	TargetLabels map[string]string `json:"targetLabels,omitempty"`
	// Before are the replica UUIDs before numReplicas was raised.
	Before       []string  `json:"before"`
	NumReplicas  int32     `json:"numReplicas"` // raised value
	AddedReplica string    `json:"addedReplica,omitempty"`
	AddedPool    string    `json:"addedPool,omitempty"`
	StartedAt    time.Time `json:"startedAt"`
	// ScaleDownFrom are the replicas just before numReplicas was lowered.
	ScaleDownFrom []ReplicaRef `json:"scaleDownFrom,omitempty"`
	ScaleDownAt   time.Time    `json:"scaleDownAt,omitzero"`
	// RollbackAt is when the rollback spec was first written.
	RollbackAt time.Time `json:"rollbackAt,omitzero"`
}

// ReplicaRef records a replica for the verification after a scale-down.
type ReplicaRef struct {
	UUID    string `json:"uuid"`
	Pool    string `json:"pool"`
	Healthy bool   `json:"healthy"`
}
