package helmhybrid

import (
	"context"
	"flag"
	"fmt"
	"slices"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	dataplanev1alpha1 "github.com/billyronks/couchestor/apis/dataplane/v1alpha1"
)

// PolicyFlags binds the operator flags of a dataplanev1alpha1.Policy.
type PolicyFlags struct {
	Namespaces, Images, HostPathPrefixes, TolerationKeys string
}

// BindFlags registers the --dataplane-* flags.
func (f *PolicyFlags) BindFlags(fs *flag.FlagSet) {
	fs.StringVar(&f.Namespaces, "dataplane-namespaces", "", "Comma-separated namespaces the operator may deploy DataPlanes into; it needs a Role in each (the install chart's dataPlaneNamespaces). Default: the operator's namespace and --shard-registry-namespace.")
	fs.StringVar(&f.Images, "dataplane-allowed-images", dataplanev1alpha1.DefaultAllowedImagePrefix, "Comma-separated images a DataPlane's spec.image may name: an exact reference, or a prefix ending in ':', '@' or '/'.")
	fs.StringVar(&f.HostPathPrefixes, "dataplane-allowed-host-path-prefixes", dataplanev1alpha1.DefaultAllowedHostPathPrefix, "Comma-separated host directories a HostPath DataPlane's spec.storage.hostPath must lie at or below.")
	fs.StringVar(&f.TolerationKeys, "dataplane-allowed-toleration-keys", "", "Comma-separated taint keys a DataPlane's spec.tolerations may name (default: none).")
}

// Policy is the flags' policy; defaultNamespaces apply when
// --dataplane-namespaces is empty.
func (f *PolicyFlags) Policy(defaultNamespaces ...string) (dataplanev1alpha1.Policy, error) {
	p := dataplanev1alpha1.Policy{
		Namespaces:       splitList(f.Namespaces),
		Images:           splitList(f.Images),
		HostPathPrefixes: splitList(f.HostPathPrefixes),
		TolerationKeys:   splitList(f.TolerationKeys),
	}
	if len(p.Namespaces) == 0 {
		for _, ns := range defaultNamespaces {
			if ns != "" && !slices.Contains(p.Namespaces, ns) {
				p.Namespaces = append(p.Namespaces, ns)
			}
		}
	}
	for _, hp := range p.HostPathPrefixes {
		if !strings.HasPrefix(hp, "/") {
			return p, fmt.Errorf("--dataplane-allowed-host-path-prefixes: %q must be an absolute path", hp)
		}
	}
	return p, nil
}

func splitList(s string) []string {
	var out []string
	for _, e := range strings.Split(s, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

// NamespacedCache restricts the manager's informers of every namespaced
// kind the operator keeps in its own namespaces — what the data-plane chart
// renders and the shard-server pods it rolls, Helm's release Secrets, the Leases (leader election, shard
// registry, placement lock, writer Leases) and the webhook certificate —
// to those namespaces. Without it, the Helm reconciler's Secret watch and
// its dependent watches would list and watch those kinds cluster-wide,
// which the operator's RBAC (Roles per namespace) no longer allows.
//
// prometheus-operator's kinds are included only when served reports that
// the API server serves them (nil: never): a cache entry for a kind the
// cluster does not have makes the manager fail to start ("no matches for
// kind ServiceMonitor"), and most clusters have no prometheus-operator.
func NamespacedCache(namespaces []string, served func(groupVersion, kind string) bool) map[client.Object]cache.ByObject {
	nss := map[string]cache.Config{}
	for _, ns := range namespaces {
		nss[ns] = cache.Config{}
	}
	scoped := func() cache.ByObject { return cache.ByObject{Namespaces: nss} }
	m := map[client.Object]cache.ByObject{
		&corev1.Secret{}:              scoped(),
		&corev1.ConfigMap{}:           scoped(),
		&corev1.Service{}:             scoped(),
		&corev1.ServiceAccount{}:      scoped(),
		&rbacv1.Role{}:                scoped(),
		&rbacv1.RoleBinding{}:         scoped(),
		&appsv1.StatefulSet{}:         scoped(),
		&corev1.Pod{}:                 scoped(),
		&coordinationv1.Lease{}:       scoped(),
		&networkingv1.NetworkPolicy{}: scoped(),
	}
	// prometheus-operator kinds, by GVK: the operator does not import them.
	for _, kind := range []string{"ServiceMonitor", "PrometheusRule"} {
		if served == nil || !served("monitoring.coreos.com/v1", kind) {
			continue
		}
		u := &unstructured.Unstructured{}
		u.SetAPIVersion("monitoring.coreos.com/v1")
		u.SetKind(kind)
		m[u] = scoped()
	}
	return m
}

// helmUninstallFinalizer is helm-operator-plugins' finalizer on every
// object its reconciler has seen.
const helmUninstallFinalizer = "uninstall-helm-release"

// unmanagedFinalizerRelease lets a refused DataPlane go: the Helm reconciler
// adds its uninstall finalizer to every DataPlane before it judges one, and
// in a namespace the operator has no Role in it can never uninstall (not
// even look up the release). When such a DataPlane is deleted and no
// release was ever deployed for it, there is nothing to uninstall, so the
// finalizer is removed here. A DataPlane with a deployed release keeps it:
// put its namespace back into --dataplane-namespaces to uninstall cleanly.
type unmanagedFinalizerRelease struct {
	client client.Client
	policy dataplanev1alpha1.Policy
}

func (r *unmanagedFinalizerRelease) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	if slices.Contains(r.policy.Namespaces, req.Namespace) {
		return ctrl.Result{}, nil
	}
	var dp dataplanev1alpha1.DataPlane
	if err := r.client.Get(ctx, req.NamespacedName, &dp); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if dp.DeletionTimestamp == nil || dp.Status.DeployedRelease != nil || !controllerutil.ContainsFinalizer(&dp, helmUninstallFinalizer) {
		return ctrl.Result{}, nil
	}
	controllerutil.RemoveFinalizer(&dp, helmUninstallFinalizer)
	if err := r.client.Update(ctx, &dp); err != nil {
		return ctrl.Result{}, fmt.Errorf("release the uninstall finalizer of DataPlane %s outside the data-plane namespaces: %w", req, err)
	}
	return ctrl.Result{}, nil
}
