package sim

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/billyronks/couchestor/pkg/mayastorrest"
	"github.com/billyronks/couchestor/tests/mayastorsim/restsim"
	"github.com/billyronks/couchestor/tests/testenv"
)

func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 60s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestRESTModeProcess runs `mayastorsim --api=rest` as a process against an
// API server that has only Mayastor 2.x's CRDs (a DiskPool of either version,
// no MayastorVolume) and drives it with the REST client.
func TestRESTModeProcess(t *testing.T) {
	for _, ver := range []string{"v1beta2", "v1beta3"} {
		t.Run(ver, func(t *testing.T) { testRESTModeProcess(t, ver) })
	}
}

func testRESTModeProcess(t *testing.T, ver string) {
	env := testenv.Start(t, testenv.MayastorV2(ver))
	ctx := context.Background()
	crd := &unstructured.Unstructured{}
	crd.SetGroupVersionKind(schema.GroupVersionKind{Group: "apiextensions.k8s.io", Version: "v1", Kind: "CustomResourceDefinition"})
	if err := env.Client.Get(ctx, client.ObjectKey{Name: "mayastorvolumes.openebs.io"}, crd); !apierrors.IsNotFound(err) {
		t.Fatalf("the API server must not have the MayastorVolume CRD: %v", err)
	}
	const hot, cold = "0c1a0000-0000-4000-8000-000000000001", "0c1a0000-0000-4000-8000-000000000002"
	sc := &Scenario{
		Pools: []PoolSpec{
			{Name: "pool-a", Node: "node-a", CapacityBytes: 100 << 30, Labels: map[string]string{"tier": "fast"}},
			{Name: "pool-b", Node: "node-b", CapacityBytes: 100 << 30},
			{Name: "pool-c", Node: "node-c", CapacityBytes: 100 << 30},
		},
		Volumes: []VolumeSpec{
			{Name: "pvc-" + hot, UUID: hot, SizeBytes: 1 << 30, Replicas: []string{"pool-a"}, Published: true, IOPS: 1000, PVC: PVCSpec{Namespace: "app", Name: "hot"}},
			{Name: "pvc-" + cold, UUID: cold, SizeBytes: 1 << 30, Replicas: []string{"pool-b"}, PVC: PVCSpec{Namespace: "app", Name: "cold"}},
		},
	}
	args := []string{"--api=rest", "--diskpool-version=" + ver, "--pool-cordon", "--rebuild-bytes-per-second=1073741824"}
	if ver == "v1beta3" {
		args = append(args, "--rest-listen="+testenv.Addr(testenv.FreePort(t)))
	}
	p := StartWithArgs(t, env.WriteKubeconfig(t, t.TempDir()), testenv.Addr(testenv.FreePort(t)), sc, args...)
	if p.REST == "" || (ver == "v1beta2" && p.REST != "http://"+p.Addr) || (ver == "v1beta3" && p.REST == "http://"+p.Addr) {
		t.Fatalf("ready line: addr %s rest %q", p.Addr, p.REST)
	}

	// Kubernetes side: DiskPools of the version, PVs as the CSI driver makes them.
	dsp := &unstructured.UnstructuredList{}
	dsp.SetGroupVersionKind(schema.GroupVersionKind{Group: "openebs.io", Version: ver, Kind: "DiskPoolList"})
	if err := env.Client.List(ctx, dsp, client.InNamespace("mayastor")); err != nil || len(dsp.Items) != 3 {
		t.Fatalf("DiskPools %s: %d, %v", ver, len(dsp.Items), err)
	}
	pv := &corev1.PersistentVolume{}
	if err := env.Client.Get(ctx, client.ObjectKey{Name: "pvc-" + hot}, pv); err != nil {
		t.Fatal(err)
	}
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != "io.openebs.csi-mayastor" || pv.Spec.CSI.VolumeHandle != hot {
		t.Fatalf("PV: %+v", pv.Spec.CSI)
	}

	// REST side.
	rc, err := mayastorrest.New(mayastorrest.Config{URL: p.REST, PageSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	vs, err := rc.ListVolumes(ctx)
	if err != nil || len(vs) != 2 || rc.Requests() != 2 {
		t.Fatalf("ListVolumes: %d volumes in %d requests, %v", len(vs), rc.Requests(), err)
	}
	if ok, err := rc.SupportsPoolCordon(ctx); err != nil || !ok {
		t.Fatalf("--pool-cordon: SupportsPoolCordon = %v, %v", ok, err)
	}
	ps, err := rc.ListPools(ctx)
	if err != nil || len(ps) != 3 || ps[0].Labels()["tier"] != "fast" || ps[0].Labels()["openebs.io/created-by"] != "operator-diskpool" {
		t.Fatalf("pools: %+v %v", ps, err)
	}
	before, _ := rc.GetVolume(ctx, hot)
	after, err := rc.SetReplicaCount(ctx, hot, 2)
	if err != nil {
		t.Fatal(err)
	}
	var added, addedPool string
	for id, r := range after.State.ReplicaTopology {
		if _, ok := before.State.ReplicaTopology[id]; !ok {
			added, addedPool = id, *r.Pool
		}
	}
	eventually(t, "new replica synced", func() error {
		v, err := rc.GetVolume(ctx, hot)
		if err != nil {
			return err
		}
		if !mayastorrest.ReplicaSynced(v, added) {
			return errorf("not synced: %s %+v", v.State.Status, v.State.ReplicaTopology[added])
		}
		return nil
	})
	eventually(t, "DiskPool status follows the REST pool", func() error {
		u := &unstructured.Unstructured{}
		u.SetGroupVersionKind(schema.GroupVersionKind{Group: "openebs.io", Version: ver, Kind: "DiskPool"})
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: "mayastor", Name: addedPool}, u); err != nil {
			return err
		}
		used, _, _ := unstructured.NestedInt64(u.Object, "status", "used")
		st, _, _ := unstructured.NestedString(u.Object, "status", "pool_status")
		if used != 1<<30 || st != "Online" {
			return errorf("status %v", u.Object["status"])
		}
		return nil
	})

	// Publication through /control reaches REST; IOPS series by pv_name.
	eventually(t, "metrics", func() error {
		b, err := get("http://" + p.Addr + "/metrics")
		if err != nil {
			return err
		}
		if !strings.Contains(b, `volume_num_read_ops{node="node-a",pv_name="pvc-`+hot+`"}`) || strings.Contains(b, cold) {
			return errorf("metrics:\n%s", b)
		}
		return nil
	})
	if err := p.Client.SetPublished("pvc-"+hot, false); err != nil {
		t.Fatal(err)
	}
	v, err := rc.GetVolume(ctx, hot)
	if err != nil || v.State.Target != nil || v.Spec.Target != nil {
		t.Fatalf("unpublished: %+v %v", v.State.Target, err)
	}

	// Knobs over /control/rest on the main listener.
	if err := p.Client.RESTFaults(restsim.Faults{Fail5xx: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := rc.ListNodes(ctx); !mayastorrest.IsUnavailable(err) {
		t.Fatalf("injected 503: %v", err)
	}
	if ns, err := rc.ListNodes(ctx); err != nil || len(ns) != 3 {
		t.Fatalf("nodes: %v %v", ns, err)
	}
	lat := "50ms"
	if err := p.Client.RESTKnobs(restsim.Knobs{Latency: &lat}); err != nil {
		t.Fatal(err)
	}
	bad := 7.0
	if err := p.Client.RESTKnobs(restsim.Knobs{DropProbability: &bad}); err == nil {
		t.Fatal("a probability of 7 accepted")
	}
}

func errorf(format string, a ...any) error {
	return fmt.Errorf(format, a...)
}

func get(url string) (string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return string(b), err
}
