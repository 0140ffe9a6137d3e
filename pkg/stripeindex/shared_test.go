package stripeindex

import (
	"context"
	"testing"

	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

type fakeReg struct {
	toolscache.ResourceEventHandlerRegistration
}

func (fakeReg) HasSynced() bool { return true }

// fakeInformer counts the handlers attached to it.
type fakeInformer struct {
	cache.Informer
	handlers int
}

func (f *fakeInformer) AddEventHandler(toolscache.ResourceEventHandler) (toolscache.ResourceEventHandlerRegistration, error) {
	f.handlers++
	return fakeReg{}, nil
}

type fakeCache struct{ inf *fakeInformer }

func (c fakeCache) GetInformer(context.Context, client.Object, ...cache.InformerGetOption) (cache.Informer, error) {
	return c.inf, nil
}

// The webhooks and both controllers of one manager ask For: they must share
// one index, attached once (issue 22 item 4: it was built twice), while
// another manager's informer gets its own.
func TestForBuildsOneIndexPerInformer(t *testing.T) {
	ctx := context.Background()
	one := fakeCache{&fakeInformer{}}
	a, err := For(ctx, one)
	if err != nil {
		t.Fatal(err)
	}
	b, err := For(ctx, one)
	if err != nil {
		t.Fatal(err)
	}
	if a != b || one.inf.handlers != 1 {
		t.Fatalf("two calls on one informer: same index %v, %d handlers attached; want the same index and 1 handler", a == b, one.inf.handlers)
	}
	other := fakeCache{&fakeInformer{}}
	c, err := For(ctx, other)
	if err != nil {
		t.Fatal(err)
	}
	if c == a || other.inf.handlers != 1 {
		t.Fatal("another informer must get its own index")
	}
}
