package controllers

import (
	"context"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"
)

// pendingRequests turns names told by an index's listener into reconcile
// requests of cluster-scoped objects: names told before the controller's
// source started are kept (deduplicated) and enqueued when it starts.
//
// With window > 0 a request is enqueued that long after the first name told
// (the work queue keeps one request per name and the earliest time it is
// due), so a burst of changes of one name within the window costs one
// reconcile, not one per change.
type pendingRequests struct {
	window time.Duration

	mu    sync.Mutex
	queue workqueue.TypedRateLimitingInterface[reconcile.Request]
	dirty map[string]struct{}
}

// add enqueues name, or keeps it until the source starts.
func (p *pendingRequests) add(name string) {
	p.mu.Lock()
	q := p.queue
	if q == nil {
		if p.dirty == nil {
			p.dirty = map[string]struct{}{}
		}
		p.dirty[name] = struct{}{}
	}
	p.mu.Unlock()
	if q == nil {
		return
	}
	req := reconcile.Request{NamespacedName: types.NamespacedName{Name: name}}
	if p.window > 0 {
		q.AddAfter(req, p.window)
		return
	}
	q.Add(req)
}

// source is the controller's source of these requests.
func (p *pendingRequests) source() source.Source {
	return source.Func(func(ctx context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) error {
		p.mu.Lock()
		p.queue = q
		dirty := p.dirty
		p.dirty = nil
		p.mu.Unlock()
		for name := range dirty {
			q.Add(reconcile.Request{NamespacedName: types.NamespacedName{Name: name}})
		}
		return nil
	})
}
