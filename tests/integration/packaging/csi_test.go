package packaging

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1k8s "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	pkgcsi "github.com/billyronks/couchestor/pkg/csi"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/pkg/shardserver"
	"github.com/billyronks/couchestor/tests/testenv"
)

// csiValues turn the CSI driver on (extra values merged in).
func csiValues(extra map[string]any) map[string]any {
	c := map[string]any{"enabled": true}
	for k, v := range extra {
		c[k] = v
	}
	return map[string]any{"csi": c}
}

func renderCSI(t *testing.T, values map[string]any) []*unstructured.Unstructured {
	t.Helper()
	m, err := render(loadChart(t, installChart), "couchestor-system", values)
	if err != nil {
		t.Fatalf("helm template with the CSI driver: %v", err)
	}
	return decodeObjects(t, []byte(m))
}

func find(t *testing.T, objs []*unstructured.Unstructured, kind, name string, into any) *unstructured.Unstructured {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			if into != nil {
				if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, into); err != nil {
					t.Fatalf("%s %s: %v", kind, name, err)
				}
			}
			return o
		}
	}
	t.Fatalf("no %s %s rendered (kinds %v)", kind, name, kinds(objs))
	return nil
}

// driverClient serves the real driver (pkg/csi, both services off the
// API-server path the calls below need) on a unix socket and dials it.
func driverClient(t *testing.T, d *pkgcsi.Driver) *grpc.ClientConn {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "csi.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Serve(ctx, "unix://"+sock) }()
	t.Cleanup(func() { cancel(); <-done })
	return dialSocket(t, sock, done)
}

