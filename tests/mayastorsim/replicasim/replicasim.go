// Package replicasim is a TEST DOUBLE of Mayastor's control plane: the
// replica behaviour of a MayastorVolume, as a library. It is not Mayastor and
// not tuned to CoucheStor's migration engine: it only reads the objects a real
// control plane reads (MayastorVolume spec, DiskPool spec and status) and
// writes what Mayastor writes (MayastorVolume status, DiskPool status
// used/available).
//
// Behaviour, every Step (Run steps every Interval):
//   - Pool faults: a replica on a pool whose pool_status is Faulted (or a pool
//     that is gone) becomes Faulted.
//   - Scale-up: while a volume has fewer replicas than spec.numReplicas, a
//     replica is created on a pool of ITS OWN choice: pool_status Online,
//     topology labels containing every spec.topology.pool.labelled.inclusion
//     pair and none of the exclusion pairs, enough available bytes, no replica
//     of the volume yet; pools on nodes without a replica of the volume are
//     preferred; among those a seeded random choice. No pool: the volume waits
//     (as Mayastor does) and is Degraded. A new replica is Online, synced=false,
//     and becomes synced after size / SyncBytesPerSecond.
//   - Scale-down: while a volume has more replicas than spec.numReplicas, the
//     victim is chosen by Mayastor's rule: not Online first, then not synced,
//     then replicas on pools outside the volume's topology, then replicas
//     sharing a node with another replica of the volume, then those on the
//     pool with the least available space, then by UUID.
//   - Capacity: a pool's used bytes are the sizes of the replicas on it;
//     available = capacity - used (pools with capacity 0 are left alone).
//   - Volume state: Online when every replica is healthy and the count is
//     met, Faulted when none is healthy, else Degraded.
//
// Knobs for tests: HoldSync (replicas of a volume never sync) and
// RemoveWrongReplica (the next scale-downs of a volume remove the most
// preferred replica instead: what a misbehaving control plane would do).
//
// Simplifications, on purpose: a Faulted replica is not replaced until the
// volume is scaled down (Mayastor would also rebuild it elsewhere); sync
// progress lives in memory, so a restarted simulator restarts the sync clock.
package replicasim

import (
	"context"
	"fmt"
	"math/rand"
	"sort"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mayastorv1alpha1 "github.com/billyronks/couchestor/apis/mayastor/v1alpha1"
	mayastorv1beta2 "github.com/billyronks/couchestor/apis/mayastor/v1beta2"
)

// Options configure a Simulator.
type Options struct {
	// Interval between Steps in Run; 0: 50ms.
	Interval time.Duration
	// SyncBytesPerSecond is the rebuild speed; 0: 1 GiB/s.
	SyncBytesPerSecond int64
	// Seed of the pool choice and replica UUIDs.
	Seed int64
	// Clock drives sync delays; nil: the real clock.
	Clock clock.Clock
	// Observe, if set, sees every volume status the simulator wrote.
	Observe func(mayastorv1alpha1.MayastorVolume)
}

// Simulator plays Mayastor's replica behaviour over the MayastorVolumes and
// DiskPools of one namespace.
type Simulator struct {
	c  client.Client
	ns string
	o  Options

	mu       sync.Mutex
	rng      *rand.Rand
	syncAt   map[string]time.Time // replica UUID -> when it is synced
	hold     map[string]bool      // volume -> replicas never sync
	wrong    map[string]int       // volume -> scale-downs that remove the wrong replica
	removals int
}

// New returns a simulator of the volumes and pools in namespace.
func New(c client.Client, namespace string, o Options) *Simulator {
	if o.Interval <= 0 {
		o.Interval = 50 * time.Millisecond
	}
	if o.SyncBytesPerSecond <= 0 {
		o.SyncBytesPerSecond = 1 << 30
	}
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
	return &Simulator{c: c, ns: namespace, o: o, rng: rand.New(rand.NewSource(o.Seed)),
		syncAt: map[string]time.Time{}, hold: map[string]bool{}, wrong: map[string]int{}}
}

// HoldSync stops (or resumes) the sync of every replica of volume.
func (s *Simulator) HoldSync(volume string, hold bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hold[volume] = hold
}

// RemoveWrongReplica makes the next times scale-downs of volume remove the
// most preferred replica instead of the least preferred one.
func (s *Simulator) RemoveWrongReplica(volume string, times int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.wrong[volume] = times
}

