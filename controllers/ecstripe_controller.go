package controllers

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/diskpool"
	"github.com/billyronks/couchestor/pkg/ecstate"
	"github.com/billyronks/couchestor/pkg/erasure"
	"github.com/billyronks/couchestor/pkg/stripeindex"
)

// +kubebuilder:rbac:groups=storage.billyronks.io,resources=ecstripes,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=storage.billyronks.io,resources=ecstripes/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=storage.billyronks.io,resources=erasurecodingpolicies,verbs=get;list;watch
// +kubebuilder:rbac:groups=openebs.io,resources=diskpools,verbs=get;list;watch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// IndexECStripeByPool indexes ECStripes by the pools in spec.shardLocations,
// so a pool's change reaches exactly the stripes with a shard on it.
const IndexECStripeByPool = "spec.shardLocations.poolName"

// ShardVerifier reads shards of a stripe at their recorded locations and
// checks them against the recorded checksums (pkg/scrub implements it over
// the shard servers).
type ShardVerifier interface {
	Verify(ctx context.Context, s *storagev1.ECStripe, shards []int) map[int]ecstate.Finding
}

// Rebuilder runs rebuilds off the reconcile path (pkg/rebuild).
type Rebuilder interface {
	// StartRebuild begins rebuilding shards of s, or resumes the rebuild whose
	// intent s carries. It returns at once; false means no slot is free now.
	StartRebuild(s *storagev1.ECStripe, shards []int) bool
	// Progress returns the shards being rebuilt and the progress (0-100) of
	// a rebuild in flight for the stripe.
	Progress(stripe string) (shards []int, percent int32, active bool)
	// Intent returns the shards a persisted rebuild intent on s names.
	Intent(s *storagev1.ECStripe) ([]int, bool)
}

// ECStripeReconciler keeps each ECStripe's status honest: shard health from
// the pools' verdicts (DiskPool state, registry, probes, with the down-out
// delay), reads and scrub findings; the lifecycle state per the policy's
// codec; Events on transitions; rebuilds handed to the Rebuilder; and
// reports of stripes that raced past admission with overlapping LBA ranges
// or repeated stripeIds (Event + metric; never deleted).
type ECStripeReconciler struct {
	Client   client.Client
	Recorder events.EventRecorder
	Pools    *PoolMonitor
	// Verifier may be nil: the pools' state is then the only evidence.
	Verifier ShardVerifier
	// Rebuilder may be nil: stripes stay Degraded.
	Rebuilder Rebuilder
	// Neighbours answers overlap questions; SetupWithManager uses the
	// manager's (stripeindex.For, shared with the webhooks) when nil.
	Neighbours *stripeindex.StripeIndex
	Now        func() time.Time
	// WritingGrace is how long a stripe in Writing, or without status, is
	// left to its writer before the controller adopts it (default
	// ecstate.DefaultWritingGrace).
	WritingGrace time.Duration
	// MaxConcurrentReconciles (default 2).
	MaxConcurrentReconciles int

	mu       sync.Mutex
	queue    workqueue.TypedRateLimitingInterface[reconcile.Request]
	findings map[string]map[int]ecstate.Finding
	overlaps map[string]string // stripe → the stripe it collides with, as reported
	codecs   map[string]erasure.Codec
}

