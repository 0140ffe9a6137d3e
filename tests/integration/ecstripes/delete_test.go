package ecstripes

import (
	"context"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/controllers"
	"github.com/billyronks/couchestor/tests/testenv"
)

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// skipNameValidation lets -count=N run the test repeatedly in one process.
var skipNameValidation = true

func TestDeletingAVolumeDeletesItsStripesAndFreesSpace(t *testing.T) {
	testenv.RequireAssets(t)
	c := newCluster(t, 6)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	mgr, err := ctrl.NewManager(c.env.Config, ctrl.Options{Scheme: c.env.Scheme, Controller: config.Controller{SkipNameValidation: &skipNameValidation}, Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0"})
	if err != nil {
		t.Fatal(err)
	}
	// The reconciler builds its shard client from the Secret, as in the operator.
	if err := (&controllers.ECVolumeReconciler{Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("test"), MayastorNamespace: "mayastor"}).SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	go func() { _ = mgr.Start(ctx) }()

	c.policy("rs", storagev1.AlgorithmReedSolomon, 4, 2, 1<<20)
	baseline := c.usedBytes()
	v := c.volume("doomed", "rs", 6<<20)
	data := random(t, 5<<20+512*3)
	if err := c.store.WriteAt(ctx, v, data, 0); err != nil {
		t.Fatal(err)
	}
	key := client.ObjectKey{Name: "doomed"}
	eventually(t, "the ECVolume has its finalizer and counts its stripes", func() bool {
		cur := &storagev1.ECVolume{}
		if c.env.Client.Get(ctx, key, cur) != nil {
			return false
		}
		return len(cur.Finalizers) == 1 && cur.Status.Phase == storagev1.ECVolumeReady && cur.Status.Stripes == 6 && cur.Status.BytesWritten == 6<<20
	})
	if c.usedBytes() <= baseline {
		t.Fatal("writing used no shard space")
	}
	if err := c.env.Client.Delete(ctx, v.Object); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the ECVolume is gone", func() bool {
		return apierrors.IsNotFound(c.env.Client.Get(ctx, key, &storagev1.ECVolume{}))
	})
	left, err := c.store.ListStripes(ctx, "doomed")
	if err != nil || len(left) != 0 {
		t.Fatalf("%d ECStripes left after deleting the volume (%v)", len(left), err)
	}
	if got := c.usedBytes(); got != baseline {
		t.Fatalf("%d shard bytes used after deleting the volume, %d before it was written", got, baseline)
	}
}
