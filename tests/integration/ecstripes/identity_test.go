package ecstripes

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/pkg/stripe"
	"github.com/billyronks/couchestor/tests/testenv"
)

// TestStripesAreSelectedBySpecVolumeRefNotTheLabel: a stripe whose volume
// label was removed (possible wherever the webhook does not run: here only
// the CRD judges, and CEL cannot see labels) is still one of its volume's
// stripes. A fresh export's priming and listing find it by spec.volumeRef (a
// field selector the CRD declares), so reads return its data, not zeros, and
// orphan collection does not free its shards.
func TestStripesAreSelectedBySpecVolumeRefNotTheLabel(t *testing.T) {
	testenv.RequireAssets(t)
	c := newCluster(t, 3)
	ctx := context.Background()
	c.policy("rs-2-1-id", storagev1.AlgorithmReedSolomon, 2, 1, 1<<20)
	v := c.volume("vol-id", "rs-2-1-id", 3<<20)
	data := random(t, 3<<20)
	if err := c.store.WriteAt(ctx, v, data, 0); err != nil {
		t.Fatal(err)
	}
	// Another volume whose name is a prefix, and a label naming vol-id on
	// one of its stripes: neither may be taken for vol-id's.
	other := c.volume("vol-id-2", "rs-2-1-id", 1<<20)
	if err := c.store.WriteAt(ctx, other, random(t, 1<<20), 0); err != nil {
		t.Fatal(err)
	}
	relabel := func(name string, labels map[string]string) {
		t.Helper()
		var es storagev1.ECStripe
		if err := c.env.Client.Get(ctx, types.NamespacedName{Name: name}, &es); err != nil {
			t.Fatal(err)
		}
		es.Labels = labels
		if err := c.env.Client.Update(ctx, &es); err != nil {
			t.Fatal(err)
		}
	}
	relabel(stripe.StripeName("vol-id", 1), nil)
	relabel(stripe.StripeName("vol-id-2", 0), map[string]string{storagev1.ECStripeVolumeLabel: "vol-id"})

	all, err := c.store.ListStripes(ctx, "vol-id")
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(len(all), all[0] != nil, all[1] != nil, all[2] != nil); got != "3 true true true" {
		t.Fatalf("ListStripes(vol-id): %d stripes %v, want stripes 0, 1 and 2", len(all), all)
	}
	fresh := &stripe.Store{Client: c.env.Client, Shards: c.client, Registry: &registry.Lookup{Client: c.env.Client}, MayastorNamespace: "mayastor",
		Known: &stripe.Known{}, Views: &stripe.ServerViews{TTL: time.Minute}}
	if err := fresh.Prime(ctx, "vol-id"); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if _, err := fresh.ReadAt(ctx, v, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		zeros := bytes.Count(got[1<<20:2<<20], []byte{0}) == 1<<20
		t.Fatalf("a fresh export reads other bytes than written (stripe 1, label removed, reads as zeros: %v)", zeros)
	}
	rep, err := c.store.CollectOrphans(ctx, "vol-id", 0)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Freed != 0 {
		t.Fatalf("orphan collection freed %d shards of vol-id's live stripes (%+v)", rep.Freed, rep)
	}
	if _, err := c.store.ReadAt(ctx, v, got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read after orphan collection: equal=%v err=%v", bytes.Equal(got, data), err)
	}
	// The API server itself answers the field selector (selectableFields).
	var list storagev1.ECStripeList
	if err := c.env.Client.List(ctx, &list, client.MatchingFields{storagev1.ECStripeVolumeRefField: "vol-id-2"}); err != nil || len(list.Items) != 1 {
		t.Fatalf("field selector spec.volumeRef=vol-id-2: %d items, %v", len(list.Items), err)
	}
}
