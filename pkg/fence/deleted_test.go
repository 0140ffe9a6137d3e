package fence

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/internal/scheme"
)

// volumeWithFinalizer is vol as the ECVolume controller keeps it: deleting it
// sets a deletionTimestamp and leaves it in place.
func volumeWithFinalizer() *storagev1.ECVolume {
	v := vol.DeepCopy()
	v.Finalizers = []string{storagev1.ECVolumeFinalizer}
	return v
}

// A holder whose ECVolume gets a deletionTimestamp stops at its next
// renewal with ErrVolumeDeleted (and ErrLost), naming the volume, and may
// still release its Lease so that the finalizer need not wait for it.
func TestHolderStopsWhenItsVolumeIsDeleted(t *testing.T) {
	c := fake.NewClientBuilder().WithScheme(scheme.New()).WithObjects(volumeWithFinalizer()).Build()
	clk := newFakeClock()
	h := newHolder(c, clk, "a")
	ctx := context.Background()
	if err := h.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	clk.waitTimer(t)
	clk.Advance(2 * time.Second) // one renewal while the volume is there
	clk.waitTimer(t)
	if err := h.Check(); err != nil {
		t.Fatalf("before the deletion: %v", err)
	}
	if err := c.Delete(ctx, volumeWithFinalizer()); err != nil {
		t.Fatal(err)
	}
	clk.Advance(2 * time.Second)
	var err error
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after the volume was deleted")
	}
	if !errors.Is(err, ErrVolumeDeleted) || !errors.Is(err, ErrLost) || !strings.Contains(err.Error(), "ECVolume vol-a is being deleted") {
		t.Fatalf("Run: %v; want ErrVolumeDeleted naming ECVolume vol-a", err)
	}
	if err := h.Check(); !errors.Is(err, ErrVolumeDeleted) {
		t.Fatalf("Check after the deletion: %v", err)
	}
	if err := h.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if l := getLease(t, c); l.Spec.HolderIdentity != nil {
		t.Fatalf("Lease still held by %q after Release", *l.Spec.HolderIdentity)
	}
	if err := h.Release(ctx); err != nil {
		t.Fatalf("a second Release: %v", err)
	}
}

// An export that starts while its volume is being deleted, is gone, or was
// recreated under its name never holds the Lease.
func TestAcquireRefusesADeletedVolume(t *testing.T) {
	deleting := volumeWithFinalizer()
	deleting.DeletionTimestamp = ptr.To(metav1.Now())
	recreated := vol.DeepCopy()
	recreated.UID = "uid-b"
	for name, tc := range map[string]struct {
		objs []client.Object
		want string
	}{
		"being deleted": {[]client.Object{deleting}, "is being deleted"},
		"gone":          {nil, "does not exist any more"},
		"recreated":     {[]client.Object{recreated}, "was deleted and recreated"},
	} {
		t.Run(name, func(t *testing.T) {
			c := fake.NewClientBuilder().WithScheme(scheme.New()).WithObjects(tc.objs...).Build()
			h := newHolder(c, newFakeClock(), "a")
			err := h.Acquire(context.Background())
			if !errors.Is(err, ErrVolumeDeleted) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Acquire: %v; want ErrVolumeDeleted saying %q", err, tc.want)
			}
			if l := getLease(t, c); l.Spec.HolderIdentity != nil {
				t.Fatalf("Lease left held by %q", *l.Spec.HolderIdentity)
			}
		})
	}
}

// WriterGone judges a Lease as an acquirer does: gone when absent or
// released, or when unchanged for a full leaseDurationSeconds on the
// watcher's own clock; renewals restart the wait.
func TestWriterGone(t *testing.T) {
	ctx := context.Background()
	lease := func(holder string) *coordinationv1.Lease {
		l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: LeaseName(vol.Name)},
			Spec: coordinationv1.LeaseSpec{LeaseDurationSeconds: ptr.To(int32(10))}}
		if holder != "" {
			l.Spec.HolderIdentity = ptr.To(holder)
		}
		SetEpoch(l, 3)
		return l
	}
	for name, tc := range map[string]struct {
		objs []client.Object
		gone bool
	}{
		"no Lease":       {nil, true},
		"released Lease": {[]client.Object{lease("")}, true},
		"held Lease":     {[]client.Object{lease("host/42/x")}, false},
	} {
		t.Run(name, func(t *testing.T) {
			w := &WriterWatch{Reader: fake.NewClientBuilder().WithScheme(scheme.New()).WithObjects(tc.objs...).Build(), Namespace: "ns", Clock: newFakeClock()}
			got, err := w.WriterGone(ctx, vol.Name)
			if err != nil || got.Gone != tc.gone {
				t.Fatalf("WriterGone: %+v, %v; want gone=%v", got, err, tc.gone)
			}
			if !tc.gone && (got.Holder != "host/42/x" || got.Epoch != 3 || got.Within != 10*time.Second) {
				t.Fatalf("WriterGone: %+v; want holder host/42/x, epoch 3, within 10s", got)
			}
		})
	}

	t.Run("unrenewed for a full duration", func(t *testing.T) {
		c := fake.NewClientBuilder().WithScheme(scheme.New()).WithObjects(lease("host/42/x")).Build()
		clk := newFakeClock()
		w := &WriterWatch{Reader: c, Namespace: "ns", Clock: clk}
		check := func(want bool, when string) {
			t.Helper()
			got, err := w.WriterGone(ctx, vol.Name)
			if err != nil || got.Gone != want {
				t.Fatalf("%s: %+v, %v; want gone=%v", when, got, err, want)
			}
		}
		check(false, "first seen")
		clk.Advance(9 * time.Second)
		check(false, "9s unchanged")
		l := &coordinationv1.Lease{}
		if err := c.Get(ctx, client.ObjectKey{Namespace: "ns", Name: LeaseName(vol.Name)}, l); err != nil {
			t.Fatal(err)
		}
		l.Spec.RenewTime = ptr.To(metav1.NewMicroTime(time.Now()))
		if err := c.Update(ctx, l); err != nil {
			t.Fatal(err)
		}
		clk.Advance(2 * time.Second)
		check(false, "the renewal, first seen")
		clk.Advance(9 * time.Second)
		check(false, "9s after the renewal was seen")
		clk.Advance(time.Second)
		check(true, "10s after the renewal was seen")
	})
}