// Run steps until ctx ends. Errors of a step are retried at the next one.
func (s *Simulator) Run(ctx context.Context) error {
	for {
		_ = s.Step(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-s.o.Clock.After(s.o.Interval):
		}
	}
}

// Step reconciles every volume once and writes pool usage.
func (s *Simulator) Step(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var pools mayastorv1beta2.DiskPoolList
	if err := s.c.List(ctx, &pools, client.InNamespace(s.ns)); err != nil {
		return fmt.Errorf("list DiskPools: %w", err)
	}
	var vols mayastorv1alpha1.MayastorVolumeList
	if err := s.c.List(ctx, &vols, client.InNamespace(s.ns)); err != nil {
		return fmt.Errorf("list MayastorVolumes: %w", err)
	}
	byName := map[string]*mayastorv1beta2.DiskPool{}
	used := map[string]int64{}
	for i := range pools.Items {
		byName[pools.Items[i].Name] = &pools.Items[i]
	}
	for _, v := range vols.Items {
		for _, r := range v.Status.Replicas {
			used[r.Pool] += v.Spec.Size
		}
	}
	sort.Slice(vols.Items, func(i, j int) bool { return vols.Items[i].Name < vols.Items[j].Name })
	var firstErr error
	for i := range vols.Items {
		v := &vols.Items[i]
		before := v.Status.DeepCopy()
		s.reconcile(v, byName, used)
		if equalStatus(before, &v.Status) {
			continue
		}
		if err := s.c.Status().Update(ctx, v); err != nil {
			// Roll back the in-memory usage; the next step recomputes it.
			for _, r := range v.Status.Replicas {
				used[r.Pool] -= v.Spec.Size
			}
			for _, r := range before.Replicas {
				used[r.Pool] += v.Spec.Size
			}
			if !apierrors.IsConflict(err) && firstErr == nil {
				firstErr = fmt.Errorf("update MayastorVolume %s status: %w", v.Name, err)
			}
			continue
		}
		if s.o.Observe != nil {
			s.o.Observe(*v.DeepCopy())
		}
	}
	for _, p := range pools.Items {
		if p.Status.Capacity <= 0 {
			continue
		}
		u := used[p.Name]
		if p.Status.Used == u && p.Status.Available == p.Status.Capacity-u {
			continue
		}
		p.Status.Used, p.Status.Available = u, p.Status.Capacity-u
		if err := s.c.Status().Update(ctx, &p); err != nil && !apierrors.IsConflict(err) && firstErr == nil {
			firstErr = fmt.Errorf("update DiskPool %s status: %w", p.Name, err)
		}
	}
	return firstErr
}

func (s *Simulator) reconcile(v *mayastorv1alpha1.MayastorVolume, pools map[string]*mayastorv1beta2.DiskPool, used map[string]int64) {
	now := s.o.Clock.Now()
	st := &v.Status
	for i := range st.Replicas {
		r := &st.Replicas[i]
		p := pools[r.Pool]
		if p == nil || p.Status.PoolStatus == mayastorv1beta2.PoolFaulted {
			r.State = mayastorv1alpha1.StateFaulted
			continue
		}
		if r.State == mayastorv1alpha1.StateOnline && !r.Synced && !s.hold[v.Name] {
			at, ok := s.syncAt[r.UUID]
			if !ok {
				at = now.Add(s.syncDelay(v.Spec.Size))
				s.syncAt[r.UUID] = at
			}
			if !now.Before(at) {
				r.Synced = true
				delete(s.syncAt, r.UUID)
			}
		}
	}
	want := int(v.Spec.NumReplicas)
	for len(st.Replicas) < want {
		p := s.choosePool(v, pools, used)
		if p == nil {
			break
		}
		id := s.uuid()
		st.Replicas = append(st.Replicas, mayastorv1alpha1.ReplicaStatus{UUID: id, Pool: p.Name, Node: p.Spec.Node, State: mayastorv1alpha1.StateOnline, Synced: false})
		s.syncAt[id] = now.Add(s.syncDelay(v.Spec.Size))
		used[p.Name] += v.Spec.Size
	}
	for len(st.Replicas) > want && len(st.Replicas) > 0 {
		order := removalOrder(v, pools, used)
		victim := order[0]
		if s.wrong[v.Name] > 0 {
			s.wrong[v.Name]--
			victim = order[len(order)-1]
		}
		r := st.Replicas[victim]
		used[r.Pool] -= v.Spec.Size
		delete(s.syncAt, r.UUID)
		st.Replicas = append(st.Replicas[:victim:victim], st.Replicas[victim+1:]...)
		s.removals++
	}
	healthy := 0
	for _, r := range st.Replicas {
		if r.State == mayastorv1alpha1.StateOnline && r.Synced {
			healthy++
		}
	}
	switch {
	case healthy == 0:
		st.State = mayastorv1alpha1.StateFaulted
	case healthy == len(st.Replicas) && len(st.Replicas) == want:
		st.State = mayastorv1alpha1.StateOnline
	default:
		st.State = mayastorv1alpha1.StateDegraded
	}
}

