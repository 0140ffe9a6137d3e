// Package stripeindex holds the in-memory views of every ECStripe that the
// operator's webhooks and controllers share: the per-volume interval index
// (overlap and stripeId checks), the per-volume and per-policy counts, fed by one event
// handler on the manager's ECStripe informer (For builds it once per
// informer), and the names of the manager cache's field indexes
// (RegisterFieldIndexes). It decides nothing; it answers lookups.
package stripeindex

import (
	"context"
	"fmt"
	"hash/fnv"
	"strings"
	"sync"

	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
)

// StripeIndex is an in-memory interval index of every ECStripe, per volume:
// it answers "which other stripe of this volume overlaps [start, end)" and
// "which other stripe of this volume has this stripeId" in O(log n) of the
// stripes of that volume, and counts stripes per ErasureCodingPolicy (in total,
// per state and their volumes: the one count the webhook's checks and the
// policy roll-up both read). It is fed by the ECStripe informer of the
// manager's cache (OnAdd/OnUpdate/OnDelete) and keeps only what those answers
// need, 128 bytes per stripe (index-B/stripe of BenchmarkStripeIndex). It is
// safe for concurrent use and implements storagev1.StripeNeighbours.
//
// The index reflects the informer, not etcd: two stripes admitted at the same
// moment are each checked against an index that does not hold the other yet.
// Such a pair can exist; the index holds both (ranges may overlap, ids may
// repeat) so that it stays exact, and the ECStripe controller reports them.
type StripeIndex struct {
	mu        sync.RWMutex
	volumes   map[string]*volumeStripes
	policies  map[string]*policyTally
	synced    func() bool
	listeners []func(policy string, state storagev1.ECStripeState, delta int64)
	volumeLs  []func(volume string)
}

// policyTally counts one policy's stripes.
type policyTally struct {
	total   int
	byState map[storagev1.ECStripeState]int64
	volumes map[string]int64
}

// PolicyCounts is the roll-up of one policy's stripes.
type PolicyCounts struct {
	Total   int64
	ByState map[storagev1.ECStripeState]int64
	// Volumes is the number of distinct volumes with at least one stripe.
	Volumes int32
}

// volumeStripes is a treap ordered by (startLba, name), augmented with the
// largest endLba of each subtree, plus a map from stripeId to its stripes.
type volumeStripes struct {
	root *stripeNode
	byID map[int64]*stripeNode
	// The volume's counts, kept with every change (VolumeCounts).
	n       int64
	bytes   int64
	byState map[storagev1.ECStripeState]int64
}

// VolumeCounts is the roll-up of one volume's stripes.
type VolumeCounts struct {
	Stripes int64
	// Bytes is the volume bytes the stripes cover (their LBA ranges × 512).
	Bytes   int64
	ByState map[storagev1.ECStripeState]int64
}

type stripeNode struct {
	start, end, maxEnd, id int64
	left, right            *stripeNode
	nextSameID             *stripeNode // stripes of the volume sharing id (only after a race)
	prio                   uint32
	name                   string
}

// NewStripeIndex returns an empty index. Until it is attached to an informer
// with Attach, Synced reports true (a hand-fed index is complete by definition).
func NewStripeIndex() *StripeIndex {
	return &StripeIndex{volumes: map[string]*volumeStripes{}, policies: map[string]*policyTally{}}
}

// shared holds the index of each informer (For).
var shared sync.Map // Informer -> *sharedIndex

type sharedIndex struct {
	once sync.Once
	x    *StripeIndex
	err  error
}

// Informers is the part of a controller-runtime cache For needs.
type Informers interface {
	GetInformer(ctx context.Context, obj client.Object, opts ...cache.InformerGetOption) (cache.Informer, error)
}

// For returns the index attached to the ECStripe informer of c, building and
// attaching it on the first call for that informer: every webhook and
// controller of one manager shares one index and one event handler. (An
// index lives as long as the process; a process has one manager.)
func For(ctx context.Context, c Informers) (*StripeIndex, error) {
	inf, err := c.GetInformer(ctx, &storagev1.ECStripe{})
	if err != nil {
		return nil, fmt.Errorf("ECStripe informer: %w", err)
	}
	v, _ := shared.LoadOrStore(inf, &sharedIndex{})
	si := v.(*sharedIndex)
	si.once.Do(func() {
		x := NewStripeIndex()
		if si.err = x.Attach(inf); si.err == nil {
			si.x = x
		} else {
			si.err = fmt.Errorf("attach the ECStripe index: %w", si.err)
		}
	})
	return si.x, si.err
}

