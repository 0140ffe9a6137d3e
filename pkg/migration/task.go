package migration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// task drives one migration; in is what the PV says.
type task struct {
	pv string
	in Intent
	// syncSeen: PointSyncing already reported for this move.
	syncSeen   bool
	downSent   bool
	rollbackOn bool
}

func (t *task) snapshot() Task {
	s := Task{VolumeID: t.in.VolumeID, PVName: t.pv, Policy: t.in.Policy, FromTier: t.in.FromTier, ToTier: t.in.ToTier, StartedAt: t.in.StartedAt, Step: t.in.Step}
	if m := t.in.Move; m != nil {
		s.ToPool = m.TargetPool
		if m.AddedPool != "" {
			s.ToPool = m.AddedPool
		}
		s.FromPool = m.Replacing
	}
	return s
}

func (t *task) timeout() time.Duration {
	d, err := time.ParseDuration(t.in.Timeout)
	if err != nil || d <= 0 {
		return 30 * time.Minute
	}
	return d
}

// maxMoves bounds the moves of one migration: one per replica, plus retries.
func (t *task) maxMoves(maxWrong int) int {
	return 2*int(t.in.OriginalNumReplicas) + maxWrong + 2
}

// run drives t until it finishes or ctx ends.
func (e *Engine) run(ctx context.Context, t *task) {
	defer e.wg.Done()
	// finish releases the slot itself (before Notify); every other exit here.
	finished := false
	defer func() {
		if !finished {
			e.release(t.in.VolumeID, t.in.Policy)
		}
	}()
	log := e.o.Log.WithValues("pv", t.pv, "volume", t.in.VolumeID)
	for ctx.Err() == nil {
		var err error
		switch t.in.Step {
		case StepPlanning:
			err = e.plan(ctx, t)
		case StepScalingUp:
			err = e.scaleUp(ctx, t)
		case StepSyncing:
			err = e.syncing(ctx, t)
		case StepScalingDown:
			err = e.scaleDown(ctx, t)
		case StepRollingBack:
			err = e.rollBack(ctx, t)
		case StepFinishing:
			err = e.finish(ctx, t)
			if err == nil {
				finished = true
				return
			}
		default:
			t.in.Failure, t.in.FailureOutcome = fmt.Sprintf("unknown step %q in annotation %s", t.in.Step, AnnotationMigration), Failed
			t.in.Step = StepFinishing
			err = e.persist(ctx, t)
		}
		switch {
		case err == nil, ctx.Err() != nil:
		case errors.Is(err, errPVGone):
			log.Info("PV deleted; migration stopped")
			return
		case errors.As(err, new(*RefusedError)):
			// Waiting does not change the answer: end the attempt. Before the
			// scale-up nothing changed; later, the move is rolled back.
			log.Info("the backend refused the move", "step", t.in.Step, "reason", err.Error())
			var perr error
			if t.in.Step == StepScalingUp || t.in.Step == StepPlanning {
				perr = e.fail(ctx, t, Failed, fmt.Sprintf("replica move %d: %v", t.in.Moves, err))
			} else {
				perr = e.abort(ctx, t, fmt.Sprintf("replica move %d: %v", t.in.Moves, err))
			}
			if perr != nil {
				log.Error(perr, "record the refused move; retrying")
				e.sleep(ctx)
			}
		default:
			// API errors are retried: the step is idempotent and its deadline
			// keeps running.
			log.Error(err, "migration step failed; retrying", "step", t.in.Step)
			e.sleep(ctx)
		}
	}
}

// fail ends the migration without a rollback of the current move.
func (e *Engine) fail(ctx context.Context, t *task, outcome Outcome, msg string) error {
	t.in.Failure, t.in.FailureOutcome = msg, outcome
	t.in.Step = StepFinishing
	return e.persist(ctx, t)
}

// abort rolls the current move back.
func (e *Engine) abort(ctx context.Context, t *task, msg string) error {
	t.in.Failure, t.in.FailureOutcome = msg, Aborted
	t.in.Step = StepRollingBack
	return e.persist(ctx, t)
}

func (e *Engine) readState(ctx context.Context, t *task) (Volume, *Tier, error) {
	vol, err := e.o.Backend.GetVolume(ctx, t.in.VolumeID)
	if err != nil {
		return Volume{}, nil, err
	}
	pools, err := e.o.Backend.ListPools(ctx)
	if err != nil {
		return Volume{}, nil, err
	}
	tier, err := NewTier(t.in.TargetPools, pools)
	if err != nil {
		return Volume{}, nil, err
	}
	return vol, tier, nil
}