func (s *Simulator) syncDelay(size int64) time.Duration {
	return time.Duration(float64(size) / float64(s.o.SyncBytesPerSecond) * float64(time.Second))
}

func (s *Simulator) uuid() string {
	b := make([]byte, 16)
	s.rng.Read(b)
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// inTopology says whether pool p is eligible under v's topology.
func inTopology(v *mayastorv1alpha1.MayastorVolume, p *mayastorv1beta2.DiskPool) bool {
	var lbl map[string]string
	if p.Spec.Topology != nil {
		lbl = p.Spec.Topology.Labelled
	}
	t := v.Spec.Topology
	if t == nil || t.Pool == nil || t.Pool.Labelled == nil {
		return true
	}
	for k, val := range t.Pool.Labelled.Inclusion {
		if got, ok := lbl[k]; !ok || got != val {
			return false
		}
	}
	for k, val := range t.Pool.Labelled.Exclusion {
		if got, ok := lbl[k]; ok && got == val {
			return false
		}
	}
	return true
}

func (s *Simulator) choosePool(v *mayastorv1alpha1.MayastorVolume, pools map[string]*mayastorv1beta2.DiskPool, used map[string]int64) *mayastorv1beta2.DiskPool {
	onPool, onNode := map[string]bool{}, map[string]bool{}
	for _, r := range v.Status.Replicas {
		onPool[r.Pool], onNode[r.Node] = true, true
	}
	var free, busy []string
	for name, p := range pools {
		if p.Status.PoolStatus != mayastorv1beta2.PoolOnline || onPool[name] || !inTopology(v, p) {
			continue
		}
		if p.Status.Capacity > 0 && p.Status.Capacity-used[name] < v.Spec.Size {
			continue
		}
		if onNode[p.Spec.Node] {
			busy = append(busy, name)
		} else {
			free = append(free, name)
		}
	}
	set := free
	if len(set) == 0 {
		set = busy
	}
	if len(set) == 0 {
		return nil
	}
	sort.Strings(set)
	return pools[set[s.rng.Intn(len(set))]]
}

// removalOrder lists the indexes of v's replicas, the first to remove first.
func removalOrder(v *mayastorv1alpha1.MayastorVolume, pools map[string]*mayastorv1beta2.DiskPool, used map[string]int64) []int {
	rs := v.Status.Replicas
	perNode := map[string]int{}
	for _, r := range rs {
		perNode[r.Node]++
	}
	avail := func(pool string) int64 {
		p := pools[pool]
		if p == nil {
			return -1
		}
		return p.Status.Capacity - used[pool]
	}
	outside := func(r mayastorv1alpha1.ReplicaStatus) bool {
		p := pools[r.Pool]
		return p == nil || !inTopology(v, p)
	}
	idx := make([]int, len(rs))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool {
		x, y := rs[idx[a]], rs[idx[b]]
		if (x.State != mayastorv1alpha1.StateOnline) != (y.State != mayastorv1alpha1.StateOnline) {
			return x.State != mayastorv1alpha1.StateOnline
		}
		if x.Synced != y.Synced {
			return !x.Synced
		}
		if outside(x) != outside(y) {
			return outside(x)
		}
		if (perNode[x.Node] > 1) != (perNode[y.Node] > 1) {
			return perNode[x.Node] > 1
		}
		if ax, ay := avail(x.Pool), avail(y.Pool); ax != ay {
			return ax < ay
		}
		return x.UUID < y.UUID
	})
	return idx
}

func equalStatus(a, b *mayastorv1alpha1.MayastorVolumeStatus) bool {
	if a.State != b.State || len(a.Replicas) != len(b.Replicas) {
		return false
	}
	for i := range a.Replicas {
		if a.Replicas[i] != b.Replicas[i] {
			return false
		}
	}
	return true
}
