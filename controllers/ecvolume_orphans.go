package controllers

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
)

// volumeOrphanCollector frees the shards of each live ECVolume that no
// ECStripe references. Finding them is the one walk the ECVolume controller
// genuinely needs (every live shard server's shard list of the volume and a
// paged List of all its ECStripes: O(stripes)), so it runs on a schedule of
// its own and never on the status path:
//
//   - its own controller, queue and single worker, woken only by an ECVolume
//     appearing in the cache (its creation, or the initial list after a
//     start) and then by its own RequeueAfter: ECStripe, policy and status
//     events never reach it, so a destage of n stripes causes no walk;
//   - bounded: at most one walk per volume per GCInterval
//     (orphanCollectionWait), and one walk at a time across all volumes, so
//     a large volume's walk never delays another volume's status;
//   - a deleting volume is not walked here: its finalizer frees all its
//     shards (stripe.Store.DeleteVolumeData), the other walk, once.
//
// Orphans are rare (a write or a rebuild that died between writing a shard
// and recording it) and only cost space, and shards younger than
// OrphanGrace are kept anyway, so collecting them within GCInterval (5
// minutes by default) instead of at every event loses nothing.
type volumeOrphanCollector struct{ r *ECVolumeReconciler }

// storeRetry is how soon a collection is tried again when the shard servers
// cannot be reached yet (no Secret, no registry): sooner than GCInterval,
// since nothing was walked.
const storeRetry = 30 * time.Second

// orphanCollectionWait is how long until a volume's orphans are due: now
// when they were never collected (by this process) or GCInterval has passed
// since, else the rest of the interval, never more than the interval (a clock
// stepped back must not postpone collection indefinitely).
func orphanCollectionWait(last time.Time, collected bool, now time.Time, interval time.Duration) time.Duration {
	if !collected {
		return 0
	}
	since := now.Sub(last)
	if since < 0 {
		return interval
	}
	if since >= interval {
		return 0
	}
	return interval - since
}

func (c *volumeOrphanCollector) setup(mgr ctrl.Manager) error {
	onlyAppearing := predicate.Funcs{
		CreateFunc:  func(event.CreateEvent) bool { return true },
		UpdateFunc:  func(event.UpdateEvent) bool { return false },
		DeleteFunc:  func(event.DeleteEvent) bool { return false },
		GenericFunc: func(event.GenericEvent) bool { return false },
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&storagev1.ECVolume{}, builder.WithPredicates(onlyAppearing)).
		WithOptions(controller.Options{MaxConcurrentReconciles: 1}).
		Named("ecvolume-orphans").
		Complete(c)
}

// Reconcile collects one volume's orphans when they are due and schedules
// the next collection.
func (c *volumeOrphanCollector) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	r := c.r
	vol := &storagev1.ECVolume{}
	if err := r.Client.Get(ctx, req.NamespacedName, vol); err != nil || !vol.DeletionTimestamp.IsZero() {
		r.forgetGC(req.Name)
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if vol.Spec.Layout() == storagev1.LayoutPlacementGroups {
		// Its shards have no ECStripe to be referenced by: the collector
		// would free them all (stripe.ErrLayoutNotCovered). Not built yet.
		return ctrl.Result{}, nil
	}
	r.mu.Lock()
	last, collected := r.lastGC[vol.Name]
	r.mu.Unlock()
	if wait := orphanCollectionWait(last, collected, r.now(), r.GCInterval); wait > 0 {
		return ctrl.Result{RequeueAfter: wait}, nil
	}
	orphans := r.Orphans
	if orphans == nil {
		st, err := r.store(ctx)
		if err != nil {
			log.FromContext(ctx).V(1).Info("orphan collection waits for the shard servers", "volume", vol.Name, "error", err.Error())
			return ctrl.Result{RequeueAfter: min(storeRetry, r.GCInterval)}, nil
		}
		orphans = st
	}
	r.markGC(vol.Name)
	rep, err := orphans.CollectOrphans(ctx, vol.Name, r.OrphanGrace)
	switch {
	case err != nil:
		// Retried at the next interval, not with the queue's backoff: a
		// shard server that fails every walk must not cause walk after walk.
		log.FromContext(ctx).Error(err, "collect orphaned shards", "volume", vol.Name)
	case rep.Freed > 0 && r.Recorder != nil:
		r.Recorder.Eventf(vol, nil, corev1.EventTypeNormal, "OrphansCollected", "CollectOrphans", "freed %d orphaned shards (%d bytes) no ECStripe references", rep.Freed, rep.FreedBytes)
	}
	return ctrl.Result{RequeueAfter: r.GCInterval}, nil
}
