// Package placement decides where the shards of erasure-coded stripes live
// without a record per stripe (issue "Erasure coding at scale"; the design is
// in the README, "At scale: placement groups and a per-server stripe index").
//
// A policy's stripes fall into a fixed number of placement groups: a stripe's
// group is a hash of its volume's UID and its stripe id (GroupOf), so it is
// computed, never stored. A group has k+m slots; slot i holds shard i of every
// stripe of the group, each slot on its own pool (its member), on distinct
// nodes where the cluster has enough of them. Members are chosen by weighted
// rendezvous hashing (highest random weight) over the eligible pools, weighted
// by capacity (Choose), and recorded with the group: they change only on a
// topology event. A lost member frees its slot, which the next-ranked
// eligible pool fills, while every surviving member keeps its slot (so a lost
// pool moves exactly the shards it held); a new pool takes a slot only where
// it ranks among a group's top k+m, one slot at a time (Rebalance).
//
// The package is pure: no clock, no I/O, no Kubernetes types. The hash and the
// score are part of the on-disk contract (changing them would move every
// stripe's shards), pinned by golden tests.
package placement

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"sort"

	"github.com/zeebo/xxh3"
)

// Seeds separate the two uses of the hash; part of the on-disk contract.
const (
	groupSeed = 0x636f7563_68657367 // "couchesg"
	scoreSeed = 0x636f7563_68657370 // "couchesp"
)

// MaxGroups bounds the groups of one policy (a group is an API object).
const MaxGroups = 1 << 16

// ErrNotEnoughPools: fewer eligible pools than a group has slots.
var ErrNotEnoughPools = errors.New("not enough eligible pools")

// Pool is a candidate member: one shard server's pool.
type Pool struct {
	Name string
	Node string
	// Weight is the pool's relative share (its capacity in bytes, say);
	// 0 makes it ineligible (full, cordoned, or its DiskPool not Online).
	Weight uint64
}

// Assignment is a group's members by slot: Members[i] holds shard i.
type Assignment struct {
	Members []string
	// SharedNodes is true when two members sit on one node (the cluster has
	// fewer eligible nodes than slots): one node's loss then takes two shards.
	SharedNodes bool
}

// GroupOf returns the placement group (0 ≤ g < groups) of stripe stripeID of
// the volume with UID volumeUID. groups must be in [1, MaxGroups].
func GroupOf(volumeUID string, stripeID uint64, groups uint32) uint32 {
	if groups == 0 || groups > MaxGroups {
		panic(fmt.Sprintf("placement: groups %d outside [1, %d]", groups, MaxGroups))
	}
	var buf [96]byte // a UID is 36 bytes: no allocation on the stripe path
	b := append(buf[:0], volumeUID...)
	b = binary.BigEndian.AppendUint64(b, stripeID)
	// Multiply-shift instead of modulo: uniform for any group count.
	hi, _ := bits.Mul64(xxh3.HashSeed(b, groupSeed), uint64(groups))
	return uint32(hi)
}

// Score is pool's weighted rendezvous score for group g of policy: higher
// ranks first. For weight w and a uniform u in (0,1) it is w / -ln(u), which
// picks each pool with probability proportional to its weight.
func Score(policy string, g uint32, pool string, weight uint64) float64 {
	if weight == 0 {
		return 0
	}
	var buf [160]byte
	b := append(buf[:0], policy...)
	b = append(b, 0)
	b = binary.BigEndian.AppendUint32(b, g)
	b = append(b, 0)
	b = append(b, pool...)
	h := xxh3.HashSeed(b, scoreSeed)
	u := (float64(h>>11) + 0.5) / (1 << 53) // in (0,1), never 0 or 1
	return float64(weight) / -math.Log(u)
}

type ranked struct {
	Pool
	score float64
}

// rank orders the eligible pools for group g, best first (ties by name).
func rank(policy string, g uint32, pools []Pool) []ranked {
	r := make([]ranked, 0, len(pools))
	for _, p := range pools {
		if p.Weight > 0 {
			r = append(r, ranked{p, Score(policy, g, p.Name, p.Weight)})
		}
	}
	sort.Slice(r, func(i, j int) bool {
		if r[i].score != r[j].score {
			return r[i].score > r[j].score
		}
		return r[i].Name < r[j].Name
	})
	return r
}

func validate(width int, pools []Pool) error {
	if width < 1 || width > 255 {
		return fmt.Errorf("placement: width %d: a group has between 1 and 255 slots (k+m)", width)
	}
	seen := make(map[string]bool, len(pools))
	for i, p := range pools {
		if p.Name == "" {
			return fmt.Errorf("placement: pools[%d].name is empty", i)
		}
		if p.Node == "" {
			return fmt.Errorf("placement: pools[%d] (%s): node is empty", i, p.Name)
		}
		if seen[p.Name] {
			return fmt.Errorf("placement: pools[%d]: pool %q listed twice", i, p.Name)
		}
		seen[p.Name] = true
	}
	return nil
}

