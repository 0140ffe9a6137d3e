package controllers

import (
	"context"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/pkg/stripeindex"
)

// +kubebuilder:rbac:groups=storage.billyronks.io,resources=erasurecodingpolicies,verbs=get;list;watch
// +kubebuilder:rbac:groups=storage.billyronks.io,resources=erasurecodingpolicies/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=storage.billyronks.io,resources=ecstripes,verbs=get;list;watch
// +kubebuilder:rbac:groups=coordination.k8s.io,namespace=couchestor-system,resources=leases,verbs=get;list;watch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// ShardServerLister lists the live shard servers (registry.Lookup).
type ShardServerLister interface {
	Servers(ctx context.Context) ([]registry.Entry, error)
}

// ErasureCodingPolicyReconciler keeps each ErasureCodingPolicy's status: its
// phase (is the spec valid, can its stripes be placed, is it in use), storage
// efficiency, and the roll-up of its stripes by state, which comes from a
// StripeCounter fed by the ECStripe informer rather than a List per reconcile.
type ErasureCodingPolicyReconciler struct {
	Client   client.Client
	Recorder events.EventRecorder
	// Servers may be nil: placement is then not checked (and the message says so).
	Servers ShardServerLister
	// Counter is created by SetupWithManager when nil.
	Counter *StripeCounter
	// ValidationInterval is how often a policy is re-validated against the
	// registry even when nothing changed (default 30s).
	ValidationInterval time.Duration
	// MinStatusInterval spaces status writes caused by count changes alone
	// (default 1s), so a burst of stripe writes costs one status write.
	MinStatusInterval time.Duration
	Now               func() time.Time

	mu        sync.Mutex
	lastWrite map[string]time.Time
}

func (r *ErasureCodingPolicyReconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// SetupWithManager registers the controller and the stripe counter.
func (r *ErasureCodingPolicyReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.ValidationInterval <= 0 {
		r.ValidationInterval = 30 * time.Second
	}
	if r.MinStatusInterval <= 0 {
		r.MinStatusInterval = time.Second
	}
	r.lastWrite = map[string]time.Time{}
	if r.Counter == nil {
		r.Counter = NewStripeCounter(func(policy string, state storagev1.ECStripeState, delta int64) {
			ecStripesByState.WithLabelValues(policy, string(state)).Add(float64(delta))
		})
		x, err := stripeindex.For(context.Background(), mgr.GetCache())
		if err != nil {
			return fmt.Errorf("stripe counts for the policy roll-up: %w", err)
		}
		r.Counter.Attach(x)
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("erasurecodingpolicy").
		For(&storagev1.ErasureCodingPolicy{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		WatchesRawSource(r.Counter.Source()).
		Complete(r)
}

// Reconcile computes one policy's status and writes it when it changed.
func (r *ErasureCodingPolicyReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	lg := log.FromContext(ctx)
	var pol storagev1.ErasureCodingPolicy
	if err := r.Client.Get(ctx, req.NamespacedName, &pol); err != nil {
		if apierrors.IsNotFound(err) {
			r.mu.Lock()
			delete(r.lastWrite, req.Name)
			r.mu.Unlock()
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, fmt.Errorf("get ErasureCodingPolicy %s: %w", req.Name, err)
	}
	if !r.Counter.Synced() {
		// Counts before the informer's initial list are partial: never publish them.
		return ctrl.Result{RequeueAfter: time.Second}, nil
	}
	ev := policyEvidence{spec: &pol.Spec, counts: r.Counter.Counts(pol.Name), now: r.now(), generation: pol.Generation, prev: pol.Status.Conditions}
	if r.Servers != nil {
		ev.checked = true
		ev.servers, ev.serversErr = r.Servers.Servers(ctx)
	}
	st := computePolicyStatus(ev)

	old := pol.Status
	same := policyStatusEqual(old, st)
	stale := old.LastValidationTime == nil || ev.now.Sub(old.LastValidationTime.Time) >= r.ValidationInterval
	if same && !stale {
		return ctrl.Result{RequeueAfter: r.ValidationInterval - ev.now.Sub(old.LastValidationTime.Time)}, nil
	}
	countsOnly := old.Phase == st.Phase && !stale
	if countsOnly {
		r.mu.Lock()
		last := r.lastWrite[pol.Name]
		r.mu.Unlock()
		if wait := r.MinStatusInterval - ev.now.Sub(last); wait > 0 {
			return ctrl.Result{RequeueAfter: wait}, nil
		}
	}
	base := pol.DeepCopy()
	pol.Status = st
	if err := r.Client.Status().Patch(ctx, &pol, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})); err != nil {
		if apierrors.IsConflict(err) {
			return ctrl.Result{Requeue: true}, nil
		}
		return ctrl.Result{}, fmt.Errorf("write status of ErasureCodingPolicy %s: %w", pol.Name, err)
	}
	r.mu.Lock()
	r.lastWrite[pol.Name] = ev.now
	r.mu.Unlock()
	if old.Phase != st.Phase {
		typ := corev1.EventTypeNormal
		if st.Phase == storagev1.ECPolicyInvalid {
			typ = corev1.EventTypeWarning
		}
		lg.Info("phase changed", "from", old.Phase, "to", st.Phase, "message", st.Message)
		if r.Recorder != nil {
			r.Recorder.Eventf(&pol, nil, typ, "Phase"+string(st.Phase), "Validate", "phase %s → %s: %s", orNone(string(old.Phase)), st.Phase, st.Message)
		}
	}
	return ctrl.Result{RequeueAfter: r.ValidationInterval}, nil
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}
