package placement

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

// pools returns n pools of equal weight, perNode pools on each node.
func pools(n, perNode int) []Pool {
	ps := make([]Pool, n)
	for i := range ps {
		ps[i] = Pool{Name: fmt.Sprintf("pool-%02d", i), Node: fmt.Sprintf("node-%02d", i/perNode), Weight: 1 << 40}
	}
	return ps
}

func nodeOf(ps []Pool) map[string]string {
	m := map[string]string{}
	for _, p := range ps {
		m[p.Name] = p.Node
	}
	return m
}

// The hash is the on-disk contract: a change would move every stripe.
func TestGroupOfIsPinned(t *testing.T) {
	cases := []struct {
		uid    string
		stripe uint64
		groups uint32
		want   uint32
	}{
		{"8d7e3f0a-2f6b-4c1e-9a57-3b1f0c2d4e5f", 0, 128, 77},
		{"8d7e3f0a-2f6b-4c1e-9a57-3b1f0c2d4e5f", 1, 128, 90},
		{"8d7e3f0a-2f6b-4c1e-9a57-3b1f0c2d4e5f", 1 << 40, 128, 83},
		{"00000000-0000-0000-0000-000000000000", 7, 1, 0},
		{"00000000-0000-0000-0000-000000000000", 7, MaxGroups, 41814},
	}
	for _, c := range cases {
		if got := GroupOf(c.uid, c.stripe, c.groups); got != c.want {
			t.Errorf("GroupOf(%q, %d, %d) = %d, want %d (the stripe→group hash changed: every stored stripe would be looked up in the wrong group)", c.uid, c.stripe, c.groups, got, c.want)
		}
	}
	if got := Score("cold-4-2", 3, "pool-a", 1); fmt.Sprintf("%.9f", got) != "1.547991700" {
		t.Errorf("Score(cold-4-2, 3, pool-a, 1) = %.9f, want 1.547991700 (the rendezvous score changed: every group's ideal members would move)", got)
	}
}

func TestGroupOfSpreadsStripesEvenly(t *testing.T) {
	const groups, stripes = 64, 200_000
	count := make([]int, groups)
	for v := 0; v < 4; v++ {
		uid := fmt.Sprintf("volume-uid-%d", v)
		for s := uint64(0); s < stripes/4; s++ {
			g := GroupOf(uid, s, groups)
			if g >= groups {
				t.Fatalf("GroupOf(%s, %d) = %d, outside [0, %d)", uid, s, g, groups)
			}
			count[g]++
		}
	}
	mean := float64(stripes) / groups
	for g, n := range count {
		if d := (float64(n) - mean) / mean; d > 0.08 || d < -0.08 {
			t.Errorf("group %d holds %d stripes, %.1f %% off the mean %.0f", g, n, 100*d, mean)
		}
	}
}

func TestChooseIdealOnDistinctNodes(t *testing.T) {
	ps := pools(12, 1)
	node := nodeOf(ps)
	for g := uint32(0); g < 200; g++ {
		a, err := Choose("cold-4-2", g, 6, ps, nil)
		if err != nil {
			t.Fatal(err)
		}
		if a.SharedNodes {
			t.Fatalf("group %d: shared nodes with 12 nodes for 6 slots: %v", g, a.Members)
		}
		seen := map[string]bool{}
		for i, m := range a.Members {
			if m == "" || seen[node[m]] {
				t.Fatalf("group %d slot %d: member %q (node %q) empty or on a used node: %v", g, i, m, node[m], a.Members)
			}
			seen[node[m]] = true
		}
		// The input's order does not matter.
		shuffled := append([]Pool(nil), ps...)
		rand.New(rand.NewPCG(uint64(g), 1)).Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		b, err := Choose("cold-4-2", g, 6, shuffled, nil)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(a.Members) != fmt.Sprint(b.Members) {
			t.Fatalf("group %d: members depend on the pools' order: %v vs %v", g, a.Members, b.Members)
		}
	}
	// Policies and groups differ: not every group gets the same members.
	a, _ := Choose("cold-4-2", 1, 6, ps, nil)
	b, _ := Choose("cold-4-2", 2, 6, ps, nil)
	c, _ := Choose("other", 1, 6, ps, nil)
	if fmt.Sprint(a.Members) == fmt.Sprint(b.Members) && fmt.Sprint(a.Members) == fmt.Sprint(c.Members) {
		t.Fatalf("groups 1, 2 and another policy's group 1 all got %v", a.Members)
	}
}

