package migration

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sort"
	"sync"
	"time"

	"github.com/go-logr/logr"

	"github.com/billyronks/couchestor/pkg/mayastorrest"
)

// Levers that steer where Mayastor 2.x places a new replica.
const (
	// LeverCordon cordons (for replicas) every pool that must not take the
	// replica (OpenEBS 4.4+).
	LeverCordon = "cordon"
	// LeverLabel removes, from every pool that must not take the replica, a
	// pool label that the volume's pool_topology inclusion requires (v2.7.1+).
	LeverLabel = "label"
)

// RESTBackend implements VolumeBackend over Mayastor 2.x's control-plane REST
// API (/v0). A volume's ID is its REST uuid, the PV's spec.csi.volumeHandle.
//
// The API has no call that places a replica on a chosen pool or removes a
// chosen replica, so a move is request-then-verify (the engine verifies):
//   - scale-up: under the cluster-wide PlacementLock, the pools that must not
//     take the new replica are made ineligible for the shortest window (the
//     lever: pool cordon where the server supports it, probed once, else the
//     removal of an inclusion label of the volume's topology), the lever is
//     recorded on the lock before it is taken, the replica count is raised by
//     one, and the lever is released at once. Other volumes' placements in
//     that window (a few seconds) cannot use those pools either.
//   - scale-down: the replica count is lowered by one; Mayastor chooses the
//     victim (unhealthy first, then remote before nexus-local, then oldest).
//   - the topology of a volume cannot be changed: SetReplicas ignores it
//     except as the set of pools a new replica may go to.
type RESTBackend struct {
	API  *mayastorrest.Client
	Lock *PlacementLock
	// Lever forces LeverCordon or LeverLabel; "" probes for cordon once and
	// falls back to labels.
	Lever string
	// URL is only for Describe.
	URL string
	Log logr.Logger

	mu sync.Mutex
	// steered are the pools under this backend's lever right now (from just
	// before it is taken until it is released), by pool id.
	steered map[string]steeredPool
}

type steeredPool struct {
	lever string
	SteeredPool
}

var _ VolumeBackend = (*RESTBackend)(nil)

// Describe names the backend.
func (b *RESTBackend) Describe() string { return "Mayastor REST API " + b.URL }

// Rules of Mayastor 2.x.
func (b *RESTBackend) Rules() Rules {
	return Rules{SameNodeMoves: false, TopologyWritable: false, NexusLocalRemovedLast: true}
}

// ListVolumes reads every volume with one paginated list.
func (b *RESTBackend) ListVolumes(ctx context.Context) ([]Volume, error) {
	vs, err := b.API.ListVolumes(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Volume, 0, len(vs))
	for i := range vs {
		out = append(out, fromREST(&vs[i]))
	}
	return out, nil
}

// GetVolume reads one volume.
func (b *RESTBackend) GetVolume(ctx context.Context, id string) (Volume, error) {
	v, err := b.API.GetVolume(ctx, id)
	if err != nil {
		return Volume{}, err
	}
	return fromREST(&v), nil
}

// ListPools reads every pool: state, capacity and labels come from the
// control plane (a DiskPool's labels are copied at its creation only).
func (b *RESTBackend) ListPools(ctx context.Context) ([]Pool, error) {
	ps, err := b.API.ListPools(ctx)
	if err != nil {
		return nil, err
	}
	nodes, err := b.API.ListNodes(ctx)
	if err != nil {
		return nil, err
	}
	// The scheduler places replicas only on online, uncordoned nodes.
	usable := make(map[string]string, len(nodes))
	for _, n := range nodes {
		switch {
		case n.State == nil || n.State.Status != "Online":
			usable[n.ID] = "its node is not Online"
		case n.Spec != nil && n.Spec.CordonDrainState != nil:
			usable[n.ID] = "its node is cordoned or draining"
		default:
			usable[n.ID] = ""
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]Pool, 0, len(ps))
	for _, p := range ps {
		q := poolFromREST(p, b.steered[p.ID])
		if why, known := usable[q.Node]; !known || why != "" {
			q.Online = false
			if !known {
				why = "its node is unknown to the control plane"
			}
			q.Status = fmt.Sprintf("%s (%s)", q.Status, why)
		}
		out = append(out, q)
	}
	return out, nil
}

