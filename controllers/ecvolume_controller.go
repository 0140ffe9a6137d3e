package controllers

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/fence"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/pkg/shardserver"
	"github.com/billyronks/couchestor/pkg/stripe"
	"github.com/billyronks/couchestor/pkg/stripeindex"
)

// +kubebuilder:rbac:groups=storage.billyronks.io,resources=ecvolumes,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=storage.billyronks.io,resources=ecvolumes/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=storage.billyronks.io,resources=ecvolumes/finalizers,verbs=update
// +kubebuilder:rbac:groups=storage.billyronks.io,resources=ecstripes,verbs=get;list;watch;delete
// +kubebuilder:rbac:groups=storage.billyronks.io,resources=erasurecodingpolicies,verbs=get;list;watch
// +kubebuilder:rbac:groups="",namespace=couchestor-system,resources=secrets,verbs=get

// ECVolumeReconciler keeps an ECVolume's finalizer and status, and collects
// orphaned shards of the volume (volumeOrphanCollector, a controller of its
// own). Its status path costs O(1) per event: the counts come from the
// shared stripe index (volumeStripeCounts), never from a List of the
// volume's stripes or a walk of the shard servers. Deleting an ECVolume frees every shard of
// it on the live shard servers and deletes its ECStripes before the
// finalizer is removed: the only way stripes and their space go away.
// It does so only once no export can still write the volume (its writer
// Lease released, absent or expired, pkg/fence): an export sees the
// deletionTimestamp at its next renewal and stops, so nothing it destages
// or journals afterwards can leave orphan stripes or recreate journals.
type ECVolumeReconciler struct {
	Client    client.Client
	APIReader client.Reader
	Recorder  events.EventRecorder
	// ShardSecret holds the shard servers' ca.crt and token.
	ShardSecret types.NamespacedName
	// RegistryNamespace holds the shard-server Leases.
	RegistryNamespace string
	MayastorNamespace string
	// OrphanGrace: unreferenced shards younger than this are kept (a write
	// in flight); default 10m. GCInterval: how often orphans are collected
	// per volume; default 5m.
	OrphanGrace time.Duration
	GCInterval  time.Duration
	// StripeEventWindow: a change of a volume's stripe counts is reconciled
	// this long after the first change, so the stripe events of one volume
	// within the window cost one reconcile and one status write (default 1s).
	StripeEventWindow time.Duration
	// Store, when set, is used instead of one built from ShardSecret.
	Store *stripe.Store
	// CredentialsReload: how often ShardSecret is re-read once the store
	// exists (default 30s), so a rotation needs no restart.
	CredentialsReload time.Duration
	// Stripes, when set, is the stripe index the status counts come from
	// (the manager's shared one, stripeindex.For, when nil).
	Stripes *stripeindex.StripeIndex
	// Orphans, when set, collects orphaned shards instead of the store.
	Orphans OrphanCollector
	// Now is the clock (time.Now when nil).
	Now func() time.Time

	counts   *volumeStripeCounts
	mu       sync.Mutex
	lastGC   map[string]time.Time // per volume: when orphans were last collected
	reloader *shardserver.ClientReloader
	direct   client.Client // uncached: stripe writes use resourceVersion preconditions
	writers  *fence.WriterWatch
}

// exportPoll is how often a deleting volume's writer Lease is read while an
// export still holds it (it releases within a renewal period).
const exportPoll = time.Second

