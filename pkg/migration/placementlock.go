package migration

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// AnnotationSteer on the placement Lease records the placement lever taken
// while the Lease is held (SteerRecord, JSON), written before it is taken.
const AnnotationSteer = "storage.billyronks.io/placement-lever"

// SteerRecord is a placement lever: what was done to which pools, so that it
// can be undone by whoever holds the lock next.
type SteerRecord struct {
	Volume string        `json:"volume"`
	Lever  string        `json:"lever"`
	Pools  []SteeredPool `json:"pools,omitempty"`
	Since  time.Time     `json:"since"`
}

// SteeredPool is one pool made ineligible: cordoned, or label Key (whose value
// was Value) removed.
type SteeredPool struct {
	Pool  string `json:"pool"`
	Key   string `json:"key,omitempty"`
	Value string `json:"value,omitempty"`
}

// PlacementLock is a cluster-wide lock (a coordination.k8s.io Lease) around
// steered scale-ups: a lever changes placement for every volume, so two must
// never overlap, and a lever is held only for one replica-count call.
type PlacementLock struct {
	Client    client.Client
	Namespace string
	Name      string
	// Identity of this holder (the operator pod).
	Identity string
	// Duration after which a holder that did not release is presumed dead.
	Duration time.Duration
	// Poll is how often Acquire retries a lock held by another.
	Poll time.Duration
	Now  func() time.Time

	// local serializes holders within this process: they share Identity,
	// so the Lease alone cannot tell them apart (a second move would take
	// "its own" lock from the first and release the first's lever).
	localOnce sync.Once
	local     chan struct{}
}

func (l *PlacementLock) token() chan struct{} {
	l.localOnce.Do(func() { l.local = make(chan struct{}, 1) })
	return l.local
}

func (l *PlacementLock) now() time.Time {
	if l.Now != nil {
		return l.Now()
	}
	return time.Now()
}

// Held is the lock while held by this process.
type Held struct {
	l     *PlacementLock
	lease *coordinationv1.Lease
	once  sync.Once
}

// done hands the in-process token back (once).
func (h *Held) done() { h.once.Do(func() { <-h.l.token() }) }

// Acquire waits for the lock and takes it. A lever recorded by an earlier
// holder (expired or this identity, e.g. before a restart) is released with
// release before Acquire returns.
func (l *PlacementLock) Acquire(ctx context.Context, release func(context.Context, *SteerRecord) error) (*Held, error) {
	poll := l.Poll
	if poll <= 0 {
		poll = time.Second
	}
	select {
	case l.token() <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("wait for the placement lock %s/%s (held by another move of this operator): %w", l.Namespace, l.Name, ctx.Err())
	}
	for {
		h, wait, err := l.try(ctx, release)
		if err != nil || h != nil {
			if h == nil {
				<-l.token()
			}
			return h, err
		}
		select {
		case <-ctx.Done():
			<-l.token()
			return nil, fmt.Errorf("wait for the placement lock %s/%s (held by %s): %w", l.Namespace, l.Name, wait, ctx.Err())
		case <-time.After(poll):
		}
	}
}