// Choose returns the members of group g of policy, width (k+m) slots, over
// pools. Every member of current (by slot; "" for a vacant slot) that is
// still eligible keeps its slot; the other slots are filled in rank order by
// eligible pools not already members, preferring nodes no member uses. With
// current nil or empty it is the group's ideal assignment. Fewer eligible
// pools than width is ErrNotEnoughPools.
func Choose(policy string, g uint32, width int, pools []Pool, current []string) (Assignment, error) {
	if err := validate(width, pools); err != nil {
		return Assignment{}, err
	}
	if len(current) > width {
		return Assignment{}, fmt.Errorf("placement: group %s/%d records %d members for %d slots", policy, g, len(current), width)
	}
	eligible := map[string]Pool{}
	for _, p := range pools {
		if p.Weight > 0 {
			eligible[p.Name] = p
		}
	}
	if len(eligible) < width {
		return Assignment{}, fmt.Errorf("%w: group %s/%d needs %d pools on distinct nodes, %d of %d pools are eligible", ErrNotEnoughPools, policy, g, width, len(eligible), len(pools))
	}
	members := make([]string, width)
	usedPool := map[string]bool{}
	usedNode := map[string]int{}
	for i, name := range current {
		p, ok := eligible[name]
		if !ok || usedPool[name] {
			continue // lost, ineligible, or recorded twice: the slot is vacant
		}
		members[i] = name
		usedPool[name] = true
		usedNode[p.Node]++
	}
	r := rank(policy, g, pools)
	// Vacant slots in order, each filled by the best-ranked unused pool on
	// the least-used node: an unused node while there is one, and with too
	// few nodes the shards spread as evenly as the nodes allow.
	for i := range members {
		if members[i] != "" {
			continue
		}
		best := -1
		for j, c := range r {
			if usedPool[c.Name] {
				continue
			}
			if best < 0 || usedNode[c.Node] < usedNode[r[best].Node] {
				best = j
			}
		}
		c := r[best] // exists: at least width eligible pools
		members[i] = c.Name
		usedPool[c.Name] = true
		usedNode[c.Node]++
	}
	a := Assignment{Members: members}
	for _, n := range usedNode {
		if n > 1 {
			a.SharedNodes = true
		}
	}
	return a, nil
}

// Move is one slot of a group going to another pool.
type Move struct {
	Slot     int
	From, To string
}

// Rebalance returns the one move that brings group g closest to its ideal
// assignment, if any: a slot whose member is not among the group's ideal
// members (or shares a node that a better-ranked pool on a free node would
// not) goes to the best-ranked ideal member not yet in the group. Moving one
// slot at a time keeps at most one shard of each stripe in flight. ok is
// false when the group is ideal or no move is possible.
func Rebalance(policy string, g uint32, width int, pools []Pool, current []string) (Move, bool, error) {
	ideal, err := Choose(policy, g, width, pools, nil)
	if err != nil {
		return Move{}, false, err
	}
	if len(current) != width {
		return Move{}, false, fmt.Errorf("placement: group %s/%d records %d members for %d slots", policy, g, len(current), width)
	}
	want := map[string]bool{}
	for _, m := range ideal.Members {
		want[m] = true
	}
	have := map[string]bool{}
	for _, m := range current {
		have[m] = true
	}
	// The incoming pool: the best-ranked ideal member the group lacks.
	var to string
	for _, c := range rank(policy, g, pools) {
		if want[c.Name] && !have[c.Name] {
			to = c.Name
			break
		}
	}
	if to == "" {
		return Move{}, false, nil
	}
	// The outgoing slot: a non-ideal member on the incoming pool's node (so
	// the move never puts two shards of a stripe on one node), else the
	// worst-ranked non-ideal member (a vacant or ineligible slot first).
	score := map[string]float64{}
	node := map[string]string{}
	for _, p := range pools {
		score[p.Name] = Score(policy, g, p.Name, p.Weight)
		node[p.Name] = p.Node
	}
	slot := -1
	for i, m := range current {
		if want[m] {
			continue
		}
		if m != "" && node[m] == node[to] {
			slot = i
			break
		}
		if slot < 0 || score[m] < score[current[slot]] {
			slot = i
		}
	}
	if slot < 0 {
		return Move{}, false, nil
	}
	return Move{Slot: slot, From: current[slot], To: to}, true, nil
}