func (r *ECStripeReconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// Report hands read or scrub findings for a stripe to the controller and
// queues the stripe (pkg/scrub's sink).
func (r *ECStripeReconciler) Report(stripe string, f map[int]ecstate.Finding) {
	r.mu.Lock()
	if r.findings == nil {
		r.findings = map[string]map[int]ecstate.Finding{}
	}
	if r.findings[stripe] == nil {
		r.findings[stripe] = map[int]ecstate.Finding{}
	}
	for i, x := range f {
		r.findings[stripe][i] = x
	}
	q := r.queue
	r.mu.Unlock()
	if q != nil {
		q.Add(reconcile.Request{NamespacedName: types.NamespacedName{Name: stripe}})
	}
}

// Enqueue asks for a stripe to be reconciled (e.g. a rebuild finished).
func (r *ECStripeReconciler) Enqueue(stripe string) {
	r.mu.Lock()
	q := r.queue
	r.mu.Unlock()
	if q != nil {
		q.Add(reconcile.Request{NamespacedName: types.NamespacedName{Name: stripe}})
	}
}

func (r *ECStripeReconciler) takeFindings(stripe string) map[int]ecstate.Finding {
	r.mu.Lock()
	defer r.mu.Unlock()
	f := r.findings[stripe]
	delete(r.findings, stripe)
	return f
}

// returnFindings puts findings taken for a decision that was never written
// back, so the retry decides with them. A finding reported since (same
// shard) is newer and wins.
func (r *ECStripeReconciler) returnFindings(stripe string, f map[int]ecstate.Finding) {
	if len(f) == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.findings == nil {
		r.findings = map[string]map[int]ecstate.Finding{}
	}
	cur := r.findings[stripe]
	if cur == nil {
		cur = make(map[int]ecstate.Finding, len(f))
		r.findings[stripe] = cur
	}
	for i, x := range f {
		if _, newer := cur[i]; !newer {
			cur[i] = x
		}
	}
}

// SetupWithManager registers the controller, its pool index, the pool
// monitor and the overlap index.
func (r *ECStripeReconciler) SetupWithManager(mgr ctrl.Manager) error {
	ctx := context.Background()
	r.findings = map[string]map[int]ecstate.Finding{}
	r.overlaps = map[string]string{}
	r.codecs = map[string]erasure.Codec{}
	if r.Pools == nil {
		return fmt.Errorf("ECStripe controller: Pools (the pool monitor) must be set")
	}
	if err := stripeindex.RegisterFieldIndexes(ctx, mgr.GetFieldIndexer()); err != nil {
		return err
	}
	if err := mgr.GetFieldIndexer().IndexField(ctx, &storagev1.ECStripe{}, IndexECStripeByPool, func(o client.Object) []string {
		s := o.(*storagev1.ECStripe)
		out := make([]string, 0, len(s.Spec.ShardLocations))
		seen := map[string]bool{}
		for _, l := range s.Spec.ShardLocations {
			if !seen[l.PoolName] {
				seen[l.PoolName] = true
				out = append(out, l.PoolName)
			}
		}
		return out
	}); err != nil {
		return fmt.Errorf("index ECStripes by pool: %w", err)
	}
	if r.Neighbours == nil {
		x, err := stripeindex.For(ctx, mgr.GetCache())
		if err != nil {
			return err
		}
		r.Neighbours = x
	}
	r.Pools.addOnChange(func(pool string) { r.enqueuePool(context.Background(), pool) })
	if err := mgr.Add(r.Pools); err != nil {
		return err
	}
	n := r.MaxConcurrentReconciles
	if n <= 0 {
		n = 2
	}
	c, err := ctrl.NewControllerManagedBy(mgr).
		Named("ecstripe").
		For(&storagev1.ECStripe{}, builder.WithPredicates(predicate.Or[client.Object](
			predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}, stateChanged))).
		WatchesRawSource(source.Func(func(ctx context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) error {
			r.mu.Lock()
			r.queue = q
			r.mu.Unlock()
			return nil
		})).
		WithOptions(controller.Options{MaxConcurrentReconciles: n}).
		Build(r)
	if err != nil {
		return err
	}
	// DiskPool events only speed up a verdict (the pool monitor sweeps on
	// its own): watched once served, at whichever version, never awaited.
	pools := OptionalWatch{Group: "openebs.io", Kind: "DiskPool", Versions: diskpool.Versions, Namespace: r.Pools.MayastorNamespace}
	return addOptionalWatches(mgr, "ecstripe", c, []OptionalWatch{pools}, handler.EnqueueRequestsFromMapFunc(r.diskPoolChanged), 0)
}

// stateChanged passes status.state changes: a writer hands a stripe over by
// moving it out of Writing, and a status write of another actor must be re-judged.
var stateChanged = predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool {
	o, ok1 := e.ObjectOld.(*storagev1.ECStripe)
	n, ok2 := e.ObjectNew.(*storagev1.ECStripe)
	return ok1 && ok2 && o.Status.State != n.Status.State
}}

// diskPoolChanged re-evaluates the pool; only a changed verdict queues its stripes.
func (r *ECStripeReconciler) diskPoolChanged(ctx context.Context, o client.Object) []reconcile.Request {
	if o.GetNamespace() != r.Pools.MayastorNamespace || !r.Pools.Refresh(ctx, o.GetName()) {
		return nil
	}
	return r.stripesOnPool(ctx, o.GetName())
}

func (r *ECStripeReconciler) enqueuePool(ctx context.Context, pool string) {
	r.mu.Lock()
	q := r.queue
	r.mu.Unlock()
	if q == nil {
		return
	}
	for _, req := range r.stripesOnPool(ctx, pool) {
		q.Add(req)
	}
}

