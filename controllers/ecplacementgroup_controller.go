package controllers

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	storagev1alpha1 "github.com/billyronks/couchestor/apis/storage/v1alpha1"
	"github.com/billyronks/couchestor/pkg/diskpool"
	"github.com/billyronks/couchestor/pkg/ecstate"
	"github.com/billyronks/couchestor/pkg/placement"
)

// Groups are created and their status written, never patched or deleted by
// the operator (garbage collection deletes them with their policy, whose
// finalizers subresource an owner reference with blockOwnerDeletion needs).
// +kubebuilder:rbac:groups=storage.billyronks.io,resources=ecplacementgroups,verbs=get;list;watch;create
// +kubebuilder:rbac:groups=storage.billyronks.io,resources=ecplacementgroups/status,verbs=update
// +kubebuilder:rbac:groups=storage.billyronks.io,resources=erasurecodingpolicies/finalizers,verbs=update

// LabelPlacementPolicy is set on every ECPlacementGroup to its policy's name
// (lists from the cache select by it).
const LabelPlacementPolicy = "storage.billyronks.io/ec-policy"

// Condition types and reasons of ECPlacementGroup.
const (
	GroupReady    = "Ready"
	GroupBalanced = "Balanced"
)

// PlacementGroupReconciler keeps the placement groups of every
// ErasureCodingPolicy (README, "At scale: placement groups and a per-server
// stripe index"): it creates the policy's groups with their ideal members,
// records what is known of each member's pool (the PoolMonitor's verdicts,
// with the down-out delay), gives the slot of a member that is Out to the
// next-ranked eligible pool (placement.Next: every other member keeps its
// slot, the epoch moves on, the slot waits for its backfill), and says when
// a better pool has joined (condition Balanced). Rebalancing moves are not
// applied: moving a healthy slot needs its shards copied first, which the
// backfill of the at-scale layout will do. The decisions are in
// pkg/placement; this reconciler reads and writes.
type PlacementGroupReconciler struct {
	Client            client.Client
	Recorder          events.EventRecorder
	MayastorNamespace string
	Servers           ShardServerLister
	Pools             *PoolMonitor
	// GroupCount is the number of groups a policy gets when it has none
	// yet (--ec-placement-groups); a policy's existing groups keep theirs.
	GroupCount int32
	// Resync re-evaluates every policy's groups this often (default 30s),
	// besides the pool monitor's verdict changes.
	Resync time.Duration
	Now    func() time.Time

	queue workqueue.TypedRateLimitingInterface[reconcile.Request]
}

// GroupName is the name of group g of policy.
func GroupName(policy string, g int32) string { return policy + "-pg-" + strconv.Itoa(int(g)) }

