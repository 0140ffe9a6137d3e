// Package scrub owns the verification of stored shards: Verifier reads
// shards at their recorded locations and compares their bytes with the
// checksums the ECStripe records, and Scrubber does that for every stripe of
// every ErasureCodingPolicy with scrubbingEnabled, once per scrubInterval,
// rate-limited, handing findings to the ECStripe controller (which turns a
// mismatch into a Corrupted shard and a rebuild). It changes no object itself.
package scrub

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/ecstate"
	"github.com/billyronks/couchestor/pkg/erasure"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/pkg/shardserver"
)

var (
	scrubbedStripes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "couchestor_ec_scrubbed_stripes_total",
		Help: "Stripes whose shards a scrub read and verified, by ErasureCodingPolicy.",
	}, []string{"policy"})
	scrubbedBytes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "couchestor_ec_scrubbed_bytes_total",
		Help: "Shard bytes read by scrubs.",
	})
	scrubPending = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "couchestor_ec_scrub_pending_stripes",
		Help: "Stripes due for a scrub in the current pass and not yet scrubbed (scrub progress: falls to 0 as a pass completes).",
	})
)

func init() { metrics.Registry.MustRegister(scrubbedStripes, scrubbedBytes, scrubPending) }

// ShardReader is what verification needs of *shardserver.Client.
type ShardReader interface {
	Get(ctx context.Context, addr string, offset int64, x shardserver.Expect) (*shardserver.ShardHeader, []byte, error)
}

// Verifier reads shards and checks them against the ECStripe.
type Verifier struct {
	// Shards returns the shard-server client (it may be built lazily).
	Shards  func(ctx context.Context) (ShardReader, error)
	Servers interface {
		Servers(ctx context.Context) ([]registry.Entry, error)
	}
	// Limiter, when set, bounds the bytes read per second.
	Limiter *rate.Limiter
	Now     func() time.Time
}

// Verify reads the listed shards of s (nil: all) and says what it found.
func (v *Verifier) Verify(ctx context.Context, s *storagev1.ECStripe, shards []int) map[int]ecstate.Finding {
	now := time.Now
	if v.Now != nil {
		now = v.Now
	}
	out := map[int]ecstate.Finding{}
	fail := func(i int, kind ecstate.FindingKind, detail string) {
		out[i] = ecstate.Finding{Kind: kind, At: now(), Detail: detail}
	}
	want := map[int]bool{}
	for _, i := range shards {
		want[i] = true
	}
	sc, err := v.Shards(ctx)
	var servers []registry.Entry
	if err == nil {
		servers, err = v.Servers.Servers(ctx)
	}
	byPool := map[string]registry.Entry{}
	for _, e := range servers {
		byPool[e.Pool] = e
	}
	for _, l := range s.Spec.ShardLocations {
		i := int(l.ShardIndex)
		if shards != nil && !want[i] {
			continue
		}
		if err != nil {
			fail(i, ecstate.FindingUnreachable, err.Error())
			continue
		}
		srv, ok := byPool[l.PoolName]
		if !ok {
			fail(i, ecstate.FindingUnreachable, fmt.Sprintf("no live shard server for pool %s", l.PoolName))
			continue
		}
		h, payload, gerr := sc.Get(ctx, srv.Address, l.Offset, shardserver.Expect{Volume: s.Spec.VolumeRef, StripeID: s.Spec.StripeID, ShardIndex: i, Generation: s.Spec.Generation})
		switch {
		case errors.Is(gerr, shardserver.ErrNotFound):
			fail(i, ecstate.FindingNotFound, gerr.Error())
			continue
		case gerr != nil:
			fail(i, ecstate.FindingUnreachable, gerr.Error())
			continue
		}
		if v.Limiter != nil {
			if werr := waitN(ctx, v.Limiter, len(payload)); werr != nil {
				fail(i, ecstate.FindingUnreachable, werr.Error())
				continue
			}
		}
		scrubbedBytes.Add(float64(len(payload)))
		if got := erasure.ShardChecksum(payload); got != l.Checksum || (h != nil && h.Checksum != l.Checksum) {
			fail(i, ecstate.FindingCorrupt, fmt.Sprintf("shard %d on pool %s at offset %d: bytes hash to %s, ECStripe records %s", i, l.PoolName, l.Offset, got, l.Checksum))
			continue
		}
		out[i] = ecstate.Finding{Kind: ecstate.FindingVerified, At: now()}
	}
	return out
}