// OnPolicyChange registers fn to hear every change of a policy's per-state
// counts (after the index changed, outside its lock, in informer order). Call
// it before the informer starts so that fn sees the initial list too.
func (x *StripeIndex) OnPolicyChange(fn func(policy string, state storagev1.ECStripeState, delta int64)) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.listeners = append(x.listeners, fn)
}

// OnVolumeChange registers fn to hear the name of every volume whose counts
// changed (after the index changed, outside its lock, in informer order), so
// a controller that reads VolumeCounts in response never reads them before
// the change. Call it before the informer starts.
func (x *StripeIndex) OnVolumeChange(fn func(volume string)) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.volumeLs = append(x.volumeLs, fn)
}

func (x *StripeIndex) tellVolume(volume string) {
	x.mu.RLock()
	ls := x.volumeLs
	x.mu.RUnlock()
	for _, fn := range ls {
		fn(volume)
	}
}

// VolumeCounts returns the roll-up of volume's stripes.
func (x *StripeIndex) VolumeCounts(volume string) VolumeCounts {
	x.mu.RLock()
	defer x.mu.RUnlock()
	out := VolumeCounts{ByState: map[storagev1.ECStripeState]int64{}}
	if v := x.volumes[volume]; v != nil {
		out.Stripes, out.Bytes = v.n, v.bytes
		for s, n := range v.byState {
			out.ByState[s] = n
		}
	}
	return out
}

// volumeCountLocked applies delta to the counts of s's volume v; x.mu is held.
func volumeCountLocked(v *volumeStripes, s *storagev1.ECStripe, delta int64) {
	v.n += delta
	v.bytes += delta * (s.Spec.LbaRange.EndLba - s.Spec.LbaRange.StartLba) * 512
	if v.byState[s.Status.State] += delta; v.byState[s.Status.State] == 0 {
		delete(v.byState, s.Status.State)
	}
}

// count applies delta to the tally of s's policy; x.mu is held. It returns
// the listeners to tell.
func (x *StripeIndex) countLocked(s *storagev1.ECStripe, delta int64) []func(string, storagev1.ECStripeState, int64) {
	policy := s.Spec.PolicyRef
	t := x.policies[policy]
	if t == nil {
		t = &policyTally{byState: map[storagev1.ECStripeState]int64{}, volumes: map[string]int64{}}
		x.policies[strings.Clone(policy)] = t
	}
	t.total += int(delta)
	if t.byState[s.Status.State] += delta; t.byState[s.Status.State] == 0 {
		delete(t.byState, s.Status.State)
	}
	vol := s.Spec.VolumeRef
	if t.volumes[vol] += delta; t.volumes[vol] <= 0 {
		delete(t.volumes, vol)
	} else if delta > 0 && t.volumes[vol] == 1 {
		// A fresh map key: do not pin the informer object's string.
		delete(t.volumes, vol)
		t.volumes[strings.Clone(vol)] = 1
	}
	if t.total <= 0 && len(t.byState) == 0 {
		delete(x.policies, policy)
	}
	return x.listeners
}

func tell(ls []func(string, storagev1.ECStripeState, int64), s *storagev1.ECStripe, delta int64) {
	for _, fn := range ls {
		fn(s.Spec.PolicyRef, s.Status.State, delta)
	}
}

// Synced reports whether the index has received every stripe that existed when
// its informer started. Answers before that could miss a collision.
func (x *StripeIndex) Synced() bool {
	x.mu.RLock()
	s := x.synced
	x.mu.RUnlock()
	return s == nil || s()
}

// EventSource is the part of an informer the index needs (a
// controller-runtime cache.Informer or a client-go SharedIndexInformer).
type EventSource interface {
	AddEventHandler(handler toolscache.ResourceEventHandler) (toolscache.ResourceEventHandlerRegistration, error)
}

// Attach registers the index as an event handler of the ECStripe informer.
// Prefer For, which attaches one index per informer.
func (x *StripeIndex) Attach(inf EventSource) error {
	reg, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if s, ok := obj.(*storagev1.ECStripe); ok {
				x.Add(s)
			}
		},
		UpdateFunc: func(oldObj, newObj any) {
			o, ok1 := oldObj.(*storagev1.ECStripe)
			n, ok2 := newObj.(*storagev1.ECStripe)
			if !ok1 || !ok2 {
				return
			}
			x.Update(o, n)
		},
		DeleteFunc: func(obj any) {
			if t, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if s, ok := obj.(*storagev1.ECStripe); ok {
				x.Delete(s)
			}
		},
	})
	if err != nil {
		return err
	}
	x.mu.Lock()
	x.synced = reg.HasSynced
	x.mu.Unlock()
	return nil
}

