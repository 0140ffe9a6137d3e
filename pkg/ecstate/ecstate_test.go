package ecstate

import (
	"reflect"
	"testing"
	"time"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/erasure"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func TestDownOutTracker(t *testing.T) {
	c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	tr := NewDownOutTracker(time.Minute, c.now)

	if _, ok := tr.Verdict("p"); ok {
		t.Fatal("never observed pool has a verdict")
	}
	v, changed := tr.Observe("p", true, "")
	if v.State != PoolUp || !changed {
		t.Fatalf("first up observation: %+v changed=%v", v, changed)
	}
	c.t = c.t.Add(time.Second)
	v, changed = tr.Observe("p", false, "DiskPool Faulted")
	if v.State != PoolSuspect || !changed || !v.DownSince.Equal(c.t) || !v.OutAt.Equal(c.t.Add(time.Minute)) {
		t.Fatalf("down: %+v changed=%v", v, changed)
	}
	// Still down half way: Suspect, same DownSince, no change.
	c.t = c.t.Add(30 * time.Second)
	v2, changed := tr.Observe("p", false, "DiskPool Faulted")
	if v2.State != PoolSuspect || changed || !v2.DownSince.Equal(v.DownSince) {
		t.Fatalf("half way: %+v changed=%v", v2, changed)
	}
	// Back up within the delay: Up, and the next outage starts a fresh delay.
	c.t = c.t.Add(10 * time.Second)
	if v, changed = tr.Observe("p", true, ""); v.State != PoolUp || !changed {
		t.Fatalf("back: %+v changed=%v", v, changed)
	}
	c.t = c.t.Add(10 * time.Second)
	v, _ = tr.Observe("p", false, "lease expired")
	if !v.DownSince.Equal(c.t) || v.State != PoolSuspect {
		t.Fatalf("second outage must restart the delay: %+v", v)
	}
	// Verdict advances to Out with the clock, without an observation.
	c.t = c.t.Add(time.Minute)
	if v, _ = tr.Verdict("p"); v.State != PoolOut {
		t.Fatalf("after the delay: %+v", v)
	}
	if v, changed = tr.Observe("p", false, "lease expired"); v.State != PoolOut || changed {
		t.Fatalf("observe after Verdict advanced: %+v changed=%v", v, changed)
	}

	// Zero delay: down is Out at once.
	z := NewDownOutTracker(0, c.now)
	if v, _ := z.Observe("q", false, "x"); v.State != PoolOut {
		t.Fatalf("zero delay: %+v", v)
	}
}

func TestShardHealthOf(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	up := PoolVerdict{State: PoolUp}
	suspect := PoolVerdict{State: PoolSuspect, DownSince: t0, OutAt: t0.Add(time.Minute), Reason: "Faulted"}
	out := PoolVerdict{State: PoolOut, DownSince: t0, OutAt: t0.Add(time.Minute), Reason: "Faulted"}
	prev := func(s storagev1.ShardState) *storagev1.ShardHealth {
		return &storagev1.ShardHealth{ShardIndex: 2, State: s, Error: "earlier"}
	}
	verified := Finding{Kind: FindingVerified, At: t0.Add(time.Hour)}
	corrupt := Finding{Kind: FindingCorrupt, At: t0, Detail: "xxh3 differs"}
	notFound := Finding{Kind: FindingNotFound, At: t0, Detail: "404"}
	unreachable := Finding{Kind: FindingUnreachable, At: t0, Detail: "timeout"}

	cases := []struct {
		name string
		e    ShardEvidence
		want storagev1.ShardState
	}{
		{"new shard on up pool", ShardEvidence{Pool: up}, storagev1.ShardHealthy},
		{"healthy, pool suspect: unchanged", ShardEvidence{Pool: suspect, Prev: prev(storagev1.ShardHealthy)}, storagev1.ShardHealthy},
		{"missing, pool suspect: unchanged", ShardEvidence{Pool: suspect, Prev: prev(storagev1.ShardMissing)}, storagev1.ShardMissing},
		{"pool out: missing", ShardEvidence{Pool: out, Prev: prev(storagev1.ShardHealthy)}, storagev1.ShardMissing},
		{"rebuilding wins", ShardEvidence{Pool: out, Rebuilding: true, Finding: corrupt}, storagev1.ShardRebuilding},
		{"corrupt read", ShardEvidence{Pool: up, Finding: corrupt, Prev: prev(storagev1.ShardHealthy)}, storagev1.ShardCorrupted},
		{"not found read", ShardEvidence{Pool: up, Finding: notFound}, storagev1.ShardMissing},
		{"corrupted is sticky on up pool", ShardEvidence{Pool: up, Prev: prev(storagev1.ShardCorrupted), PoolIsEvidence: true}, storagev1.ShardCorrupted},
		{"corrupted cleared by a verified read", ShardEvidence{Pool: up, Prev: prev(storagev1.ShardCorrupted), Finding: verified}, storagev1.ShardHealthy},
		{"missing stays missing without verification", ShardEvidence{Pool: up, Prev: prev(storagev1.ShardMissing)}, storagev1.ShardMissing},
		{"missing, unreachable read", ShardEvidence{Pool: up, Prev: prev(storagev1.ShardMissing), Finding: unreachable}, storagev1.ShardMissing},
		{"missing back on pool's word", ShardEvidence{Pool: up, Prev: prev(storagev1.ShardMissing), PoolIsEvidence: true}, storagev1.ShardHealthy},
		{"missing back and verified", ShardEvidence{Pool: up, Prev: prev(storagev1.ShardMissing), Finding: verified}, storagev1.ShardHealthy},
		{"verified read on an out pool stays missing", ShardEvidence{Pool: out, Finding: verified}, storagev1.ShardMissing},
		{"interrupted rebuild", ShardEvidence{Pool: up, Prev: prev(storagev1.ShardRebuilding), PoolIsEvidence: true}, storagev1.ShardMissing},
		{"rebuilt and verified", ShardEvidence{Pool: up, Prev: prev(storagev1.ShardRebuilding), Finding: verified}, storagev1.ShardHealthy},
		{"unreachable healthy shard on up pool", ShardEvidence{Pool: up, Prev: prev(storagev1.ShardHealthy), Finding: unreachable}, storagev1.ShardHealthy},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.e.Index = 2
			h := ShardHealthOf(c.e)
			if h.State != c.want || h.ShardIndex != 2 {
				t.Fatalf("got %+v, want state %s", h, c.want)
			}
			if h.State != storagev1.ShardHealthy && h.Error == "" {
				t.Fatalf("unhealthy shard without an error message: %+v", h)
			}
			if c.e.Finding.Kind == FindingVerified && h.State == storagev1.ShardHealthy && (h.LastVerified == nil || !h.LastVerified.Time.Equal(verified.At)) {
				t.Fatalf("verified read must set lastVerified: %+v", h)
			}
		})
	}
}