func waitN(ctx context.Context, l *rate.Limiter, n int) error {
	for n > 0 {
		c := min(n, l.Burst())
		if err := l.WaitN(ctx, c); err != nil {
			return err
		}
		n -= c
	}
	return nil
}

// Sink receives findings (the ECStripe controller's Report).
type Sink func(stripe string, findings map[int]ecstate.Finding)

// Scrubber verifies every stripe of each scrubbing policy once per its
// scrubInterval. A stripe is due when status.lastVerificationTime is older
// than the interval (or absent); Failed and Rebuilding stripes and stripes
// still being written are skipped (their shards are in flux or read anyway).
type Scrubber struct {
	// Client lists policies and stripes (the manager's cache).
	Client   client.Reader
	Verifier *Verifier
	Sink     Sink
	// Tick is how often due stripes are looked for (default 10s).
	Tick time.Duration
	// StripesPerTick bounds the stripes verified per tick (default 100).
	StripesPerTick int
	// PolicyIndex is the field index of ECStripe spec.policyRef.
	PolicyIndex string
	Now         func() time.Time
}

// NeedLeaderElection: only the leader scrubs.
func (s *Scrubber) NeedLeaderElection() bool { return true }

// Start runs until ctx ends (a manager Runnable).
func (s *Scrubber) Start(ctx context.Context) error {
	tick := s.Tick
	if tick <= 0 {
		tick = 10 * time.Second
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		if err := s.Pass(ctx); err != nil && ctx.Err() == nil {
			log.FromContext(ctx).Error(err, "scrub pass")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Pass verifies up to StripesPerTick due stripes, oldest verification first.
func (s *Scrubber) Pass(ctx context.Context) error {
	now := time.Now
	if s.Now != nil {
		now = s.Now
	}
	limit := s.StripesPerTick
	if limit <= 0 {
		limit = 100
	}
	var pols storagev1.ErasureCodingPolicyList
	if err := s.Client.List(ctx, &pols); err != nil {
		return fmt.Errorf("list ErasureCodingPolicies: %w", err)
	}
	type due struct {
		name   string
		policy string
		last   time.Time
	}
	var todo []due
	t := now()
	for i := range pols.Items {
		p := &pols.Items[i]
		if p.Spec.ScrubbingEnabled == nil || !*p.Spec.ScrubbingEnabled {
			continue
		}
		iv := p.Spec.ScrubInterval
		if iv == "" {
			iv = storagev1.DefaultScrubInterval
		}
		interval, err := storagev1.ParseDuration(iv)
		if err != nil {
			continue // the policy is Invalid; its status says why
		}
		var list storagev1.ECStripeList
		if err := s.Client.List(ctx, &list, client.MatchingFields{s.PolicyIndex: p.Name}, client.UnsafeDisableDeepCopy); err != nil {
			return fmt.Errorf("list stripes of policy %s: %w", p.Name, err)
		}
		for j := range list.Items {
			st := &list.Items[j]
			switch st.Status.State {
			case storagev1.StripeHealthy, storagev1.StripeDegraded:
			default:
				continue
			}
			var last time.Time
			if st.Status.LastVerificationTime != nil {
				last = st.Status.LastVerificationTime.Time
			}
			if ok, _ := ecstate.ScrubDue(last, interval, t); ok {
				todo = append(todo, due{name: st.Name, policy: p.Name, last: last})
			}
		}
	}
	sort.Slice(todo, func(i, j int) bool { return todo[i].last.Before(todo[j].last) })
	scrubPending.Set(float64(len(todo)))
	for n, d := range todo {
		if n >= limit || ctx.Err() != nil {
			break
		}
		var st storagev1.ECStripe
		if err := s.Client.Get(ctx, client.ObjectKey{Name: d.name}, &st); err != nil {
			continue
		}
		f := s.Verifier.Verify(ctx, &st, nil)
		scrubbedStripes.WithLabelValues(d.policy).Inc()
		scrubPending.Set(float64(len(todo) - n - 1))
		if s.Sink != nil {
			s.Sink(d.name, f)
		}
	}
	return nil
}