func dialSocket(t *testing.T, sock string, exited <-chan error) *grpc.ClientConn {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		select {
		case err := <-exited:
			t.Fatalf("the driver exited before listening on %s: %v", sock, err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the driver never listened on %s", sock)
		}
		time.Sleep(50 * time.Millisecond)
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestCSIDriverObjectsMatchTheDriver renders the install chart with
// csi.enabled and checks the CSIDriver, StorageClass, controller Deployment
// and node DaemonSet against what the driver itself says over CSI
// (GetPluginInfo, GetPluginCapabilities, ControllerGetCapabilities) and
// against each other (socket paths of the plugin, the registrar and the
// kubelet), with a non-default kubelet directory.
func TestCSIDriverObjectsMatchTheDriver(t *testing.T) {
	const kubeletDir = "/var/lib/k0s/kubelet"
	objs := renderCSI(t, csiValues(map[string]any{"kubeletDir": kubeletDir}))

	conn := driverClient(t, &pkgcsi.Driver{Controller: true, Version: "test"})
	ctx := context.Background()
	info, err := csipb.NewIdentityClient(conn).GetPluginInfo(ctx, &csipb.GetPluginInfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	pcaps, err := csipb.NewIdentityClient(conn).GetPluginCapabilities(ctx, &csipb.GetPluginCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	ccaps, err := csipb.NewControllerClient(conn).ControllerGetCapabilities(ctx, &csipb.ControllerGetCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	hasRPC := func(t csipb.ControllerServiceCapability_RPC_Type) bool {
		return slices.ContainsFunc(ccaps.GetCapabilities(), func(c *csipb.ControllerServiceCapability) bool { return c.GetRpc().GetType() == t })
	}
	topology, expansion := false, false
	for _, c := range pcaps.GetCapabilities() {
		topology = topology || c.GetService().GetType() == csipb.PluginCapability_Service_VOLUME_ACCESSIBILITY_CONSTRAINTS
		expansion = expansion || c.GetVolumeExpansion() != nil
	}

	var drv storagev1k8s.CSIDriver
	find(t, objs, "CSIDriver", info.GetName(), &drv)
	if got, want := ptr.Deref(drv.Spec.AttachRequired, true), hasRPC(csipb.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME); got != want {
		t.Errorf("CSIDriver attachRequired %v, but the controller advertises PUBLISH_UNPUBLISH_VOLUME: %v", got, want)
	}
	if ptr.Deref(drv.Spec.PodInfoOnMount, true) || ptr.Deref(drv.Spec.StorageCapacity, true) {
		t.Errorf("CSIDriver podInfoOnMount %v storageCapacity %v: the driver reads no pod info and the provisioner publishes no capacity", drv.Spec.PodInfoOnMount, drv.Spec.StorageCapacity)
	}
	if !slices.Equal(drv.Spec.VolumeLifecycleModes, []storagev1k8s.VolumeLifecycleMode{storagev1k8s.VolumeLifecyclePersistent}) {
		t.Errorf("CSIDriver volumeLifecycleModes %v, want [Persistent]", drv.Spec.VolumeLifecycleModes)
	}
	if drv.Spec.FSGroupPolicy == nil || *drv.Spec.FSGroupPolicy != storagev1k8s.FileFSGroupPolicy {
		t.Errorf("CSIDriver fsGroupPolicy %v, want File", drv.Spec.FSGroupPolicy)
	}

	var sc storagev1k8s.StorageClass
	find(t, objs, "StorageClass", "couchestor-ec", &sc)
	if sc.Provisioner != info.GetName() {
		t.Errorf("StorageClass provisioner %q, the driver is %q", sc.Provisioner, info.GetName())
	}
	if policy, err := pkgcsi.PolicyParameter(sc.Parameters); err != nil {
		t.Errorf("the driver refuses the StorageClass parameters %v: %v", sc.Parameters, err)
	} else if !sampleHasPolicy(t, policy) {
		t.Errorf("StorageClass erasureCodingPolicy %q is not the sample ErasureCodingPolicy of config/samples", policy)
	}
	if !ptr.Deref(sc.AllowVolumeExpansion, false) || !expansion || !hasRPC(csipb.ControllerServiceCapability_RPC_EXPAND_VOLUME) {
		t.Errorf("allowVolumeExpansion %v, plugin expansion %v, controller EXPAND_VOLUME %v: all three must hold", sc.AllowVolumeExpansion, expansion, hasRPC(csipb.ControllerServiceCapability_RPC_EXPAND_VOLUME))
	}

	var dep appsv1.Deployment
	find(t, objs, "Deployment", "couchestor-csi-controller", &dep)
	byName := map[string]corev1.Container{}
	for _, c := range dep.Spec.Template.Spec.Containers {
		byName[c.Name] = c
	}
	for _, n := range []string{"csi-plugin", "csi-provisioner", "csi-resizer", "liveness-probe"} {
		c, ok := byName[n]
		if !ok {
			t.Fatalf("controller Deployment lacks container %s (has %v)", n, dep.Spec.Template.Spec.Containers)
		}
		if n == "csi-plugin" {
			if !slices.Equal(c.Args[:2], []string{"csi", "--controller"}) || !containsArg(c.Args, "--endpoint=unix:///csi/csi.sock") {
				t.Errorf("controller plugin args %v", c.Args)
			}
		} else if !containsArg(c.Args, "--csi-address=/csi/csi.sock") {
			t.Errorf("controller %s args %v do not name the plugin's socket /csi/csi.sock", n, c.Args)
		}
		if !mountsAt(c, "socket-dir", "/csi") {
			t.Errorf("controller %s does not mount the socket directory at /csi: %v", n, c.VolumeMounts)
		}
		if n == "csi-provisioner" || n == "csi-resizer" {
			if !containsArg(c.Args, "--leader-election") {
				t.Errorf("%s args %v lack --leader-election (the Deployment has %d replicas)", n, c.Args, ptr.Deref(dep.Spec.Replicas, 1))
			}
		}
		if strings.Contains(c.Image, "csi-attacher") {
			t.Errorf("an external-attacher runs, but attachRequired is false")
		}
	}
	if !strings.HasPrefix(byName["csi-provisioner"].Image, "registry.k8s.io/sig-storage/csi-provisioner:v") ||
		!strings.HasPrefix(byName["csi-resizer"].Image, "registry.k8s.io/sig-storage/csi-resizer:v") ||
		!strings.HasPrefix(byName["liveness-probe"].Image, "registry.k8s.io/sig-storage/livenessprobe:v") {
		t.Errorf("sidecar images are not pinned registry.k8s.io/sig-storage tags: %v", dep.Spec.Template.Spec.Containers)
	}

	var ds appsv1.DaemonSet
	dso := find(t, objs, "DaemonSet", "couchestor-csi-node", &ds)
	checkNodeSockets(t, &ds, kubeletDir, info.GetName())
	var ns corev1.Namespace
	find(t, objs, "Namespace", dso.GetNamespace(), &ns)
	if ns.Labels["pod-security.kubernetes.io/enforce"] != "privileged" {
		t.Errorf("the node plugin's namespace %s enforces %q, not privileged", ns.Name, ns.Labels["pod-security.kubernetes.io/enforce"])
	}
	if dso.GetNamespace() == "couchestor-system" {
		t.Error("the privileged node plugin shares the operator's namespace")
	}
}

func sampleHasPolicy(t *testing.T, name string) bool {
	t.Helper()
	for _, o := range decodeObjects(t, kustomizeBuild(t, "samples")) {
		if o.GetKind() == "ErasureCodingPolicy" && o.GetName() == name {
			return true
		}
	}
	return false
}

func mountsAt(c corev1.Container, volume, path string) bool {
	return slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == volume && m.MountPath == path })
}

// checkNodeSockets: the plugin listens at /csi/csi.sock on the plugin
// directory, which is <kubelet>/plugins/<driver> on the host; the registrar
// dials the same socket and registers that host path in the kubelet's
// plugins_registry; the kubelet directory is mounted at its own path with
// Bidirectional propagation; the plugin is privileged with /dev.
func checkNodeSockets(t *testing.T, ds *appsv1.DaemonSet, kubeletDir, driver string) {
	t.Helper()
	spec := ds.Spec.Template.Spec
	host := map[string]string{}
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			host[v.Name] = v.HostPath.Path
		}
	}
	byName := map[string]corev1.Container{}
	for _, c := range spec.Containers {
		byName[c.Name] = c
	}
	plugin, reg, probe := byName["csi-plugin"], byName["node-driver-registrar"], byName["liveness-probe"]
	if len(plugin.Args) < 2 || !slices.Equal(plugin.Args[:2], []string{"csi", "--node"}) || !containsArg(plugin.Args, "--endpoint=unix:///csi/csi.sock") {
		t.Errorf("node plugin args %v", plugin.Args)
	}
	if want := kubeletDir + "/plugins/" + driver; host["plugin-dir"] != want {
		t.Errorf("plugin-dir hostPath %q, want %q", host["plugin-dir"], want)
	}
	for _, c := range []corev1.Container{plugin, reg, probe} {
		if !mountsAt(c, "plugin-dir", "/csi") {
			t.Errorf("node container %s does not mount plugin-dir at /csi: %v", c.Name, c.VolumeMounts)
		}
	}
	for _, c := range []corev1.Container{reg, probe} {
		if !containsArg(c.Args, "--csi-address=/csi/csi.sock") {
			t.Errorf("node %s args %v do not dial the plugin's socket", c.Name, c.Args)
		}
	}
	if want := "--kubelet-registration-path=" + host["plugin-dir"] + "/csi.sock"; !containsArg(reg.Args, want) {
		t.Errorf("registrar args %v lack %s (the socket as the kubelet sees it)", reg.Args, want)
	}
	if host["registration-dir"] != kubeletDir+"/plugins_registry" || !mountsAt(reg, "registration-dir", "/registration") {
		t.Errorf("registration dir %q mounted %v: the registrar must see <kubelet>/plugins_registry at /registration", host["registration-dir"], reg.VolumeMounts)
	}
	var kubelet, dev bool
	for _, m := range plugin.VolumeMounts {
		switch m.Name {
		case "kubelet-dir":
			kubelet = m.MountPath == kubeletDir && host["kubelet-dir"] == kubeletDir &&
				m.MountPropagation != nil && *m.MountPropagation == corev1.MountPropagationBidirectional
		case "dev":
			dev = m.MountPath == "/dev" && host["dev"] == "/dev"
		}
	}
	if !kubelet || !dev {
		t.Errorf("node plugin mounts %v (hostPaths %v): want %s at its own path, Bidirectional, and /dev", plugin.VolumeMounts, host, kubeletDir)
	}
	if sc := plugin.SecurityContext; sc == nil || !ptr.Deref(sc.Privileged, false) {
		t.Errorf("node plugin securityContext %+v: it must be privileged (mounts, loop devices, FUSE)", plugin.SecurityContext)
	}
}

// TestCSIPodSecurity asks the API server's PodSecurity admission: the
// controller's pod is admitted in a "restricted" namespace, the node
// plugin's pod is refused there and admitted in the namespace the chart
// gives it.
func TestCSIPodSecurity(t *testing.T) {
	objs := renderCSI(t, csiValues(nil))
	var dep appsv1.Deployment
	var ds appsv1.DaemonSet
	find(t, objs, "Deployment", "couchestor-csi-controller", &dep)
	dso := find(t, objs, "DaemonSet", "couchestor-csi-node", &ds)
	env := testenv.Start(t)
	ctx := context.Background()
	nsObj := find(t, objs, "Namespace", dso.GetNamespace(), nil)
	if err := env.Client.Create(ctx, nsObj.DeepCopy()); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "restricted",
		Labels: map[string]string{"pod-security.kubernetes.io/enforce": "restricted"}}}); err != nil {
		t.Fatal(err)
	}
	pod := func(ns string, tpl corev1.PodTemplateSpec) error {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "probe", Labels: tpl.Labels}, Spec: tpl.Spec}
		p.Spec.NodeName = "node-a"
		return env.Client.Create(ctx, p, client.DryRunAll)
	}
	if err := pod("restricted", dep.Spec.Template); err != nil {
		t.Errorf("the CSI controller pod is not admitted under pod security restricted: %v", err)
	}
	if err := pod("restricted", ds.Spec.Template); err == nil || !apierrors.IsForbidden(err) {
		t.Errorf("the node plugin pod in a restricted namespace: %v, want refused by PodSecurity", err)
	}
	if err := pod(dso.GetNamespace(), ds.Spec.Template); err != nil {
		t.Errorf("the node plugin pod is refused in its own namespace %s: %v", dso.GetNamespace(), err)
	}
}

