package ecstripes

import (
	"bytes"
	"context"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/stripe"
)

// TestAStatusConflictDoesNotFailTheStripeWrite: right before the writer
// writes the status of a stripe version it just wrote (shards durable, spec
// updated), someone else writes that ECStripe's status (as the ECStripe
// controller or a scrub does), so the API server answers 409. The write
// must still succeed with the writer's status recorded, because failing it
// fails the export's whole destage pass, which then rewrites every stripe.
// On the old code WriteAt returned "write ECStripe ... status: ... conflict".
func TestAStatusConflictDoesNotFailTheStripeWrite(t *testing.T) {
	c := newCluster(t, 6)
	ctx := context.Background()
	c.policy("rs-conflict", storagev1.AlgorithmReedSolomon, 4, 2, 1<<20)
	v := c.volume("conflicted", "rs-conflict", 2<<20)
	var raced atomic.Int32
	base, err := client.NewWithWatch(c.env.Config, client.Options{Scheme: c.env.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	racy := interceptor.NewClient(base, interceptor.Funcs{
		SubResourceUpdate: func(ctx context.Context, cl client.Client, sub string, obj client.Object, opts ...client.SubResourceUpdateOption) error {
			es, ok := obj.(*storagev1.ECStripe)
			if ok && sub == "status" && es.Status.State != storagev1.StripeWriting && es.Spec.Generation == 2 && raced.Add(1) == 1 {
				other := &storagev1.ECStripe{}
				if err := c.env.Client.Get(ctx, client.ObjectKeyFromObject(es), other); err != nil {
					return err
				}
				t0 := metav1.NewTime(time.Now().Add(-time.Hour))
				other.Status.LastVerificationTime = &t0
				if err := c.env.Client.Status().Update(ctx, other); err != nil {
					return err
				}
			}
			return cl.SubResource(sub).Update(ctx, obj, opts...)
		}})
	st := &stripe.Store{Client: racy, Shards: c.store.Shards, Registry: c.store.Registry, MayastorNamespace: "mayastor"}
	first, second := random(t, 1<<20), random(t, 1<<20)
	if err := st.WriteAt(ctx, v, first, 0); err != nil {
		t.Fatal(err)
	}
	if err := st.WriteAt(ctx, v, second, 0); err != nil {
		t.Fatalf("a status conflict failed the stripe write: %v", err)
	}
	if raced.Load() == 0 {
		t.Fatal("the conflicting status write never happened: the test proves nothing")
	}
	es := &storagev1.ECStripe{}
	if err := c.env.Client.Get(ctx, client.ObjectKey{Name: stripe.StripeName(v.Name(), 0)}, es); err != nil {
		t.Fatal(err)
	}
	if es.Spec.Generation != 2 || es.Status.State != storagev1.StripeHealthy || es.Status.HealthyShards != 6 {
		t.Fatalf("ECStripe after the conflict: generation %d, state %s, %d healthy shards; want 2, Healthy, 6", es.Spec.Generation, es.Status.State, es.Status.HealthyShards)
	}
	got := make([]byte, 1<<20)
	if _, err := c.store.ReadAt(ctx, v, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, second) {
		t.Fatal("the stripe does not read back as the second write")
	}
}
