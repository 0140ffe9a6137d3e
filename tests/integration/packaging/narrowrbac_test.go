package packaging

import (
	"context"
	"os"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	dataplanev1alpha1 "github.com/billyronks/couchestor/apis/dataplane/v1alpha1"
	"github.com/billyronks/couchestor/internal/helmhybrid"
	"github.com/billyronks/couchestor/tests/testenv"
)

const operatorSA = "system:serviceaccount:couchestor-system:couchestor-controller-manager"

// TestHelmReconcilerWorksWithTheNarrowedRBAC installs the install chart's
// RBAC (rendered with dataPlaneNamespaces=[storage]) into a real API server
// with RBAC authorization, runs the Helm reconciler as the operator's
// ServiceAccount (impersonated) with the operator's namespaced cache, and
// checks: a DataPlane in "storage" deploys (StatefulSet, token Secret,
// NetworkPolicy); a DataPlane in "elsewhere" is refused with condition
// Irreconcilable naming the namespace and rule, and can still be deleted;
// the ServiceAccount can read no Secret outside its namespaces.
func TestHelmReconcilerWorksWithTheNarrowedRBAC(t *testing.T) {
	env := testenv.Start(t, withMonitoringCRDs)
	c := env.Client
	ctx := context.Background()
	for _, ns := range []string{"couchestor-system", "storage", "elsewhere"} {
		newNamespace(t, c, ns)
	}
	m, err := render(loadChart(t, installChart), "couchestor-system", map[string]any{"dataPlaneNamespaces": []any{"storage"}}, monitoringAPIs...)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range decodeObjects(t, []byte(m)) {
		switch o.GetKind() {
		case "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ServiceAccount":
			if err := c.Create(ctx, o); err != nil {
				t.Fatalf("create %s %s/%s: %v", o.GetKind(), o.GetNamespace(), o.GetName(), err)
			}
		}
	}

	// The SubjectAccessReview view of the same grants.
	sar := func(ns, verb, group, resource string) bool {
		r := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{User: operatorSA,
			Groups:             []string{"system:serviceaccounts", "system:serviceaccounts:couchestor-system", "system:authenticated"},
			ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: ns, Verb: verb, Group: group, Resource: resource}}}
		if err := c.Create(ctx, r); err != nil {
			t.Fatal(err)
		}
		return r.Status.Allowed
	}
	for _, q := range []struct {
		ns, verb, group, resource string
		want                      bool
	}{
		{"storage", "create", "apps", "statefulsets", true},
		{"storage", "list", "", "secrets", true},
		{"couchestor-system", "create", "coordination.k8s.io", "leases", true},
		{"elsewhere", "get", "", "secrets", false},
		{"", "list", "", "secrets", false},
		{"elsewhere", "create", "apps", "statefulsets", false},
		{"elsewhere", "create", "coordination.k8s.io", "leases", false},
		{"elsewhere", "create", "rbac.authorization.k8s.io", "roles", false},
		{"", "update", "admissionregistration.k8s.io", "validatingwebhookconfigurations", false},
	} {
		if got := sar(q.ns, q.verb, q.group, q.resource); got != q.want {
			t.Errorf("may the operator %s %s.%s in %q? %v, want %v", q.verb, q.resource, q.group, q.ns, got, q.want)
		}
	}

	cfg := rest.CopyConfig(env.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: operatorSA,
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:couchestor-system", "system:authenticated"}}
	policy := dataplanev1alpha1.DefaultPolicy("couchestor-system", "storage")
	policy.Images = append(policy.Images, "registry.example/couchestor:")
	ctrl.SetLogger(zap.New(zap.UseDevMode(true), zap.WriteTo(testWriter{t})))
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 env.Scheme,
		Cache:                  cache.Options{ByObject: helmhybrid.NamespacedCache(policy.Namespaces, nil)},
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Controller:             config.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := helmhybrid.Setup(mgr, os.DirFS(testenv.Root()), helmhybrid.Options{Policy: &policy}); err != nil {
		t.Fatal(err)
	}
	mctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- mgr.Start(mctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
	})

	good := &dataplanev1alpha1.DataPlane{ObjectMeta: metav1.ObjectMeta{Namespace: "storage", Name: "cold"},
		Spec: dataplanev1alpha1.DataPlaneSpec{Image: "registry.example/couchestor:v1", ShardServers: []dataplanev1alpha1.ShardServer{{Node: "node-a", DiskPool: "pool-a"}}}}
	if err := c.Create(ctx, good); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the release in storage, deployed as the operator's ServiceAccount", func() error {
		var dp dataplanev1alpha1.DataPlane
		if err := c.Get(ctx, client.ObjectKeyFromObject(good), &dp); err != nil {
			return err
		}
		if cond := deployedCondition(&dp); cond == nil || cond.Status != corev1.ConditionTrue {
			return errorf("Deployed condition %+v (all: %+v)", cond, dp.Status.Conditions)
		}
		for _, o := range []client.Object{&appsv1.StatefulSet{}, &corev1.Secret{}, &networkingv1.NetworkPolicy{}} {
			name := map[string]string{"*v1.StatefulSet": "cold-node-a", "*v1.Secret": "cold-shard-token", "*v1.NetworkPolicy": "cold-shard-server"}[typeName(o)]
			if err := c.Get(ctx, client.ObjectKey{Namespace: "storage", Name: name}, o); err != nil {
				return err
			}
		}
		return nil
	})

	bad := &dataplanev1alpha1.DataPlane{ObjectMeta: metav1.ObjectMeta{Namespace: "elsewhere", Name: "cold"},
		Spec: dataplanev1alpha1.DataPlaneSpec{Image: "registry.example/couchestor:v1", ShardServers: []dataplanev1alpha1.ShardServer{{Node: "node-b", DiskPool: "pool-b"}}}}
	if err := c.Create(ctx, bad); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a DataPlane outside the data-plane namespaces is refused with a condition", func() error {
		var dp dataplanev1alpha1.DataPlane
		if err := c.Get(ctx, client.ObjectKeyFromObject(bad), &dp); err != nil {
			return err
		}
		for _, cond := range dp.Status.Conditions {
			if cond.Type == "Irreconcilable" && cond.Status == corev1.ConditionTrue &&
				strings.Contains(cond.Message, "metadata.namespace") && strings.Contains(cond.Message, `"elsewhere"`) && strings.Contains(cond.Message, "dataPlaneNamespaces") {
				return nil
			}
		}
		return errorf("conditions %+v", dp.Status.Conditions)
	})
	var sts appsv1.StatefulSet
	if err := c.Get(ctx, client.ObjectKey{Namespace: "elsewhere", Name: "cold-node-b"}, &sts); !apierrors.IsNotFound(err) {
		t.Errorf("StatefulSet in elsewhere: %v, want NotFound", err)
	}
	if err := c.Delete(ctx, bad); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the refused DataPlane can be deleted", func() error {
		err := c.Get(ctx, client.ObjectKeyFromObject(bad), &dataplanev1alpha1.DataPlane{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return errorf("still there: %v", err)
	})
}

func typeName(o client.Object) string {
	switch o.(type) {
	case *appsv1.StatefulSet:
		return "*v1.StatefulSet"
	case *corev1.Secret:
		return "*v1.Secret"
	default:
		return "*v1.NetworkPolicy"
	}
}