func shards(states ...storagev1.ShardState) []storagev1.ShardHealth {
	out := make([]storagev1.ShardHealth, len(states))
	for i, s := range states {
		out[i] = storagev1.ShardHealth{ShardIndex: int32(i), State: s}
	}
	return out
}

func TestEvaluateStripe(t *testing.T) {
	rs, err := erasure.NewCodec(erasure.ReedSolomon, 4, 2)
	if err != nil {
		t.Fatal(err)
	}
	const (
		H = storagev1.ShardHealthy
		M = storagev1.ShardMissing
		C = storagev1.ShardCorrupted
		R = storagev1.ShardRebuilding
	)
	cases := []struct {
		name        string
		prev        storagev1.ECStripeState
		sh          []storagev1.ShardHealth
		rebuild     bool
		state       storagev1.ECStripeState
		owned       bool
		healthy     [3]int32
		repairable  []int
		needRebuild bool
		tr          Transition
		adopt       bool
	}{
		{"writing is the writer's", storagev1.StripeWriting, shards(H, H, M, H, H, H), false, storagev1.StripeWriting, false, [3]int32{5, 3, 2}, []int{2}, false, "", false},
		{"empty is the writer's", "", shards(H, H, H, H, H, H), false, "", false, [3]int32{6, 4, 2}, nil, false, "", false},
		{"all healthy", storagev1.StripeHealthy, shards(H, H, H, H, H, H), false, storagev1.StripeHealthy, true, [3]int32{6, 4, 2}, nil, false, "", false},
		{"one missing", storagev1.StripeHealthy, shards(H, M, H, H, H, H), false, storagev1.StripeDegraded, true, [3]int32{5, 3, 2}, []int{1}, true, TransitionDegraded, false},
		{"two lost parity", storagev1.StripeDegraded, shards(H, H, H, H, M, C), false, storagev1.StripeDegraded, true, [3]int32{4, 4, 0}, []int{4, 5}, true, "", false},
		{"rebuilding", storagev1.StripeDegraded, shards(H, R, H, H, H, H), true, storagev1.StripeRebuilding, true, [3]int32{5, 3, 2}, nil, false, "", false},
		{"rebuilding with a second loss", storagev1.StripeRebuilding, shards(H, R, M, H, H, H), true, storagev1.StripeRebuilding, true, [3]int32{4, 2, 2}, []int{2}, false, "", false},
		{"rebuilt", storagev1.StripeRebuilding, shards(H, H, H, H, H, H), false, storagev1.StripeHealthy, true, [3]int32{6, 4, 2}, nil, false, TransitionRebuilt, false},
		{"healed", storagev1.StripeDegraded, shards(H, H, H, H, H, H), false, storagev1.StripeHealthy, true, [3]int32{6, 4, 2}, nil, false, TransitionHealed, false},
		{"three lost: failed", storagev1.StripeDegraded, shards(M, M, M, H, H, H), false, storagev1.StripeFailed, true, [3]int32{3, 1, 2}, []int{0, 1, 2}, false, TransitionFailed, false},
		{"failed stays failed", storagev1.StripeFailed, shards(M, M, C, H, H, H), false, storagev1.StripeFailed, true, [3]int32{3, 1, 2}, []int{0, 1, 2}, false, "", false},
		{"failed recovers to degraded", storagev1.StripeFailed, shards(M, H, H, H, H, M), false, storagev1.StripeDegraded, true, [3]int32{4, 3, 1}, []int{0, 5}, true, TransitionRecovered, false},
		{"failed recovers to healthy", storagev1.StripeFailed, shards(H, H, H, H, H, H), false, storagev1.StripeHealthy, true, [3]int32{6, 4, 2}, nil, false, TransitionRecovered, false},
		{"adopted from writing: healthy", storagev1.StripeWriting, shards(H, H, H, H, H, H), false, storagev1.StripeHealthy, true, [3]int32{6, 4, 2}, nil, false, "", true},
		{"adopted without status: degraded", "", shards(H, M, H, H, H, H), false, storagev1.StripeDegraded, true, [3]int32{5, 3, 2}, []int{1}, true, TransitionDegraded, true},
		{"adopted from writing: failed", storagev1.StripeWriting, shards(M, M, M, H, H, H), false, storagev1.StripeFailed, true, [3]int32{3, 1, 2}, []int{0, 1, 2}, false, TransitionFailed, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := EvaluateStripe(StripeInput{Prev: c.prev, Shards: c.sh, DataShards: 4, Codec: rs, RebuildActive: c.rebuild, Adopt: c.adopt})
			if d.State != c.state || d.Owned != c.owned || d.NeedsRebuild != c.needRebuild || d.Transition != c.tr {
				t.Fatalf("got state=%s owned=%v needsRebuild=%v transition=%q", d.State, d.Owned, d.NeedsRebuild, d.Transition)
			}
			if got := [3]int32{d.HealthyShards, d.HealthyDataShards, d.HealthyParityShards}; got != c.healthy {
				t.Fatalf("healthy counts %v, want %v", got, c.healthy)
			}
			if !reflect.DeepEqual(d.Repairable, c.repairable) {
				t.Fatalf("repairable %v, want %v", d.Repairable, c.repairable)
			}
		})
	}
}