func TestChooseSharesNodesOnlyWhenItMust(t *testing.T) {
	ps := pools(9, 3) // 3 nodes, 3 pools each
	node := nodeOf(ps)
	for g := uint32(0); g < 100; g++ {
		a, err := Choose("p", g, 6, ps, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !a.SharedNodes {
			t.Fatalf("group %d: 6 slots on 3 nodes not flagged SharedNodes: %v", g, a.Members)
		}
		per := map[string]int{}
		for _, m := range a.Members {
			per[node[m]]++
		}
		for n, c := range per {
			if c != 2 {
				t.Fatalf("group %d: node %s holds %d of 6 shards, want 2 each: %v", g, n, c, a.Members)
			}
		}
	}
}

func TestChooseRefusesTooFewPools(t *testing.T) {
	ps := pools(6, 1)
	ps[2].Weight = 0 // full or cordoned
	_, err := Choose("cold-4-2", 9, 6, ps, nil)
	if !errors.Is(err, ErrNotEnoughPools) {
		t.Fatalf("Choose over 5 eligible of 6 pools for 6 slots: err %v, want ErrNotEnoughPools", err)
	}
	for _, want := range []string{"cold-4-2/9", "needs 6", "5 of 6 pools are eligible"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}

func TestChooseRefusesBadInput(t *testing.T) {
	ps := pools(8, 1)
	cases := []struct {
		name    string
		width   int
		pools   []Pool
		current []string
		want    string
	}{
		{"width 0", 0, ps, nil, "width 0"},
		{"width 256", 256, ps, nil, "width 256"},
		{"empty name", 4, append([]Pool{{Node: "n", Weight: 1}}, ps...), nil, "pools[0].name is empty"},
		{"empty node", 4, append([]Pool{{Name: "x", Weight: 1}}, ps...), nil, "pools[0] (x): node is empty"},
		{"duplicate", 4, append(append([]Pool(nil), ps...), ps[3]), nil, `pool "pool-03" listed twice`},
		{"too many members", 4, ps, []string{"a", "b", "c", "d", "e"}, "records 5 members for 4 slots"},
	}
	for _, c := range cases {
		_, err := Choose("p", 0, c.width, c.pools, c.current)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err %v, want one saying %q", c.name, err, c.want)
		}
	}
}

// A lost member moves exactly its own slot; every survivor keeps its slot.
func TestLostMemberMovesOnlyItsSlot(t *testing.T) {
	ps := pools(12, 1)
	node := nodeOf(ps)
	for g := uint32(0); g < 300; g++ {
		before, err := Choose("cold-4-2", g, 6, ps, nil)
		if err != nil {
			t.Fatal(err)
		}
		lostSlot := int(g % 6)
		lost := before.Members[lostSlot]
		var rest []Pool
		for _, p := range ps {
			if p.Name != lost {
				rest = append(rest, p)
			}
		}
		after, err := Choose("cold-4-2", g, 6, rest, before.Members)
		if err != nil {
			t.Fatal(err)
		}
		nodes := map[string]bool{}
		for i := range after.Members {
			if i != lostSlot && after.Members[i] != before.Members[i] {
				t.Fatalf("group %d: losing %s (slot %d) moved slot %d: %v → %v", g, lost, lostSlot, i, before.Members, after.Members)
			}
			if nodes[node[after.Members[i]]] {
				t.Fatalf("group %d: replacement shares a node: %v", g, after.Members)
			}
			nodes[node[after.Members[i]]] = true
		}
		if r := after.Members[lostSlot]; r == lost || r == "" {
			t.Fatalf("group %d: slot %d not refilled after losing %s: %v", g, lostSlot, lost, after.Members)
		}
		// The replacement is deterministic: the same survivors give the same answer.
		again, _ := Choose("cold-4-2", g, 6, rest, before.Members)
		if fmt.Sprint(again.Members) != fmt.Sprint(after.Members) {
			t.Fatalf("group %d: replacement not deterministic: %v vs %v", g, after.Members, again.Members)
		}
		// Weight 0 (a pool whose DiskPool went offline) is the same as gone.
		drained := append([]Pool(nil), ps...)
		for i := range drained {
			if drained[i].Name == lost {
				drained[i].Weight = 0
			}
		}
		viaWeight, _ := Choose("cold-4-2", g, 6, drained, before.Members)
		if fmt.Sprint(viaWeight.Members) != fmt.Sprint(after.Members) {
			t.Fatalf("group %d: an ineligible pool is not treated as lost: %v vs %v", g, viaWeight.Members, after.Members)
		}
	}
}

func TestTopologyEventsElsewhereChangeNothing(t *testing.T) {
	ps := pools(12, 1)
	for g := uint32(0); g < 200; g++ {
		before, _ := Choose("cold-4-2", g, 6, ps, nil)
		in := map[string]bool{}
		for _, m := range before.Members {
			in[m] = true
		}
		var rest []Pool
		for _, p := range ps {
			if !in[p.Name] && len(rest) == 0 {
				continue // drop one non-member
			}
			rest = append(rest, p)
		}
		grown := append(append([]Pool(nil), ps...), Pool{Name: "pool-new", Node: "node-new", Weight: 1 << 40})
		for name, set := range map[string][]Pool{"a non-member lost": rest, "a pool joined": grown} {
			after, err := Choose("cold-4-2", g, 6, set, before.Members)
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(after.Members) != fmt.Sprint(before.Members) {
				t.Fatalf("group %d: %s moved members: %v → %v", g, name, before.Members, after.Members)
			}
		}
	}
}

// A new pool takes slots only where it ranks among a group's top k+m: about
// (k+m)/n of the groups, one slot each, never sharing a node on the way.
func TestRebalanceAfterAPoolJoins(t *testing.T) {
	ps := pools(12, 1)
	node := nodeOf(ps)
	grown := append(append([]Pool(nil), ps...), Pool{Name: "pool-new", Node: "node-new", Weight: 1 << 40})
	node["pool-new"] = "node-new"
	const groups = 1000
	moved := 0
	for g := uint32(0); g < groups; g++ {
		cur, _ := Choose("cold-4-2", g, 6, ps, nil)
		members := cur.Members
		steps := 0
		for {
			mv, ok, err := Rebalance("cold-4-2", g, 6, grown, members)
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				break
			}
			if mv.To != "pool-new" || members[mv.Slot] != mv.From {
				t.Fatalf("group %d: move %+v on %v: only the new pool may come in, from the slot named", g, mv, members)
			}
			members = append([]string(nil), members...)
			members[mv.Slot] = mv.To
			nodes := map[string]bool{}
			for _, m := range members {
				if nodes[node[m]] {
					t.Fatalf("group %d: move %+v put two shards on node %s: %v", g, mv, node[m], members)
				}
				nodes[node[m]] = true
			}
			if steps++; steps > 6 {
				t.Fatalf("group %d: rebalance does not converge: %v", g, members)
			}
		}
		if steps > 1 {
			t.Fatalf("group %d: one joining pool caused %d moves", g, steps)
		}
		moved += steps
		ideal, _ := Choose("cold-4-2", g, 6, grown, nil)
		if !sameSet(ideal.Members, members) {
			t.Fatalf("group %d: after rebalance %v, ideal %v", g, members, ideal.Members)
		}
	}
	// Expected share: 6/13 ≈ 46 %.
	if f := float64(moved) / groups; f < 0.38 || f > 0.55 {
		t.Fatalf("a 13th pool moved into %.0f %% of the groups, want about 46 %% (6/13)", 100*f)
	}
}

