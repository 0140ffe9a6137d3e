package migration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/tiering"
)

// Options configure an Engine.
type Options struct {
	// Client reads and annotates PersistentVolumes and reads StoragePolicies
	// (for Events). Required.
	Client client.Client
	// Backend reaches the volumes and pools. Required.
	Backend VolumeBackend
	// Recorder receives Events; nil records none.
	Recorder record.EventRecorder
	// Clock drives timeouts and polling; nil is the real clock.
	Clock clock.Clock
	// GlobalMaxConcurrent bounds migrations across all policies; 0: no bound.
	GlobalMaxConcurrent int
	// PoolHeadroom is the highest used fraction a target pool may reach; 0: DefaultPoolHeadroom.
	PoolHeadroom float64
	// PreservationMode never removes the replicas outside the new tier.
	PreservationMode bool
	// PollInterval is how often volume status is read while waiting; 0: 2s.
	PollInterval time.Duration
	// MaxWrongRemovals is how often a move is retried after the control plane
	// removed a replica of the new tier; 0: 2.
	MaxWrongRemovals int
	// Notify is called with the policy name when a migration of that policy
	// finishes (e.g. to enqueue a reconcile that folds its result).
	Notify func(policy string)
	// StepHook is called at each Point of a migration, synchronously. Tests
	// cancel the engine there to crash it at that point.
	StepHook func(pv string, p Point)
	Log      logr.Logger
}

// Task is the schema's MigrationTask (section 5.3): one active migration.
type Task struct {
	VolumeID  string
	PVName    string
	Policy    string
	FromTier  string
	ToTier    string
	FromPool  string
	ToPool    string
	StartedAt time.Time
	Step      Step
}

// Engine is the MigrationEngine; its fields are the schema's MigrationState:
// the active map and the concurrency limits. It is a manager.Runnable that
// needs leader election: Start resumes persisted migrations, then serves
// Migrate until its context ends.
type Engine struct {
	o Options

	mu        sync.Mutex
	runCtx    context.Context
	running   bool
	active    map[string]*Task // volume ID -> task
	perPolicy map[string]int
	total     int
	results   map[string][]Result // PV name -> results not yet acknowledged
	wg        sync.WaitGroup
}

// NewEngine checks o and returns an engine that is not yet running.
func NewEngine(o Options) (*Engine, error) {
	if o.Client == nil || o.Backend == nil {
		return nil, errors.New("migration engine: Client and Backend are required")
	}
	if o.PoolHeadroom < 0 || o.PoolHeadroom > 1 {
		return nil, fmt.Errorf("migration engine: pool headroom %v must be in (0, 1]", o.PoolHeadroom)
	}
	if o.PoolHeadroom == 0 {
		o.PoolHeadroom = DefaultPoolHeadroom
	}
	if o.GlobalMaxConcurrent < 0 {
		return nil, fmt.Errorf("migration engine: global concurrency limit %d must be >= 0", o.GlobalMaxConcurrent)
	}
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
	if o.PollInterval <= 0 {
		o.PollInterval = 2 * time.Second
	}
	if o.MaxWrongRemovals <= 0 {
		o.MaxWrongRemovals = 2
	}
	if o.Log.GetSink() == nil {
		o.Log = logr.Discard()
	}
	return &Engine{o: o, active: map[string]*Task{}, perPolicy: map[string]int{}, results: map[string][]Result{}}, nil
}

// NeedLeaderElection: only the leader moves volumes.
func (e *Engine) NeedLeaderElection() bool { return true }

