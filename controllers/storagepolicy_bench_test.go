package controllers

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	mayastorv1alpha1 "github.com/billyronks/couchestor/apis/mayastor/v1alpha1"
	mayastorv1beta2 "github.com/billyronks/couchestor/apis/mayastor/v1beta2"
	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/internal/scheme"
	"github.com/billyronks/couchestor/pkg/iops"
	"github.com/billyronks/couchestor/pkg/migration"
	"github.com/billyronks/couchestor/pkg/tiering"
)

// promWith10k answers every query with one iops and one coverage sample per
// volume, and counts the queries.
func promWith10k(n int) (*httptest.Server, *atomic.Int64) {
	var b bytes.Buffer
	b.WriteString(`{"status":"success","data":{"resultType":"vector","result":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"metric":{"pv_name":"pv-%05d","couchestor_kind":"iops"},"value":[1,"%d"]},`, i, (i*37)%9000)
		fmt.Fprintf(&b, `{"metric":{"pv_name":"pv-%05d","couchestor_kind":"coverage"},"value":[1,"180"]}`, i)
	}
	b.WriteString(`]}}`)
	body := b.Bytes()
	var q atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}))
	return srv, &q
}

func objects10k(n int) []client.Object {
	var objs []client.Object
	for i := range 30 {
		tier := []string{"hot", "warm", "cold"}[i%3]
		objs = append(objs, &mayastorv1beta2.DiskPool{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("pool-%02d", i), Namespace: "mayastor"},
			Spec:       mayastorv1beta2.DiskPoolSpec{Node: fmt.Sprintf("node-%d", i/3), Disks: []string{"/dev/x"}, Topology: &mayastorv1beta2.PoolTopology{Labelled: map[string]string{"tier": tier}}},
		})
	}
	for i := range n {
		name, handle := fmt.Sprintf("pv-%05d", i), fmt.Sprintf("uuid-%05d", i)
		objs = append(objs,
			&corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "c-" + name, Namespace: "apps", UID: types.UID("uid-" + name), Labels: map[string]string{"tiering": "on"}}},
			&corev1.PersistentVolume{
				ObjectMeta: metav1.ObjectMeta{Name: name},
				Spec: corev1.PersistentVolumeSpec{
					StorageClassName: "mayastor",
					Capacity:         corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("16Gi")},
					ClaimRef:         &corev1.ObjectReference{Namespace: "apps", Name: "c-" + name, UID: types.UID("uid-" + name)},
					PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{
						Driver: tiering.MayastorCSIDriver, VolumeHandle: handle}},
				},
			},
			&mayastorv1alpha1.MayastorVolume{
				ObjectMeta: metav1.ObjectMeta{Name: handle, Namespace: "mayastor"},
				Spec:       mayastorv1alpha1.MayastorVolumeSpec{NumReplicas: 3, Size: 16 << 30},
				Status: mayastorv1alpha1.MayastorVolumeStatus{
					Nexus: &mayastorv1alpha1.NexusStatus{UUID: "n"},
					Replicas: []mayastorv1alpha1.ReplicaStatus{
						{UUID: "a", Pool: fmt.Sprintf("pool-%02d", i%30)}, {UUID: "b", Pool: fmt.Sprintf("pool-%02d", (i+1)%30)}, {UUID: "c", Pool: fmt.Sprintf("pool-%02d", (i+2)%30)},
					},
				},
			})
	}
	return objs
}

func rssMB() float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return -1
}

