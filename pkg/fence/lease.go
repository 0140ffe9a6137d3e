// Package fence makes an export the only writer of its volume (issue 17
// item 1). The export holds a coordination.k8s.io Lease per ECVolume
// (LeaseName, in the shard registry's namespace, owned by the ECVolume) and
// stamps everything it writes with the writer epoch stored on that Lease
// (AnnotationEpoch), which grows by one on every acquisition.
//
// Decisions written down:
//   - A holder measures its validity on its own monotonic clock from the
//     moment it SENT its last successful renewal: it stops serving once
//     Duration−Margin has passed since then. An acquirer takes a Lease held
//     by another only after it saw the same resourceVersion for a full
//     Duration, measured from when its GET returned (which is after the
//     holder sent that renewal). So the old holder has stopped by the time
//     anyone else can take over, as long as clocks run at about the same rate
//     (Margin covers the difference). A Lease released on a clean stop (no
//     holderIdentity) is taken at once.
//   - Losing the Lease is final: Check fails from then on and Run returns;
//     the export exits and its supervisor starts it again (it then waits
//     its turn like any other acquirer). I/O that was in flight when the
//     holder paused (SIGSTOP) is refused by the shard servers and the
//     ECStripe webhook, which compare the epoch it carries with the newer
//     one the next holder wrote.
//   - A deleted volume ends its writer (issue 17 item 9): the holder reads
//     its ECVolume on every renewal (and once right after acquiring), and
//     when the volume is gone, has a deletionTimestamp or is another volume
//     of the same name (UID), it stops with ErrVolumeDeleted. The export
//     then stops all I/O and releases the Lease once its writes ended; the
//     ECVolume finalizer deletes stripes and journals only once WriterGone
//     says no holder can still write (released, absent, or left unrenewed
//     for a full duration). An export that acquires after the deletion
//     started sees the deletionTimestamp and stops before its first write.
//   - The epoch is an annotation (a uint64) rather than
//     spec.leaseTransitions (an int32 that tools reset freely); the
//     transitions counter is kept in step for kubectl's sake.
package fence

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/zeebo/xxh3"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
)

// AnnotationEpoch carries the writer epoch: on the volume's Lease, the
// current holder's; on an ECStripe, that of the export that wrote its
// current version.
const AnnotationEpoch = "storage.billyronks.io/writer-epoch"

// LabelVolume labels a volume Lease with its ECVolume (hashed when long).
const LabelVolume = "storage.billyronks.io/ecvolume"

const leasePrefix = "ecvolume-"

// LeaseName is the name of volume's Lease: "ecvolume-<volume>", or a hash
// when that would exceed the 253 characters of an object name.
func LeaseName(volume string) string {
	if len(leasePrefix)+len(volume) <= 253 {
		return leasePrefix + volume
	}
	return leasePrefix + "h-" + strconv.FormatUint(xxh3.HashString(volume), 16)
}

func labelValue(volume string) string {
	if len(volume) <= 63 {
		return volume
	}
	return "h-" + strconv.FormatUint(xxh3.HashString(volume), 16)
}

// ErrLost is wrapped by every error of a holder that no longer holds the Lease.
var ErrLost = errors.New("the volume's writer Lease is lost")

// ErrVolumeDeleted is wrapped (with ErrLost) by the error of a holder whose
// ECVolume is being deleted, is gone, or was recreated under its name.
var ErrVolumeDeleted = errors.New("the ECVolume is being deleted")

// Epoch reads the writer epoch annotation of obj: 0 without one, an error
// naming the annotation when it is not an unsigned integer.
func Epoch(obj metav1.Object) (uint64, error) {
	v, ok := obj.GetAnnotations()[AnnotationEpoch]
	if !ok {
		return 0, nil
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("annotation %s=%q of %s must be a positive integer (a writer epoch)", AnnotationEpoch, v, obj.GetName())
	}
	return n, nil
}

// SetEpoch sets the writer epoch annotation of obj.
func SetEpoch(obj metav1.Object, epoch uint64) {
	a := obj.GetAnnotations()
	if a == nil {
		a = map[string]string{}
	}
	a[AnnotationEpoch] = strconv.FormatUint(epoch, 10)
	obj.SetAnnotations(a)
}