// Start resumes (or rolls back) every migration persisted on a PV, loads the
// results not yet acknowledged, then accepts Migrate calls until ctx ends; it
// returns after the running migrations have stopped. A migration stopped by
// ctx keeps its intent on the PV, for the next Start.
func (e *Engine) Start(ctx context.Context) error {
	if r, ok := e.o.Backend.(interface{ Recover(context.Context) error }); ok {
		// A placement lever left by a crashed operator is released first,
		// retried until the backend answers (it also goes with the next move).
		go func() {
			for ctx.Err() == nil {
				err := r.Recover(ctx)
				if err == nil {
					return
				}
				e.o.Log.Error(err, "release a placement lever left by an earlier operator; retrying")
				e.sleep(ctx)
			}
		}()
	}
	var pvs corev1.PersistentVolumeList
	if err := e.o.Client.List(ctx, &pvs); err != nil {
		return fmt.Errorf("migration engine: list PersistentVolumes to resume migrations: %w", err)
	}
	e.mu.Lock()
	e.runCtx = ctx
	e.running = true
	var resume []*task
	for i := range pvs.Items {
		pv := &pvs.Items[i]
		if raw := pv.Annotations[AnnotationResults]; raw != "" {
			var rs []Result
			if err := json.Unmarshal([]byte(raw), &rs); err != nil {
				e.o.Log.Error(err, "unreadable migration results annotation; left in place", "pv", pv.Name)
			} else if len(rs) > 0 {
				e.results[pv.Name] = rs
			}
		}
		raw := pv.Annotations[AnnotationMigration]
		if raw == "" {
			continue
		}
		var in Intent
		if err := json.Unmarshal([]byte(raw), &in); err != nil {
			e.o.Log.Error(err, "unreadable migration intent annotation; left in place", "pv", pv.Name)
			continue
		}
		t := &task{pv: pv.Name, in: in}
		// A resumed migration always runs, even above a limit lowered since:
		// leaving it half done is worse than briefly exceeding the limit.
		e.reserveLocked(t.snapshot())
		e.wg.Add(1)
		resume = append(resume, t)
	}
	e.mu.Unlock()
	for _, t := range resume {
		e.o.Log.Info("resuming migration", "pv", t.pv, "volume", t.in.VolumeID, "step", t.in.Step)
		go e.run(ctx, t)
	}
	<-ctx.Done()
	e.mu.Lock()
	e.running = false
	e.mu.Unlock()
	e.wg.Wait()
	return nil
}

// Running says whether Start has finished resuming and Migrate is accepted.
func (e *Engine) Running() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.running
}

// Migrate starts moving req's volume to req.ToTier in the background and
// returns at once. It returns ErrNotRunning, ErrAlreadyActive, ErrAtCapacity,
// a *SkipError when the move cannot start (no target pool, volume not
// healthy, already on the tier), or another error when the API failed.
func (e *Engine) Migrate(ctx context.Context, req Request) error {
	if err := req.validate(); err != nil {
		return err
	}
	e.mu.Lock()
	switch {
	case !e.running:
		e.mu.Unlock()
		return ErrNotRunning
	case e.active[req.VolumeID] != nil:
		e.mu.Unlock()
		return fmt.Errorf("volume %s: %w", req.VolumeID, ErrAlreadyActive)
	case e.perPolicy[req.Policy] >= int(req.MaxConcurrent):
		e.mu.Unlock()
		return fmt.Errorf("policy %s runs %d migrations (maxConcurrentMigrations %d): %w", req.Policy, e.perPolicy[req.Policy], req.MaxConcurrent, ErrAtCapacity)
	case e.o.GlobalMaxConcurrent > 0 && e.total >= e.o.GlobalMaxConcurrent:
		e.mu.Unlock()
		return fmt.Errorf("%d migrations run (global limit %d): %w", e.total, e.o.GlobalMaxConcurrent, ErrAtCapacity)
	}
	now := e.o.Clock.Now()
	e.wg.Add(1) // under mu while running: Start's Wait cannot have begun
	e.reserveLocked(Task{VolumeID: req.VolumeID, PVName: req.PVName, Policy: req.Policy, FromTier: req.FromTier, ToTier: req.ToTier, StartedAt: now, Step: StepPlanning})
	runCtx := e.runCtx
	e.mu.Unlock()

	in, err := e.prepare(ctx, req, now)
	if err == nil {
		err = e.persistNew(ctx, req.PVName, in, req.Cooldown)
	}
	if err != nil {
		e.release(req.VolumeID, req.Policy)
		e.wg.Done()
		return err
	}
	t := &task{pv: req.PVName, in: *in}
	e.event(ctx, t, corev1.EventTypeNormal, ReasonStarted, "migrating volume %s from %s to %s (%.0f IOPS), %d replica(s)",
		req.VolumeID, req.FromTier, req.ToTier, req.TriggerIOPS, in.OriginalNumReplicas)
	e.hook(t.pv, PointStarted)
	go e.run(runCtx, t)
	return nil
}

