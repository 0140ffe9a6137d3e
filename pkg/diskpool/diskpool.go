// Package diskpool reads Mayastor's DiskPool objects whichever version the
// cluster serves: openebs.io/v1beta3 (OpenEBS 4.3+) or v1beta2 (up to
// Mayastor 2.8). It owns only that choice and the common view of the two;
// it never writes a DiskPool (Mayastor owns them).
package diskpool

import (
	"context"
	"fmt"
	"maps"
	"sync/atomic"

	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mayastorv1beta2 "github.com/billyronks/couchestor/apis/mayastor/v1beta2"
	mayastorv1beta3 "github.com/billyronks/couchestor/apis/mayastor/v1beta3"
)

// Versions in order of preference.
var Versions = []string{"v1beta3", "v1beta2"}

// Pool is the common view of a DiskPool.
type Pool struct {
	Name   string
	Node   string
	Labels map[string]string
	// PoolStatus is status.pool_status (Unknown|Online|Degraded|Faulted; "" unreported).
	PoolStatus mayastorv1beta2.PoolStatus
	CRState    mayastorv1beta2.CRState
	Capacity   int64
	Used       int64
	Available  int64
	// Deleting: the object has a deletion timestamp.
	Deleting bool
}

// Reader reads DiskPools in one namespace. The version is found on the first
// read (v1beta3, else v1beta2) and kept; a cluster that serves neither gives
// an error naming both, never an empty list.
type Reader struct {
	Client    client.Reader
	Namespace string
	version   atomic.Value // string
}

func (r *Reader) versions() []string {
	if v, ok := r.version.Load().(string); ok && v != "" {
		return []string{v}
	}
	return Versions
}

// List lists the DiskPools.
func (r *Reader) List(ctx context.Context) ([]Pool, error) {
	var errs []error
	for _, v := range r.versions() {
		var out []Pool
		var err error
		switch v {
		case "v1beta3":
			var l mayastorv1beta3.DiskPoolList
			if err = r.Client.List(ctx, &l, client.InNamespace(r.Namespace)); err == nil {
				for i := range l.Items {
					out = append(out, fromV1beta3(&l.Items[i]))
				}
			}
		default:
			var l mayastorv1beta2.DiskPoolList
			if err = r.Client.List(ctx, &l, client.InNamespace(r.Namespace)); err == nil {
				for i := range l.Items {
					out = append(out, fromV1beta2(&l.Items[i]))
				}
			}
		}
		if err == nil {
			r.version.Store(v)
			return out, nil
		}
		if !meta.IsNoMatchError(err) {
			return nil, fmt.Errorf("list DiskPools (openebs.io/%s) in %s: %w", v, r.Namespace, err)
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("list DiskPools in %s: the API server serves DiskPool at neither openebs.io/v1beta3 nor v1beta2: %v", r.Namespace, errs)
}

// Get reads one DiskPool; a missing one is the client's NotFound error.
func (r *Reader) Get(ctx context.Context, name string) (Pool, error) {
	key := client.ObjectKey{Namespace: r.Namespace, Name: name}
	var errs []error
	for _, v := range r.versions() {
		var err error
		var p Pool
		switch v {
		case "v1beta3":
			var dp mayastorv1beta3.DiskPool
			if err = r.Client.Get(ctx, key, &dp); err == nil {
				p = fromV1beta3(&dp)
			}
		default:
			var dp mayastorv1beta2.DiskPool
			if err = r.Client.Get(ctx, key, &dp); err == nil {
				p = fromV1beta2(&dp)
			}
		}
		if err == nil {
			r.version.Store(v)
			return p, nil
		}
		if !meta.IsNoMatchError(err) {
			return Pool{}, err
		}
		errs = append(errs, err)
	}
	return Pool{}, fmt.Errorf("get DiskPool %s: the API server serves DiskPool at neither openebs.io/v1beta3 nor v1beta2: %v", key, errs)
}

func fromV1beta2(dp *mayastorv1beta2.DiskPool) Pool {
	p := Pool{Name: dp.Name, Node: dp.Spec.Node, PoolStatus: dp.Status.PoolStatus, CRState: dp.Status.CRState,
		Capacity: dp.Status.Capacity, Used: dp.Status.Used, Available: dp.Status.Available, Deleting: dp.DeletionTimestamp != nil}
	if dp.Spec.Topology != nil {
		p.Labels = maps.Clone(dp.Spec.Topology.Labelled)
	}
	return p
}

func fromV1beta3(dp *mayastorv1beta3.DiskPool) Pool {
	p := Pool{Name: dp.Name, Node: dp.Spec.Node, PoolStatus: dp.Status.PoolStatus, CRState: dp.Status.CRState,
		Capacity: dp.Status.Capacity, Used: dp.Status.Used, Available: dp.Status.Available, Deleting: dp.DeletionTimestamp != nil}
	if dp.Spec.Topology != nil {
		p.Labels = maps.Clone(dp.Spec.Topology.Labelled)
	}
	return p
}
