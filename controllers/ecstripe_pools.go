package controllers

import (
	"context"
	"fmt"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	mayastorv1beta2 "github.com/billyronks/couchestor/apis/mayastor/v1beta2"
	"github.com/billyronks/couchestor/pkg/diskpool"
	"github.com/billyronks/couchestor/pkg/ecstate"
	"github.com/billyronks/couchestor/pkg/registry"
)

// ShardServerProber checks that a shard server answers (e.g. its /v1/space).
type ShardServerProber interface {
	Probe(ctx context.Context, addr string) error
}

// PoolMonitor turns what is known about each pool that holds shards — its
// DiskPool's pool_status, its shard server's Lease in the registry, a probe of
// that server — into verdicts with the down-out delay (ecstate.DownOutTracker),
// and tells the ECStripe controller which pools' verdicts changed.
type PoolMonitor struct {
	// Client reads DiskPools (the manager's cache).
	Client            client.Reader
	MayastorNamespace string
	// Servers may be nil: the DiskPool alone decides.
	Servers ShardServerLister
	// Prober may be nil: a live Lease is taken as the server answering.
	Prober  ShardServerProber
	Tracker *ecstate.DownOutTracker
	// Interval between sweeps over every known pool (default 5s).
	Interval time.Duration

	mu       sync.Mutex
	onChange []func(pool string)
}

// observe evaluates one pool now and records the result.
func (m *PoolMonitor) observe(ctx context.Context, pool string, servers map[string]registry.Entry, serversErr error) (ecstate.PoolVerdict, bool) {
	up, reason := m.evaluate(ctx, pool, servers, serversErr)
	return m.Tracker.Observe(pool, up, reason)
}

func (m *PoolMonitor) evaluate(ctx context.Context, pool string, servers map[string]registry.Entry, serversErr error) (bool, string) {
	dp, err := (&diskpool.Reader{Client: m.Client, Namespace: m.MayastorNamespace}).Get(ctx, pool)
	if err != nil {
		if apierrors.IsNotFound(err) {
			return false, fmt.Sprintf("DiskPool %s/%s not found", m.MayastorNamespace, pool)
		}
		return false, fmt.Sprintf("DiskPool %s/%s unreadable: %v", m.MayastorNamespace, pool, err)
	}
	switch dp.PoolStatus {
	case mayastorv1beta2.PoolOnline, mayastorv1beta2.PoolDegraded:
		// A Degraded DiskPool still serves its data.
	default:
		return false, fmt.Sprintf("DiskPool %s pool_status=%q", pool, dp.PoolStatus)
	}
	if dp.CRState == mayastorv1beta2.CRStateTerminating {
		return false, fmt.Sprintf("DiskPool %s is terminating", pool)
	}
	if m.Servers == nil {
		return true, ""
	}
	if serversErr != nil {
		// Not knowing is not the same as down: keep the last verdict's direction.
		if v, ok := m.Tracker.Verdict(pool); ok && v.State != ecstate.PoolUp {
			return false, v.Reason
		}
		return true, ""
	}
	e, ok := servers[pool]
	if !ok {
		ecProbeFailures.WithLabelValues(pool).Inc()
		return false, "no live shard-server Lease for the pool"
	}
	if m.Prober != nil {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := m.Prober.Probe(pctx, e.Address)
		cancel()
		if err != nil {
			ecProbeFailures.WithLabelValues(pool).Inc()
			return false, fmt.Sprintf("shard server %s does not answer: %v", e.Address, err)
		}
	}
	return true, ""
}

func (m *PoolMonitor) servers(ctx context.Context) (map[string]registry.Entry, error) {
	if m.Servers == nil {
		return nil, nil
	}
	list, err := m.Servers.Servers(ctx)
	if err != nil {
		return nil, err
	}
	out := make(map[string]registry.Entry, len(list))
	for _, e := range list {
		out[e.Pool] = e
	}
	return out, nil
}

// Verdict returns the verdict on pool, evaluating it first if it was never seen.
func (m *PoolMonitor) Verdict(ctx context.Context, pool string) ecstate.PoolVerdict {
	if v, ok := m.Tracker.Verdict(pool); ok {
		return v
	}
	servers, err := m.servers(ctx)
	v, _ := m.observe(ctx, pool, servers, err)
	return v
}

// Refresh re-evaluates one pool (on a DiskPool event) and reports whether its
// verdict changed.
func (m *PoolMonitor) Refresh(ctx context.Context, pool string) bool {
	servers, err := m.servers(ctx)
	_, changed := m.observe(ctx, pool, servers, err)
	return changed
}

// Sweep re-evaluates every known pool and every DiskPool, calling onChange
// for each pool whose verdict changed.
func (m *PoolMonitor) Sweep(ctx context.Context) {
	servers, serr := m.servers(ctx)
	pools := map[string]bool{}
	for _, p := range m.Tracker.Pools() {
		pools[p] = true
	}
	if dps, err := (&diskpool.Reader{Client: m.Client, Namespace: m.MayastorNamespace}).List(ctx); err == nil {
		for _, dp := range dps {
			pools[dp.Name] = true
		}
	}
	counts := map[ecstate.PoolState]float64{}
	for p := range pools {
		v, changed := m.observe(ctx, p, servers, serr)
		counts[v.State]++
		if changed {
			log.FromContext(ctx).Info("pool verdict changed", "pool", p, "verdict", v.State, "reason", v.Reason)
			m.mu.Lock()
			fs := m.onChange
			m.mu.Unlock()
			for _, f := range fs {
				f(p)
			}
		}
	}
	for _, s := range []ecstate.PoolState{ecstate.PoolUp, ecstate.PoolSuspect, ecstate.PoolOut} {
		ecPoolsDown.WithLabelValues(string(s)).Set(counts[s])
	}
}

// Start sweeps every Interval until ctx ends (a manager Runnable).
func (m *PoolMonitor) Start(ctx context.Context) error {
	iv := m.Interval
	if iv <= 0 {
		iv = 5 * time.Second
	}
	t := time.NewTicker(iv)
	defer t.Stop()
	for {
		m.Sweep(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// NeedLeaderElection: only the leader acts on verdicts.
func (m *PoolMonitor) NeedLeaderElection() bool { return true }

// addOnChange subscribes f to verdict changes (the ECStripe and the
// placement-group controllers).
func (m *PoolMonitor) addOnChange(f func(pool string)) {
	m.mu.Lock()
	m.onChange = append(m.onChange[:len(m.onChange):len(m.onChange)], f)
	m.mu.Unlock()
}
