package webhooks

import (
	"hash/fnv"
	"strings"
	"sync"

	toolscache "k8s.io/client-go/tools/cache"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
)

// StripeIndex is an in-memory interval index of every ECStripe, per volume:
// it answers "which other stripe of this volume overlaps [start, end)" and
// "which other stripe of this volume has this stripeId" in O(log n) of the
// stripes of that volume, and counts stripes per ErasureCodingPolicy. It is
// fed by the ECStripe informer of the manager's cache (OnAdd/OnUpdate/OnDelete)
// and keeps only what those answers need, about 140 bytes per stripe
// (BenchmarkStripeIndex measures it). It is safe for concurrent use and
// implements storagev1.StripeNeighbours.
//
// The index reflects the informer, not etcd: two stripes admitted at the same
// moment are each checked against an index that does not hold the other yet.
// Such a pair can exist; the index holds both (ranges may overlap, ids may
// repeat) so that it stays exact, and the ECStripe controller reports them.
type StripeIndex struct {
	mu       sync.RWMutex
	volumes  map[string]*volumeStripes
	policies map[string]int
	synced   func() bool
}

// volumeStripes is a treap ordered by (startLba, name), augmented with the
// largest endLba of each subtree, plus a map from stripeId to its stripes.
type volumeStripes struct {
	root *stripeNode
	byID map[int64]*stripeNode
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
	return &StripeIndex{volumes: map[string]*volumeStripes{}, policies: map[string]int{}}
}

// Synced reports whether the index has received every stripe that existed when
// its informer started. Answers before that could miss a collision.
func (x *StripeIndex) Synced() bool {
	x.mu.RLock()
	s := x.synced
	x.mu.RUnlock()
	return s == nil || s()
}

// Attach registers the index as an event handler of the ECStripe informer.
func (x *StripeIndex) Attach(inf toolscache.SharedIndexInformer) error {
	return x.attach(func(h toolscache.ResourceEventHandler) (toolscache.ResourceEventHandlerRegistration, error) {
		return inf.AddEventHandler(h)
	})
}

func (x *StripeIndex) attach(add func(toolscache.ResourceEventHandler) (toolscache.ResourceEventHandlerRegistration, error)) error {
	reg, err := add(toolscache.ResourceEventHandlerFuncs{
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
	n := &stripeNode{
		start: s.Spec.LbaRange.StartLba, end: s.Spec.LbaRange.EndLba, maxEnd: s.Spec.LbaRange.EndLba,
		id: s.Spec.StripeID, name: strings.Clone(s.Name), prio: priority(s.Name),
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	v := x.volumes[s.Spec.VolumeRef]
	if v == nil {
		v = &volumeStripes{byID: map[int64]*stripeNode{}}
		x.volumes[strings.Clone(s.Spec.VolumeRef)] = v
	}
	v.root = insert(v.root, n)
	n.nextSameID = v.byID[n.id]
	v.byID[n.id] = n
	x.policies[s.Spec.PolicyRef]++
}

// Update replaces old by new; a change of status or metadata alone costs nothing.
func (x *StripeIndex) Update(old, new *storagev1.ECStripe) {
	if old.Name == new.Name && old.Spec.VolumeRef == new.Spec.VolumeRef && old.Spec.PolicyRef == new.Spec.PolicyRef &&
		old.Spec.StripeID == new.Spec.StripeID && old.Spec.LbaRange == new.Spec.LbaRange {
		return
	}
	x.Delete(old)
	x.Add(new)
}

// Delete forgets a stripe, as it was last recorded.
func (x *StripeIndex) Delete(s *storagev1.ECStripe) {
	x.mu.Lock()
	defer x.mu.Unlock()
	v := x.volumes[s.Spec.VolumeRef]
	if v == nil {
		return
	}
	var gone *stripeNode
	v.root, gone = remove(v.root, s.Spec.LbaRange.StartLba, s.Name)
	if gone == nil {
		return
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
	if v.root == nil {
		delete(x.volumes, s.Spec.VolumeRef)
	}
	if x.policies[s.Spec.PolicyRef]--; x.policies[s.Spec.PolicyRef] <= 0 {
		delete(x.policies, s.Spec.PolicyRef)
	}
}

// StripesOfPolicy counts the stripes whose policyRef is policy.
func (x *StripeIndex) StripesOfPolicy(policy string) int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.policies[policy]
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
