package migration

import (
	"context"
	"encoding/json"
	"fmt"
)

// The engine's limits (maxConcurrentMigrations per policy and the global
// cap) also count the conversions of pkg/conversion, which run their own
// tasks: they reserve a slot here before they record anything on a PV,
// release it when they end, and hand their results to the same results
// annotation, so the StoragePolicy controller folds them into history as it
// folds migrations.

// Reserve takes a slot for an external task (a conversion) under the same
// limits as Migrate: ErrNotRunning, ErrAlreadyActive (the volume migrates or
// converts), ErrAtCapacity. maxConcurrent is the policy's
// maxConcurrentMigrations.
func (e *Engine) Reserve(t Task, maxConcurrent int32) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	switch {
	case !e.running:
		return ErrNotRunning
	case e.active[t.VolumeID] != nil:
		return fmt.Errorf("volume %s: %w", t.VolumeID, ErrAlreadyActive)
	case e.perPolicy[t.Policy] >= int(maxConcurrent):
		return fmt.Errorf("policy %s runs %d migrations and conversions (maxConcurrentMigrations %d): %w", t.Policy, e.perPolicy[t.Policy], maxConcurrent, ErrAtCapacity)
	case e.o.GlobalMaxConcurrent > 0 && e.total >= e.o.GlobalMaxConcurrent:
		return fmt.Errorf("%d migrations and conversions run (global limit %d): %w", e.total, e.o.GlobalMaxConcurrent, ErrAtCapacity)
	}
	e.reserveLocked(t)
	return nil
}

// Resume takes a slot for an external task found in progress after a
// restart: always, even above a limit lowered since (half-done work is worse
// than briefly exceeding a limit), as Start does for migrations.
func (e *Engine) Resume(t Task) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.reserveLocked(t)
}

// Release frees an external task's slot.
func (e *Engine) Release(volumeID, policy string) { e.release(volumeID, policy) }

// RecordResult appends a finished external task's result to its PV's results
// annotation (where the StoragePolicy controller finds it, folds it into
// history and acknowledges it) and to the engine's pending results. mutate,
// when not nil, changes the PV's other annotations in the same update (a
// conversion removes its record and sets the cooldown there), so the result
// and the end of the task are one write.
func (e *Engine) RecordResult(ctx context.Context, r Result, mutate func(ann map[string]string) (bool, error)) error {
	var stored []Result
	err := e.updatePV(ctx, r.VolumeName, func(ann map[string]string) (bool, error) {
		stored = nil
		var rs []Result
		if raw := ann[AnnotationResults]; raw != "" {
			if err := json.Unmarshal([]byte(raw), &rs); err != nil {
				return false, fmt.Errorf("annotation %s: %w", AnnotationResults, err)
			}
		}
		changed := false
		if mutate != nil {
			c, err := mutate(ann)
			if err != nil {
				return false, err
			}
			changed = c
		}
		for _, o := range rs {
			if sameResult(o, r) {
				return changed, nil // recorded before a crash
			}
		}
		stored = append(rs, r)
		return true, setResults(ann, stored)
	})
	if err != nil {
		return fmt.Errorf("record result on PV %s: %w", r.VolumeName, err)
	}
	if stored != nil {
		migrationsTotal.WithLabelValues(string(r.Outcome), r.FromTier, r.ToTier).Inc()
		migrationDuration.WithLabelValues(string(r.Outcome)).Observe(r.Duration().Seconds())
		e.mu.Lock()
		e.results[r.VolumeName] = stored
		e.mu.Unlock()
		e.notify(r.Policy)
	}
	return nil
}
