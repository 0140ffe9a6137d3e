package stripe

import (
	"errors"
	"testing"

	"github.com/billyronks/couchestor/pkg/shardserver"
)

// The quorum rule of the PlacementGroups layout, 4+2: the current version
// is the newest one k members hold, and the decision is refused (in doubt)
// when k or more slots could hold an acknowledged newer one (every
// acknowledged version is durable on at least max(k, minHealthyShards)
// members, so n-k+1 members that positively rule it out are a read quorum
// that meets every write quorum). Unknown is never absent, and
// never an older generation.
func TestQuorumDecision(t *testing.T) {
	const k = 4
	held := func(gen int64, sum string) shardserver.HeldShard {
		return shardserver.HeldShard{Generation: gen, StripeChecksum: sum}
	}
	known := func(sh ...shardserver.HeldShard) slotAnswer { return slotAnswer{known: true, shards: sh} }
	down := slotAnswer{err: errors.New("connection refused")}
	backfilling := slotAnswer{known: true, backfilling: true}
	g1, g2, g3 := held(1, "a"), held(2, "b"), held(3, "c")
	for _, tc := range []struct {
		name    string
		answers []slotAnswer
		gen     int64
		inDoubt bool
	}{
		{"every member holds generation 2", []slotAnswer{known(g2), known(g2), known(g2), known(g2), known(g2), known(g2)}, 2, false},
		{"never written: every member says nothing", []slotAnswer{known(), known(), known(), known(), known(), known()}, 0, false},
		{"never written, two members down: 4 positive absences", []slotAnswer{known(), known(), known(), known(), down, down}, 0, false},
		{"never written as far as 3 know, 3 down: 3 absences are a read quorum (n-k+1)", []slotAnswer{known(), known(), known(), down, down, down}, 0, false},
		{"never written as far as 2 know, 4 down: in doubt, not zeros", []slotAnswer{known(), known(), down, down, down, down}, 0, true},
		{"a backfilling member's nothing is not an absence", []slotAnswer{known(), known(), backfilling, down, down, down}, 0, true},
		{"two members lost after a full write: still generation 2", []slotAnswer{known(g2), known(g2), known(g2), known(g2), down, down}, 2, false},
		{"a writer died after 3 of its generation-3 shards: generation 2", []slotAnswer{known(g2, g3), known(g2, g3), known(g2, g3), known(g2), known(g2), known(g2)}, 2, false},
		{"... and one member down: generation 3 may have been acknowledged", []slotAnswer{known(g2, g3), known(g2, g3), known(g2, g3), known(g2), known(g2), down}, 0, true},
		{"generation 3 at k members, old not yet freed: generation 3", []slotAnswer{known(g2, g3), known(g2, g3), known(g2, g3), known(g2, g3), known(g2), known(g2)}, 3, false},
		{"generation 3 acknowledged at 4, then two of them lost: not generation 2", []slotAnswer{known(g2, g3), known(g2, g3), down, down, known(g2), known(g2)}, 0, true},
		{"a dead writer's orphans of a newer generation on 2 members", []slotAnswer{known(g1, g3), known(g1, g3), known(g1), known(g1), known(g1), known(g1)}, 1, false},
		{"two writers of one generation: the one k members hold", []slotAnswer{known(g2), known(g2), known(g2), known(g2), known(held(2, "z")), known(held(2, "z"))}, 2, false},
		{"two writers of one generation, 3 each: in doubt", []slotAnswer{known(g2), known(g2), known(g2), known(held(2, "z")), known(held(2, "z")), known(held(2, "z"))}, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := decideQuorum(tc.answers, k, func(int, shardserver.HeldShard) bool { return true })
			inDoubt := d.possible >= k
			if inDoubt != tc.inDoubt || (!inDoubt && d.cur.gen != tc.gen) {
				t.Fatalf("generation %d with %d holders, %d slots could hold a newer one (in doubt: %v); want generation %d, in doubt %v",
					d.cur.gen, len(d.holders), d.possible, inDoubt, tc.gen, tc.inDoubt)
			}
		})
	}
}