func (r *PlacementGroupReconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// SetupWithManager registers the controller.
func (r *PlacementGroupReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.GroupCount < 1 || r.GroupCount > placement.MaxGroups {
		return fmt.Errorf("--ec-placement-groups=%d: must be within [1, %d]", r.GroupCount, placement.MaxGroups)
	}
	if r.Pools != nil {
		r.Pools.addOnChange(func(string) { r.enqueueAll(context.Background()) })
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("ecplacementgroup").
		For(&storagev1.ErasureCodingPolicy{}).
		Owns(&storagev1alpha1.ECPlacementGroup{}).
		WatchesRawSource(source.Func(func(_ context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) error {
			r.queue = q
			return nil
		})).
		Complete(r)
}

// enqueueAll queues every policy (a pool's verdict changed: any group may
// hold it).
func (r *PlacementGroupReconciler) enqueueAll(ctx context.Context) {
	if r.queue == nil {
		return
	}
	var pols storagev1.ErasureCodingPolicyList
	if err := r.Client.List(ctx, &pols); err != nil {
		return
	}
	for _, p := range pols.Items {
		r.queue.Add(reconcile.Request{NamespacedName: types.NamespacedName{Name: p.Name}})
	}
}

func (r *PlacementGroupReconciler) resync() time.Duration {
	if r.Resync > 0 {
		return r.Resync
	}
	return 30 * time.Second
}

// Reconcile brings the groups of one ErasureCodingPolicy up to date.
func (r *PlacementGroupReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var pol storagev1.ErasureCodingPolicy
	if err := r.Client.Get(ctx, req.NamespacedName, &pol); err != nil {
		// Gone: its groups are its dependents (garbage collection).
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if pol.DeletionTimestamp != nil {
		return ctrl.Result{}, nil
	}
	spec := pol.Spec.DeepCopy()
	storagev1.DefaultErasureCodingPolicySpec(spec)
	width := int(*spec.DataShards + *spec.ParityShards)

	var list storagev1alpha1.ECPlacementGroupList
	if err := r.Client.List(ctx, &list, client.MatchingLabels{LabelPlacementPolicy: pol.Name}); err != nil {
		return ctrl.Result{}, err
	}
	count := r.GroupCount
	existing := make(map[int32]*storagev1alpha1.ECPlacementGroup, len(list.Items))
	for i := range list.Items {
		g := &list.Items[i]
		if g.Spec.PolicyRef != pol.Name {
			continue
		}
		if len(existing) == 0 {
			count = g.Spec.GroupCount
		}
		if g.Spec.GroupCount != count || int(g.Spec.Width) != width {
			// Never re-place: a different count or width would move the
			// shards of every stripe.
			r.warn(&pol, "PlacementGroupsInconsistent", "ECPlacementGroup %s has groupCount %d and width %d, other groups of the policy groupCount %d, the policy's dataShards+parityShards %d: the groups are left as they are",
				g.Name, g.Spec.GroupCount, g.Spec.Width, count, width)
			return ctrl.Result{RequeueAfter: r.resync()}, nil
		}
		existing[g.Spec.Group] = g
	}

	pools, err := r.candidates(ctx)
	if err != nil {
		return ctrl.Result{}, err
	}
	now := metav1.NewTime(r.now().UTC().Truncate(time.Second))
	var created, replaced int
	for g := int32(0); g < count; g++ {
		cur := existing[g]
		if cur == nil {
			ok, err := r.create(ctx, &pol, g, count, width, pools, now)
			if err != nil {
				return ctrl.Result{}, err
			}
			if !ok {
				// Not enough pools: said once per policy per pass.
				break
			}
			created++
			continue
		}
		n, err := r.update(ctx, &pol, cur, pools, now)
		if err != nil {
			return ctrl.Result{}, err
		}
		replaced += n
	}
	if created > 0 || replaced > 0 {
		log.FromContext(ctx).Info("placement groups changed", "policy", pol.Name, "created", created, "slotsReplaced", replaced, "groups", count)
	}
	return ctrl.Result{RequeueAfter: r.resync()}, nil
}

// poolInfo is a candidate with what the monitor says of it.
type poolInfo struct {
	pool    placement.Pool
	verdict ecstate.PoolVerdict
}

// candidates are the pools of the registered shard servers, each with its
// verdict; a pool not Up has weight 0.
func (r *PlacementGroupReconciler) candidates(ctx context.Context) (map[string]poolInfo, error) {
	servers, err := r.Servers.Servers(ctx)
	if err != nil {
		return nil, fmt.Errorf("list shard servers: %w", err)
	}
	dps, err := (&diskpool.Reader{Client: r.Client, Namespace: r.MayastorNamespace}).List(ctx)
	if err != nil {
		return nil, err
	}
	capacity := map[string]int64{}
	for _, dp := range dps {
		capacity[dp.Name] = dp.Capacity
	}
	out := make(map[string]poolInfo, len(servers))
	for _, e := range servers {
		v := r.Pools.Verdict(ctx, e.Pool)
		w := uint64(0)
		if v.State == ecstate.PoolUp && capacity[e.Pool] > 0 {
			w = uint64(capacity[e.Pool])
		}
		out[e.Pool] = poolInfo{pool: placement.Pool{Name: e.Pool, Node: e.Node, Weight: w}, verdict: v}
	}
	return out, nil
}

func sortedPools(m map[string]poolInfo) []placement.Pool {
	out := make([]placement.Pool, 0, len(m))
	for _, p := range m {
		out = append(out, p.pool)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// create makes group g with its ideal members; false when there are not
// enough eligible pools (a Warning Event on the policy).
func (r *PlacementGroupReconciler) create(ctx context.Context, pol *storagev1.ErasureCodingPolicy, g, count int32, width int, pools map[string]poolInfo, now metav1.Time) (bool, error) {
	plan, err := placement.Next(pol.Name, uint32(g), width, sortedPools(pools), nil)
	if errors.Is(err, placement.ErrNotEnoughPools) {
		r.warn(pol, "PlacementGroupsWaiting", "placement group %d of %d not created: %v", g, count, err)
		return false, nil
	}
	if err != nil {
		return false, err
	}
	pg := &storagev1alpha1.ECPlacementGroup{
		ObjectMeta: metav1.ObjectMeta{Name: GroupName(pol.Name, g), Labels: map[string]string{LabelPlacementPolicy: pol.Name}},
		Spec:       storagev1alpha1.ECPlacementGroupSpec{PolicyRef: pol.Name, Group: g, GroupCount: count, Width: int32(width)},
	}
	if err := controllerutil.SetControllerReference(pol, pg, r.Client.Scheme()); err != nil {
		return false, err
	}
	if err := r.Client.Create(ctx, pg); err != nil {
		if apierrors.IsAlreadyExists(err) {
			// Created since the list (a cache behind): the next pass updates it.
			return true, nil
		}
		return false, fmt.Errorf("create ECPlacementGroup %s: %w", pg.Name, err)
	}
	pg.Status = groupStatus(pol.Name, uint32(g), width, nil, plan, pools, now)
	pg.Status.Epoch = 1
	if err := r.Client.Status().Update(ctx, pg); err != nil {
		return false, fmt.Errorf("write status of ECPlacementGroup %s: %w", pg.Name, err)
	}
	return true, nil
}

// update records the members' states and replaces Out members; it returns
// how many slots were replaced.
func (r *PlacementGroupReconciler) update(ctx context.Context, pol *storagev1.ErasureCodingPolicy, pg *storagev1alpha1.ECPlacementGroup, pools map[string]poolInfo, now metav1.Time) (int, error) {
	width := int(pg.Spec.Width)
	cur := make([]placement.Member, width)
	for _, m := range pg.Status.Members {
		if m.Slot < 0 || int(m.Slot) >= width || m.Pool == "" {
			continue
		}
		if _, ok := pools[m.Pool]; !ok {
			// No registered shard server: the monitor says for how long
			// (it starts the down-out clock for a pool it never saw). Never
			// a candidate for another slot (weight 0).
			node := m.Node
			if node == "" {
				node = "unknown-node-of-" + m.Pool
			}
			pools[m.Pool] = poolInfo{pool: placement.Pool{Name: m.Pool, Node: node}, verdict: r.Pools.Verdict(ctx, m.Pool)}
		}
		cur[m.Slot] = placement.Member{Pool: m.Pool, Node: m.Node, Health: health(pools[m.Pool].verdict)}
	}
	plan, err := placement.Next(pol.Name, uint32(pg.Spec.Group), width, sortedPools(pools), cur)
	if err != nil {
		return 0, fmt.Errorf("ECPlacementGroup %s: %w", pg.Name, err)
	}
	st := groupStatus(pol.Name, uint32(pg.Spec.Group), width, &pg.Status, plan, pools, now)
	if plan.Changed {
		st.Epoch = pg.Status.Epoch + 1
		for _, rp := range plan.Replaced {
			st.Backfills = setBackfill(st.Backfills, storagev1alpha1.PlacementBackfill{Slot: int32(rp.Slot), From: rp.From, To: rp.To, Epoch: st.Epoch, Since: now})
			// The new member waits for its backfill.
			for i := range st.Members {
				if st.Members[i].Slot == int32(rp.Slot) && st.Members[i].State == storagev1alpha1.MemberUp {
					st.Members[i].State, st.Members[i].Reason, st.Members[i].Since = storagev1alpha1.MemberBackfilling,
						fmt.Sprintf("replaced pool %s (down for the down-out delay); the slot's shards are to be reconstructed here", rp.From), &now
				}
			}
			r.event(pol, corev1.EventTypeWarning, "PlacementMemberReplaced", "group %s slot %d: pool %s was down for the down-out delay, pool %s takes the slot (epoch %d)", pg.Name, rp.Slot, rp.From, rp.To, st.Epoch)
		}
		setGroupConditions(&st, pol.Name, uint32(pg.Spec.Group), width, plan, pools, now)
	}
	if equality.Semantic.DeepEqual(st, pg.Status) {
		return 0, nil
	}
	pg.Status = st
	if err := r.Client.Status().Update(ctx, pg); err != nil {
		return 0, fmt.Errorf("write status of ECPlacementGroup %s: %w", pg.Name, err)
	}
	return len(plan.Replaced), nil
}

// health is what the monitor's verdict says of a member's pool.
func health(v ecstate.PoolVerdict) placement.MemberHealth {
	switch v.State {
	case ecstate.PoolUp:
		return placement.HealthUp
	case ecstate.PoolSuspect:
		return placement.HealthSuspect
	default:
		return placement.HealthOut
	}
}

// groupStatus is the status after plan: members by slot with their states
// (a state's since kept while it holds), the previous epoch and backfills,
// and the conditions.
func groupStatus(policy string, g uint32, width int, prev *storagev1alpha1.ECPlacementGroupStatus, plan placement.Plan, pools map[string]poolInfo, now metav1.Time) storagev1alpha1.ECPlacementGroupStatus {
	var st storagev1alpha1.ECPlacementGroupStatus
	old := map[int32]storagev1alpha1.PlacementMember{}
	if prev != nil {
		st.Epoch = prev.Epoch
		st.Backfills = append([]storagev1alpha1.PlacementBackfill(nil), prev.Backfills...)
		st.Conditions = append([]metav1.Condition(nil), prev.Conditions...)
		for _, m := range prev.Members {
			old[m.Slot] = m
		}
	}
	backfilling := map[int32]bool{}
	for _, b := range st.Backfills {
		backfilling[b.Slot] = true
	}
	for i, name := range plan.Members {
		slot := int32(i)
		m := storagev1alpha1.PlacementMember{Slot: slot, Pool: name, Node: pools[name].pool.Node}
		if m.Node == "" {
			m.Node = old[slot].Node
		}
		v := pools[name].verdict
		switch {
		case v.State == ecstate.PoolSuspect:
			m.State, m.Reason = storagev1alpha1.MemberSuspect, v.Reason
		case v.State != ecstate.PoolUp:
			// Out and no pool to take the slot (plan.Stuck).
			m.State, m.Reason = storagev1alpha1.MemberOut, "down for the down-out delay and no eligible pool can take the slot: "+v.Reason
		case backfilling[slot]:
			m.State, m.Reason = storagev1alpha1.MemberBackfilling, old[slot].Reason
		default:
			m.State = storagev1alpha1.MemberUp
		}
		if o, ok := old[slot]; ok && o.Pool == m.Pool && o.State == m.State && o.Since != nil {
			m.Since = o.Since
			if m.State == storagev1alpha1.MemberBackfilling {
				m.Reason = o.Reason
			}
		} else {
			m.Since = &now
		}
		st.Members = append(st.Members, m)
	}
	st.SharedNodes = plan.SharedNodes
	setGroupConditions(&st, policy, g, width, plan, pools, now)
	return st
}

func setBackfill(bs []storagev1alpha1.PlacementBackfill, b storagev1alpha1.PlacementBackfill) []storagev1alpha1.PlacementBackfill {
	for i := range bs {
		if bs[i].Slot == b.Slot {
			bs[i] = b
			return bs
		}
	}
	bs = append(bs, b)
	sort.Slice(bs, func(i, j int) bool { return bs[i].Slot < bs[j].Slot })
	return bs
}

func setGroupConditions(st *storagev1alpha1.ECPlacementGroupStatus, policy string, g uint32, width int, plan placement.Plan, pools map[string]poolInfo, now metav1.Time) {
	ready := metav1.Condition{Type: GroupReady, Status: metav1.ConditionTrue, Reason: "AllMembersUp", Message: fmt.Sprintf("all %d members are up", width), LastTransitionTime: now}
	var suspect, backfilling []string
	for _, m := range st.Members {
		switch m.State {
		case storagev1alpha1.MemberSuspect, storagev1alpha1.MemberOut:
			suspect = append(suspect, fmt.Sprintf("slot %d (%s)", m.Slot, m.Pool))
		case storagev1alpha1.MemberBackfilling:
			backfilling = append(backfilling, fmt.Sprintf("slot %d (%s)", m.Slot, m.Pool))
		}
	}
	switch {
	case len(plan.Stuck) > 0:
		ready.Status, ready.Reason = metav1.ConditionFalse, "NotEnoughPools"
		ready.Message = fmt.Sprintf("%d member(s) down for the down-out delay and too few eligible pools to replace them: %v", len(plan.Stuck), suspect)
	case len(suspect) > 0:
		ready.Status, ready.Reason = metav1.ConditionFalse, "MembersSuspect"
		ready.Message = fmt.Sprintf("members down for less than the down-out delay: %v", suspect)
	case len(backfilling) > 0:
		ready.Status, ready.Reason = metav1.ConditionFalse, "Backfilling"
		ready.Message = fmt.Sprintf("members that replaced a lost pool wait for their backfill: %v", backfilling)
	}
	meta.SetStatusCondition(&st.Conditions, ready)

	bal := metav1.Condition{Type: GroupBalanced, Status: metav1.ConditionTrue, Reason: "IdealMembers", Message: "the members are the group's ideal pools", LastTransitionTime: now}
	mv, ok, err := placement.Rebalance(policy, g, width, sortedPools(pools), plan.Members)
	switch {
	case err != nil:
		bal.Status, bal.Reason, bal.Message = metav1.ConditionUnknown, "NoIdeal", err.Error()
	case ok:
		bal.Status, bal.Reason = metav1.ConditionFalse, "BetterPoolAvailable"
		bal.Message = fmt.Sprintf("slot %d would move from pool %s to %s; moving a healthy slot needs its shards copied first, which is not built yet", mv.Slot, mv.From, mv.To)
	}
	meta.SetStatusCondition(&st.Conditions, bal)
}

func (r *PlacementGroupReconciler) warn(pol *storagev1.ErasureCodingPolicy, reason, format string, args ...any) {
	r.event(pol, corev1.EventTypeWarning, reason, format, args...)
}

func (r *PlacementGroupReconciler) event(pol *storagev1.ErasureCodingPolicy, typ, reason, format string, args ...any) {
	if r.Recorder != nil {
		r.Recorder.Eventf(pol, nil, typ, reason, "Place", format, args...)
	}
}