// steer notes a pool under (on) or out of (off) this backend's lever.
func (b *RESTBackend) steer(lever string, p SteeredPool, on bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.steered == nil {
		b.steered = map[string]steeredPool{}
	}
	if on {
		b.steered[p.Pool] = steeredPool{lever: lever, SteeredPool: p}
	} else {
		delete(b.steered, p.Pool)
	}
}

// poolFromREST maps a REST pool. A pool under this backend's own lever (s) is
// shown as it is without it: its withheld label back, its cordon ignored. The
// lever is a moment's steering of one scale-up, not a change of the pool's
// tier: read raw, a concurrent migration to that pool's tier would find the
// pool outside its tier (and abort a replica that landed on it).
func poolFromREST(p mayastorrest.Pool, s steeredPool) Pool {
	q := Pool{Name: p.ID, Labels: maps.Clone(p.Labels()), Status: "Unknown"}
	if s.lever == LeverLabel && s.Key != "" {
		if q.Labels == nil {
			q.Labels = map[string]string{}
		}
		q.Labels[s.Key] = s.Value
	}
	if p.Spec != nil {
		q.Node = p.Spec.Node
	}
	if s := p.State; s != nil {
		if q.Node == "" {
			q.Node = s.Node
		}
		q.Status, q.Capacity, q.Used = s.Status, s.Capacity, s.Used
		q.Available = max(s.Capacity-s.Used, 0)
	}
	// A pool cordoned for replicas by someone else takes no new replica.
	q.Online = q.Status == "Online" && (!p.Cordoned() || s.lever == LeverCordon)
	return q
}

// fromREST maps a REST volume. What cannot be read makes the volume
// unmovable, never a zero: a replica without a pool, an unpublished volume
// (Mayastor 2.7 does not rebuild replicas of a volume without a target, so a
// new replica would never sync).
func fromREST(v *mayastorrest.Volume) Volume {
	out := Volume{ID: v.Spec.UUID, Size: v.Spec.Size, NumReplicas: int32(v.Spec.NumReplicas)}
	if t := v.Spec.Topology; t != nil && t.PoolTopology != nil && t.PoolTopology.Labelled != nil {
		l := t.PoolTopology.Labelled
		out.Topology = &Topology{Inclusion: maps.Clone(l.Inclusion), Exclusion: maps.Clone(l.Exclusion)}
	}
	if n := v.State.Target; n != nil {
		out.Published, out.TargetNode = true, n.Node
	}
	ids := make([]string, 0, len(v.State.ReplicaTopology))
	for id := range v.State.ReplicaTopology {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		rt := v.State.ReplicaTopology[id]
		r := Replica{UUID: id, State: rt.State, Synced: mayastorrest.ReplicaSynced(*v, id)}
		if rt.Pool != nil {
			r.Pool = *rt.Pool
		}
		if rt.Node != nil {
			r.Node = *rt.Node
		}
		if r.Pool == "" && out.Unmovable == "" {
			out.Unmovable = fmt.Sprintf("replica %s has no pool in the control plane's replica_topology", id)
		}
		out.Replicas = append(out.Replicas, r)
	}
	if !out.Published && out.Unmovable == "" {
		out.Unmovable = "unpublished (no target): Mayastor 2.x does not rebuild a new replica of a volume without a target, so it would never sync"
	}
	return out
}

// SetReplicas asks for n replicas. Upwards (by one), the new replica is
// steered to the pools whose labels contain topo's inclusion; downwards, the
// control plane picks the victim and topo is not used. The volume's own
// topology is never changed (the API cannot).
func (b *RESTBackend) SetReplicas(ctx context.Context, id string, n int32, topo *Topology) error {
	v, err := b.API.GetVolume(ctx, id)
	if err != nil {
		return err
	}
	cur := int32(v.Spec.NumReplicas)
	switch {
	case n == cur:
		return nil
	case n < cur:
		for c := cur - 1; c >= n; c-- { // one per call, as the API requires
			if _, err := b.API.SetReplicaCount(ctx, id, int(c)); err != nil {
				return fmt.Errorf("lower volume %s to %d replicas: %w", id, c, err)
			}
		}
		return nil
	case n > cur+1:
		return &RefusedError{Reason: fmt.Sprintf("volume %s: raise from %d to %d replicas: Mayastor changes the count by one per call", id, cur, n)}
	}
	if v.State.Status != "Online" {
		// The API refuses an increase unless Online (412): wait for it.
		return fmt.Errorf("volume %s is %s: Mayastor adds a replica only while the volume is Online", id, v.State.Status)
	}
	var want map[string]string
	if topo != nil {
		want = topo.Inclusion
	}
	return b.scaleUpSteered(ctx, v, int(n), want)
}

