package nbd_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlconfig "sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/controllers"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/tests/testenv"
)

// TestECVolumeExportReportsDestageHealth runs `ec-volume serve` with its
// metrics endpoint over shard-server processes (journal replicas on three of
// them, the default since journal endpoints exist) and makes the destager fail
// the way the issue names: the API server refuses ECStripe writes (an
// admission webhook that cannot be reached, failurePolicy Fail). Writes are
// still acknowledged (they sit in the journal), the export says so on
// /metrics (couchestor_ecvolume_destage_failing, what the
// CoucheStorECVolumeDestageFailing alert reads) and on the ECVolume's
// Destaging condition; once admission works again the data reaches the
// stripes and reads back, and a stopped export marks itself Exported=False.
func TestECVolumeExportReportsDestageHealth(t *testing.T) {
	need(t, "qemu-io")
	c := newECCluster(t, 6)
	ctx := context.Background()
	pol := &storagev1.ErasureCodingPolicy{ObjectMeta: metav1.ObjectMeta{Name: "rs-obs"}, Spec: storagev1.ErasureCodingPolicySpec{
		DataShards: ptr.To(int32(4)), ParityShards: ptr.To(int32(2)), StripeSizeBytes: ptr.To(int64(1 << 20)),
		Algorithm: storagev1.ECAlgorithm("ReedSolomon"),
		JournalConfig: &storagev1.JournalConfig{JournalSizeBytes: ptr.To(int64(16 << 20)), ReplicationFactor: ptr.To(int32(3)),
			DestageThresholdPercent: ptr.To(int32(50)), DestageInterval: "1s"}}}
	if err := c.env.Client.Create(ctx, pol); err != nil {
		t.Fatal(err)
	}
	const vol = "ecv-obs"
	if err := c.env.Client.Create(ctx, &storagev1.ECVolume{ObjectMeta: metav1.ObjectMeta{Name: vol},
		Spec: storagev1.ECVolumeSpec{SizeBytes: 32 << 20, PolicyRef: "rs-obs"}}); err != nil {
		t.Fatal(err)
	}

	nbdPort, metricsPort := testenv.FreePort(t), testenv.FreePort(t)
	cmd := exec.Command(c.bin, "ec-volume", "serve", "--volume", vol, "--listen", testenv.Addr(nbdPort),
		"--metrics-bind-address", testenv.Addr(metricsPort),
		"--cache-dir", filepath.Join(c.dir, "cache-obs"),
		"--cache-memory-bytes", strconv.Itoa(8<<20), "--cache-disk-bytes", strconv.Itoa(16<<20),
		"--kubeconfig", c.kubeconfig, "--shard-secret", registry.DefaultNamespace+"/"+registry.DefaultShardSecret)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	waitListening(t, testenv.Addr(nbdPort))
	uri := "nbd://" + testenv.Addr(nbdPort) + "/" + vol
	metricsURL := "http://" + testenv.Addr(metricsPort) + "/metrics"

	metric := func(name string) (float64, bool) {
		resp, err := http.Get(metricsURL)
		if err != nil {
			return 0, false
		}
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			line := sc.Text()
			if strings.HasPrefix(line, name+"{") || strings.HasPrefix(line, name+" ") {
				f := strings.Fields(line)
				v, err := strconv.ParseFloat(f[len(f)-1], 64)
				return v, err == nil
			}
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		return 0, false
	}
	condition := func(typ string) *metav1.Condition {
		cur := &storagev1.ECVolume{}
		if err := c.env.Client.Get(ctx, client.ObjectKey{Name: vol}, cur); err != nil {
			return nil
		}
		return meta.FindStatusCondition(cur.Status.Conditions, typ)
	}
	wait := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(2 * time.Minute)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out after 2m waiting until %s", what)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}

	// Healthy: a write reaches the stripes; metrics and conditions say so.
	run(t, 5*time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x11 0 2M", uri)
	wait("a destaged stripe is counted and nothing fails", func() bool {
		n, ok := metric("couchestor_ecvolume_stripes_destaged_total")
		f, ok2 := metric("couchestor_ecvolume_destage_failing")
		return ok && ok2 && n >= 2 && f == 0
	})
	wait("Exported=True and Destaging=True on the ECVolume", func() bool {
		e, d := condition("Exported"), condition("Destaging")
		return e != nil && e.Status == metav1.ConditionTrue && strings.Contains(e.Message, testenv.Addr(nbdPort)) &&
			d != nil && d.Status == metav1.ConditionTrue
	})
	if v, ok := metric("couchestor_ecvolume_journal_replicas"); !ok || v != 3 {
		t.Errorf("couchestor_ecvolume_journal_replicas = %v (found %v), want 3", v, ok)
	}

	// The API server refuses ECStripe writes: admission cannot be reached.
	failurePolicy, sideEffects := admissionregistrationv1.Fail, admissionregistrationv1.SideEffectClassNone
	blocker := &admissionregistrationv1.ValidatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "unreachable-ecstripe-admission"},
		Webhooks: []admissionregistrationv1.ValidatingWebhook{{
			Name:                    "ecstripes.unreachable.test",
			ClientConfig:            admissionregistrationv1.WebhookClientConfig{URL: ptr.To("https://127.0.0.1:1/validate")},
			Rules:                   []admissionregistrationv1.RuleWithOperations{{Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create, admissionregistrationv1.Update}, Rule: admissionregistrationv1.Rule{APIGroups: []string{"storage.billyronks.io"}, APIVersions: []string{"v1"}, Resources: []string{"ecstripes"}}}},
			FailurePolicy:           &failurePolicy,
			SideEffects:             &sideEffects,
			AdmissionReviewVersions: []string{"v1"},
			TimeoutSeconds:          ptr.To(int32(2)),
		}}}
	if err := c.env.Client.Create(ctx, blocker); err != nil {
		t.Fatal(err)
	}
	unblocked := false
	unblock := func() {
		if !unblocked {
			unblocked = true
			if err := c.env.Client.Delete(ctx, blocker); err != nil {
				t.Errorf("delete the blocking webhook: %v", err)
			}
		}
	}
	t.Cleanup(unblock)
	// Acknowledged although nothing can be destaged: the journal holds it.
	run(t, 5*time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x22 4M 2M", uri)
	wait("couchestor_ecvolume_destage_failing = 1 and failures counted", func() bool {
		f, ok := metric("couchestor_ecvolume_destage_failing")
		n, ok2 := metric("couchestor_ecvolume_destage_failures_total")
		return ok && ok2 && f == 1 && n >= 1
	})
	wait("Destaging=False with reason DestageFailing", func() bool {
		d := condition("Destaging")
		return d != nil && d.Status == metav1.ConditionFalse && d.Reason == "DestageFailing" && d.Message != ""
	})
	if used, ok := metric("couchestor_ecvolume_journal_used_bytes"); !ok || used < 2<<20 {
		t.Errorf("journal_used_bytes = %v (found %v) while 2 MiB wait for destaging", used, ok)
	}
	// Reads see the acknowledged data from the journal meanwhile.
	run(t, 5*time.Minute, "qemu-io", "-f", "raw", "-r", "-c", "read -P 0x22 4M 2M", "-c", "read -P 0x11 0 2M", uri)

	unblock()
	wait("destaging recovers: failing = 0 and Destaging=True", func() bool {
		f, ok := metric("couchestor_ecvolume_destage_failing")
		d := condition("Destaging")
		return ok && f == 0 && d != nil && d.Status == metav1.ConditionTrue
	})
	wait("the refused writes are ECStripes now", func() bool {
		stripes, err := c.store.ListStripes(ctx, vol)
		return err == nil && len(stripes) >= 4
	})

	// A clean stop marks the export Stopped.
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		t.Fatal("ec-volume serve ignored SIGTERM for 30s")
	}
	e := condition("Exported")
	if e == nil || e.Status != metav1.ConditionFalse || e.Reason != "Stopped" {
		t.Fatalf("after SIGTERM the Exported condition is %s, want False/Stopped", fmt.Sprint(e))
	}

	// Deleting the volume deletes its journal replicas on the shard servers
	// (the ECVolume controller's finalizer, run here in-process).
	cur := &storagev1.ECVolume{}
	if err := c.env.Client.Get(ctx, client.ObjectKey{Name: vol}, cur); err != nil {
		t.Fatal(err)
	}
	pools := strings.Split(cur.Annotations[storagev1.ECVolumeAnnotationJournalPools], ",")
	journalDir := func(pool string) string { return filepath.Join(c.dir, pool, "journals", vol) }
	if len(pools) != 3 {
		t.Fatalf("journal pools annotation %q, want three pools", cur.Annotations[storagev1.ECVolumeAnnotationJournalPools])
	}
	for _, p := range pools {
		if _, err := os.Stat(journalDir(p)); err != nil {
			t.Fatalf("journal replica on %s: %v", p, err)
		}
	}
	mctx, stopMgr := context.WithCancel(ctx)
	defer stopMgr()
	// Other tests of this package run an ECVolume controller in this process too.
	mgr, err := ctrl.NewManager(c.env.Config, ctrl.Options{Scheme: c.env.Scheme, Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0",
		Controller: ctrlconfig.Controller{SkipNameValidation: ptr.To(true)}})
	if err != nil {
		t.Fatal(err)
	}
	if err := (&controllers.ECVolumeReconciler{Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("test"), MayastorNamespace: "mayastor"}).SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	go func() { _ = mgr.Start(mctx) }()
	wait("the ECVolume has its finalizer", func() bool {
		v := &storagev1.ECVolume{}
		return c.env.Client.Get(ctx, client.ObjectKey{Name: vol}, v) == nil && len(v.Finalizers) == 1
	})
	if err := c.env.Client.Delete(ctx, cur); err != nil {
		t.Fatal(err)
	}
	wait("the ECVolume is gone", func() bool {
		return apierrors.IsNotFound(c.env.Client.Get(ctx, client.ObjectKey{Name: vol}, &storagev1.ECVolume{}))
	})
	for _, p := range pools {
		if _, err := os.Stat(journalDir(p)); !os.IsNotExist(err) {
			t.Errorf("journal replica on %s still there after the volume was deleted (%v)", p, err)
		}
	}
}