// prepare checks that the volume can move and builds its intent.
func (e *Engine) prepare(ctx context.Context, req Request, now time.Time) (*Intent, error) {
	vol, err := e.o.Backend.GetVolume(ctx, req.VolumeID)
	if err != nil {
		return nil, err
	}
	pools, err := e.o.Backend.ListPools(ctx)
	if err != nil {
		return nil, err
	}
	tier, err := NewTier(req.TargetPools, pools)
	if err != nil {
		return nil, &SkipError{Reason: err.Error()}
	}
	if vol.Unmovable != "" {
		return nil, &SkipError{Reason: fmt.Sprintf("volume %s: %s", vol.ID, vol.Unmovable)}
	}
	if int(vol.NumReplicas) != len(vol.Replicas) {
		return nil, &SkipError{Reason: fmt.Sprintf("volume %s has %d replicas for numReplicas %d: not settled", vol.ID, len(vol.Replicas), vol.NumReplicas)}
	}
	if h := healthyCount(vol.Replicas); h != len(vol.Replicas) || h == 0 {
		return nil, &SkipError{Reason: fmt.Sprintf("volume %s has %d of %d replicas healthy: let Mayastor rebuild before moving it", vol.ID, h, len(vol.Replicas))}
	}
	if _, off := split(vol, tier); len(off) == 0 {
		return nil, &SkipError{Reason: fmt.Sprintf("every replica of volume %s is already on tier %s", vol.ID, req.ToTier)}
	}
	common := tier.CommonLabels()
	if len(common) == 0 && e.o.Backend.Rules().TopologyWritable {
		return nil, &SkipError{Reason: fmt.Sprintf("the pools of tier %s share no topology label, so no volume topology can prefer them", req.ToTier)}
	}
	if _, err := ChooseTargetFor(vol, tier, e.o.PoolHeadroom, e.o.Backend.Rules()); err != nil {
		return nil, &SkipError{Reason: fmt.Sprintf("volume %s to tier %s: %v", vol.ID, req.ToTier, err)}
	}
	return &Intent{
		Policy: req.Policy, MaxConcurrent: req.MaxConcurrent, VolumeID: req.VolumeID,
		FromTier: req.FromTier, ToTier: req.ToTier, TargetPools: req.TargetPools.DeepCopy(), TierLabels: common,
		TriggerIOPS: req.TriggerIOPS, Timeout: req.Timeout.String(), Preserve: e.o.PreservationMode,
		StartedAt:           now.UTC(),
		OriginalNumReplicas: vol.NumReplicas, OriginalTopology: vol.Topology.clone(), OriginalReplicas: uuids(vol.Replicas),
		Step: StepPlanning,
	}, nil
}

// ActiveCount is the number of running migrations of policy (status activeMigrations).
func (e *Engine) ActiveCount(policy string) int32 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return int32(e.perPolicy[policy])
}

// Tasks is a snapshot of the running migrations, all policies.
func (e *Engine) Tasks() []Task {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]Task, 0, len(e.active))
	for _, t := range e.active {
		out = append(out, *t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].VolumeID < out[j].VolumeID })
	return out
}