// scaleUpSteered raises v to n replicas with the lever held, under the lock.
func (b *RESTBackend) scaleUpSteered(ctx context.Context, v mayastorrest.Volume, n int, want map[string]string) error {
	id := v.Spec.UUID
	lever, err := b.lever(ctx)
	if err != nil {
		return err
	}
	release, err := b.Lock.Acquire(ctx, b.releaseRecord)
	if err != nil {
		return err
	}
	// Pools are read under the lock: no other lever is held then, so their
	// labels and cordons are their own (read before it, a pool withheld by
	// another move would be taken for ineligible and not blocked).
	rec, err := b.steerRecord(ctx, v, want, lever)
	if err != nil {
		return errors.Join(err, release.Release(context.WithoutCancel(ctx)))
	}
	// The lever is written on the lock before it is taken: a restarted
	// operator releases it (PlacementLock.Acquire, RESTBackend.Recover).
	if err := release.Record(ctx, rec); err != nil {
		_ = release.Release(context.WithoutCancel(ctx))
		return err
	}
	applied, err := b.apply(ctx, rec)
	if err == nil {
		_, err = b.API.SetReplicaCount(ctx, id, n)
		if err != nil {
			err = fmt.Errorf("raise volume %s to %d replicas: %w", id, n, err)
		}
	}
	// Release at once, whatever happened, and even if ctx ended.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if rerr := b.undo(rctx, applied); rerr != nil {
		// The record stays on the lock: the next Acquire or Recover releases it.
		release.Leave()
		return errors.Join(err, fmt.Errorf("release the placement lever: %w", rerr))
	}
	if rerr := release.Release(rctx); rerr != nil {
		return errors.Join(err, rerr)
	}
	return err
}

// steerRecord is the lever that steers v's new replica to the pools matching
// want: the eligible pools that do not match, and for the label lever the
// label to withhold from each.
func (b *RESTBackend) steerRecord(ctx context.Context, v mayastorrest.Volume, want map[string]string, lever string) (*SteerRecord, error) {
	id := v.Spec.UUID
	pools, err := b.API.ListPools(ctx)
	if err != nil {
		return nil, err
	}
	blockers, err := b.blockers(v, pools, want)
	if err != nil {
		return nil, err
	}
	rec := &SteerRecord{Volume: id, Lever: lever, Since: time.Now().UTC()}
	var inclusion map[string]string
	if t := v.Spec.Topology; t != nil && t.PoolTopology != nil && t.PoolTopology.Labelled != nil {
		inclusion = t.PoolTopology.Labelled.Inclusion
	}
	for _, p := range blockers {
		s := SteeredPool{Pool: p.ID}
		if lever == LeverLabel {
			key, ok := steerKey(inclusion, p.Labels())
			if !ok {
				return nil, &RefusedError{Reason: fmt.Sprintf("volume %s: pool %s would be eligible for its new replica, the server has no pool cordon (OpenEBS 4.4+), and the volume's pool_topology has no inclusion label other than %s to withhold (give its StorageClass poolHasTopologyKey or poolAffinityTopologyLabel): placement cannot be steered", id, p.ID, LabelCreatedBy)}
			}
			s.Key, s.Value = key, p.Labels()[key]
		}
		rec.Pools = append(rec.Pools, s)
	}
	return rec, nil
}