func TestRebalanceFixesSharedNodesWhenNodesArrive(t *testing.T) {
	small := pools(9, 3) // 3 nodes
	big := append(append([]Pool(nil), small...), pools(6, 1)...)
	for i := 9; i < len(big); i++ { // 6 more nodes with one pool each
		big[i].Name = fmt.Sprintf("extra-%d", i)
		big[i].Node = fmt.Sprintf("extra-node-%d", i)
	}
	node := nodeOf(big)
	for g := uint32(0); g < 100; g++ {
		cur, _ := Choose("p", g, 6, small, nil)
		members := cur.Members
		for steps := 0; ; steps++ {
			mv, ok, err := Rebalance("p", g, 6, big, members)
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				break
			}
			members = append([]string(nil), members...)
			members[mv.Slot] = mv.To
			if steps > 6 {
				t.Fatalf("group %d: no convergence: %v", g, members)
			}
		}
		nodes := map[string]bool{}
		for _, m := range members {
			if nodes[node[m]] {
				t.Fatalf("group %d: still two shards on node %s after rebalancing onto 9 nodes: %v", g, node[m], members)
			}
			nodes[node[m]] = true
		}
	}
}

func TestEqualPoolsGetEqualShares(t *testing.T) {
	ps := pools(12, 1)
	count := map[string]int{}
	const groups = 2400
	for g := uint32(0); g < groups; g++ {
		a, _ := Choose("cold-4-2", g, 6, ps, nil)
		for _, m := range a.Members {
			count[m]++
		}
	}
	mean := float64(groups*6) / 12
	for _, p := range ps {
		if d := (float64(count[p.Name]) - mean) / mean; d > 0.1 || d < -0.1 {
			t.Errorf("%s is a member of %d groups, %.1f %% off the mean %.0f", p.Name, count[p.Name], 100*d, mean)
		}
	}
}