// One full evaluation of a policy over 10,000 volumes (3 replicas each):
// list PVs/PVCs/MayastorVolumes/DiskPools (controller-runtime's fake client
// here, the informer cache in the operator), the one Prometheus query (a
// canned 20,000-sample answer over real HTTP + JSON), decisions, the status
// patch. Reported: queries per evaluation (must be exactly 1), decision time
// alone, and the process's RSS and heap.
func BenchmarkEvaluatePolicy10kVolumes(b *testing.B) {
	const n = 10000
	srv, queries := promWith10k(n)
	defer srv.Close()
	dry := true
	pol := &storagev1.StoragePolicy{ObjectMeta: metav1.ObjectMeta{Name: "bench", Generation: 1, CreationTimestamp: metav1.Now()},
		Spec: storagev1.StoragePolicySpec{SamplingWindow: "1h", DryRun: &dry,
			HotPoolSelector:  &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "hot"}},
			WarmPoolSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "warm"}},
			ColdPoolSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "cold"}},
		}}
	c := fake.NewClientBuilder().WithScheme(scheme.New()).
		WithObjects(append(objects10k(n), pol)...).
		WithStatusSubresource(&storagev1.StoragePolicy{}, &mayastorv1alpha1.MayastorVolume{}).Build()
	src, err := iops.NewPrometheusSource(iops.PrometheusConfig{Address: srv.URL})
	if err != nil {
		b.Fatal(err)
	}
	r := &StoragePolicyReconciler{Client: c, Meter: &iops.Meter{Querier: src, ScrapeInterval: 30 * time.Second}, // no cache: every evaluation asks
		MayastorNamespace: "mayastor", EvaluationInterval: time.Minute, ScrapeInterval: 30 * time.Second,
		Backend: &migration.MayastorVolumeBackend{Client: c, Namespace: "mayastor"}}
	req := ctrl.Request{NamespacedName: types.NamespacedName{Name: "bench"}}
	ctx := context.Background()
	if _, err := r.Reconcile(ctx, req); err != nil { // warm-up, and a check that it works
		b.Fatal(err)
	}
	var p storagev1.StoragePolicy
	_ = c.Get(ctx, req.NamespacedName, &p)
	if p.Status.WatchedVolumes != n {
		b.Fatalf("watched %d volumes, want %d", p.Status.WatchedVolumes, n)
	}
	queries.Store(0)
	var decide time.Duration
	b.ResetTimer()
	for b.Loop() {
		if _, err := r.Reconcile(ctx, req); err != nil {
			b.Fatal(err)
		}
		// Decision time alone, on the same inputs the evaluation used.
		b.StopTimer()
		vols, pools := sampleInputs(b, r, &p)
		rep := r.Meter.Measure(ctx, time.Hour, vols.ivols)
		start := time.Now()
		tiering.Evaluate(vols.policy, vols.vols, rep.Measurements, pools, time.Now())
		decide += time.Since(start)
		b.StartTimer()
	}
	b.StopTimer()
	evals := int64(b.N)
	got := queries.Load() - evals // sampleInputs' Measure asked once per iteration too
	b.ReportMetric(float64(got)/float64(evals), "queries/eval")
	b.ReportMetric(float64(decide.Milliseconds())/float64(evals), "decide-ms/eval")
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "heap-MB")
	b.ReportMetric(rssMB(), "RSS-MB")
	if got != evals {
		b.Fatalf("%d Prometheus queries for %d evaluations: want exactly one each", got, evals)
	}
}

type inputs struct {
	policy tiering.Policy
	vols   []tiering.Volume
	ivols  []iops.Volume
}

func sampleInputs(b *testing.B, r *StoragePolicyReconciler, p *storagev1.StoragePolicy) (inputs, map[string]tiering.Tier) {
	spec := p.Spec.DeepCopy()
	storagev1.DefaultStoragePolicySpec(spec)
	sel, err := tiering.CompileSelectors(spec.HotPoolSelector, spec.WarmPoolSelector, spec.ColdPoolSelector)
	if err != nil {
		b.Fatal(err)
	}
	o := &outcome{}
	vols, pools, err := r.observe(context.Background(), p, spec, sel, o)
	if err != nil {
		b.Fatal(err)
	}
	in := inputs{policy: tiering.Policy{Watermarks: tiering.Watermarks{High: 5000, Warm: 2000, Low: 500}, Selectors: sel, Cooldown: 24 * time.Hour}, vols: vols}
	for _, v := range vols {
		in.ivols = append(in.ivols, iops.Volume{Name: v.Name, Published: v.Published})
	}
	return in, pools
}