// PendingResults are the finished attempts of policy not yet acknowledged,
// oldest first.
func (e *Engine) PendingResults(policy string) []Result {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []Result
	for _, rs := range e.results {
		for _, r := range rs {
			if r.Policy == policy {
				out = append(out, r)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].StartedAt.Before(out[j].StartedAt) })
	return out
}

// Acknowledge removes results from their PVs and from the engine, once the
// caller has written them into the policy's status.
func (e *Engine) Acknowledge(ctx context.Context, results []Result) error {
	byPV := map[string][]Result{}
	for _, r := range results {
		byPV[r.VolumeName] = append(byPV[r.VolumeName], r)
	}
	var errs []error
	for pv, acked := range byPV {
		drop := func(rs []Result) []Result {
			return slices.DeleteFunc(rs, func(r Result) bool {
				return slices.ContainsFunc(acked, func(a Result) bool { return sameResult(a, r) })
			})
		}
		err := e.updatePV(ctx, pv, func(ann map[string]string) (bool, error) {
			var rs []Result
			if raw := ann[AnnotationResults]; raw != "" {
				if err := json.Unmarshal([]byte(raw), &rs); err != nil {
					return false, fmt.Errorf("annotation %s: %w", AnnotationResults, err)
				}
			}
			n := len(rs)
			rs = drop(rs)
			if len(rs) == n {
				return false, nil
			}
			return true, setResults(ann, rs)
		})
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("acknowledge results of PV %s: %w", pv, err))
			continue
		}
		e.mu.Lock()
		if rs := drop(e.results[pv]); len(rs) > 0 {
			e.results[pv] = rs
		} else {
			delete(e.results, pv)
		}
		e.mu.Unlock()
	}
	return errors.Join(errs...)
}

func sameResult(a, b Result) bool {
	return a.VolumeName == b.VolumeName && a.Policy == b.Policy && a.StartedAt.Equal(b.StartedAt)
}

func setResults(ann map[string]string, rs []Result) error {
	if len(rs) == 0 {
		delete(ann, AnnotationResults)
		return nil
	}
	b, err := json.Marshal(rs)
	if err != nil {
		return err
	}
	ann[AnnotationResults] = string(b)
	return nil
}

func (e *Engine) reserveLocked(t Task) {
	if _, ok := e.active[t.VolumeID]; ok {
		return
	}
	e.active[t.VolumeID] = &t
	e.perPolicy[t.Policy]++
	e.total++
	activeMigrations.WithLabelValues(t.Policy).Set(float64(e.perPolicy[t.Policy]))
}

func (e *Engine) release(volumeID, policy string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.active[volumeID]; !ok {
		return
	}
	delete(e.active, volumeID)
	e.perPolicy[policy]--
	e.total--
	activeMigrations.WithLabelValues(policy).Set(float64(e.perPolicy[policy]))
	if e.perPolicy[policy] == 0 {
		delete(e.perPolicy, policy)
	}
}

func (e *Engine) hook(pv string, p Point) {
	if e.o.StepHook != nil {
		e.o.StepHook(pv, p)
	}
}

// errPVGone stops a migration whose PV was deleted.
var errPVGone = errors.New("PersistentVolume is gone")

// updatePV applies mutate to the PV's annotations and updates it when mutate
// says it changed something, retrying on conflict.
func (e *Engine) updatePV(ctx context.Context, name string, mutate func(ann map[string]string) (bool, error)) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		var pv corev1.PersistentVolume
		if err := e.o.Client.Get(ctx, types.NamespacedName{Name: name}, &pv); err != nil {
			return err
		}
		if pv.Annotations == nil {
			pv.Annotations = map[string]string{}
		}
		changed, err := mutate(pv.Annotations)
		if err != nil || !changed {
			return err
		}
		return e.o.Client.Update(ctx, &pv)
	})
}

