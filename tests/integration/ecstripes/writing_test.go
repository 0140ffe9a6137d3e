package ecstripes

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/controllers"
	"github.com/billyronks/couchestor/internal/scheme"
	"github.com/billyronks/couchestor/pkg/ecstate"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/pkg/scrub"
	"github.com/billyronks/couchestor/pkg/stripe"
)

// An overwrite is Writing until the new version's status is written: the new
// shards are never shown with the old version's health (schema 7.2 starts at
// Writing). A writer whose status write fails leaves a stripe whose shards
// are durable; the ECStripe controller adopts it after its grace, reads its
// shards and records it Healthy, and the data reads back.
func TestStripeIsWritingUntilItsStatusIsWrittenAndAdoptedWhenLeft(t *testing.T) {
	c := newCluster(t, 3)
	ctx := context.Background()
	const stripeSize = 64 << 10
	c.policy("rs21", storagev1.AlgorithmReedSolomon, 2, 1, stripeSize)
	v := c.volume("wv", "rs21", 2*stripeSize)

	wc, err := client.NewWithWatch(c.env.Config, client.Options{Scheme: c.env.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	name0 := stripe.StripeName("wv", 0)
	w, err := wc.Watch(ctx, &storagev1.ECStripeList{}, client.MatchingFields{"metadata.name": name0})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	var mu sync.Mutex
	var seen []storagev1.ECStripe
	go func() {
		for ev := range w.ResultChan() {
			if s, ok := ev.Object.(*storagev1.ECStripe); ok && ev.Type != watch.Error {
				mu.Lock()
				seen = append(seen, *s.DeepCopy())
				mu.Unlock()
			}
		}
	}()

	first, second := random(t, stripeSize), random(t, stripeSize)
	if err := c.store.WriteAt(ctx, v, first, 0); err != nil {
		t.Fatal(err)
	}
	if err := c.store.WriteAt(ctx, v, second, 0); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the watch sees the overwrite's status", func() bool {
		mu.Lock()
		defer mu.Unlock()
		n := len(seen)
		return n > 0 && seen[n-1].Spec.Generation == 2 && seen[n-1].Status.State == storagev1.StripeHealthy
	})
	mu.Lock()
	var firstOfGen2 *storagev1.ECStripe
	wroteWriting := false
	for i := range seen {
		if seen[i].Status.State == storagev1.StripeWriting {
			wroteWriting = true
		}
		if seen[i].Spec.Generation == 2 && firstOfGen2 == nil {
			firstOfGen2 = &seen[i]
		}
	}
	mu.Unlock()
	if !wroteWriting {
		t.Errorf("no status the API server held for %s was Writing", name0)
	}
	if firstOfGen2 == nil || firstOfGen2.Status.State != storagev1.StripeWriting {
		t.Fatalf("the overwrite's new shards were shown with state %q (the old version's status), want Writing until their own status is written", ptr.Deref(firstOfGen2, storagev1.ECStripe{}).Status.State)
	}

	// A writer whose status write fails: stripe 1 is created, its shards
	// durable, and no status is ever written.
	failing := interceptor.NewClient(wc, interceptor.Funcs{
		SubResourceUpdate: func(ctx context.Context, cl client.Client, sub string, obj client.Object, opts ...client.SubResourceUpdateOption) error {
			if _, ok := obj.(*storagev1.ECStripe); ok && sub == "status" {
				return errors.New("injected: the API server went away")
			}
			return cl.SubResource(sub).Update(ctx, obj, opts...)
		},
	})
	writer := &stripe.Store{Client: failing, Shards: c.client, Registry: c.store.Registry, MayastorNamespace: "mayastor"}
	v1, err := writer.OpenVolume(ctx, "wv")
	if err != nil {
		t.Fatal(err)
	}
	third := random(t, stripeSize)
	if err := writer.WriteAt(ctx, v1, third, stripeSize); err == nil {
		t.Fatal("the injected status failure did not reach the writer")
	}
	name1 := stripe.StripeName("wv", 1)
	var left storagev1.ECStripe
	if err := c.env.Client.Get(ctx, client.ObjectKey{Name: name1}, &left); err != nil {
		t.Fatal(err)
	}
	if left.Status.State != "" {
		t.Fatalf("stripe 1 status %+v, want none (the writer's status write failed)", left.Status)
	}

	mgr, err := ctrl.NewManager(c.env.Config, ctrl.Options{
		Scheme: scheme.New(), Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0",
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		t.Fatal(err)
	}
	lookup := &registry.Lookup{Client: mgr.GetClient()}
	if err := (&controllers.ECStripeReconciler{
		Client: mgr.GetClient(),
		Pools: &controllers.PoolMonitor{Client: mgr.GetClient(), MayastorNamespace: "mayastor", Servers: lookup,
			Tracker: ecstate.NewDownOutTracker(time.Minute, nil)},
		Verifier: &scrub.Verifier{Shards: func(context.Context) (scrub.ShardReader, error) { return c.client, nil }, Servers: lookup},
		// Short, so the test need not wait a minute; only adoption is waited on.
		WritingGrace: 200 * time.Millisecond,
	}).SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	mctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- mgr.Start(mctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
	}()

	var last error
	defer func() {
		if t.Failed() {
			t.Logf("last seen: %v", last)
		}
	}()
	eventually(t, "the controller adopts the stripe its writer left without status", func() bool {
		var s storagev1.ECStripe
		if err := c.env.Client.Get(ctx, client.ObjectKey{Name: name1}, &s); err != nil {
			last = err
			return false
		}
		if s.Status.State != storagev1.StripeHealthy || s.Status.HealthyShards != 3 || len(s.Status.ShardHealth) != 3 {
			last = fmt.Errorf("status %+v", s.Status)
			return false
		}
		for _, h := range s.Status.ShardHealth {
			if h.State != storagev1.ShardHealthy || h.LastVerified == nil {
				last = fmt.Errorf("shard %d %s verified %v: adoption reads every shard", h.ShardIndex, h.State, h.LastVerified)
				return false
			}
		}
		return true
	})
	got := make([]byte, 2*stripeSize)
	if _, err := c.store.ReadAt(ctx, v, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:stripeSize], second) || !bytes.Equal(got[stripeSize:], third) {
		t.Fatal("the volume does not read back what was written (the stripe whose status failed holds durable data)")
	}
}
