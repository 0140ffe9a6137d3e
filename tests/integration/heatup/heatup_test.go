// Package heatup drives heat-up end to end up to the Converter: a real
// kube-apiserver and etcd (envtest), a real Prometheus scraping the export's
// op counters (the same IOCounters `ec-volume serve` registers, fed here at
// a steady rate instead of through NBD: the NBD path is tested in
// internal/cmd/ecvolume and tests/integration/nbd), and the StoragePolicy
// controller with the real conversion.Converter's Start (its reconciler is
// not run: converting back is the Converter's, tested with it).
//
// It needs KUBEBUILDER_ASSETS (hack/envtest.sh) and COUCHESTOR_PROMETHEUS
// (hack/prometheus.sh).
package heatup

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/controllers"
	"github.com/billyronks/couchestor/internal/cmd/ecvolume"
	"github.com/billyronks/couchestor/internal/scheme"
	"github.com/billyronks/couchestor/pkg/conversion"
	"github.com/billyronks/couchestor/pkg/csi"
	"github.com/billyronks/couchestor/pkg/iops"
	"github.com/billyronks/couchestor/pkg/migration"
	"github.com/billyronks/couchestor/pkg/nbd"
	"github.com/billyronks/couchestor/tests/testenv"
)

func init() { ctrl.SetLogger(logr.Discard()) }

const scrapeInterval = time.Second

func startPrometheus(t *testing.T, target string) string {
	t.Helper()
	bin := os.Getenv("COUCHESTOR_PROMETHEUS")
	if bin == "" {
		t.Skip("COUCHESTOR_PROMETHEUS is not set: run through `make test` (or export COUCHESTOR_PROMETHEUS=$(hack/prometheus.sh))")
	}
	dir := t.TempDir()
	cfg := fmt.Sprintf("global:\n  scrape_interval: %s\n  evaluation_interval: %s\nscrape_configs:\n  - job_name: ec-volume-export\n    static_configs:\n      - targets: [%q]\n",
		scrapeInterval, scrapeInterval, target)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := testenv.Addr(testenv.FreePort(t))
	out := &strings.Builder{}
	cmd := exec.Command(bin, "--config.file="+filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--storage.tsdb.retention.time=1h")
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() })
	if err := testenv.WaitHTTP200("http://"+addr+"/-/ready", time.Minute); err != nil {
		t.Fatalf("prometheus not ready: %v\n%s", err, out.String())
	}
	return "http://" + addr
}

// export serves one volume's op counters on /metrics, as `ec-volume serve
// --metrics-bind-address` does, and answers reads at about iops per second.
func export(t *testing.T, volume string, rate int) string {
	t.Helper()
	io := ecvolume.NewIOCounters(volume)
	reg := prometheus.NewRegistry()
	reg.MustRegister(io.Collectors()...)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); _ = srv.Close() })
	go func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				for i := 0; i < rate/10; i++ {
					io.Answered(nbd.CmdRead, 4096)
				}
			}
		}
	}()
	return l.Addr().String()
}

// ecPV creates an erasure-coded PV as a conversion leaves it (FinalPV) and
// its PVC, bound.
func ecPV(t *testing.T, c client.Client, name string) {
	t.Helper()
	ctx := context.Background()
	pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "claim-" + name, Labels: map[string]string{"tiering": "on"}},
		Spec: corev1.PersistentVolumeClaimSpec{AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}, StorageClassName: ptr.To("mayastor"),
			VolumeName: name, Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}}}}
	if err := c.Create(ctx, pvc); err != nil {
		t.Fatal(err)
	}
	pv := &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: map[string]string{
		conversion.AnnotationConvertedFrom: "pvc-old-" + name, conversion.AnnotationOriginalStorageClass: "mayastor"}},
		Spec: corev1.PersistentVolumeSpec{Capacity: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}, StorageClassName: "mayastor",
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimDelete,
			PersistentVolumeSource:        corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: csi.DriverName, VolumeHandle: name}},
			ClaimRef:                      &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: "apps", Name: pvc.Name, UID: pvc.UID}}}
	if err := c.Create(ctx, pv); err != nil {
		t.Fatal(err)
	}
	pvc.Status.Phase = corev1.ClaimBound
	if err := c.Status().Update(ctx, pvc); err != nil {
		t.Fatal(err)
	}
}

