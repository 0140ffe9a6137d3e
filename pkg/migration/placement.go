package migration

import (
	"errors"
	"fmt"
	"maps"
	"sort"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// DefaultPoolHeadroom is the highest used fraction a pool may reach by
// receiving a replica.
const DefaultPoolHeadroom = 0.85

// Tier is the set of pools a LabelSelector selects.
type Tier struct {
	selector labels.Selector
	pools    map[string]Pool // by name, pools of the tier
}

// NewTier selects the pools of a tier. A nil selector selects nothing.
func NewTier(sel *metav1.LabelSelector, pools []Pool) (*Tier, error) {
	t := &Tier{selector: labels.Nothing(), pools: map[string]Pool{}}
	if sel != nil {
		s, err := metav1.LabelSelectorAsSelector(sel)
		if err != nil {
			return nil, fmt.Errorf("tier pool selector: %w", err)
		}
		t.selector = s
	}
	for _, p := range pools {
		if t.selector.Matches(labels.Set(p.Labels)) {
			t.pools[p.Name] = p
		}
	}
	return t, nil
}

// Has says whether pool belongs to the tier.
func (t *Tier) Has(pool string) bool { _, ok := t.pools[pool]; return ok }

// CommonLabels are the topology labels every pool of the tier carries (the
// intersection). As a topology inclusion they make every pool of the tier
// eligible. Empty when the tier has no pools or they share no label.
func (t *Tier) CommonLabels() map[string]string {
	var common map[string]string
	for _, p := range t.pools {
		if common == nil {
			common = maps.Clone(p.Labels)
			if common == nil {
				common = map[string]string{}
			}
			continue
		}
		for k, v := range common {
			if p.Labels[k] != v {
				delete(common, k)
			}
		}
	}
	return common
}

// Plan is one replica move: the target pool and the replica it replaces.
type Plan struct {
	Pool      Pool
	Replacing string // UUID; empty in preservation mode when nothing is replaced
}

// ChooseTarget picks the pool for the next replica of vol on tier:
//   - the pool belongs to the tier, its pool_status is Online, it holds no
//     replica of the volume;
//   - its available bytes are at least the volume's size and, after
//     placement, its used fraction stays at or below headroom;
//   - its node holds no replica of the volume, or — only when sameNode is
//     true — exactly one replica that is outside the tier (the one this move
//     replaces: node1-cold -> node1-hot). Mayastor 2.x never places a replica
//     on a node that holds one of the volume, so its backend passes false;
//
// Ties: most available bytes first, then name. Replacing is the off-tier
// replica on the target's node if there is one, else the first off-tier
// replica (unhealthy first, then by UUID). With no candidate, the error says
// why each pool of the tier was refused.
func ChooseTarget(vol Volume, tier *Tier, headroom float64, rules Rules) (Plan, error) {
	sameNode := rules.SameNodeMoves
	if headroom <= 0 || headroom > 1 {
		headroom = DefaultPoolHeadroom
	}
	byNode := map[string][]Replica{}
	onPool := map[string]bool{}
	for _, r := range vol.Replicas {
		byNode[r.Node] = append(byNode[r.Node], r)
		onPool[r.Pool] = true
	}
	var cands []Pool
	var refused []string
	names := make([]string, 0, len(tier.pools))
	for n := range tier.pools {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		p := tier.pools[n]
		switch {
		case !p.Online:
			refused = append(refused, fmt.Sprintf("%s: pool_status %q is not Online", p.Name, p.Status))
		case onPool[p.Name]:
			refused = append(refused, fmt.Sprintf("%s: already holds a replica of the volume", p.Name))
		case p.Capacity <= 0:
			refused = append(refused, fmt.Sprintf("%s: capacity unknown", p.Name))
		case p.Available < vol.Size:
			refused = append(refused, fmt.Sprintf("%s: %d bytes available < volume size %d", p.Name, p.Available, vol.Size))
		case float64(p.Used+vol.Size) > headroom*float64(p.Capacity):
			refused = append(refused, fmt.Sprintf("%s: would be %.0f%% used > headroom %.0f%%", p.Name,
				100*float64(p.Used+vol.Size)/float64(p.Capacity), 100*headroom))
		default:
			if !sameNode && len(byNode[p.Node]) > 0 {
				refused = append(refused, fmt.Sprintf("%s: node %s holds replica %s of the volume, and Mayastor never places two replicas of a volume on one node", p.Name, p.Node, byNode[p.Node][0].UUID))
				continue
			}
			if reason := nodeConflict(byNode[p.Node], tier, ""); reason != "" {
				refused = append(refused, fmt.Sprintf("%s: node %s %s", p.Name, p.Node, reason))
				continue
			}
			cands = append(cands, p)
		}
	}
	if len(cands) == 0 {
		if len(names) == 0 {
			return Plan{}, fmt.Errorf("no DiskPool matches the tier's pool selector")
		}
		return Plan{}, fmt.Errorf("no pool of the tier qualifies: %s", strings.Join(refused, "; "))
	}
	sort.Slice(cands, func(i, j int) bool {
		if cands[i].Available != cands[j].Available {
			return cands[i].Available > cands[j].Available
		}
		return cands[i].Name < cands[j].Name
	})
	target := cands[0]
	return Plan{Pool: target, Replacing: replacedBy(vol, tier, target.Node)}, nil
}

// ChooseTargetFor is ChooseTarget under rules that also refuse a move whose
// scale-down the control plane would not perform on the right replica.
func ChooseTargetFor(vol Volume, tier *Tier, headroom float64, rules Rules) (Plan, error) {
	if why := NexusLocalBlock(vol, tier, rules); why != "" {
		return Plan{}, errors.New(why)
	}
	return ChooseTarget(vol, tier, headroom, rules)
}

// Rules are what a backend's control plane does that placement must account for.
type Rules struct {
	// SameNodeMoves: a new replica may go to the node of the replica it replaces.
	SameNodeMoves bool
	// TopologyWritable: the volume's pool topology can be changed (the
	// schema's MayastorVolume); else placement is steered per scale-up.
	TopologyWritable bool
	// NexusLocalRemovedLast: on scale-down the control plane removes a
	// replica remote to the volume's target before the one local to it
	// (Mayastor 2.x), so a nexus-local replica outside the tier cannot be
	// the one removed while a remote replica remains.
	NexusLocalRemovedLast bool
}

// NexusLocalBlock says why the off-tier replicas of a published volume cannot
// all be removed by scale-downs ("" when they can): under
// NexusLocalRemovedLast, a scale-down from n+1 replicas always has a remote
// one to remove (one replica per node), so an off-tier replica local to the
// target is never the one removed. The move is refused before it starts,
// rather than after moving the remote replicas (leaving the volume across
// two tiers) or, with a single replica, adding one that Mayastor then removes.
func NexusLocalBlock(vol Volume, tier *Tier, rules Rules) string {
	if !rules.NexusLocalRemovedLast || !vol.Published || vol.TargetNode == "" {
		return ""
	}
	_, off := split(vol, tier)
	for _, r := range off {
		if r.Node == vol.TargetNode {
			return fmt.Sprintf("replica %s on pool %s is local to the volume's target on node %s, and Mayastor removes remote replicas before the nexus-local one: it can move once the volume is published on another node",
				r.UUID, r.Pool, vol.TargetNode)
		}
	}
	return ""
}

// nodeConflict says why a node cannot take a new replica of the volume, given
// the replicas already on it (except the one named by self): "" when it can.
func nodeConflict(onNode []Replica, tier *Tier, self string) string {
	var others []Replica
	for _, r := range onNode {
		if r.UUID != self {
			others = append(others, r)
		}
	}
	switch {
	case len(others) == 0:
		return ""
	case len(others) == 1 && !tier.Has(others[0].Pool):
		return "" // the replica this move replaces
	default:
		ids := make([]string, len(others))
		for i, r := range others {
			ids[i] = r.UUID
		}
		return fmt.Sprintf("holds replica(s) %s of the volume", strings.Join(ids, ","))
	}
}

// replacedBy is the off-tier replica a new replica on node replaces.
func replacedBy(vol Volume, tier *Tier, node string) string {
	var off []Replica
	for _, r := range vol.Replicas {
		if !tier.Has(r.Pool) {
			if r.Node == node {
				return r.UUID
			}
			off = append(off, r)
		}
	}
	sort.Slice(off, func(i, j int) bool {
		if off[i].Healthy() != off[j].Healthy() {
			return !off[i].Healthy()
		}
		// Remote before nexus-local: the order Mayastor removes them in.
		if li, lj := vol.TargetNode != "" && off[i].Node == vol.TargetNode, vol.TargetNode != "" && off[j].Node == vol.TargetNode; li != lj {
			return !li
		}
		return off[i].UUID < off[j].UUID
	})
	if len(off) == 0 {
		return ""
	}
	return off[0].UUID
}

// split counts the replicas on and off the tier.
func split(vol Volume, tier *Tier) (on, off []Replica) {
	for _, r := range vol.Replicas {
		if tier.Has(r.Pool) {
			on = append(on, r)
		} else {
			off = append(off, r)
		}
	}
	return on, off
}

func healthyCount(rs []Replica) int {
	n := 0
	for _, r := range rs {
		if r.Healthy() {
			n++
		}
	}
	return n
}

func uuids(rs []Replica) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.UUID
	}
	sort.Strings(out)
	return out
}
