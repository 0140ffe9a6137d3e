package helmhybrid

import (
	"context"
	"fmt"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	dataplanev1alpha1 "github.com/billyronks/couchestor/apis/dataplane/v1alpha1"
	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/pkg/shardrollout"
)

// The data-plane chart's shard-server StatefulSets use updateStrategy
// OnDelete: a changed DataPlane (or chart) changes their template, and the
// ShardServerRollout below restarts their pods one at a time under the rule
// of pkg/shardrollout. It owns one condition of the DataPlane's status,
// ShardServersUpToDate, and the rollout's Events; the Helm reconciler keeps
// every condition type it does not set.
//
// +kubebuilder:rbac:groups="",namespace=couchestor-system,resources=pods,verbs=get;list;watch;delete

// ConditionShardServersUpToDate is the rollout's condition type.
const ConditionShardServersUpToDate = "ShardServersUpToDate"

// Chart labels of the shard-server objects (couchestor-dataplane's
// dataplane.selectorLabels; the instance is the DataPlane's name).
const (
	labelName      = "app.kubernetes.io/name"
	labelInstance  = "app.kubernetes.io/instance"
	labelComponent = "app.kubernetes.io/component"
	dataPlaneChart = "couchestor-dataplane"
	shardComponent = "shard-server"
)

// rolloutPoll re-evaluates a rollout in progress even without an event (a
// Lease expiring is no event).
const rolloutPoll = 5 * time.Second

// ShardServerRollout restarts a DataPlane's outdated shard-server pods one
// at a time (see pkg/shardrollout).
type ShardServerRollout struct {
	Client client.Client
	// Reader reads the shard-server pods and Leases from the API server,
	// not the cache: right after this controller deleted a pod, the cache
	// may still show it Ready and registered, and the rule would then
	// restart a second server (two down at once). Nil: Client.
	Reader   client.Reader
	Recorder record.EventRecorder
	Now      func() time.Time
}

// SetupWithManager watches DataPlanes and, mapped to their DataPlane, the
// shard-server StatefulSets, their pods and the shard-server Leases.
func (r *ShardServerRollout) SetupWithManager(mgr ctrl.Manager) error {
	toDataPlane := handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
		l := o.GetLabels()
		if l[labelName] != dataPlaneChart || l[labelComponent] != shardComponent || l[labelInstance] == "" {
			return nil
		}
		return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: o.GetNamespace(), Name: l[labelInstance]}}}
	})
	// A Lease matters when it appears, goes or changes hands, not on
	// every renewal (every 5 s per server).
	leaseToDataPlanes := handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []reconcile.Request {
		var dps dataplanev1alpha1.DataPlaneList
		if err := r.Client.List(ctx, &dps, client.InNamespace(o.GetNamespace())); err != nil {
			return nil
		}
		out := make([]reconcile.Request, 0, len(dps.Items))
		for _, dp := range dps.Items {
			out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&dp)})
		}
		return out
	})
	leaseChanged := predicate.Funcs{
		UpdateFunc: func(e event.UpdateEvent) bool {
			o, ok1 := e.ObjectOld.(*coordinationv1.Lease)
			n, ok2 := e.ObjectNew.(*coordinationv1.Lease)
			if !ok1 || !ok2 {
				return true
			}
			return ptr.Deref(o.Spec.HolderIdentity, "") != ptr.Deref(n.Spec.HolderIdentity, "") ||
				!o.Spec.AcquireTime.Equal(n.Spec.AcquireTime)
		},
	}
	isShardLease := predicate.NewPredicateFuncs(func(o client.Object) bool { return o.GetLabels()[registry.LabelShardServer] == "true" })
	return ctrl.NewControllerManagedBy(mgr).Named("dataplane-shard-rollout").
		For(&dataplanev1alpha1.DataPlane{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&appsv1.StatefulSet{}, toDataPlane).
		Watches(&corev1.Pod{}, toDataPlane).
		Watches(&coordinationv1.Lease{}, leaseToDataPlanes, builder.WithPredicates(isShardLease, leaseChanged)).
		Complete(r)
}