// LRC decodability is the codec's, not "any m": the decision must follow the
// oracle, including patterns of m losses that LRC cannot decode.
func TestEvaluateStripeFollowsLRCOracle(t *testing.T) {
	lrc, err := erasure.NewCodec(erasure.LRC, 4, 4) // l=2 local groups, g=2 globals
	if err != nil {
		t.Fatal(err)
	}
	n := 8
	sawFailedWithinM, sawDecodable := false, false
	for mask := 1; mask < 1<<n; mask++ {
		var lost []int
		st := make([]storagev1.ShardState, n)
		for i := range st {
			st[i] = storagev1.ShardHealthy
			if mask&(1<<i) != 0 {
				st[i] = storagev1.ShardMissing
				lost = append(lost, i)
			}
		}
		d := EvaluateStripe(StripeInput{Prev: storagev1.StripeHealthy, Shards: shards(st...), DataShards: 4, Codec: lrc})
		want := storagev1.StripeDegraded
		if !lrc.Decodable(lost) {
			want = storagev1.StripeFailed
			if len(lost) <= 4 {
				sawFailedWithinM = true
			}
		} else {
			sawDecodable = true
		}
		if d.State != want {
			t.Fatalf("lost %v: state %s, want %s", lost, d.State, want)
		}
	}
	if !sawFailedWithinM || !sawDecodable {
		t.Fatalf("the LRC table does not exercise both outcomes (failed within m: %v)", sawFailedWithinM)
	}
}

func TestScrubDue(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if due, _ := ScrubDue(time.Time{}, time.Hour, t0); !due {
		t.Fatal("never verified must be due")
	}
	due, next := ScrubDue(t0, time.Hour, t0.Add(59*time.Minute))
	if due || !next.Equal(t0.Add(time.Hour)) {
		t.Fatalf("due=%v next=%v", due, next)
	}
	if due, _ := ScrubDue(t0, time.Hour, t0.Add(time.Hour)); !due {
		t.Fatal("at the interval it is due")
	}
}

func TestWriterOwns(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	const grace = time.Minute
	cases := []struct {
		name  string
		state storagev1.ECStripeState
		at    time.Duration
		owned bool
	}{
		{"no status, just created", "", 0, true},
		{"no status, within grace", "", grace - time.Second, true},
		{"no status, grace passed", "", grace, false},
		{"writing, within grace", storagev1.StripeWriting, 30 * time.Second, true},
		{"writing, left by its writer", storagev1.StripeWriting, time.Hour, false},
		{"healthy is never the writer's", storagev1.StripeHealthy, 0, false},
		{"degraded is never the writer's", storagev1.StripeDegraded, 0, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			owned, until := WriterOwns(c.state, t0, grace, t0.Add(c.at))
			if owned != c.owned {
				t.Fatalf("owned=%v, want %v", owned, c.owned)
			}
			if owned && !until.Equal(t0.Add(grace)) {
				t.Fatalf("until %v, want %v", until, t0.Add(grace))
			}
		})
	}
}