func TestHeavierPoolsGetMoreGroups(t *testing.T) {
	ps := pools(8, 1)
	ps[0].Weight *= 3
	ps[7].Weight = 0
	count := map[string]int{}
	for g := uint32(0); g < 3000; g++ {
		a, _ := Choose("p", g, 2, ps, nil)
		for _, m := range a.Members {
			count[m]++
		}
	}
	if count[ps[7].Name] != 0 {
		t.Fatalf("a pool of weight 0 was chosen %d times", count[ps[7].Name])
	}
	for _, p := range ps[1:7] {
		if float64(count[ps[0].Name]) < 2*float64(count[p.Name]) {
			t.Errorf("pool of weight 3 in %d groups, %s of weight 1 in %d: want well over twice", count[ps[0].Name], p.Name, count[p.Name])
		}
	}
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	m := map[string]int{}
	for _, x := range a {
		m[x]++
	}
	for _, x := range b {
		m[x]--
	}
	for _, v := range m {
		if v != 0 {
			return false
		}
	}
	return true
}

// A pool joining on a node that already holds a member replaces that member,
// never another slot: no single move puts two shards of a stripe on a node.
func TestRebalanceOntoAnOccupiedNodeReplacesItsMember(t *testing.T) {
	ps := pools(12, 1)
	// Two heavy pools join at once, so two members are displaced and the
	// move must pick the right one.
	grown := append(append([]Pool(nil), ps...), Pool{Name: "pool-00-big", Node: "node-00", Weight: 1 << 44},
		Pool{Name: "pool-new-big", Node: "node-new", Weight: 1 << 44})
	checked := 0
	for g := uint32(0); g < 400; g++ {
		cur, _ := Choose("cold-4-2", g, 6, ps, nil)
		slot := -1
		for i, m := range cur.Members {
			if m == "pool-00" {
				slot = i
			}
		}
		if slot < 0 {
			continue
		}
		mv, ok, err := Rebalance("cold-4-2", g, 6, grown, cur.Members)
		if err != nil {
			t.Fatal(err)
		}
		if !ok || mv.To != "pool-00-big" {
			continue // the heavy pool does not rank in this group's top 6
		}
		checked++
		if mv.Slot != slot || mv.From != "pool-00" {
			t.Fatalf("group %d: pool-00-big (node-00) came in at slot %d replacing %s; node-00's member pool-00 sits in slot %d: two shards on node-00", g, mv.Slot, mv.From, slot)
		}
	}
	if checked < 50 {
		t.Fatalf("only %d groups exercised the case", checked)
	}
}