func (r *ECStripeReconciler) stripesOnPool(ctx context.Context, pool string) []reconcile.Request {
	var list storagev1.ECStripeList
	if err := r.Client.List(ctx, &list, client.MatchingFields{IndexECStripeByPool: pool}, client.UnsafeDisableDeepCopy); err != nil {
		log.FromContext(ctx).Error(err, "list stripes on pool", "pool", pool)
		return nil
	}
	out := make([]reconcile.Request, len(list.Items))
	for i := range list.Items {
		out[i] = reconcile.Request{NamespacedName: types.NamespacedName{Name: list.Items[i].Name}}
	}
	return out
}

func (r *ECStripeReconciler) codec(pol *storagev1.ErasureCodingPolicy) (erasure.Codec, error) {
	spec := pol.Spec.DeepCopy()
	storagev1.DefaultErasureCodingPolicySpec(spec)
	k, m := int(*spec.DataShards), int(*spec.ParityShards)
	key := fmt.Sprintf("%s/%d/%d", spec.Algorithm, k, m)
	r.mu.Lock()
	c := r.codecs[key]
	r.mu.Unlock()
	if c != nil {
		return c, nil
	}
	c, err := erasure.NewCodec(erasure.Algorithm(spec.Algorithm), k, m)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	r.codecs[key] = c
	r.mu.Unlock()
	return c, nil
}