// try takes the lock if free; holder names the current holder when not.
func (l *PlacementLock) try(ctx context.Context, release func(context.Context, *SteerRecord) error) (*Held, string, error) {
	var lease coordinationv1.Lease
	key := client.ObjectKey{Namespace: l.Namespace, Name: l.Name}
	err := l.Client.Get(ctx, key, &lease)
	now := metav1.NewMicroTime(l.now())
	secs := int32(max(l.Duration, time.Second) / time.Second)
	if apierrors.IsNotFound(err) {
		lease = coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Namespace: l.Namespace, Name: l.Name},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To(l.Identity), LeaseDurationSeconds: ptr.To(secs),
				AcquireTime: &now, RenewTime: &now},
		}
		if err := l.Client.Create(ctx, &lease); err != nil {
			if apierrors.IsAlreadyExists(err) {
				return nil, "another holder", nil
			}
			return nil, "", fmt.Errorf("create the placement lock %s: %w", key, err)
		}
		return &Held{l: l, lease: &lease}, "", nil
	}
	if err != nil {
		return nil, "", fmt.Errorf("read the placement lock %s: %w", key, err)
	}
	holder := ptr.Deref(lease.Spec.HolderIdentity, "")
	if holder != "" && holder != l.Identity && !l.expired(&lease) {
		return nil, holder, nil
	}
	rec, err := recordOf(&lease)
	if err != nil {
		return nil, "", err
	}
	// Take it first (optimistic concurrency on resourceVersion), then release
	// what the earlier holder left.
	lease.Spec.HolderIdentity, lease.Spec.LeaseDurationSeconds = ptr.To(l.Identity), ptr.To(secs)
	lease.Spec.AcquireTime, lease.Spec.RenewTime = &now, &now
	if err := l.Client.Update(ctx, &lease); err != nil {
		if apierrors.IsConflict(err) {
			return nil, "another holder", nil
		}
		return nil, "", fmt.Errorf("take the placement lock %s: %w", key, err)
	}
	h := &Held{l: l, lease: &lease}
	if rec != nil {
		if err := release(ctx, rec); err != nil {
			return nil, "", fmt.Errorf("release the placement lever on %d pool(s) left by %s for volume %s: %w", len(rec.Pools), holder, rec.Volume, err)
		}
		if err := h.Record(ctx, nil); err != nil {
			return nil, "", err
		}
	}
	return h, "", nil
}

func (l *PlacementLock) expired(lease *coordinationv1.Lease) bool {
	if lease.Spec.RenewTime == nil {
		return true
	}
	d := time.Duration(ptr.Deref(lease.Spec.LeaseDurationSeconds, 0)) * time.Second
	return l.now().After(lease.Spec.RenewTime.Add(d))
}

func recordOf(lease *coordinationv1.Lease) (*SteerRecord, error) {
	raw := lease.Annotations[AnnotationSteer]
	if raw == "" {
		return nil, nil
	}
	var rec SteerRecord
	if err := json.Unmarshal([]byte(raw), &rec); err != nil {
		// Never guess which pools are steered: a person must look.
		return nil, fmt.Errorf("placement lock %s/%s: annotation %s is not a lever record: %v", lease.Namespace, lease.Name, AnnotationSteer, err)
	}
	return &rec, nil
}

// Record writes rec (nil: none) on the held lock.
func (h *Held) Record(ctx context.Context, rec *SteerRecord) error {
	if rec == nil {
		delete(h.lease.Annotations, AnnotationSteer)
	} else {
		raw, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		if h.lease.Annotations == nil {
			h.lease.Annotations = map[string]string{}
		}
		h.lease.Annotations[AnnotationSteer] = string(raw)
	}
	now := metav1.NewMicroTime(h.l.now())
	h.lease.Spec.RenewTime = &now
	if err := h.l.Client.Update(ctx, h.lease); err != nil {
		return fmt.Errorf("record the placement lever on lock %s/%s: %w", h.lease.Namespace, h.lease.Name, err)
	}
	return nil
}

// Leave stops holding the lock in this process but leaves the Lease as it
// is (naming this identity, with its record): the next Acquire here, or any
// holder once it expired, takes it over and releases the recorded lever.
func (h *Held) Leave() { h.done() }

// Release clears the record and the holder. The in-process token is handed
// back whatever the outcome: a Lease left naming this identity (the update
// failed) is taken over, and its record released, by the next Acquire.
func (h *Held) Release(ctx context.Context) error {
	defer h.done()
	delete(h.lease.Annotations, AnnotationSteer)
	h.lease.Spec.HolderIdentity = nil
	if err := h.l.Client.Update(ctx, h.lease); err != nil {
		return fmt.Errorf("release the placement lock %s/%s: %w", h.lease.Namespace, h.lease.Name, err)
	}
	return nil
}

// Recover takes the lock once it is free and releases a recorded lever.
func (l *PlacementLock) Recover(ctx context.Context, release func(context.Context, *SteerRecord) error) error {
	h, err := l.Acquire(ctx, release)
	if err != nil {
		return err
	}
	return h.Release(ctx)
}