func (r *ShardServerRollout) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// Reconcile gathers the rule's inputs, acts on its decision (at most one
// pod deleted), and records the condition.
func (r *ShardServerRollout) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var dp dataplanev1alpha1.DataPlane
	if err := r.Client.Get(ctx, req.NamespacedName, &dp); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if dp.DeletionTimestamp != nil {
		return ctrl.Result{}, nil
	}
	in, ok, err := r.inputs(ctx, &dp)
	if err != nil || !ok {
		return ctrl.Result{}, err
	}
	d := shardrollout.Next(in)
	log := ctrl.LoggerFrom(ctx)
	if d.Action == shardrollout.Restart {
		var p corev1.Pod
		if err := r.Client.Get(ctx, types.NamespacedName{Namespace: dp.Namespace, Name: d.Pod}, &p); err != nil {
			return ctrl.Result{}, fmt.Errorf("DataPlane %s: get shard-server pod %s to restart it: %w", req, d.Pod, err)
		}
		// The UID precondition: never delete a newer pod of the same name
		// than the one the rule judged.
		if err := r.Client.Delete(ctx, &p, client.Preconditions{UID: &p.UID}); err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return ctrl.Result{}, fmt.Errorf("DataPlane %s: restart shard-server pod %s: %w", req, d.Pod, err)
		}
		log.Info("restarting a shard-server pod", "pod", d.Pod, "statefulSet", d.StatefulSet, "reason", d.Reason)
		r.Recorder.Eventf(&dp, corev1.EventTypeNormal, "ShardServerRestart", "%s", d.Reason)
	}
	cond := dataplanev1alpha1.HelmCondition{Type: ConditionShardServersUpToDate, Message: d.Reason}
	switch d.Action {
	case shardrollout.UpToDate:
		cond.Status, cond.Reason = corev1.ConditionTrue, "UpToDate"
	case shardrollout.Restart:
		cond.Status, cond.Reason = corev1.ConditionFalse, "RollingUpdate"
	default:
		cond.Status, cond.Reason = corev1.ConditionFalse, "RolloutWaiting"
	}
	prev := findCondition(dp.Status.Conditions, ConditionShardServersUpToDate)
	if prev == nil || prev.Status != cond.Status || prev.Reason != cond.Reason || prev.Message != cond.Message {
		if d.Action == shardrollout.Wait && (prev == nil || prev.Message != cond.Message) {
			r.Recorder.Eventf(&dp, corev1.EventTypeNormal, "ShardServerRolloutWaiting", "%s", d.Reason)
		}
		if d.Action == shardrollout.UpToDate && prev != nil && prev.Status == corev1.ConditionFalse {
			r.Recorder.Eventf(&dp, corev1.EventTypeNormal, "ShardServersUpToDate", "%s", d.Reason)
		}
		if err := r.setCondition(ctx, &dp, cond); err != nil {
			return ctrl.Result{}, err
		}
	}
	if d.Action == shardrollout.UpToDate {
		return ctrl.Result{}, nil
	}
	return ctrl.Result{RequeueAfter: rolloutPoll}, nil
}