// SetupWithManager registers the reconciler.
func (r *ECVolumeReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.OrphanGrace == 0 {
		r.OrphanGrace = 10 * time.Minute
	}
	if r.GCInterval == 0 {
		r.GCInterval = 5 * time.Minute
	}
	if r.StripeEventWindow == 0 {
		r.StripeEventWindow = time.Second
	}
	if r.ShardSecret.Name == "" {
		r.ShardSecret = types.NamespacedName{Namespace: registry.DefaultNamespace, Name: registry.DefaultShardSecret}
	}
	if r.APIReader == nil {
		r.APIReader = mgr.GetAPIReader()
	}
	direct, err := client.New(mgr.GetConfig(), client.Options{Scheme: mgr.GetScheme(), Mapper: mgr.GetRESTMapper()})
	if err != nil {
		return fmt.Errorf("ECVolume reconciler: uncached client: %w", err)
	}
	r.direct = direct
	if r.Stripes == nil {
		if r.Stripes, err = stripeindex.For(context.Background(), mgr.GetCache()); err != nil {
			return fmt.Errorf("ECVolume reconciler: stripe counts: %w", err)
		}
	}
	r.counts = newVolumeStripeCounts(r.Stripes, r.StripeEventWindow)
	// Status counts the volume's stripes and follows its policy, so a change
	// of a volume's stripe counts (told by the index once counted, per
	// volume and window, not per stripe) and policy changes wake the volume.
	// A volume's own status writes do not wake it (volumeUpdateMatters):
	// during a destage each write would otherwise wake it at once, find the
	// counts changed again and write again, one write per round trip.
	if err := ctrl.NewControllerManagedBy(mgr).
		For(&storagev1.ECVolume{}, builder.WithPredicates(predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool {
			o, ok1 := e.ObjectOld.(*storagev1.ECVolume)
			n, ok2 := e.ObjectNew.(*storagev1.ECVolume)
			return !ok1 || !ok2 || volumeUpdateMatters(o, n)
		}})).
		WatchesRawSource(r.counts.source()).
		Watches(&storagev1.ErasureCodingPolicy{}, handler.EnqueueRequestsFromMapFunc(r.volumesOfPolicy)).
		Named("ecvolume").
		Complete(r); err != nil {
		return err
	}
	return (&volumeOrphanCollector{r: r}).setup(mgr)
}

// volumesOfPolicy maps an ErasureCodingPolicy event to the ECVolumes that
// reference it.
func (r *ECVolumeReconciler) volumesOfPolicy(ctx context.Context, o client.Object) []reconcile.Request {
	var vols storagev1.ECVolumeList
	if err := r.Client.List(ctx, &vols); err != nil {
		log.FromContext(ctx).Error(err, "list ECVolumes for policy event", "policy", o.GetName())
		return nil
	}
	var out []reconcile.Request
	for i := range vols.Items {
		if vols.Items[i].Spec.PolicyRef == o.GetName() {
			out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Name: vols.Items[i].Name}})
		}
	}
	return out
}

// writerWatch judges the volumes' writer Leases (in the registry namespace,
// where exports keep them), read uncached.
func (r *ECVolumeReconciler) writerWatch() *fence.WriterWatch {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.writers == nil {
		ns := r.RegistryNamespace
		if ns == "" {
			ns = registry.DefaultNamespace
		}
		r.writers = &fence.WriterWatch{Reader: r.APIReader, Namespace: ns}
	}
	return r.writers
}

// store returns the stripe store, building it from the Secret on first use
// (the Secret may appear after the operator starts).
func (r *ECVolumeReconciler) store(ctx context.Context) (*stripe.Store, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.Store != nil {
		if r.reloader != nil {
			r.reloader.Poke(ctx, time.Minute)
		}
		return r.Store, nil
	}
	cc, err := registry.ClientConfigFromSecret(ctx, r.APIReader, r.ShardSecret.Namespace, r.ShardSecret.Name)
	if err != nil {
		return nil, err
	}
	sc, err := shardserver.NewClient(cc)
	if err != nil {
		return nil, err
	}
	r.reloader = newSecretReloader(sc, r.APIReader, r.ShardSecret.Namespace, r.ShardSecret.Name, r.CredentialsReload)
	r.Store = &stripe.Store{Client: r.direct, Shards: sc, Registry: &registry.Lookup{Client: r.APIReader, Namespace: r.RegistryNamespace}, MayastorNamespace: r.MayastorNamespace, Events: r.Recorder}
	return r.Store, nil
}

// stripeCounts returns the per-volume counts (built in SetupWithManager, or
// on first use from Stripes for a reconciler used without a manager).
func (r *ECVolumeReconciler) stripeCounts() (*volumeStripeCounts, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.counts == nil {
		if r.Stripes == nil {
			return nil, fmt.Errorf("ECVolume reconciler: no stripe index to count the volume's stripes from")
		}
		r.counts = newVolumeStripeCounts(r.Stripes, r.StripeEventWindow)
	}
	return r.counts, nil
}

// OrphanCollector frees the shards of a volume that no ECStripe references
// (stripe.Store).
type OrphanCollector interface {
	CollectOrphans(ctx context.Context, volume string, grace time.Duration) (stripe.GCReport, error)
}