// impersonatingKubeconfig writes a kubeconfig that acts as the ServiceAccount.
func impersonatingKubeconfig(t *testing.T, env *testenv.Env, ns, sa string) string {
	t.Helper()
	cfg, err := clientcmd.Load(env.KubeConfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, ai := range cfg.AuthInfos {
		ai.Impersonate = "system:serviceaccount:" + ns + ":" + sa
		ai.ImpersonateGroups = []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"}
	}
	p := filepath.Join(t.TempDir(), sa+".kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, p); err != nil {
		t.Fatal(err)
	}
	return p
}

// applyRBAC creates the rendered namespaces, ServiceAccounts and RBAC.
func applyRBAC(t *testing.T, c client.Client, objs []*unstructured.Unstructured) {
	t.Helper()
	ctx := context.Background()
	for _, o := range objs {
		if ns := o.GetNamespace(); ns != "" {
			if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatal(err)
			}
		}
	}
	for _, o := range objs {
		switch o.GetKind() {
		case "Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding":
			if err := c.Create(ctx, o.DeepCopy()); err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatalf("create %s %s/%s: %v", o.GetKind(), o.GetNamespace(), o.GetName(), err)
			}
		}
	}
}

// TestCSIControllerRunsWithTheChartRBAC runs `couchestor csi` with the
// controller Deployment's own arguments as its ServiceAccount (impersonated;
// the API server authorizes with RBAC) against the chart's RBAC, and drives
// every Controller call the sidecars make: CreateVolume, ValidateVolumeCapabilities,
// ListVolumes, GetCapacity, ControllerExpandVolume, DeleteVolume, and Probe.
// None may be forbidden; the ServiceAccount still cannot read other Secrets
// or touch ECStripes.
func TestCSIControllerRunsWithTheChartRBAC(t *testing.T) {
	objs := renderCSI(t, csiValues(nil))
	env := testenv.Start(t)
	ctx := context.Background()
	applyRBAC(t, env.Client, objs)
	certs, err := shardserver.NewCertificates([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"couchestor-shard-token", "someone-elses"} {
		if err := env.Client.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "couchestor-system", Name: name},
			Data: map[string][]byte{registry.SecretKeyCA: certs.CAPEM, registry.SecretKeyToken: []byte("t")}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := env.Client.Create(ctx, &storagev1.ErasureCodingPolicy{ObjectMeta: metav1.ObjectMeta{Name: "cold-4-2"},
		Spec: storagev1.ErasureCodingPolicySpec{DataShards: ptr.To[int32](4), ParityShards: ptr.To[int32](2)}}); err != nil {
		t.Fatal(err)
	}

	var dep appsv1.Deployment
	find(t, objs, "Deployment", "couchestor-csi-controller", &dep)
	var args []string
	sock := filepath.Join(t.TempDir(), "csi.sock")
	for _, c := range dep.Spec.Template.Spec.Containers {
		if c.Name != "csi-plugin" {
			continue
		}
		for _, a := range c.Args {
			if strings.HasPrefix(a, "--endpoint=") {
				a = "--endpoint=unix://" + sock
			}
			args = append(args, a)
		}
	}
	args = append(args, "--kubeconfig", impersonatingKubeconfig(t, env, "couchestor-system", "couchestor-csi-controller"))
	cmd := exec.Command(testenv.OperatorBinary(t), args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	conn := dialSocket(t, sock, exited)
	cc, ic := csipb.NewControllerClient(conn), csipb.NewIdentityClient(conn)
	mount := []*csipb.VolumeCapability{{AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{FsType: "ext4"}},
		AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}}
	params := map[string]string{"erasureCodingPolicy": "cold-4-2"}
	if _, err := ic.Probe(ctx, &csipb.ProbeRequest{}); err != nil {
		t.Errorf("Probe: %v", err)
	}
	cv, err := cc.CreateVolume(ctx, &csipb.CreateVolumeRequest{Name: "pvc-00000000-0000-4000-8000-000000000001",
		CapacityRange: &csipb.CapacityRange{RequiredBytes: 64 << 20}, VolumeCapabilities: mount, Parameters: params})
	if err != nil {
		t.Fatalf("CreateVolume as the controller's ServiceAccount: %v", err)
	}
	id := cv.GetVolume().GetVolumeId()
	if _, err := cc.ValidateVolumeCapabilities(ctx, &csipb.ValidateVolumeCapabilitiesRequest{VolumeId: id, VolumeCapabilities: mount}); err != nil {
		t.Errorf("ValidateVolumeCapabilities: %v", err)
	}
	if l, err := cc.ListVolumes(ctx, &csipb.ListVolumesRequest{}); err != nil || len(l.GetEntries()) != 1 {
		t.Errorf("ListVolumes: %v, %v", l, err)
	}
	if _, err := cc.GetCapacity(ctx, &csipb.GetCapacityRequest{Parameters: params}); err != nil {
		t.Errorf("GetCapacity: %v", err)
	}
	if r, err := cc.ControllerExpandVolume(ctx, &csipb.ControllerExpandVolumeRequest{VolumeId: id,
		CapacityRange: &csipb.CapacityRange{RequiredBytes: 128 << 20}}); err != nil || r.GetCapacityBytes() < 128<<20 {
		t.Errorf("ControllerExpandVolume: %v, %v", r, err)
	}
	if _, err := cc.DeleteVolume(ctx, &csipb.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Errorf("DeleteVolume: %v", err)
	}

	sa := "system:serviceaccount:couchestor-system:couchestor-csi-controller"
	for _, q := range []struct {
		ns, verb, group, resource, name string
	}{
		{"couchestor-system", "get", "", "secrets", "someone-elses"},
		{"couchestor-system", "list", "", "secrets", ""},
		{"", "create", "storage.billyronks.io", "ecstripes", ""},
		{"", "delete", "storage.billyronks.io", "erasurecodingpolicies", ""},
		{"couchestor-system", "delete", "coordination.k8s.io", "leases", ""},
		{"", "create", "storage.k8s.io", "volumeattachments", ""},
	} {
		if allowedFor(t, env.Client, sa, "couchestor-system", q.ns, q.verb, q.group, q.resource, q.name) {
			t.Errorf("the CSI controller may %s %s.%s %q in %q: more than it needs", q.verb, q.resource, q.group, q.name, q.ns)
		}
	}
}

func allowedFor(t *testing.T, c client.Client, user, saNS, ns, verb, group, resource, name string) bool {
	t.Helper()
	res, sub, _ := strings.Cut(resource, "/")
	r := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{User: user,
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + saNS, "system:authenticated"},
		ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: ns, Verb: verb, Group: group, Resource: res,
			Subresource: sub, Name: name}}}
	if err := c.Create(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	return r.Status.Allowed
}