// Add records a stripe.
func (x *StripeIndex) Add(s *storagev1.ECStripe) {
	x.mu.Lock()
	ls := x.addLocked(s)
	x.mu.Unlock()
	tell(ls, s, 1)
	x.tellVolume(s.Spec.VolumeRef)
}

func (x *StripeIndex) addLocked(s *storagev1.ECStripe) []func(string, storagev1.ECStripeState, int64) {
	n := &stripeNode{
		start: s.Spec.LbaRange.StartLba, end: s.Spec.LbaRange.EndLba, maxEnd: s.Spec.LbaRange.EndLba,
		id: s.Spec.StripeID, name: strings.Clone(s.Name), prio: priority(s.Name),
	}
	v := x.volumes[s.Spec.VolumeRef]
	if v == nil {
		v = &volumeStripes{byID: map[int64]*stripeNode{}, byState: map[storagev1.ECStripeState]int64{}}
		x.volumes[strings.Clone(s.Spec.VolumeRef)] = v
	}
	v.root = insert(v.root, n)
	n.nextSameID = v.byID[n.id]
	v.byID[n.id] = n
	volumeCountLocked(v, s, 1)
	return x.countLocked(s, 1)
}

// Update replaces old by new; a change of metadata or of status other than
// the state costs nothing, a change of state only its counts.
func (x *StripeIndex) Update(old, new *storagev1.ECStripe) {
	if old.Name == new.Name && old.Spec.VolumeRef == new.Spec.VolumeRef && old.Spec.PolicyRef == new.Spec.PolicyRef &&
		old.Spec.StripeID == new.Spec.StripeID && old.Spec.LbaRange == new.Spec.LbaRange {
		if old.Status.State != new.Status.State {
			x.mu.Lock()
			x.countLocked(old, -1)
			ls := x.countLocked(new, 1)
			if v := x.volumes[new.Spec.VolumeRef]; v != nil {
				volumeCountLocked(v, old, -1)
				volumeCountLocked(v, new, 1)
			}
			x.mu.Unlock()
			tell(ls, old, -1)
			tell(ls, new, 1)
			x.tellVolume(new.Spec.VolumeRef)
		}
		return
	}
	// Identity or range changed: one step under the lock, so nobody reads
	// the volume's counts without the stripe in between.
	x.mu.Lock()
	var lsOld []func(string, storagev1.ECStripeState, int64)
	gone := x.deleteLocked(old)
	if gone {
		lsOld = x.countLocked(old, -1)
	}
	ls := x.addLocked(new)
	x.mu.Unlock()
	tell(lsOld, old, -1)
	tell(ls, new, 1)
	if gone && old.Spec.VolumeRef != new.Spec.VolumeRef {
		x.tellVolume(old.Spec.VolumeRef)
	}
	x.tellVolume(new.Spec.VolumeRef)
}

// Delete forgets a stripe, as it was last recorded.
func (x *StripeIndex) Delete(s *storagev1.ECStripe) {
	x.mu.Lock()
	gone := x.deleteLocked(s)
	var ls []func(string, storagev1.ECStripeState, int64)
	if gone {
		ls = x.countLocked(s, -1)
	}
	x.mu.Unlock()
	tell(ls, s, -1)
	if gone {
		x.tellVolume(s.Spec.VolumeRef)
	}
}

// deleteLocked removes s from its volume's tree; it reports whether s was there.
func (x *StripeIndex) deleteLocked(s *storagev1.ECStripe) bool {
	v := x.volumes[s.Spec.VolumeRef]
	if v == nil {
		return false
	}
	var gone *stripeNode
	v.root, gone = remove(v.root, s.Spec.LbaRange.StartLba, s.Name)
	if gone == nil {
		return false
	}
	if head := v.byID[gone.id]; head == gone {
		if gone.nextSameID == nil {
			delete(v.byID, gone.id)
		} else {
			v.byID[gone.id] = gone.nextSameID
		}
	} else {
		for p := head; p != nil; p = p.nextSameID {
			if p.nextSameID == gone {
				p.nextSameID = gone.nextSameID
				break
			}
		}
	}
	// The counts go by the stripe as it was recorded: the tree node holds
	// its range, the caller's object its last state.
	v.n--
	v.bytes -= (gone.end - gone.start) * 512
	if v.byState[s.Status.State]--; v.byState[s.Status.State] <= 0 {
		delete(v.byState, s.Status.State)
	}
	if v.root == nil {
		delete(x.volumes, s.Spec.VolumeRef)
	}
	return true
}

