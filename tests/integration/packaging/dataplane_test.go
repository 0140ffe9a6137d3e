package packaging

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	dataplanev1alpha1 "github.com/billyronks/couchestor/apis/dataplane/v1alpha1"
	"github.com/billyronks/couchestor/internal/helmhybrid"
	"github.com/billyronks/couchestor/tests/testenv"
)

var (
	serviceMonitorGVK = schema.GroupVersionKind{Group: "monitoring.coreos.com", Version: "v1", Kind: "ServiceMonitor"}
	prometheusRuleGVK = schema.GroupVersionKind{Group: "monitoring.coreos.com", Version: "v1", Kind: "PrometheusRule"}
)

// withMonitoringCRDs installs the prometheus-operator CRDs as well.
func withMonitoringCRDs(e *envtest.Environment) {
	e.CRDDirectoryPaths = append(e.CRDDirectoryPaths, filepath.Join("testdata", "monitoring-crds"))
}

// startHybrid runs a manager with the Helm reconcilers from the repository's
// watches.yaml and charts (the same files the binary embeds).
func startHybrid(t *testing.T, env *testenv.Env) {
	t.Helper()
	runHybrid(t, env)
}

// runHybrid is startHybrid whose manager can also be stopped before the
// test ends (an operator restart); stop waits for it to end.
func runHybrid(t *testing.T, env *testenv.Env) (stop func()) {
	t.Helper()
	ctrl.SetLogger(zap.New(zap.UseDevMode(true), zap.WriteTo(testWriter{t})))
	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{
		Scheme:                 env.Scheme,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		// Several tests in this process each run a manager with the same controllers.
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := helmhybrid.Setup(mgr, os.DirFS(testenv.Root()), helmhybrid.Options{}); err != nil {
		t.Fatalf("helmhybrid.Setup: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("manager: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	if testing.Verbose() {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

// eventually polls cond until it returns nil or 60 s pass.
func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		if err = cond(); err == nil {
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("%s: still failing after 60s: %v", what, err)
}

func newNamespace(t *testing.T, c client.Client, name string) {
	t.Helper()
	if err := c.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}); err != nil {
		t.Fatal(err)
	}
}

func exists(c client.Client, gvk schema.GroupVersionKind, ns, name string) (bool, error) {
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(gvk)
	err := c.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, u)
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	return err == nil, err
}

func deployedCondition(dp *dataplanev1alpha1.DataPlane) *dataplanev1alpha1.HelmCondition {
	for i := range dp.Status.Conditions {
		if dp.Status.Conditions[i].Type == "Deployed" {
			return &dp.Status.Conditions[i]
		}
	}
	return nil
}

func TestDataPlaneReleaseLifecycleWithMonitoringAPIs(t *testing.T) {
	env := testenv.Start(t, withMonitoringCRDs)
	startHybrid(t, env)
	c := env.Client
	ctx := context.Background()
	const ns = "storage"
	newNamespace(t, c, ns)

	dp := &dataplanev1alpha1.DataPlane{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "cold"},
		Spec: dataplanev1alpha1.DataPlaneSpec{
			Image: "registry.example/couchestor:v1.2.3",
			ShardServers: []dataplanev1alpha1.ShardServer{
				{Node: "node-a", DiskPool: "pool-a-hdd"},
				{Node: "node-b", DiskPool: "pool-b-hdd"},
			},
			Port: ptr.To[int32](7555),
		},
	}
	if err := c.Create(ctx, dp); err != nil {
		t.Fatalf("create DataPlane: %v", err)
	}

	// Install: the chart's objects appear with the spec's values.
	eventually(t, "StatefulSets of the release", func() error {
		for _, node := range []string{"node-a", "node-b"} {
			var sts appsv1.StatefulSet
			if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "cold-" + node}, &sts); err != nil {
				return err
			}
			ctr := sts.Spec.Template.Spec.Containers[0]
			if ctr.Image != "registry.example/couchestor:v1.2.3" {
				return errorf("StatefulSet cold-%s image %q", node, ctr.Image)
			}
			if ctr.Ports[0].ContainerPort != 7555 {
				return errorf("StatefulSet cold-%s port %d, want 7555", node, ctr.Ports[0].ContainerPort)
			}
			if sts.Spec.Template.Spec.NodeSelector["kubernetes.io/hostname"] != node {
				return errorf("StatefulSet cold-%s nodeSelector %v", node, sts.Spec.Template.Spec.NodeSelector)
			}
			if got := sts.Spec.VolumeClaimTemplates[0].Spec.StorageClassName; got == nil || !strings.HasSuffix(*got, "-pool-"+node[len("node-"):]+"-hdd") {
				return errorf("StatefulSet cold-%s storage class %v", node, got)
			}
			if len(sts.OwnerReferences) != 1 || sts.OwnerReferences[0].Kind != "DataPlane" {
				return errorf("StatefulSet cold-%s owner references %v", node, sts.OwnerReferences)
			}
		}
		return nil
	})
	var svc corev1.Service
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "cold-shards"}, &svc); err != nil {
		t.Fatalf("Service: %v", err)
	}
	if svc.Spec.Ports[0].Port != 7555 {
		t.Errorf("Service port %d, want 7555", svc.Spec.Ports[0].Port)
	}
	var tok corev1.Secret
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "cold-shard-token"}, &tok); err != nil {
		t.Fatalf("token Secret: %v", err)
	}
	if len(tok.Data["token"]) != 48 {
		t.Errorf("token length %d, want 48", len(tok.Data["token"]))
	}
	// The serving certificate is valid for every shard server's pod DNS name
	// under the CA clients read from the same Secret.
	verifyShardCert(t, tok.Data, "cold-node-a-0.cold-shards.storage.svc")
	var sc storagev1.StorageClass
	if err := c.Get(ctx, client.ObjectKey{Name: "couchestor-storage-cold-pool-a-hdd"}, &sc); err != nil {
		t.Fatalf("StorageClass: %v", err)
	}
	if sc.Parameters["repl"] != "1" || sc.Provisioner != "io.openebs.csi-mayastor" {
		t.Errorf("StorageClass %v %v", sc.Provisioner, sc.Parameters)
	}
	var cm corev1.ConfigMap
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "cold-dashboard"}, &cm); err != nil {
		t.Fatalf("dashboard ConfigMap: %v", err)
	}
	if !strings.Contains(cm.Data["couchestor-dataplane.json"], "couchestor:volume_iops:rate5m") {
		t.Errorf("dashboard does not query the recording rule for the 5m window")
	}
	for _, gvk := range []schema.GroupVersionKind{serviceMonitorGVK, prometheusRuleGVK} {
		name := map[string]string{"ServiceMonitor": "cold-io-engine", "PrometheusRule": "cold-rules"}[gvk.Kind]
		if ok, err := exists(c, gvk, ns, name); err != nil || !ok {
			t.Errorf("%s %s: exists=%v err=%v (monitoring CRDs are installed)", gvk.Kind, name, ok, err)
		}
	}
	eventually(t, "Deployed condition in the DataPlane's status", func() error {
		var got dataplanev1alpha1.DataPlane
		if err := c.Get(ctx, client.ObjectKeyFromObject(dp), &got); err != nil {
			return err
		}
		cond := deployedCondition(&got)
		if cond == nil || cond.Status != corev1.ConditionTrue || cond.Reason != "InstallSuccessful" {
			return errorf("Deployed condition %+v", cond)
		}
		if got.Status.DeployedRelease == nil || got.Status.DeployedRelease.Name != "cold" {
			return errorf("deployedRelease %+v", got.Status.DeployedRelease)
		}
		if strings.Contains(got.Status.DeployedRelease.Manifest, string(tok.Data["token"])) {
			t.Errorf("the shard token leaks into the DataPlane's status manifest")
		}
		return nil
	})

	// Upgrade: a new image, a third server, no PrometheusRule.
	eventually(t, "update DataPlane spec", func() error {
		var cur dataplanev1alpha1.DataPlane
		if err := c.Get(ctx, client.ObjectKeyFromObject(dp), &cur); err != nil {
			return err
		}
		cur.Spec.Image = "registry.example/couchestor:v1.2.4"
		cur.Spec.ShardServers = append(cur.Spec.ShardServers, dataplanev1alpha1.ShardServer{Node: "node-c", DiskPool: "pool-c-hdd"})
		cur.Spec.Monitoring.PrometheusRule = ptr.To(false)
		return c.Update(ctx, &cur)
	})
	eventually(t, "upgraded release", func() error {
		for _, node := range []string{"node-a", "node-b", "node-c"} {
			var sts appsv1.StatefulSet
			if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "cold-" + node}, &sts); err != nil {
				return err
			}
			if img := sts.Spec.Template.Spec.Containers[0].Image; img != "registry.example/couchestor:v1.2.4" {
				return errorf("StatefulSet cold-%s image %q", node, img)
			}
		}
		if ok, err := exists(c, prometheusRuleGVK, ns, "cold-rules"); err != nil || ok {
			return errorf("PrometheusRule still exists after monitoring.prometheusRule=false (err %v)", err)
		}
		var got dataplanev1alpha1.DataPlane
		if err := c.Get(ctx, client.ObjectKeyFromObject(dp), &got); err != nil {
			return err
		}
		if cond := deployedCondition(&got); cond == nil || cond.Reason != "UpgradeSuccessful" {
			return errorf("Deployed condition %+v", cond)
		}
		return nil
	})
	var tok2 corev1.Secret
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "cold-shard-token"}, &tok2); err != nil {
		t.Fatal(err)
	}
	if string(tok2.Data["token"]) != string(tok.Data["token"]) {
		t.Errorf("the upgrade replaced the shard token")
	}

	// Uninstall: deleting the DataPlane removes the release's objects.
	if err := c.Delete(ctx, dp); err != nil {
		t.Fatal(err)
	}
	eventually(t, "uninstalled release", func() error {
		for _, node := range []string{"node-a", "node-b", "node-c"} {
			err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "cold-" + node}, &appsv1.StatefulSet{})
			if !apierrors.IsNotFound(err) {
				return errorf("StatefulSet cold-%s still there (err %v)", node, err)
			}
		}
		if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "cold-shards"}, &corev1.Service{}); !apierrors.IsNotFound(err) {
			return errorf("Service still there (err %v)", err)
		}
		if ok, err := exists(c, serviceMonitorGVK, ns, "cold-io-engine"); err != nil || ok {
			return errorf("ServiceMonitor still there (err %v)", err)
		}
		if err := c.Get(ctx, client.ObjectKey{Name: "couchestor-storage-cold-pool-a-hdd"}, &storagev1.StorageClass{}); !apierrors.IsNotFound(err) {
			return errorf("StorageClass still there (err %v)", err)
		}
		err := c.Get(ctx, client.ObjectKeyFromObject(dp), &dataplanev1alpha1.DataPlane{})
		if !apierrors.IsNotFound(err) {
			return errorf("DataPlane still there (finalizer not removed?) err %v", err)
		}
		return nil
	})
}