// TestCSINodeRBACCoversTheExport asks the API server's authorizer, for the
// node plugin's ServiceAccount under the chart's RBAC, about every API call
// `couchestor csi --node` and its exports (`ec-volume serve`) make — each
// listed with where it is made — and about a few it must not be able to make.
func TestCSINodeRBACCoversTheExport(t *testing.T) {
	objs := renderCSI(t, csiValues(nil))
	env := testenv.Start(t)
	applyRBAC(t, env.Client, objs)
	var ds appsv1.DaemonSet
	nodeNS := find(t, objs, "DaemonSet", "couchestor-csi-node", &ds).GetNamespace()
	sa := "system:serviceaccount:" + nodeNS + ":couchestor-csi-node"
	const reg, maya = "couchestor-system", "mayastor"
	for _, q := range []struct {
		ns, verb, group, resource, name, where string
		want                                   bool
	}{
		{"", "get", "storage.billyronks.io", "ecvolumes", "", "pkg/csi NodeStageVolume, pkg/stripe OpenVolume, pkg/fence Holder (every renewal)", true},
		{"", "patch", "storage.billyronks.io", "ecvolumes", "", "pkg/volumejournal Placement (journal-pools annotation)", true},
		{"", "update", "storage.billyronks.io", "ecvolumes/status", "", "internal/cmd/ecvolume observe (conditions)", true},
		{"", "get", "storage.billyronks.io", "ecstripes", "", "pkg/stripe reads", true},
		{"", "list", "storage.billyronks.io", "ecstripes", "", "pkg/stripe Prime, ListStripes", true},
		{"", "create", "storage.billyronks.io", "ecstripes", "", "pkg/stripe writeStripe", true},
		{"", "update", "storage.billyronks.io", "ecstripes", "", "pkg/stripe writeStripe", true},
		{"", "update", "storage.billyronks.io", "ecstripes/status", "", "pkg/stripe writeStatus", true},
		{"", "get", "storage.billyronks.io", "erasurecodingpolicies", "", "pkg/stripe OpenVolume, ec-volume serve", true},
		{reg, "list", "coordination.k8s.io", "leases", "", "pkg/registry Lookup.Servers", true},
		{reg, "get", "coordination.k8s.io", "leases", "", "pkg/fence Holder", true},
		{reg, "create", "coordination.k8s.io", "leases", "", "pkg/fence Holder acquire", true},
		{reg, "update", "coordination.k8s.io", "leases", "", "pkg/fence Holder renew and release", true},
		{reg, "get", "", "secrets", "couchestor-shard-token", "internal/clients ShardClientConfig", true},
		{maya, "list", "openebs.io", "diskpools", "", "pkg/diskpool Reader.List (placement)", true},
		{maya, "get", "openebs.io", "diskpools", "", "pkg/diskpool Reader.Get", true},
		{"", "delete", "storage.billyronks.io", "ecvolumes", "", "the controller deletes volumes, never a node", false},
		{"", "delete", "storage.billyronks.io", "ecstripes", "", "the operator's finalizer", false},
		{"", "update", "storage.billyronks.io", "ecvolumes", "", "only patch", false},
		{reg, "get", "", "secrets", "couchestor-webhook-server-cert", "other Secrets", false},
		{reg, "list", "", "secrets", "", "other Secrets", false},
		{reg, "delete", "coordination.k8s.io", "leases", "", "a Lease is released by update", false},
		{"", "list", "", "nodes", "", "nothing reads nodes", false},
		{"", "create", "", "pods", "", "", false},
	} {
		if got := allowedFor(t, env.Client, sa, nodeNS, q.ns, q.verb, q.group, q.resource, q.name); got != q.want {
			t.Errorf("node plugin %s %s.%s %q in %q (%s): allowed %v, want %v", q.verb, q.resource, q.group, q.name, q.ns, q.where, got, q.want)
		}
	}
}

// TestCSIObjectsAreAcceptedByTheAPIServer: everything the chart renders with
// the CSI driver on (and a custom node namespace the user made) is
// accepted by the API server (server-side apply, dry run).
func TestCSIObjectsAreAcceptedByTheAPIServer(t *testing.T) {
	env := testenv.Start(t)
	for name, values := range map[string]map[string]any{
		"defaults": csiValues(nil),
		"own-namespace-xfs": csiValues(map[string]any{"node": map[string]any{"namespace": "storage-nodes", "createNamespace": false, "attach": "nbdfuse",
			"exportArgs": []any{"--cache-memory-bytes=67108864"}}, "storageClass": map[string]any{"fsType": "xfs", "name": "ec-xfs"}, "registryNamespace": "couchestor-registry"}),
	} {
		objs := renderCSI(t, values)
		for _, err := range dryRunApply(t, env.Client, objs) {
			t.Errorf("%s: API server rejects %v", name, err)
		}
	}
}