// Reconcile decides one stripe's health and writes its status when it changed.
func (r *ECStripeReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var s storagev1.ECStripe
	if err := r.Client.Get(ctx, req.NamespacedName, &s); err != nil {
		if apierrors.IsNotFound(err) {
			r.forget(req.Name)
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, fmt.Errorf("get ECStripe %s: %w", req.Name, err)
	}
	r.reportCollisions(&s)

	adopt := false
	if s.Status.State == "" || s.Status.State == storagev1.StripeWriting {
		now := r.now()
		if owned, until := ecstate.WriterOwns(s.Status.State, writingSince(&s), r.writingGrace(), now); owned {
			// The writer's: it writes the status once the shards are durable.
			return ctrl.Result{RequeueAfter: until.Sub(now) + 10*time.Millisecond}, nil
		}
		// The writer failed between its shards and the status (or died):
		// the stripe is decided from the evidence, as any other.
		adopt = true
	}
	var pol storagev1.ErasureCodingPolicy
	if err := r.Client.Get(ctx, client.ObjectKey{Name: s.Spec.PolicyRef}, &pol); err != nil {
		return ctrl.Result{RequeueAfter: time.Minute}, fmt.Errorf("ECStripe %s: get ErasureCodingPolicy %q (spec.policyRef): %w", s.Name, s.Spec.PolicyRef, err)
	}
	codec, err := r.codec(&pol)
	if err != nil {
		return ctrl.Result{}, fmt.Errorf("ECStripe %s: codec of ErasureCodingPolicy %s: %w", s.Name, pol.Name, err)
	}
	res := r.decide(ctx, &s, codec, adopt)
	if err := r.writeStatus(ctx, &s, res); err != nil {
		// The reported findings are only recorded once the status is: keep
		// them for the retry (a lost corruption finding would stay hidden
		// until the next scrub).
		r.returnFindings(s.Name, res.reported)
		if apierrors.IsConflict(err) {
			return ctrl.Result{RequeueAfter: 100 * time.Millisecond}, nil
		}
		return ctrl.Result{}, err
	}
	r.announce(&s, res)
	if res.decision.NeedsRebuild && r.Rebuilder != nil && !res.rebuildActive {
		if !r.Rebuilder.StartRebuild(&s, res.decision.Repairable) {
			return ctrl.Result{RequeueAfter: 5 * time.Second}, nil
		}
	}
	return ctrl.Result{RequeueAfter: res.recheck}, nil
}

func (r *ECStripeReconciler) forget(name string) {
	r.mu.Lock()
	delete(r.findings, name)
	if _, ok := r.overlaps[name]; ok {
		delete(r.overlaps, name)
		ecStripeOverlaps.Set(float64(len(r.overlaps)))
	}
	r.mu.Unlock()
}

// reportCollisions reports (once per pair) a stripe whose range overlaps, or
// whose stripeId repeats, another stripe of its volume: only a race between
// two admissions can produce one. Neither is deleted: which one holds the
// volume's data is for a human (or `ec recover`) to decide.
func (r *ECStripeReconciler) reportCollisions(s *storagev1.ECStripe) {
	if r.Neighbours == nil {
		return
	}
	var other storagev1.StripeRef
	var what string
	if o, found := r.Neighbours.Overlapping(s.Spec.VolumeRef, s.Spec.LbaRange.StartLba, s.Spec.LbaRange.EndLba, s.Name); found {
		other, what = o, fmt.Sprintf("LBA range [%d, %d) overlaps [%d, %d) of ECStripe %s", s.Spec.LbaRange.StartLba, s.Spec.LbaRange.EndLba, o.LbaRange.StartLba, o.LbaRange.EndLba, o.Name)
	} else if o, found := r.Neighbours.StripeWithID(s.Spec.VolumeRef, s.Spec.StripeID, s.Name); found {
		other, what = o, fmt.Sprintf("stripeId %d is also held by ECStripe %s", s.Spec.StripeID, o.Name)
	}
	r.mu.Lock()
	prev, had := r.overlaps[s.Name]
	switch {
	case other.Name == "":
		delete(r.overlaps, s.Name)
	default:
		r.overlaps[s.Name] = other.Name
	}
	n := len(r.overlaps)
	r.mu.Unlock()
	ecStripeOverlaps.Set(float64(n))
	if other.Name == "" || (had && prev == other.Name) {
		return
	}
	ecStripeOverlapsDetected.Inc()
	// The other stripe may have been judged before this one was indexed.
	r.Enqueue(other.Name)
	r.event(s, corev1.EventTypeWarning, "StripeCollision", "Detect",
		"volume %s: %s; both passed admission in a race. Neither stripe is deleted: check which holds the volume's data (couchestor ec recover compares shard headers)", s.Spec.VolumeRef, what)
}

type stripeResult struct {
	// reported are the findings Report handed in that this decision took:
	// they go back when its status write fails.
	reported      map[int]ecstate.Finding
	shards        []storagev1.ShardHealth
	decision      ecstate.Decision
	rebuildActive bool
	progress      *int32
	verifiedAt    *time.Time
	modifiedAt    *time.Time
	recheck       time.Duration
}

func (r *ECStripeReconciler) writingGrace() time.Duration {
	if r.WritingGrace > 0 {
		return r.WritingGrace
	}
	return ecstate.DefaultWritingGrace
}

// writingSince is when a stripe's writer took it: when it entered Writing
// (the writer sets lastModifiedTime then), else when it was created.
func writingSince(s *storagev1.ECStripe) time.Time {
	if s.Status.State == storagev1.StripeWriting && s.Status.LastModifiedTime != nil {
		return s.Status.LastModifiedTime.Time
	}
	return s.CreationTimestamp.Time
}

// decide judges the stripe's shards and state. adopt: the stripe was left in
// Writing or without status; its recorded shard health (if any) describes an
// earlier version, so every shard is judged afresh and read when it can be.
func (r *ECStripeReconciler) decide(ctx context.Context, s *storagev1.ECStripe, codec erasure.Codec, adopt bool) stripeResult {
	now := r.now()
	var res stripeResult
	rebuilding := map[int]bool{}
	if r.Rebuilder != nil {
		if shards, pct, active := r.Rebuilder.Progress(s.Name); active {
			res.rebuildActive = true
			res.progress = ptr.To(pct)
			for _, i := range shards {
				rebuilding[i] = true
			}
		} else if shards, ok := r.Rebuilder.Intent(s); ok {
			// A persisted intent without a rebuild in flight: an operator
			// restart interrupted it. Resume it.
			if r.Rebuilder.StartRebuild(s, shards) {
				res.rebuildActive = true
				res.progress = ptr.To(int32(0))
				for _, i := range shards {
					rebuilding[i] = true
				}
			}
		}
	}
	prev := map[int]*storagev1.ShardHealth{}
	for i := range s.Status.ShardHealth {
		if !adopt {
			prev[int(s.Status.ShardHealth[i].ShardIndex)] = &s.Status.ShardHealth[i]
		}
	}
	res.reported = r.takeFindings(s.Name)
	findings := make(map[int]ecstate.Finding, len(res.reported))
	for i, f := range res.reported {
		findings[i] = f
	}
	verdicts := map[int]ecstate.PoolVerdict{}
	var verify []int
	for _, l := range s.Spec.ShardLocations {
		i := int(l.ShardIndex)
		verdicts[i] = r.Pools.Verdict(ctx, l.PoolName)
		p := prev[i]
		if _, have := findings[i]; have || rebuilding[i] || verdicts[i].State != ecstate.PoolUp {
			continue
		}
		if adopt {
			verify = append(verify, i) // nothing is known of this version
			continue
		}
		if p == nil {
			continue
		}
		if p.State == storagev1.ShardMissing || p.State == storagev1.ShardCorrupted || p.State == storagev1.ShardRebuilding {
			// The shard may be back (pool returned, rebuild finished): only a
			// read that passes the checksum says so.
			verify = append(verify, i)
		}
	}
	if r.Verifier != nil && len(verify) > 0 {
		for i, f := range r.Verifier.Verify(ctx, s, verify) {
			findings[i] = f
		}
	}
	var minOut time.Time
	for _, l := range s.Spec.ShardLocations {
		i := int(l.ShardIndex)
		h := ecstate.ShardHealthOf(ecstate.ShardEvidence{
			Index: i, Pool: verdicts[i], Finding: findings[i], Rebuilding: rebuilding[i], Prev: prev[i],
			PoolIsEvidence: r.Verifier == nil,
		})
		res.shards = append(res.shards, h)
		if f := findings[i]; f.Kind == ecstate.FindingVerified && h.State == storagev1.ShardHealthy {
			if res.verifiedAt == nil || f.At.After(*res.verifiedAt) {
				t := f.At
				res.verifiedAt = &t
			}
		}
		if f := findings[i]; f.Kind == ecstate.FindingVerified && f.Detail == ecstate.DetailRebuilt {
			t := f.At
			res.modifiedAt = &t
		}
		if f := findings[i]; f.Kind == ecstate.FindingCorrupt || f.Kind == ecstate.FindingNotFound {
			ecScrubFindings.WithLabelValues(string(f.Kind)).Inc()
		}
		if v := verdicts[i]; v.State == ecstate.PoolSuspect && (minOut.IsZero() || v.OutAt.Before(minOut)) {
			minOut = v.OutAt
		}
	}
	sort.Slice(res.shards, func(a, b int) bool { return res.shards[a].ShardIndex < res.shards[b].ShardIndex })
	k := 0
	for _, l := range s.Spec.ShardLocations {
		if l.IsDataShard {
			k++
		}
	}
	res.decision = ecstate.EvaluateStripe(ecstate.StripeInput{
		Prev: s.Status.State, Shards: res.shards, DataShards: k, Codec: codec, RebuildActive: res.rebuildActive, Adopt: adopt,
	})
	switch {
	case !minOut.IsZero():
		// Re-decide the moment a suspect pool's delay runs out.
		res.recheck = minOut.Sub(now) + 10*time.Millisecond
	case res.decision.State == storagev1.StripeFailed || len(res.decision.Lost) > 0:
		res.recheck = 30 * time.Second
	}
	if res.recheck < 0 {
		res.recheck = 10 * time.Millisecond
	}
	return res
}

// writeStatus is the reconcile's one status write, skipped when the computed
// status equals the stored one.
func (r *ECStripeReconciler) writeStatus(ctx context.Context, s *storagev1.ECStripe, res stripeResult) error {
	base := s.DeepCopy()
	s.Status = computeStripeStatus(base.Status, res)
	if stripeStatusEqual(&base.Status, &s.Status) {
		return nil
	}
	if err := r.Client.Status().Patch(ctx, s, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})); err != nil {
		return fmt.Errorf("write status of ECStripe %s: %w", s.Name, err)
	}
	return nil
}