func TestDataPlaneWithoutMonitoringAPIs(t *testing.T) {
	env := testenv.Start(t)
	startHybrid(t, env)
	c := env.Client
	ctx := context.Background()
	const ns = "plain"
	newNamespace(t, c, ns)
	dp := &dataplanev1alpha1.DataPlane{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "dp"},
		Spec: dataplanev1alpha1.DataPlaneSpec{
			ShardServers: []dataplanev1alpha1.ShardServer{{Node: "node-a", DiskPool: "pool-a"}},
			Storage:      dataplanev1alpha1.ShardStorage{Type: dataplanev1alpha1.StorageHostPath, HostPath: "/srv/shards"},
		},
	}
	if err := c.Create(ctx, dp); err != nil {
		t.Fatal(err)
	}
	eventually(t, "Deployed without monitoring APIs", func() error {
		var got dataplanev1alpha1.DataPlane
		if err := c.Get(ctx, client.ObjectKeyFromObject(dp), &got); err != nil {
			return err
		}
		if cond := deployedCondition(&got); cond == nil || cond.Status != corev1.ConditionTrue {
			return errorf("Deployed condition %+v (conditions %+v)", cond, got.Status.Conditions)
		} else if !strings.Contains(cond.Message, "monitoring.coreos.com/v1) is not served") {
			return errorf("release notes do not say the monitoring objects were skipped: %q", cond.Message)
		}
		return nil
	})
	if strings.Contains(getManifest(t, c, dp), "kind: ServiceMonitor") {
		t.Error("ServiceMonitor rendered although monitoring.coreos.com/v1 is not served")
	}
	var sts appsv1.StatefulSet
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "dp-node-a"}, &sts); err != nil {
		t.Fatal(err)
	}
	if len(sts.Spec.VolumeClaimTemplates) != 0 {
		t.Errorf("HostPath storage must not claim volumes: %v", sts.Spec.VolumeClaimTemplates)
	}
	var hp string
	for _, v := range sts.Spec.Template.Spec.Volumes {
		if v.Name == "data" && v.HostPath != nil {
			hp = v.HostPath.Path
		}
	}
	if hp != "/srv/shards/pool-a" {
		t.Errorf("data hostPath %q, want /srv/shards/pool-a", hp)
	}
	if err := c.List(ctx, &storagev1.StorageClassList{}); err != nil {
		t.Fatal(err)
	}
}

func getManifest(t *testing.T, c client.Client, dp *dataplanev1alpha1.DataPlane) string {
	t.Helper()
	var got dataplanev1alpha1.DataPlane
	if err := c.Get(context.Background(), client.ObjectKeyFromObject(dp), &got); err != nil {
		t.Fatal(err)
	}
	if got.Status.DeployedRelease == nil {
		t.Fatal("no deployedRelease in status")
	}
	return got.Status.DeployedRelease.Manifest
}

func verifyShardCert(t *testing.T, data map[string][]byte, dnsName string) {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data["ca.crt"]) {
		t.Fatalf("ca.crt is not a PEM certificate")
	}
	if _, err := tls.X509KeyPair(data["tls.crt"], data["tls.key"]); err != nil {
		t.Fatalf("tls.crt/tls.key: %v", err)
	}
	blk, _ := pem.Decode(data["tls.crt"])
	if blk == nil {
		t.Fatal("tls.crt is not PEM")
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{DNSName: dnsName, Roots: pool}); err != nil {
		t.Errorf("serving certificate does not verify for %s: %v", dnsName, err)
	}
}