// persistNew writes a new intent; the PV must not carry one already, and
// must be out of cooldown as its fresh annotations say (the update carries the
// resourceVersion it read, so the check and the write are one step).
func (e *Engine) persistNew(ctx context.Context, pv string, in *Intent, cooldown time.Duration) error {
	b, err := json.Marshal(in)
	if err != nil {
		return err
	}
	err = e.updatePV(ctx, pv, func(ann map[string]string) (bool, error) {
		if ann[AnnotationMigration] != "" {
			return false, fmt.Errorf("PV %s carries annotation %s: %w", pv, AnnotationMigration, ErrAlreadyActive)
		}
		if ann[tiering.AnnotationConversion] != "" {
			return false, &SkipError{Reason: fmt.Sprintf("PV %s is being converted to or from erasure coding (annotation %s)", pv, tiering.AnnotationConversion)}
		}
		until, err := tiering.Cooldown(ann, cooldown)
		if err != nil {
			return false, &SkipError{Reason: fmt.Sprintf("PV %s: %v", pv, err)}
		}
		if now := e.o.Clock.Now(); now.Before(until) {
			return false, &SkipError{Reason: fmt.Sprintf("PV %s is in cooldown until %s (annotation %s=%s)", pv, until.UTC().Format(time.RFC3339), AnnotationLastMigration, ann[AnnotationLastMigration])}
		}
		ann[AnnotationMigration] = string(b)
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("persist migration intent on PV %s: %w", pv, err)
	}
	return nil
}

// persist writes the task's intent (its step) to the PV.
func (e *Engine) persist(ctx context.Context, t *task) error {
	b, err := json.Marshal(t.in)
	if err != nil {
		return err
	}
	err = e.updatePV(ctx, t.pv, func(ann map[string]string) (bool, error) {
		if ann[AnnotationMigration] == string(b) {
			return false, nil
		}
		ann[AnnotationMigration] = string(b)
		return true, nil
	})
	if apierrors.IsNotFound(err) {
		return errPVGone
	}
	if err != nil {
		return fmt.Errorf("persist migration step %s on PV %s: %w", t.in.Step, t.pv, err)
	}
	e.mu.Lock()
	if a := e.active[t.in.VolumeID]; a != nil {
		*a = t.snapshot()
	}
	e.mu.Unlock()
	return nil
}

// event records an Event on the PV and on the StoragePolicy.
func (e *Engine) event(ctx context.Context, t *task, typ, reason, format string, args ...any) {
	if e.o.Recorder == nil {
		return
	}
	var objs []runtime.Object
	var pv corev1.PersistentVolume
	if err := e.o.Client.Get(ctx, types.NamespacedName{Name: t.pv}, &pv); err == nil {
		objs = append(objs, &pv)
	}
	var sp storagev1.StoragePolicy
	if err := e.o.Client.Get(ctx, types.NamespacedName{Name: t.in.Policy}, &sp); err == nil {
		objs = append(objs, &sp)
	}
	msg := fmt.Sprintf(format, args...)
	for _, o := range objs {
		e.o.Recorder.Event(o, typ, reason, fmt.Sprintf("PV %s: %s", t.pv, msg))
	}
}

func (e *Engine) sleep(ctx context.Context) {
	select {
	case <-ctx.Done():
	case <-e.o.Clock.After(e.o.PollInterval):
	}
}

func (e *Engine) notify(policy string) {
	if e.o.Notify != nil {
		e.o.Notify(policy)
	}
}

func topologyEqual(a, b *Topology) bool {
	norm := func(t *Topology) (map[string]string, map[string]string) {
		if t == nil {
			return nil, nil
		}
		return t.Inclusion, t.Exclusion
	}
	ai, ae := norm(a)
	bi, be := norm(b)
	return maps.Equal(ai, bi) && maps.Equal(ae, be)
}

func errorsIsNotFound(err error) bool { return apierrors.IsNotFound(err) }
