package placement

import (
	"errors"
	"fmt"
)

// MemberHealth is what is known of a member's pool.
type MemberHealth int

const (
	// HealthUp: the pool serves.
	HealthUp MemberHealth = iota
	// HealthSuspect: down for less than the down-out delay; keeps its slot.
	HealthSuspect
	// HealthOut: down for the down-out delay or longer; its slot is freed.
	HealthOut
)

// Member is a recorded member of a group and what is known of its pool.
type Member struct {
	Pool, Node string
	Health     MemberHealth
}

// Replacement is a slot whose lost member was replaced.
type Replacement struct {
	Slot     int
	From, To string
}

// Plan is the next membership of a group.
type Plan struct {
	Assignment
	// Replaced are the slots whose member was Out and now has a new one.
	Replaced []Replacement
	// Changed is true when a slot's pool changed (the epoch moves on).
	Changed bool
	// Stuck are the slots whose member is Out and that no eligible pool
	// could take (fewer eligible pools than slots): the member stays.
	Stuck []int
}

// Next is group g's membership after what is known of its pools. current
// is the recorded membership by slot (nil: the group is new), each with what
// is known of its pool (the caller says Out for what it cannot tell: unknown
// is never Up). pools are the candidates, Weight 0 for those not
// Up. A Suspect member keeps its slot (a restart costs no backfill), an Out
// member's slot goes to the next-ranked eligible pool (Choose: every other
// member keeps its slot), and with too few eligible pools an Out member
// stays, reported in Stuck. Next never applies a rebalancing move: moving a
// healthy slot needs its shards copied first (Rebalance says which).
func Next(policy string, g uint32, width int, pools []Pool, current []Member) (Plan, error) {
	if len(current) == 0 {
		a, err := Choose(policy, g, width, pools, nil)
		if err != nil {
			return Plan{}, err
		}
		return Plan{Assignment: a, Changed: true}, nil
	}
	if len(current) != width {
		return Plan{}, fmt.Errorf("placement: group %s/%d records %d members for %d slots", policy, g, len(current), width)
	}
	weight := map[string]uint64{}
	for _, p := range pools {
		weight[p.Name] = p.Weight
	}
	// Candidates: the pools as given, except that a Suspect member counts
	// as eligible for its own slot only (Choose keeps an eligible current
	// member and never gives one pool two slots).
	health := map[string]MemberHealth{}
	node := map[string]string{}
	for _, m := range current {
		if m.Pool != "" {
			health[m.Pool], node[m.Pool] = m.Health, m.Node
		}
	}
	cand := make([]Pool, 0, len(pools)+width)
	seen := map[string]bool{}
	for _, p := range pools {
		seen[p.Name] = true
		if h, ok := health[p.Name]; ok {
			switch h {
			case HealthSuspect:
				if p.Weight == 0 {
					p.Weight = 1
				}
			case HealthUp:
			default:
				p.Weight = 0
			}
		}
		cand = append(cand, p)
	}
	keep := make([]string, width)
	var out []int
	for i, m := range current {
		switch {
		case m.Pool == "", m.Health == HealthOut:
			out = append(out, i)
		case m.Health == HealthSuspect && !seen[m.Pool]:
			// A Suspect member whose pool is no longer listed (its DiskPool
			// or Lease gone for less than the delay) keeps its slot.
			n := m.Node
			if n == "" {
				n = "unknown-node-of-" + m.Pool
			}
			cand = append(cand, Pool{Name: m.Pool, Node: n, Weight: 1})
			seen[m.Pool] = true
			keep[i] = m.Pool
		case !seen[m.Pool]:
			// Up but not listed: the caller's lists disagree; treat as Out.
			out = append(out, i)
		default:
			keep[i] = m.Pool
		}
	}
	a, err := Choose(policy, g, width, cand, keep)
	if errors.Is(err, ErrNotEnoughPools) {
		// Too few eligible pools to refill a slot: the members stay, the
		// Out ones reported.
		members := make([]string, width)
		for i, m := range current {
			members[i] = m.Pool
		}
		return Plan{Assignment: Assignment{Members: members}, Stuck: out}, nil
	}
	if err != nil {
		return Plan{}, err
	}
	p := Plan{Assignment: a}
	for i := range a.Members {
		if a.Members[i] != current[i].Pool {
			p.Changed = true
			p.Replaced = append(p.Replaced, Replacement{Slot: i, From: current[i].Pool, To: a.Members[i]})
		}
	}
	return p, nil
}