// Clock is the holder's time: monotonic readings (time.Now keeps one) and
// timers. Tests inject a fake.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Holder acquires and keeps one volume's Lease.
type Holder struct {
	Client    client.Client
	Namespace string
	// Volume owns the Lease (deleted with it) and names it.
	Volume *storagev1.ECVolume
	// Identity names this holder in spec.holderIdentity; unique per process.
	Identity string
	// Duration is spec.leaseDurationSeconds (default 15s, whole seconds).
	Duration time.Duration
	// Margin is how much earlier than Duration the holder stops trusting its
	// Lease (default Duration/5).
	Margin time.Duration
	// RenewEvery is the renewal period (default Duration/4).
	RenewEvery time.Duration
	Clock      Clock
	// Logf hears waits and losses (default: silent).
	Logf func(format string, args ...any)

	mu        sync.Mutex
	lease     *coordinationv1.Lease // as last written by us
	epoch     uint64
	renewedAt time.Time // local time the last successful write was sent
	lost      error
}

func (h *Holder) defaults() {
	if h.Duration <= 0 {
		h.Duration = 15 * time.Second
	}
	h.Duration = h.Duration.Round(time.Second)
	if h.Duration < time.Second {
		h.Duration = time.Second
	}
	if h.Margin <= 0 || h.Margin >= h.Duration {
		h.Margin = h.Duration / 5
	}
	if h.RenewEvery <= 0 || h.RenewEvery >= h.Duration-h.Margin {
		h.RenewEvery = h.Duration / 4
	}
	if h.Clock == nil {
		h.Clock = realClock{}
	}
	if h.Logf == nil {
		h.Logf = func(string, ...any) {}
	}
}

func (h *Holder) key() client.ObjectKey {
	return client.ObjectKey{Namespace: h.Namespace, Name: LeaseName(h.Volume.Name)}
}

func (h *Holder) desc() string { return "Lease " + h.Namespace + "/" + LeaseName(h.Volume.Name) }

// Epoch is the writer epoch of the held Lease (0 before Acquire).
func (h *Holder) Epoch() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.epoch
}

// Check returns nil while the holder may serve I/O: it holds the Lease and
// renewed it less than Duration−Margin ago on its own clock. Once it fails
// it fails for good (wrapping ErrLost).
func (h *Holder) Check() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.checkLocked()
}

func (h *Holder) checkLocked() error {
	if h.lost != nil {
		return h.lost
	}
	if h.lease == nil {
		return fmt.Errorf("%w: %s was never acquired", ErrLost, h.desc())
	}
	if age := h.Clock.Now().Sub(h.renewedAt); age >= h.Duration-h.Margin {
		h.lost = fmt.Errorf("%w: %s (epoch %d) was last renewed %s ago, past its %s duration less the %s margin; another export may take the volume over",
			ErrLost, h.desc(), h.epoch, age.Round(time.Millisecond), h.Duration, h.Margin)
	}
	return h.lost
}

// Acquire waits until it holds the Lease: at once when there is none or it
// was released, else once its holder left it unrenewed for a full Duration.
// It fails with ErrVolumeDeleted (releasing the Lease again) when the
// ECVolume is being deleted: read after acquiring, so an export that starts
// while the finalizer runs never writes.
func (h *Holder) Acquire(ctx context.Context) error {
	if err := h.acquire(ctx); err != nil {
		return err
	}
	if err := h.checkVolume(ctx); err != nil {
		if errors.Is(err, ErrVolumeDeleted) {
			if rerr := h.Release(context.WithoutCancel(ctx)); rerr != nil {
				h.Logf("%v", rerr)
			}
		}
		return err
	}
	return nil
}

// checkVolume reads the holder's ECVolume: an error wrapping ErrLost and
// ErrVolumeDeleted (and recorded as the loss) when it is gone, being deleted
// or another volume of its name; a plain error when it cannot be read.
func (h *Holder) checkVolume(ctx context.Context) error {
	cur := &storagev1.ECVolume{}
	err := h.Client.Get(ctx, client.ObjectKey{Name: h.Volume.Name}, cur)
	var why string
	switch {
	case apierrors.IsNotFound(err):
		why = "does not exist any more"
	case err != nil:
		return fmt.Errorf("%s: read ECVolume %s: %w", h.desc(), h.Volume.Name, err)
	case cur.DeletionTimestamp != nil:
		why = "is being deleted (deletionTimestamp " + cur.DeletionTimestamp.UTC().Format(time.RFC3339) + ")"
	case h.Volume.UID != "" && cur.UID != h.Volume.UID:
		why = fmt.Sprintf("was deleted and recreated (uid %s, this export opened %s)", cur.UID, h.Volume.UID)
	default:
		return nil
	}
	return h.lose(fmt.Errorf("%w: %w: ECVolume %s %s; the export stops serving it (writes fail with EIO) so that its finalizer can delete the stripes and journal",
		ErrLost, ErrVolumeDeleted, h.Volume.Name, why))
}

