package stripe

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	storagev1alpha1 "github.com/billyronks/couchestor/apis/storage/v1alpha1"
	"github.com/billyronks/couchestor/pkg/placement"
)

// Groups caches the ECPlacementGroups of the policies a process writes
// under, so the write and read path of a PlacementGroups volume does not ask
// the API server for a stripe's members. Like ServerViews, a stale view
// cannot return wrong data: a stripe's current generation is decided by what
// the members answer, shards are checked against their headers' identity and
// checksums, and a member that moved makes a shard missing (decoded around)
// or a write of that slot fail; a read that cannot decode and a write that
// fails refresh the view once. It is safe for concurrent use.
type Groups struct {
	// TTL is how long a policy's groups are used before they are read again
	// (0: 30 s).
	TTL time.Duration

	mu       sync.Mutex
	policies map[string]*policyGroups
	fenced   map[string]uint64 // volume → writer epoch raised on its members
}

// policyGroups are the groups of one policy as read at one time.
type policyGroups struct {
	count  uint32
	width  int
	groups map[uint32]*storagev1alpha1.ECPlacementGroup
	at     time.Time
}

// groupMember is the member of one slot of a group.
type groupMember struct {
	Pool  string
	State storagev1alpha1.MemberState
}

func (g *Groups) ttl() time.Duration {
	if g.TTL > 0 {
		return g.TTL
	}
	return 30 * time.Second
}

// errNoGroups: the policy has no placement groups yet.
var errNoGroups = fmt.Errorf("no ECPlacementGroups")

// members returns the group count of policy and the members of group gid of
// volume stripe (by slot), reading the policy's groups when the cache has
// none or they are older than TTL (or fresh is set).
func (s *Store) groupOf(ctx context.Context, v *Volume, id int64, fresh bool) (uint32, uint32, []groupMember, int64, error) {
	pg, err := s.policyGroups(ctx, v, fresh)
	if err != nil {
		return 0, 0, nil, 0, err
	}
	gid := placement.GroupOf(string(v.Object.UID), uint64(id), pg.count)
	obj := pg.groups[gid]
	if obj == nil {
		return 0, 0, nil, 0, fmt.Errorf("volume %s stripe %d: its placement group %d of %d of policy %s has no ECPlacementGroup object (the placement-group controller creates them)", v.Name(), id, gid, pg.count, v.Policy)
	}
	members := make([]groupMember, pg.width)
	for _, m := range obj.Status.Members {
		members[m.Slot] = groupMember{Pool: m.Pool, State: m.State}
	}
	for slot, m := range members {
		if m.Pool == "" {
			return 0, 0, nil, 0, fmt.Errorf("ECPlacementGroup %s: status.members has no member of slot %d (width %d): the group is not placed yet", obj.Name, slot, pg.width)
		}
	}
	return pg.count, gid, members, obj.Status.Epoch, nil
}

func (s *Store) policyGroups(ctx context.Context, v *Volume, fresh bool) (*policyGroups, error) {
	g := s.Groups
	if g == nil {
		g = &Groups{TTL: time.Nanosecond} // no cache: read every time
	}
	g.mu.Lock()
	pg := g.policies[v.Policy]
	g.mu.Unlock()
	if pg != nil && !fresh && s.now().Sub(pg.at) < g.ttl() {
		return pg, nil
	}
	pg, err := s.readGroups(ctx, v)
	if err != nil {
		return nil, err
	}
	g.mu.Lock()
	if g.policies == nil {
		g.policies = map[string]*policyGroups{}
	}
	g.policies[v.Policy] = pg
	g.mu.Unlock()
	return pg, nil
}

// readGroups lists the policy's ECPlacementGroups and checks that they agree
// with each other and with the policy (errors name the object and field).
func (s *Store) readGroups(ctx context.Context, v *Volume) (*policyGroups, error) {
	var list storagev1alpha1.ECPlacementGroupList
	if err := s.Client.List(ctx, &list); err != nil {
		return nil, fmt.Errorf("list ECPlacementGroups of policy %s: %w", v.Policy, err)
	}
	pg := &policyGroups{groups: map[uint32]*storagev1alpha1.ECPlacementGroup{}, width: v.K + v.M, at: s.now()}
	sort.Slice(list.Items, func(i, j int) bool { return list.Items[i].Name < list.Items[j].Name })
	for i := range list.Items {
		o := &list.Items[i]
		if o.Spec.PolicyRef != v.Policy {
			continue
		}
		if int(o.Spec.Width) != pg.width {
			return nil, fmt.Errorf("ECPlacementGroup %s: spec.width %d, policy %s has %d+%d shards", o.Name, o.Spec.Width, v.Policy, v.K, v.M)
		}
		if o.Spec.GroupCount < 1 || o.Spec.GroupCount > placement.MaxGroups {
			return nil, fmt.Errorf("ECPlacementGroup %s: spec.groupCount %d outside [1, %d]", o.Name, o.Spec.GroupCount, placement.MaxGroups)
		}
		if pg.count == 0 {
			pg.count = uint32(o.Spec.GroupCount)
		} else if uint32(o.Spec.GroupCount) != pg.count {
			return nil, fmt.Errorf("ECPlacementGroup %s: spec.groupCount %d, other groups of policy %s have %d", o.Name, o.Spec.GroupCount, v.Policy, pg.count)
		}
		for _, m := range o.Status.Members {
			if m.Slot < 0 || int(m.Slot) >= pg.width {
				return nil, fmt.Errorf("ECPlacementGroup %s: status.members slot %d outside [0, %d)", o.Name, m.Slot, pg.width)
			}
		}
		pg.groups[uint32(o.Spec.Group)] = o
	}
	if pg.count == 0 {
		return nil, fmt.Errorf("volume %s has spec.stripeLayout PlacementGroups, but policy %s has %w yet (the placement-group controller creates them)", v.Name(), v.Policy, errNoGroups)
	}
	return pg, nil
}