// plan: is the migration done? else choose the next move.
func (e *Engine) plan(ctx context.Context, t *task) error {
	vol, tier, err := e.readState(ctx, t)
	if err != nil {
		return err
	}
	on, off := split(vol, tier)
	done := len(off) == 0 && len(vol.Replicas) == int(t.in.OriginalNumReplicas)
	if t.in.Preserve {
		done = healthyCount(on) >= int(t.in.OriginalNumReplicas)
	}
	if done {
		t.in.Move = nil
		t.in.Step = StepFinishing
		return e.persist(ctx, t)
	}
	if t.in.Moves >= t.maxMoves(e.o.MaxWrongRemovals) {
		return e.fail(ctx, t, Failed, fmt.Sprintf("gave up after %d replica moves", t.in.Moves))
	}
	if len(vol.Replicas) != int(vol.NumReplicas) {
		// The control plane has not converged (e.g. still removing a
		// replica): wait for it before planning.
		e.sleep(ctx)
		return nil
	}
	p, err := ChooseTargetFor(vol, tier, e.o.PoolHeadroom, e.o.Backend.Rules())
	if err != nil {
		return e.fail(ctx, t, Failed, fmt.Sprintf("replica move %d: %v", t.in.Moves+1, err))
	}
	t.in.Moves++
	t.in.Move = &MoveState{
		TargetPool: p.Pool.Name, TargetLabels: maps.Clone(p.Pool.Labels), Replacing: p.Replacing,
		Before: uuids(vol.Replicas), NumReplicas: int32(len(vol.Replicas)) + 1, StartedAt: e.o.Clock.Now().UTC(),
	}
	t.in.Step = StepScalingUp
	t.syncSeen, t.downSent, t.rollbackOn = false, false, false
	return e.persist(ctx, t)
}

// scaleUp writes numReplicas+1 with the target pool's labels as inclusion.
func (e *Engine) scaleUp(ctx context.Context, t *task) error {
	m := t.in.Move
	if err := e.o.Backend.SetReplicas(ctx, t.in.VolumeID, m.NumReplicas, &Topology{Inclusion: m.TargetLabels}); err != nil {
		return err
	}
	t.in.Step = StepSyncing
	if err := e.persist(ctx, t); err != nil {
		return err
	}
	e.hook(t.pv, PointScaledUp)
	return nil
}

// syncing waits, one poll per call, for the added replica to be healthy.
func (e *Engine) syncing(ctx context.Context, t *task) error {
	m := t.in.Move
	vol, tier, err := e.readState(ctx, t)
	if err != nil {
		return err
	}
	var added *Replica
	for i, r := range vol.Replicas {
		if !slices.Contains(m.Before, r.UUID) {
			added = &vol.Replicas[i]
			break
		}
	}
	if added != nil {
		m.AddedReplica, m.AddedPool = added.UUID, added.Pool
		var onNode []Replica
		for _, r := range vol.Replicas {
			if r.Node == added.Node {
				onNode = append(onNode, r)
			}
		}
		switch {
		case added.Faulted():
			return e.abort(ctx, t, fmt.Sprintf("replica move %d: new replica %s on pool %s faulted", t.in.Moves, added.UUID, added.Pool))
		case !tier.Has(added.Pool):
			return e.abort(ctx, t, fmt.Sprintf("replica move %d: the control plane placed the new replica on pool %s, outside tier %s", t.in.Moves, added.Pool, t.in.ToTier))
		case nodeConflict(onNode, tier, added.UUID) != "":
			return e.abort(ctx, t, fmt.Sprintf("replica move %d: the control plane placed the new replica on node %s, which %s", t.in.Moves, added.Node, nodeConflict(onNode, tier, added.UUID)))
		case added.Healthy():
			if t.in.Preserve {
				t.in.ReplicasMoved++
				t.in.Move = nil
				t.in.Step = StepPlanning
				return e.persist(ctx, t)
			}
			m.Replacing = replacedBy(vol, tier, added.Node)
			m.ScaleDownFrom = nil
			for _, r := range vol.Replicas {
				m.ScaleDownFrom = append(m.ScaleDownFrom, ReplicaRef{UUID: r.UUID, Pool: r.Pool, Healthy: r.Healthy()})
			}
			m.ScaleDownAt = e.o.Clock.Now().UTC()
			t.in.Step = StepScalingDown
			return e.persist(ctx, t)
		default:
			if !t.syncSeen {
				t.syncSeen = true
				e.hook(t.pv, PointSyncing)
				if ctx.Err() != nil {
					return nil
				}
			}
		}
	}
	if e.o.Clock.Since(m.StartedAt) > t.timeout() {
		what := "did not appear"
		if added != nil {
			what = fmt.Sprintf("%s on pool %s was not synced", added.UUID, added.Pool)
		}
		return e.abort(ctx, t, fmt.Sprintf("replica move %d timed out after migrationTimeout %s: the new replica %s", t.in.Moves, t.in.Timeout, what))
	}
	e.sleep(ctx)
	return nil
}

