// Package ecrebuild tests the erasure-coding health side against a real API
// server: the ErasureCodingPolicy roll-up, ECStripe health from DiskPool
// state with the down-out delay, overlap reporting, and (with shard servers
// as processes) rebuild and scrub.
package ecrebuild

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/internal/scheme"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/tests/testenv"
)

const registryNS = "couchestor-system"

// zapLevel is Info with ECREBUILD_VERBOSE set, else errors only.
func zapLevel() zapcore.Level {
	if os.Getenv("ECREBUILD_VERBOSE") != "" {
		return zapcore.InfoLevel
	}
	return zapcore.ErrorLevel
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// startManager runs a manager against env until the test ends; setup
// registers reconcilers before it starts.
func startManager(t *testing.T, env *testenv.Env, setup func(ctrl.Manager) error) ctrl.Manager {
	t.Helper()
	ctrl.SetLogger(zap.New(zap.UseDevMode(true), zap.Level(zapLevel())))
	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{
		Scheme:                 scheme.New(),
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		// Each test runs its own manager in this one process.
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := setup(mgr); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
	})
	return mgr
}

// eventually polls cond until it returns nil or the bound passes.
func eventually(t *testing.T, bound time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(bound)
	var last error
	for time.Now().Before(deadline) {
		if last = cond(); last == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: not true within %s: %v", what, bound, last)
}

func ensureNamespace(t *testing.T, c client.Client, ns string) {
	t.Helper()
	err := c.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})
	if err != nil && client.IgnoreAlreadyExists(err) != nil {
		t.Fatal(err)
	}
}

// registerLease makes a pool's shard-server Lease as a shard server does
// (through registry.Registrar), valid for an hour.
func registerLease(t *testing.T, c client.Client, pool, node string) {
	t.Helper()
	r := &registry.Registrar{Client: c, Namespace: registryNS, Pool: pool, Node: node, Address: "127.0.0.1:1", LeaseDuration: time.Hour}
	if err := r.Register(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func deleteLease(t *testing.T, c client.Client, pool string) {
	t.Helper()
	l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: registryNS, Name: registry.LeaseName(pool)}}
	if err := c.Delete(context.Background(), l); err != nil {
		t.Fatal(err)
	}
}

func policy(name string, k, m int32) *storagev1.ErasureCodingPolicy {
	return &storagev1.ErasureCodingPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: storagev1.ErasureCodingPolicySpec{
			DataShards: ptr.To(k), ParityShards: ptr.To(m), MinHealthyShards: ptr.To(k),
		},
	}
}

// newStripe is an ECStripe of volume under policy, shard i on pools[i] / nodes[i].
func newStripe(name, volume, policy string, id int64, start, end int64, k int, pools, nodes []string) *storagev1.ECStripe {
	s := &storagev1.ECStripe{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: storagev1.ECStripeSpec{
			VolumeRef: volume, StripeID: id, PolicyRef: policy,
			LbaRange: storagev1.LbaRange{StartLba: start, EndLba: end}, Generation: 1,
		},
	}
	for i := range pools {
		s.Spec.ShardLocations = append(s.Spec.ShardLocations, storagev1.ShardLocation{
			ShardIndex: int32(i), IsDataShard: i < k, PoolName: pools[i], NodeName: nodes[i],
			Offset: int64(i) * 4096, SizeBytes: 262144, Checksum: fmt.Sprintf("xxh3:%016x", i),
		})
	}
	return s
}

// createStripe creates s and, when state is not empty, sets status.state as
// a writer would.
func createStripe(t *testing.T, c client.Client, s *storagev1.ECStripe, state storagev1.ECStripeState) {
	t.Helper()
	ctx := context.Background()
	if err := c.Create(ctx, s); err != nil {
		t.Fatalf("create ECStripe %s: %v", s.Name, err)
	}
	if state != "" {
		setStripeState(t, c, s.Name, state)
	}
}

func setStripeState(t *testing.T, c client.Client, name string, state storagev1.ECStripeState) {
	t.Helper()
	ctx := context.Background()
	var s storagev1.ECStripe
	if err := c.Get(ctx, client.ObjectKey{Name: name}, &s); err != nil {
		t.Fatal(err)
	}
	s.Status.State = state
	now := metav1.Now()
	s.Status.LastModifiedTime = &now
	if err := c.Status().Update(ctx, &s); err != nil {
		t.Fatalf("set state of %s: %v", name, err)
	}
}