func (h *Holder) acquire(ctx context.Context) error {
	h.defaults()
	var seenRV string
	var seenAt time.Time
	for {
		cur := &coordinationv1.Lease{}
		err := h.Client.Get(ctx, h.key(), cur)
		got := h.Clock.Now()
		switch {
		case apierrors.IsNotFound(err):
			if done, err := h.create(ctx); done || err != nil {
				return err
			}
		case apierrors.IsForbidden(err):
			return fmt.Errorf("%s: %w (the export needs get, create and update on Leases in %s)", h.desc(), err, h.Namespace)
		case err != nil:
			h.Logf("%s: %v (retrying)", h.desc(), err)
		default:
			epoch, err := Epoch(cur)
			if err != nil {
				return fmt.Errorf("%s: %w", h.desc(), err)
			}
			holder := ptr.Deref(cur.Spec.HolderIdentity, "")
			dur := max(h.Duration, time.Duration(ptr.Deref(cur.Spec.LeaseDurationSeconds, 0))*time.Second)
			if cur.ResourceVersion != seenRV {
				seenRV, seenAt = cur.ResourceVersion, got
			}
			if holder == "" || got.Sub(seenAt) >= dur {
				if done, err := h.takeOver(ctx, cur, epoch); done || err != nil {
					return err
				}
				seenRV = "" // lost a race: observe afresh
				continue
			}
			h.Logf("%s is held by %s (epoch %d): not serving until it is released or left unrenewed for %s (%s to go)",
				h.desc(), holder, epoch, dur, (dur - got.Sub(seenAt)).Round(time.Millisecond))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: waiting to acquire: %w", h.desc(), ctx.Err())
		case <-h.Clock.After(h.RenewEvery):
		}
	}
}

func (h *Holder) spec(now time.Time) coordinationv1.LeaseSpec {
	t := metav1.NewMicroTime(now)
	return coordinationv1.LeaseSpec{HolderIdentity: ptr.To(h.Identity), LeaseDurationSeconds: ptr.To(int32(h.Duration / time.Second)),
		AcquireTime: &t, RenewTime: &t}
}

func (h *Holder) create(ctx context.Context) (bool, error) {
	l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: h.key().Name, Namespace: h.Namespace,
		Labels: map[string]string{LabelVolume: labelValue(h.Volume.Name)}}}
	if h.Volume.UID != "" {
		l.OwnerReferences = []metav1.OwnerReference{{APIVersion: storagev1.GroupVersion.String(), Kind: "ECVolume", Name: h.Volume.Name, UID: h.Volume.UID}}
	}
	SetEpoch(l, 1)
	sent := h.Clock.Now()
	l.Spec = h.spec(time.Now())
	l.Spec.LeaseTransitions = ptr.To(int32(0))
	if err := h.Client.Create(ctx, l); err != nil {
		if apierrors.IsAlreadyExists(err) {
			return false, nil
		}
		if apierrors.IsForbidden(err) || apierrors.IsNotFound(err) {
			return false, fmt.Errorf("%s: create: %w (the namespace must exist and the export needs get, create and update on Leases there)", h.desc(), err)
		}
		h.Logf("%s: create: %v (retrying)", h.desc(), err)
		return false, nil
	}
	h.acquired(l, 1, sent)
	return true, nil
}

func (h *Holder) takeOver(ctx context.Context, cur *coordinationv1.Lease, epoch uint64) (bool, error) {
	if epoch == ^uint64(0) {
		return false, fmt.Errorf("%s: writer epoch %d cannot grow", h.desc(), epoch)
	}
	l := cur.DeepCopy()
	SetEpoch(l, epoch+1)
	sent := h.Clock.Now()
	l.Spec = h.spec(time.Now())
	l.Spec.LeaseTransitions = ptr.To(ptr.Deref(cur.Spec.LeaseTransitions, 0) + 1)
	// The resourceVersion read is the precondition: nobody renewed since.
	if err := h.Client.Update(ctx, l); err != nil {
		if !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
			h.Logf("%s: take over: %v (retrying)", h.desc(), err)
		}
		return false, nil
	}
	h.acquired(l, epoch+1, sent)
	return true, nil
}