// blockers are the pools that Mayastor's scheduler could choose for a new
// replica of v and that do not match want: they are made ineligible.
func (b *RESTBackend) blockers(v mayastorrest.Volume, pools []mayastorrest.Pool, want map[string]string) ([]mayastorrest.Pool, error) {
	used := map[string]bool{}
	for _, rt := range v.State.ReplicaTopology {
		if rt.Node != nil {
			used[*rt.Node] = true
		}
	}
	var inc map[string]string
	if t := v.Spec.Topology; t != nil && t.PoolTopology != nil && t.PoolTopology.Labelled != nil {
		inc = t.PoolTopology.Labelled.Inclusion
	}
	var out []mayastorrest.Pool
	targets := 0
	for _, p := range pools {
		node := ""
		if p.Spec != nil {
			node = p.Spec.Node
		} else if p.State != nil {
			node = p.State.Node
		}
		if used[node] || p.Cordoned() || p.State == nil || p.State.Status == "Faulted" || p.State.Status == "Unknown" {
			continue // not a candidate anyway
		}
		if !labelsMatch(p.Labels(), inc) {
			continue
		}
		if labelsMatch(p.Labels(), want) {
			targets++
			continue
		}
		out = append(out, p)
	}
	if targets == 0 {
		return nil, &RefusedError{Reason: fmt.Sprintf("volume %s: no pool with labels %v is eligible for a new replica (online, on a node without a replica of the volume, matching the volume's pool_topology)", v.Spec.UUID, want)}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// labelsMatch is Mayastor's inclusion rule: every key present, the value equal
// unless the wanted value is empty.
func labelsMatch(have, want map[string]string) bool {
	for k, w := range want {
		h, ok := have[k]
		if !ok || (w != "" && h != w) {
			return false
		}
	}
	return true
}

// LabelCreatedBy is the inclusion Mayastor's CSI driver gives every volume;
// the control plane refuses to delete it from a pool (400), so it is never
// the withheld label.
const LabelCreatedBy = "openebs.io/created-by"

// steerKey is the inclusion key to withhold from a pool: the first, sorted,
// that the pool has, other than LabelCreatedBy.
func steerKey(inclusion, labels map[string]string) (string, bool) {
	keys := make([]string, 0, len(inclusion))
	for k := range inclusion {
		if k != LabelCreatedBy {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		if _, ok := labels[k]; ok {
			return k, true
		}
	}
	return "", false
}

func (b *RESTBackend) lever(ctx context.Context) (string, error) {
	switch b.Lever {
	case LeverCordon, LeverLabel:
		return b.Lever, nil
	case "":
		ok, err := b.API.SupportsPoolCordon(ctx)
		if err != nil {
			return "", fmt.Errorf("probe pool cordon support: %w", err)
		}
		if ok {
			return LeverCordon, nil
		}
		return LeverLabel, nil
	default:
		return "", fmt.Errorf("placement lever %q: must be %q, %q or empty (probe)", b.Lever, LeverCordon, LeverLabel)
	}
}

// apply takes the lever on each pool; it returns what it took, to undo.
func (b *RESTBackend) apply(ctx context.Context, rec *SteerRecord) (*SteerRecord, error) {
	done := &SteerRecord{Volume: rec.Volume, Lever: rec.Lever, Since: rec.Since}
	for _, p := range rec.Pools {
		var err error
		// Noted before the call, which may take effect and still fail: undo
		// releases it either way (releasing what is not taken succeeds).
		b.steer(rec.Lever, p, true)
		done.Pools = append(done.Pools, p)
		if rec.Lever == LeverCordon {
			err = b.API.CordonPool(ctx, p.Pool)
		} else {
			_, err = b.API.DeletePoolLabel(ctx, p.Pool, p.Key)
		}
		if err != nil {
			return done, fmt.Errorf("steer the new replica of volume %s away from pool %s (%s): %w", rec.Volume, p.Pool, rec.Lever, err)
		}
	}
	return done, nil
}

// undo releases a lever; releasing what is already released succeeds.
func (b *RESTBackend) undo(ctx context.Context, rec *SteerRecord) error {
	if rec == nil {
		return nil
	}
	var errs []error
	for _, p := range rec.Pools {
		var err error
		if rec.Lever == LeverCordon {
			err = b.API.UncordonPool(ctx, p.Pool)
		} else {
			_, err = b.API.PutPoolLabel(ctx, p.Pool, p.Key, p.Value, true)
		}
		// Already released (a retried undo) is released.
		if err != nil && !mayastorrest.IsNotFound(err) && !mayastorrest.IsAlreadyExists(err) {
			errs = append(errs, fmt.Errorf("pool %s: %w", p.Pool, err))
		} else {
			b.steer(rec.Lever, p, false)
		}
	}
	return errors.Join(errs...)
}

// releaseRecord undoes a lever left by a holder that did not release it.
func (b *RESTBackend) releaseRecord(ctx context.Context, rec *SteerRecord) error {
	if rec != nil && len(rec.Pools) > 0 {
		b.Log.Info("releasing a placement lever left by an earlier holder", "volume", rec.Volume, "lever", rec.Lever, "pools", len(rec.Pools), "since", rec.Since)
	}
	return b.undo(ctx, rec)
}

// Recover releases a lever left on the lock by a crashed operator. The
// engine calls it when it starts (on the leader), before resuming migrations.
func (b *RESTBackend) Recover(ctx context.Context) error {
	return b.Lock.Recover(ctx, b.releaseRecord)
}