// An erasure-coded volume whose export's IOPS rise above the warm
// watermark is handed to the Converter as a heat-up (ToReplicated, its
// original StorageClass, → warm); one Prometheus has no history for is
// unknown and nothing starts for it.
func TestHotErasureCodedVolumeStartsHeatUpAndUnmeasuredOneDoesNot(t *testing.T) {
	env := testenv.Start(t)
	prom := startPrometheus(t, export(t, "ec-pvc-hot", 100))
	c := env.Client
	ctx := context.Background()
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "apps"}}); err != nil {
		t.Fatal(err)
	}
	ecPV(t, c, "ec-pvc-hot")
	ecPV(t, c, "ec-pvc-quiet") // its export is not scraped: no series

	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{Scheme: scheme.New(), Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0"})
	if err != nil {
		t.Fatal(err)
	}
	backend := &migration.MayastorVolumeBackend{Client: mgr.GetClient(), Namespace: "mayastor"}
	engine, err := migration.NewEngine(migration.Options{Client: mgr.GetClient(), Backend: backend})
	if err != nil {
		t.Fatal(err)
	}
	if err := mgr.Add(engine); err != nil {
		t.Fatal(err)
	}
	conv := &conversion.Converter{Client: mgr.GetClient(), Reader: mgr.GetAPIReader(), Engine: engine, Namespace: "couchestor-system"}
	meter := func(read, write, label string) *iops.Meter {
		src, err := iops.NewPrometheusSource(iops.PrometheusConfig{Address: prom, Timeout: 5 * time.Second, ScrapeInterval: scrapeInterval,
			ReadMetric: read, WriteMetric: write, VolumeLabel: label})
		if err != nil {
			t.Fatal(err)
		}
		return &iops.Meter{Querier: src, ScrapeInterval: scrapeInterval}
	}
	r := &controllers.StoragePolicyReconciler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(),
		Meter:   meter(iops.DefaultReadMetric, iops.DefaultWriteMetric, iops.DefaultVolumeLabel),
		ECMeter: meter(iops.ECVolumeReadMetric, iops.ECVolumeWriteMetric, iops.ECVolumeLabel),
		Backend: backend, Converter: conv, ConversionRetain: time.Hour,
		EvaluationInterval: time.Second, ScrapeInterval: scrapeInterval, SkipNameValidation: true}
	if err := r.SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	mctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(mctx) }()
	t.Cleanup(func() { cancel(); <-done })

	i := func(v int64) *int64 { return &v }
	pol := &storagev1.StoragePolicy{ObjectMeta: metav1.ObjectMeta{Name: "tiers"}, Spec: storagev1.StoragePolicySpec{
		HighWatermarkIOPS: i(5000), WarmWatermarkIOPS: i(50), LowWatermarkIOPS: i(5),
		SamplingWindow: "10s", CooldownPeriod: "1h", StorageClassName: "mayastor", ECPolicyRef: "rs",
		HotPoolSelector:  &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "hot"}},
		WarmPoolSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "warm"}},
		ColdPoolSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "cold"}},
		VolumeSelector:   &metav1.LabelSelector{MatchLabels: map[string]string{"tiering": "on"}},
	}}
	if err := c.Create(ctx, pol); err != nil {
		t.Fatal(err)
	}

	var rec *conversion.Record
	deadline := time.Now().Add(3 * time.Minute)
	for rec == nil {
		pv := &corev1.PersistentVolume{}
		if err := c.Get(ctx, client.ObjectKey{Name: "ec-pvc-hot"}, pv); err != nil {
			t.Fatal(err)
		}
		if raw := pv.Annotations[conversion.AnnotationConversion]; raw != "" {
			if rec, err = conversion.Parse(raw); err != nil {
				t.Fatalf("record on ec-pvc-hot: %v", err)
			}
			break
		}
		if time.Now().After(deadline) {
			p := &storagev1.StoragePolicy{}
			_ = c.Get(ctx, client.ObjectKey{Name: "tiers"}, p)
			t.Fatalf("no heat-up started on ec-pvc-hot within 3m; conditions %+v", p.Status.Conditions)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if rec.Direction != conversion.ToReplicated || rec.Undo || rec.TargetStorageClass != "mayastor" || rec.Source != "ec-pvc-hot" ||
		rec.SourceHandle != "ec-pvc-hot" || rec.FromTier != conversion.TierErasureCoded || rec.ToTier != "warm" ||
		rec.Policy != "tiers" || rec.Claim.Name != "claim-ec-pvc-hot" || rec.Target != conversion.HeatUpTarget(rec.ID) ||
		rec.TriggerIOPS < 50 || rec.Retain != "1h0m0s" || rec.Step != conversion.StepPreparing {
		t.Errorf("heat-up record %+v", rec)
	}

	// The unmeasured volume: unknown, reported, nothing started.
	deadline = time.Now().Add(time.Minute)
	for {
		p := &storagev1.StoragePolicy{}
		if err := c.Get(ctx, client.ObjectKey{Name: "tiers"}, p); err != nil {
			t.Fatal(err)
		}
		cond := meta.FindStatusCondition(p.Status.Conditions, controllers.ConditionErasureCoding)
		if cond != nil && strings.Contains(cond.Message, "heat-up: 1 in progress") && strings.Contains(cond.Message, "IOPS of 1 erasure-coded volumes unknown") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ErasureCoding condition %+v", cond)
		}
		time.Sleep(200 * time.Millisecond)
	}
	pv := &corev1.PersistentVolume{}
	if err := c.Get(ctx, client.ObjectKey{Name: "ec-pvc-quiet"}, pv); err != nil {
		t.Fatal(err)
	}
	if raw := pv.Annotations[conversion.AnnotationConversion]; raw != "" {
		t.Errorf("ec-pvc-quiet (no series) got a conversion: %s", raw)
	}
}