func (r *ECStripeReconciler) announce(s *storagev1.ECStripe, res stripeResult) {
	d := res.decision
	if d.Transition == ecstate.TransitionNone {
		return
	}
	ecStripeTransitions.WithLabelValues(string(d.Transition)).Inc()
	typ := corev1.EventTypeNormal
	switch d.Transition {
	case ecstate.TransitionFailed, ecstate.TransitionDegraded:
		typ = corev1.EventTypeWarning
	}
	r.event(s, typ, "Stripe"+string(d.Transition), "Evaluate", "stripe %s of volume %s is %s: %d of %d shards healthy, lost %v%s",
		s.Name, s.Spec.VolumeRef, d.State, d.HealthyShards, len(s.Spec.ShardLocations), d.Lost, transitionNote(d.Transition))
}

func transitionNote(t ecstate.Transition) string {
	switch t {
	case ecstate.TransitionFailed:
		return "; the loss pattern is not decodable: reads fail until shards come back (nothing is overwritten)"
	case ecstate.TransitionRecovered:
		return "; shards came back and passed their checksums: the stripe is decodable again"
	}
	return ""
}

func (r *ECStripeReconciler) event(s *storagev1.ECStripe, typ, reason, action, note string, args ...any) {
	if r.Recorder != nil {
		r.Recorder.Eventf(s, nil, typ, reason, action, note, args...)
	}
}