// scaleDown lowers numReplicas with the tier's common labels as inclusion, so
// that replicas outside the tier are the least preferred, waits for the
// removal and verifies which replica went.
func (e *Engine) scaleDown(ctx context.Context, t *task) error {
	m := t.in.Move
	want := int32(len(m.ScaleDownFrom) - 1)
	topo := &Topology{Inclusion: t.in.TierLabels}
	vol, tier, err := e.readState(ctx, t)
	if err != nil {
		return err
	}
	if vol.NumReplicas != want || !topologyEqual(vol.Topology, topo) {
		if err := e.o.Backend.SetReplicas(ctx, t.in.VolumeID, want, topo); err != nil {
			return err
		}
	}
	if !t.downSent {
		t.downSent = true
		e.hook(t.pv, PointScaledDown)
		if ctx.Err() != nil {
			return nil
		}
	}
	if len(vol.Replicas) > int(want) {
		if e.o.Clock.Since(m.ScaleDownAt) > t.timeout() {
			return e.fail(ctx, t, Failed, fmt.Sprintf("replica move %d: the control plane did not remove a replica within migrationTimeout %s", t.in.Moves, t.in.Timeout))
		}
		e.sleep(ctx)
		return nil
	}
	var wrong []ReplicaRef
	for _, r := range m.ScaleDownFrom {
		present := slices.ContainsFunc(vol.Replicas, func(c Replica) bool { return c.UUID == r.UUID })
		if !present && r.Healthy && tier.Has(r.Pool) {
			wrong = append(wrong, r)
		}
	}
	if len(wrong) == 0 {
		t.in.ReplicasMoved++
	} else {
		t.in.WrongRemovals++
		e.event(ctx, t, corev1.EventTypeWarning, ReasonWrongReplicaRemoved,
			"replica move %d: the control plane removed replica %s on pool %s of tier %s instead of a replica outside the tier (%d of %d retries)",
			t.in.Moves, wrong[0].UUID, wrong[0].Pool, t.in.ToTier, t.in.WrongRemovals, e.o.MaxWrongRemovals)
		if t.in.WrongRemovals > e.o.MaxWrongRemovals {
			return e.fail(ctx, t, Failed, fmt.Sprintf("the control plane removed a replica of tier %s instead of one outside it %d times", t.in.ToTier, t.in.WrongRemovals))
		}
	}
	t.in.Move = nil
	t.in.Step = StepPlanning
	return e.persist(ctx, t)
}

// rollBack restores numReplicas and the original topology, waits for the
// added replica to go and checks every replica from before the move is there.
func (e *Engine) rollBack(ctx context.Context, t *task) error {
	m := t.in.Move
	want := int32(len(m.Before))
	vol, err := e.o.Backend.GetVolume(ctx, t.in.VolumeID)
	if err != nil {
		return err
	}
	if vol.NumReplicas != want || !topologyEqual(vol.Topology, t.in.OriginalTopology) {
		if err := e.o.Backend.SetReplicas(ctx, t.in.VolumeID, want, t.in.OriginalTopology); err != nil {
			return err
		}
	}
	if m.RollbackAt.IsZero() {
		m.RollbackAt = e.o.Clock.Now().UTC()
		if err := e.persist(ctx, t); err != nil {
			return err
		}
	}
	if !t.rollbackOn {
		t.rollbackOn = true
		e.hook(t.pv, PointRolledBack)
		if ctx.Err() != nil {
			return nil
		}
	}
	if len(vol.Replicas) > int(want) && e.o.Clock.Since(m.RollbackAt) <= t.timeout() {
		e.sleep(ctx)
		return nil
	}
	if len(vol.Replicas) > int(want) {
		t.in.Failure += fmt.Sprintf("; rollback: the control plane still had %d replicas for numReplicas %d after %s", len(vol.Replicas), want, t.in.Timeout)
	}
	var lost []string
	for _, id := range m.Before {
		if !slices.ContainsFunc(vol.Replicas, func(r Replica) bool { return r.UUID == id }) {
			lost = append(lost, id)
		}
	}
	if len(lost) > 0 {
		sort.Strings(lost)
		t.in.Failure += fmt.Sprintf("; rollback: replica(s) %v from before the move are gone", lost)
	}
	t.in.Step = StepFinishing
	return e.persist(ctx, t)
}