// inputs reads the DataPlane's shard servers; ok is false when there is
// nothing for the rollout to do (no StatefulSet yet, or one that the
// StatefulSet controller rolls itself).
func (r *ShardServerRollout) inputs(ctx context.Context, dp *dataplanev1alpha1.DataPlane) (shardrollout.Input, bool, error) {
	var in shardrollout.Input
	sel := client.MatchingLabels{labelName: dataPlaneChart, labelInstance: dp.Name, labelComponent: shardComponent}
	var stss appsv1.StatefulSetList
	if err := r.Client.List(ctx, &stss, client.InNamespace(dp.Namespace), sel); err != nil {
		return in, false, fmt.Errorf("DataPlane %s/%s: list shard-server StatefulSets: %w", dp.Namespace, dp.Name, err)
	}
	if len(stss.Items) == 0 {
		return in, false, nil
	}
	reader := r.Reader
	if reader == nil {
		reader = r.Client
	}
	var pods corev1.PodList
	if err := reader.List(ctx, &pods, client.InNamespace(dp.Namespace), sel); err != nil {
		return in, false, fmt.Errorf("DataPlane %s/%s: list shard-server pods: %w", dp.Namespace, dp.Name, err)
	}
	var leases coordinationv1.LeaseList
	if err := reader.List(ctx, &leases, client.InNamespace(dp.Namespace), client.MatchingLabels{registry.LabelShardServer: "true"}); err != nil {
		return in, false, fmt.Errorf("DataPlane %s/%s: list shard-server Leases: %w", dp.Namespace, dp.Name, err)
	}
	var vols storagev1.ECVolumeList
	if err := r.Client.List(ctx, &vols); err != nil {
		return in, false, fmt.Errorf("DataPlane %s/%s: list ECVolumes (their journal replicas): %w", dp.Namespace, dp.Name, err)
	}
	now := r.now()
	in.Live = map[string]bool{}
	leaseOf := map[string]*coordinationv1.Lease{}
	for i := range leases.Items {
		l := &leases.Items[i]
		pool := l.Annotations[registry.AnnotationPool]
		if pool == "" || l.Spec.RenewTime == nil {
			continue
		}
		if l.Spec.RenewTime.Add(time.Duration(ptr.Deref(l.Spec.LeaseDurationSeconds, 0)) * time.Second).After(now) {
			in.Live[pool] = true
			leaseOf[pool] = l
		}
	}
	for _, sts := range stss.Items {
		if sts.Spec.UpdateStrategy.Type != appsv1.OnDeleteStatefulSetStrategyType {
			// Rolled by the StatefulSet controller (a chart before OnDelete):
			// deleting pods as well could take two down at once.
			return in, false, nil
		}
		s := shardrollout.Server{
			StatefulSet:    sts.Name,
			Pool:           sts.Labels["couchestor.billyronks.io/pool"],
			UpdateRevision: sts.Status.UpdateRevision,
			Observed:       sts.Status.ObservedGeneration >= sts.Generation,
		}
		for i := range pods.Items {
			p := &pods.Items[i]
			if ref := metav1.GetControllerOf(p); ref == nil || ref.Kind != "StatefulSet" || ref.Name != sts.Name {
				continue
			}
			s.Pod = &shardrollout.Pod{
				Name:       p.Name,
				Revision:   p.Labels[appsv1.ControllerRevisionHashLabelKey],
				Deleting:   p.DeletionTimestamp != nil,
				Ready:      podReady(p),
				Registered: registeredBy(leaseOf[s.Pool], p),
			}
		}
		in.Servers = append(in.Servers, s)
	}
	for _, v := range vols.Items {
		if pools := v.Annotations[storagev1.ECVolumeAnnotationJournalPools]; pools != "" {
			in.Journals = append(in.Journals, shardrollout.Journal{Volume: v.Name, Pools: strings.Split(pools, ",")})
		}
	}
	return in, true, nil
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// registeredBy: the live Lease l was acquired by pod p itself. The holder
// names the address the pod advertises ($(POD_NAME).<service>...), and a
// recreated pod of the same name must have taken the Lease since it was
// created, not inherited its predecessor's.
func registeredBy(l *coordinationv1.Lease, p *corev1.Pod) bool {
	if l == nil || l.Spec.AcquireTime == nil {
		return false
	}
	h := ptr.Deref(l.Spec.HolderIdentity, "")
	return strings.Contains(h, "/"+p.Name+".") && !l.Spec.AcquireTime.Time.Before(p.CreationTimestamp.Time)
}

func findCondition(cs []dataplanev1alpha1.HelmCondition, t string) *dataplanev1alpha1.HelmCondition {
	for i := range cs {
		if cs[i].Type == t {
			return &cs[i]
		}
	}
	return nil
}

// setCondition writes cond into the DataPlane's status (the time changes
// with the status only); a conflict with the Helm reconciler's own status
// write is retried by the next reconcile.
func (r *ShardServerRollout) setCondition(ctx context.Context, dp *dataplanev1alpha1.DataPlane, cond dataplanev1alpha1.HelmCondition) error {
	upd := dp.DeepCopy()
	cond.LastTransitionTime = metav1.NewTime(r.now())
	if prev := findCondition(upd.Status.Conditions, cond.Type); prev != nil {
		if prev.Status == cond.Status {
			cond.LastTransitionTime = prev.LastTransitionTime
		}
		*prev = cond
	} else {
		upd.Status.Conditions = append(upd.Status.Conditions, cond)
	}
	if err := r.Client.Status().Update(ctx, upd); err != nil {
		return fmt.Errorf("DataPlane %s/%s: set condition %s: %w", dp.Namespace, dp.Name, cond.Type, err)
	}
	return nil
}
