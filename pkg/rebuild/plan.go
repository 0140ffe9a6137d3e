// Package rebuild owns the reconstruction of lost or corrupt shards of
// ECStripes onto healthy pools: where replacements go (PlanTargets), and the
// Engine that reads the surviving shards, rebuilds the lost ones with the
// policy's codec, writes them to new pools and records them copy-on-write
// (shardLocations updated with a resourceVersion precondition, spec.generation
// bumped, old space freed where reachable). Its intent is persisted as an
// annotation on the ECStripe before any shard is written, so a rebuild
// interrupted by an operator restart is resumed by the next leader.
//
// It decides nothing about health: the ECStripe controller (pkg/ecstate)
// says which shards to rebuild and when.
package rebuild

import (
	"fmt"
	"sort"
)

// Candidate is a pool a replacement shard may go to.
type Candidate struct {
	Pool, Node, Address string
	// FreeBytes is the pool's free space (-1: unknown, not checked).
	FreeBytes int64
}

// Placement is where the replacement of one shard goes.
type Placement struct {
	Shard int
	Candidate
	// SharedNode is true when the pool's node already holds a shard of the stripe.
	SharedNode bool
}

// PlanTargets chooses a pool for each shard in rebuild. kept are the
// (pool, node) of the shards that stay, by shard index. Replacements go to
// pools whose node the stripe does not use when possible (shards of one
// stripe on distinct nodes), else to pools the stripe does not use on a node
// it does (SharedNode, which the caller warns about); never to a pool that
// already holds a shard of the stripe. A pool needs room for need bytes.
func PlanTargets(rebuild []int, keptPools, keptNodes map[int]string, candidates []Candidate, need int64) ([]Placement, error) {
	usedPools, usedNodes := map[string]bool{}, map[string]bool{}
	for _, p := range keptPools {
		usedPools[p] = true
	}
	for _, n := range keptNodes {
		usedNodes[n] = true
	}
	cands := append([]Candidate(nil), candidates...)
	// Most free space first, then by name: deterministic and spreads load.
	sort.SliceStable(cands, func(i, j int) bool {
		if cands[i].FreeBytes != cands[j].FreeBytes {
			return cands[i].FreeBytes > cands[j].FreeBytes
		}
		return cands[i].Pool < cands[j].Pool
	})
	shards := append([]int(nil), rebuild...)
	sort.Ints(shards)
	var out []Placement
	for _, i := range shards {
		pick := -1
		for pass := 0; pass < 2 && pick < 0; pass++ {
			for ci, c := range cands {
				if usedPools[c.Pool] || (c.FreeBytes >= 0 && c.FreeBytes < need) {
					continue
				}
				if pass == 0 && usedNodes[c.Node] {
					continue
				}
				pick = ci
				break
			}
		}
		if pick < 0 {
			return nil, fmt.Errorf("no healthy pool with %d free bytes left for shard %d: every live pool already holds a shard of the stripe or is full (%d candidates)", need, i, len(candidates))
		}
		c := cands[pick]
		out = append(out, Placement{Shard: i, Candidate: c, SharedNode: usedNodes[c.Node]})
		usedPools[c.Pool] = true
		usedNodes[c.Node] = true
		if c.FreeBytes >= 0 {
			cands[pick].FreeBytes -= need
		}
	}
	return out, nil
}