// finish writes the final topology and, in one PV update, removes the intent,
// records the result and sets the cooldown annotation.
func (e *Engine) finish(ctx context.Context, t *task) error {
	vol, err := e.o.Backend.GetVolume(ctx, t.in.VolumeID)
	if err != nil {
		return err
	}
	topo := t.in.OriginalTopology
	if t.in.Failure == "" {
		topo = &Topology{Inclusion: t.in.TierLabels}
	}
	if !topologyEqual(vol.Topology, topo) {
		if err := e.o.Backend.SetReplicas(ctx, t.in.VolumeID, vol.NumReplicas, topo); err != nil {
			return err
		}
	}
	now := e.o.Clock.Now().UTC()
	res := Result{
		Policy: t.in.Policy, VolumeName: t.pv, VolumeID: t.in.VolumeID, FromTier: t.in.FromTier, ToTier: t.in.ToTier,
		TriggerIOPS: t.in.TriggerIOPS, StartedAt: t.in.StartedAt, FinishedAt: now, Outcome: Succeeded,
		Error: t.in.Failure, ReplicasMoved: t.in.ReplicasMoved,
	}
	if t.in.Failure != "" {
		res.Outcome = t.in.FailureOutcome
		if res.Outcome == "" {
			res.Outcome = Failed
		}
	}
	err = e.updatePV(ctx, t.pv, func(ann map[string]string) (bool, error) {
		var cur Intent
		if raw := ann[AnnotationMigration]; raw == "" || json.Unmarshal([]byte(raw), &cur) != nil || !cur.StartedAt.Equal(t.in.StartedAt) {
			return false, nil // finished already (a retried update that had succeeded)
		}
		var rs []Result
		if raw := ann[AnnotationResults]; raw != "" {
			_ = json.Unmarshal([]byte(raw), &rs) // an unreadable list is replaced
		}
		rs = append(rs, res)
		if err := setResults(ann, rs); err != nil {
			return false, err
		}
		delete(ann, AnnotationMigration)
		ann[AnnotationLastMigration] = now.Format(time.RFC3339)
		if res.Success() {
			delete(ann, AnnotationMigrationFailures)
		} else {
			n, _ := strconv.Atoi(ann[AnnotationMigrationFailures])
			ann[AnnotationMigrationFailures] = strconv.Itoa(max(n, 0) + 1)
		}
		return true, nil
	})
	if err != nil {
		if errorsIsNotFound(err) {
			return errPVGone
		}
		return fmt.Errorf("record migration result on PV %s: %w", t.pv, err)
	}
	e.mu.Lock()
	if !slices.ContainsFunc(e.results[t.pv], func(r Result) bool { return sameResult(r, res) }) {
		e.results[t.pv] = append(e.results[t.pv], res)
	}
	e.mu.Unlock()
	migrationsTotal.WithLabelValues(string(res.Outcome), res.FromTier, res.ToTier).Inc()
	migrationDuration.WithLabelValues(string(res.Outcome)).Observe(res.Duration().Seconds())
	switch res.Outcome {
	case Succeeded:
		e.event(ctx, t, corev1.EventTypeNormal, ReasonCompleted, "volume %s moved from %s to %s in %s (%d replica(s) moved)",
			t.in.VolumeID, t.in.FromTier, t.in.ToTier, res.Duration().Round(time.Millisecond), res.ReplicasMoved)
	case Aborted:
		e.event(ctx, t, corev1.EventTypeWarning, ReasonAborted, "volume %s %s -> %s rolled back: %s", t.in.VolumeID, t.in.FromTier, t.in.ToTier, res.Error)
	default:
		e.event(ctx, t, corev1.EventTypeWarning, ReasonFailed, "volume %s %s -> %s failed: %s", t.in.VolumeID, t.in.FromTier, t.in.ToTier, res.Error)
	}
	e.hook(t.pv, PointFinished) // before release: a hook observer never sees more migrations than slots
	e.release(t.in.VolumeID, t.in.Policy)
	e.notify(t.in.Policy)
	return nil
}