func (h *Holder) acquired(l *coordinationv1.Lease, epoch uint64, sent time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lease, h.epoch, h.renewedAt, h.lost = l, epoch, sent, nil
}

// Run renews the Lease every RenewEvery until ctx ends (nil) or the Lease is
// lost (an error wrapping ErrLost): taken by another holder, deleted, not
// renewed within Duration−Margin, or its ECVolume deleted (ErrVolumeDeleted
// too).
func (h *Holder) Run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-h.Clock.After(h.RenewEvery):
		}
		// Renew first: on a loaded API server each round trip may take a
		// while, and only the renewal keeps the Lease valid. The ECVolume is
		// read right after; a deletion is seen a round trip later at most.
		err := h.renew(ctx)
		if err == nil || !errors.Is(err, ErrLost) {
			if verr := h.checkVolume(ctx); errors.Is(verr, ErrLost) {
				err = verr
			} else if verr != nil && ctx.Err() == nil {
				h.Logf("%v (the Lease stays held: the finalizer waits while it is)", verr)
			}
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			h.Logf("%v", err)
			if errors.Is(err, ErrLost) {
				return err
			}
		}
		if err := h.Check(); err != nil {
			return err
		}
	}
}

// renew writes a fresh renewTime; an error wrapping ErrLost is final.
func (h *Holder) renew(ctx context.Context) error {
	h.mu.Lock()
	if err := h.checkLocked(); err != nil {
		h.mu.Unlock()
		return err
	}
	l := h.lease.DeepCopy()
	h.mu.Unlock()
	sent := h.Clock.Now()
	t := metav1.NewMicroTime(time.Now())
	l.Spec.RenewTime = &t
	err := h.Client.Update(ctx, l)
	if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
		// Someone else wrote it: still ours only if holder and epoch agree.
		cur := &coordinationv1.Lease{}
		if gerr := h.Client.Get(ctx, h.key(), cur); gerr != nil {
			return h.lose(fmt.Errorf("%w: %s changed under its holder (%v) and cannot be read: %v", ErrLost, h.desc(), err, gerr))
		}
		e, _ := Epoch(cur)
		if ptr.Deref(cur.Spec.HolderIdentity, "") != h.Identity || e != h.Epoch() {
			return h.lose(fmt.Errorf("%w: %s is now held by %q with epoch %d (ours was %d)", ErrLost, h.desc(), ptr.Deref(cur.Spec.HolderIdentity, ""), e, h.Epoch()))
		}
		cur.Spec.RenewTime = &t
		err = h.Client.Update(ctx, cur)
		l = cur
	}
	if err != nil {
		return fmt.Errorf("%s: renew: %w", h.desc(), err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.checkLocked(); err != nil {
		return err // renewed too late: validity is not regained
	}
	h.lease, h.renewedAt = l, sent
	return nil
}

func (h *Holder) lose(err error) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.lost == nil {
		h.lost = err
	}
	return h.lost
}

// Release gives the Lease up on a clean stop (holderIdentity cleared, the
// epoch kept), so the next export need not wait; also after ErrVolumeDeleted,
// so the volume's finalizer need not wait. Call it only after every write of
// this holder has ended. The update is conditional on the Lease being as this
// holder last wrote it, so it never releases another holder's Lease.
func (h *Holder) Release(ctx context.Context) error {
	h.mu.Lock()
	if h.lease == nil || (h.lost != nil && !errors.Is(h.lost, ErrVolumeDeleted)) {
		h.mu.Unlock()
		return nil
	}
	l := h.lease.DeepCopy()
	if h.lost == nil {
		h.lost = fmt.Errorf("%w: %s was released", ErrLost, h.desc())
	}
	h.mu.Unlock()
	l.Spec.HolderIdentity = nil
	if err := h.Client.Update(ctx, l); err != nil {
		return fmt.Errorf("%s: release: %w", h.desc(), err)
	}
	h.mu.Lock()
	h.lease = nil // released once
	h.mu.Unlock()
	return nil
}