func (r *ECVolumeReconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// conflictRetry is how soon a status write that lost a conflict is retried.
func (r *ECVolumeReconciler) conflictRetry() time.Duration {
	if r.StripeEventWindow > 0 {
		return r.StripeEventWindow
	}
	return time.Second
}

// volumeUpdateMatters reports whether an update of an ECVolume can change
// what its reconcile does: its spec (generation), its deletion, its
// finalizers or annotations (the journal pools the finalizer frees). A
// status-only update, the controller's own write or a resync, does not.
func volumeUpdateMatters(old, new *storagev1.ECVolume) bool {
	return old.Generation != new.Generation ||
		old.DeletionTimestamp.IsZero() != new.DeletionTimestamp.IsZero() ||
		!slices.Equal(old.Finalizers, new.Finalizers) ||
		!maps.Equal(old.Annotations, new.Annotations)
}

// markGC records that the volume's orphans are being collected now.
func (r *ECVolumeReconciler) markGC(volume string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.lastGC == nil {
		r.lastGC = map[string]time.Time{}
	}
	r.lastGC[volume] = r.now()
}

func (r *ECVolumeReconciler) forgetGC(volume string) {
	r.mu.Lock()
	delete(r.lastGC, volume)
	r.mu.Unlock()
}

// Reconcile handles one ECVolume.
func (r *ECVolumeReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	vol := &storagev1.ECVolume{}
	if err := r.Client.Get(ctx, req.NamespacedName, vol); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !vol.DeletionTimestamp.IsZero() {
		return r.finalize(ctx, vol)
	}
	if !controllerutil.ContainsFinalizer(vol, storagev1.ECVolumeFinalizer) {
		controllerutil.AddFinalizer(vol, storagev1.ECVolumeFinalizer)
		if err := r.Client.Update(ctx, vol); err != nil {
			return ctrl.Result{}, fmt.Errorf("add finalizer to ECVolume %s: %w", vol.Name, err)
		}
	}

	ev := volumeEvidence{vol: vol}
	pol := &storagev1.ErasureCodingPolicy{}
	if err := r.Client.Get(ctx, client.ObjectKey{Name: vol.Spec.PolicyRef}, pol); err == nil {
		ev.policy = pol
	} else if !apierrors.IsNotFound(err) {
		return ctrl.Result{}, err
	}
	counts, err := r.stripeCounts()
	if err != nil {
		return ctrl.Result{}, err
	}
	if !counts.synced() {
		// Counts before the informer's initial list are partial: never publish them.
		return ctrl.Result{RequeueAfter: time.Second}, nil
	}
	ev.stripes = counts.counts(vol.Name)
	// One status write per reconcile, and none when nothing changed.
	if st := computeVolumeStatus(ev); !volumeStatusEqual(&vol.Status, &st) {
		vol.Status = st
		if err := r.Client.Status().Update(ctx, vol); err != nil {
			if apierrors.IsConflict(err) {
				// The cache has not seen the last write yet: try again one
				// window later (merged with the requests of that window)
				// rather than with the queue's millisecond backoff.
				return ctrl.Result{RequeueAfter: r.conflictRetry()}, nil
			}
			return ctrl.Result{}, fmt.Errorf("update ECVolume %s status: %w", vol.Name, err)
		}
	}
	// Nothing to requeue for: the index, the volume and its policy wake it.
	return ctrl.Result{}, nil
}

func (r *ECVolumeReconciler) finalize(ctx context.Context, vol *storagev1.ECVolume) (ctrl.Result, error) {
	if !controllerutil.ContainsFinalizer(vol, storagev1.ECVolumeFinalizer) {
		return ctrl.Result{}, nil
	}
	if vol.Status.Phase != storagev1.ECVolumeDeleting {
		vol.Status.Phase = storagev1.ECVolumeDeleting
		if err := r.Client.Status().Update(ctx, vol); err != nil {
			return ctrl.Result{}, fmt.Errorf("update ECVolume %s status: %w", vol.Name, err)
		}
	}
	// An export still writing would destage stripes and journal records
	// after they were deleted: wait until it stopped (it does at its next
	// Lease renewal, seeing the deletionTimestamp).
	writers := r.writerWatch()
	w, err := writers.WriterGone(ctx, vol.Name)
	if err != nil {
		r.Recorder.Eventf(vol, nil, corev1.EventTypeWarning, "WaitingForExport", "DeleteStripes", "cannot tell whether an export still writes this volume: %v", err)
		return ctrl.Result{RequeueAfter: exportPoll}, nil
	}
	if !w.Gone {
		r.Recorder.Eventf(vol, nil, corev1.EventTypeNormal, "WaitingForExport", "DeleteStripes",
			"export %s (writer epoch %d) still holds the volume's writer Lease %s/%s; its stripes and journal are deleted once it stopped (it stops at its next renewal, or its Lease expires within %s)",
			w.Holder, w.Epoch, writers.Namespace, fence.LeaseName(vol.Name), w.Within.Round(time.Second))
		return ctrl.Result{RequeueAfter: exportPoll}, nil
	}
	st, err := r.store(ctx)
	if err != nil {
		r.Recorder.Eventf(vol, nil, corev1.EventTypeWarning, "ShardServersUnreachable", "DeleteStripes", "cannot free shard space: %v", err)
		return ctrl.Result{RequeueAfter: 30 * time.Second}, nil
	}
	rep, err := st.DeleteVolumeData(ctx, vol.Name)
	if err != nil {
		r.Recorder.Eventf(vol, nil, corev1.EventTypeWarning, "DeleteStripesFailed", "DeleteStripes", "%v", err)
		return ctrl.Result{}, err
	}
	if len(rep.UnreachablePools) > 0 {
		r.Recorder.Eventf(vol, nil, corev1.EventTypeWarning, "ShardSpaceNotFreed", "DeleteStripes", "pools %v have no live shard server: their shards of this volume stay until `couchestor ec gc --volume %s --grace 0s` runs after they return", rep.UnreachablePools, vol.Name)
	}
	r.Recorder.Eventf(vol, nil, corev1.EventTypeNormal, "StripesDeleted", "DeleteStripes", "deleted %d ECStripes and freed %d shards (%d bytes)", rep.Stripes, rep.Shards, rep.FreedBytes)
	r.deleteJournals(ctx, st, vol)
	controllerutil.RemoveFinalizer(vol, storagev1.ECVolumeFinalizer)
	if err := r.Client.Update(ctx, vol); err != nil {
		return ctrl.Result{}, fmt.Errorf("remove finalizer of ECVolume %s: %w", vol.Name, err)
	}
	writers.Forget(vol.Name)
	r.forgetGC(vol.Name)
	return ctrl.Result{}, nil
}

// deleteJournals removes the volume's journal replicas from the shard
// servers named in its journal annotations (current and retired). The
// journal holds nothing the stripes need once the volume is deleted; a pool
// without a live server keeps its replica (reported in an Event), as shards
// on such pools do.
func (r *ECVolumeReconciler) deleteJournals(ctx context.Context, st *stripe.Store, vol *storagev1.ECVolume) {
	var pools []string
	for _, a := range []string{storagev1.ECVolumeAnnotationJournalPools, storagev1.ECVolumeAnnotationJournalPoolsRetired} {
		for _, p := range strings.Split(vol.Annotations[a], ",") {
			if p = strings.TrimSpace(p); p != "" && !slices.Contains(pools, p) {
				pools = append(pools, p)
			}
		}
	}
	if len(pools) == 0 {
		return
	}
	byPool, err := st.Registry.ByPool(ctx)
	if err != nil {
		r.Recorder.Eventf(vol, nil, corev1.EventTypeWarning, "JournalNotDeleted", "DeleteJournal", "cannot list shard servers: %v; journal replicas on %v stay", err, pools)
		return
	}
	var left []string
	for _, p := range pools {
		srv, ok := byPool[p]
		if !ok {
			left = append(left, p+" (no live shard server)")
			continue
		}
		if err := st.Shards.DeleteJournal(ctx, srv.Address, vol.Name); err != nil {
			left = append(left, fmt.Sprintf("%s (%v)", p, err))
		}
	}
	if len(left) > 0 {
		r.Recorder.Eventf(vol, nil, corev1.EventTypeWarning, "JournalNotDeleted", "DeleteJournal", "journal replicas of this volume stay on: %s", strings.Join(left, "; "))
		return
	}
	r.Recorder.Eventf(vol, nil, corev1.EventTypeNormal, "JournalDeleted", "DeleteJournal", "deleted the journal replicas on pools %v", pools)
}