// StripesOfPolicy counts the stripes whose policyRef is policy.
func (x *StripeIndex) StripesOfPolicy(policy string) int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	if t := x.policies[policy]; t != nil {
		return t.total
	}
	return 0
}

// Counts returns the roll-up of policy's stripes.
func (x *StripeIndex) Counts(policy string) PolicyCounts {
	x.mu.RLock()
	defer x.mu.RUnlock()
	out := PolicyCounts{ByState: map[storagev1.ECStripeState]int64{}}
	t := x.policies[policy]
	if t == nil {
		return out
	}
	out.Total = int64(t.total)
	for s, n := range t.byState {
		out.ByState[s] = n
	}
	out.Volumes = int32(len(t.volumes))
	return out
}

// Len is the number of stripes of a volume.
func (x *StripeIndex) Len(volume string) int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	v := x.volumes[volume]
	if v == nil {
		return 0
	}
	return count(v.root)
}

// StripeWithID implements storagev1.StripeNeighbours.
func (x *StripeIndex) StripeWithID(volume string, id int64, self string) (storagev1.StripeRef, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	if v := x.volumes[volume]; v != nil {
		for n := v.byID[id]; n != nil; n = n.nextSameID {
			if n.name != self {
				return n.ref(), true
			}
		}
	}
	return storagev1.StripeRef{}, false
}

// Overlapping implements storagev1.StripeNeighbours.
func (x *StripeIndex) Overlapping(volume string, start, end int64, self string) (storagev1.StripeRef, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	if v := x.volumes[volume]; v != nil {
		if n := overlap(v.root, start, end, self); n != nil {
			return n.ref(), true
		}
	}
	return storagev1.StripeRef{}, false
}

func (n *stripeNode) ref() storagev1.StripeRef {
	return storagev1.StripeRef{Name: n.name, StripeID: n.id, LbaRange: storagev1.LbaRange{StartLba: n.start, EndLba: n.end}}
}

// priority is a hash of the name: deterministic, and as good as random for
// keeping the treap balanced.
func priority(name string) uint32 {
	h := fnv.New32a()
	_, _ = h.Write([]byte(name))
	return h.Sum32()
}

func before(start int64, name string, n *stripeNode) bool {
	return start < n.start || (start == n.start && name < n.name)
}

func fix(n *stripeNode) {
	m := n.end
	if n.left != nil && n.left.maxEnd > m {
		m = n.left.maxEnd
	}
	if n.right != nil && n.right.maxEnd > m {
		m = n.right.maxEnd
	}
	n.maxEnd = m
}

func insert(t, n *stripeNode) *stripeNode {
	if t == nil {
		return n
	}
	if before(n.start, n.name, t) {
		t.left = insert(t.left, n)
		if t.left.prio > t.prio {
			l := t.left
			t.left = l.right
			fix(t)
			l.right = t
			t = l
		}
	} else {
		t.right = insert(t.right, n)
		if t.right.prio > t.prio {
			r := t.right
			t.right = r.left
			fix(t)
			r.left = t
			t = r
		}
	}
	fix(t)
	return t
}

func remove(t *stripeNode, start int64, name string) (*stripeNode, *stripeNode) {
	if t == nil {
		return nil, nil
	}
	var gone *stripeNode
	switch {
	case start == t.start && name == t.name:
		return merge(t.left, t.right), t
	case before(start, name, t):
		t.left, gone = remove(t.left, start, name)
	default:
		t.right, gone = remove(t.right, start, name)
	}
	fix(t)
	return t, gone
}

func merge(a, b *stripeNode) *stripeNode {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	case a.prio > b.prio:
		a.right = merge(a.right, b)
		fix(a)
		return a
	default:
		b.left = merge(a, b.left)
		fix(b)
		return b
	}
}

// overlap finds a node other than self whose [start, end) meets [s, e),
// pruning subtrees that end at or before s and nodes that start at or after e.
func overlap(t *stripeNode, s, e int64, self string) *stripeNode {
	if t == nil || t.maxEnd <= s {
		return nil
	}
	if r := overlap(t.left, s, e, self); r != nil {
		return r
	}
	if t.start >= e {
		return nil
	}
	if t.end > s && t.name != self {
		return t
	}
	return overlap(t.right, s, e, self)
}

func count(t *stripeNode) int {
	if t == nil {
		return 0
	}
	return 1 + count(t.left) + count(t.right)
}
