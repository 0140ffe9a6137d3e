package migration

import (
	"errors"
	"strings"
	"testing"

	"k8s.io/utils/ptr"

	"github.com/billyronks/couchestor/pkg/mayastorrest"
)

func restVolume(published bool, replicas map[string][2]string) mayastorrest.Volume {
	v := mayastorrest.Volume{
		Spec: mayastorrest.VolumeSpec{UUID: "v1", Size: 1 << 30, NumReplicas: uint8(len(replicas)), Status: "Created",
			Topology: &mayastorrest.Topology{PoolTopology: &mayastorrest.PoolTopology{Labelled: &mayastorrest.LabelledTopology{
				Inclusion: map[string]string{"openebs.io/created-by": "operator-diskpool"}, Exclusion: map[string]string{}}}}},
		State: mayastorrest.VolumeState{UUID: "v1", Size: 1 << 30, Status: "Online", ReplicaTopology: map[string]mayastorrest.ReplicaTopology{}},
	}
	var children []mayastorrest.Child
	for id, np := range replicas {
		rt := mayastorrest.ReplicaTopology{State: "Online", ChildStatus: ptr.To("Online")}
		if np[0] != "" {
			rt.Node = ptr.To(np[0])
		}
		if np[1] != "" {
			rt.Pool = ptr.To(np[1])
		}
		v.State.ReplicaTopology[id] = rt
		children = append(children, mayastorrest.Child{URI: "bdev:///" + id + "?uuid=" + id, State: "Online"})
	}
	if published {
		v.Spec.Target = &mayastorrest.VolumeTarget{Node: "n1"}
		v.State.Target = &mayastorrest.Nexus{UUID: "nexus-1", Node: "n1", DeviceURI: "nvmf://x", Protocol: "nvmf", State: "Online", Children: children}
	}
	return v
}

func TestFromRESTNeverGuesses(t *testing.T) {
	for _, c := range []struct {
		name      string
		v         mayastorrest.Volume
		unmovable string
		synced    bool
	}{
		{"published and synced", restVolume(true, map[string][2]string{"r1": {"n1", "p1"}, "r2": {"n2", "p2"}}), "", true},
		{"unpublished: no rebuild in 2.7", restVolume(false, map[string][2]string{"r1": {"n1", "p1"}}), "unpublished", false},
		{"replica without a pool", restVolume(true, map[string][2]string{"r1": {"n1", ""}}), "has no pool", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := fromREST(&c.v)
			if c.unmovable == "" && got.Unmovable != "" || !strings.Contains(got.Unmovable, c.unmovable) {
				t.Fatalf("Unmovable %q, want %q", got.Unmovable, c.unmovable)
			}
			for _, r := range got.Replicas {
				if r.Synced != c.synced {
					t.Fatalf("replica %s synced %v, want %v", r.UUID, r.Synced, c.synced)
				}
			}
			if got.Published != (c.v.State.Target != nil) {
				t.Fatalf("published %v", got.Published)
			}
		})
	}
}

func restPool(id, node, status string, labels map[string]string) mayastorrest.Pool {
	return mayastorrest.Pool{ID: id, Spec: &mayastorrest.PoolSpec{ID: id, Node: node, Labels: labels, Status: "Created", Disks: []string{"/dev/x"}},
		State: &mayastorrest.PoolState{ID: id, Node: node, Status: status, Capacity: 100 << 30, Used: 0, Disks: []string{"/dev/x"}}}
}

func TestBlockersAreTheOtherCandidates(t *testing.T) {
	created := "openebs.io/created-by"
	lbl := func(tier string) map[string]string {
		return map[string]string{created: "operator-diskpool", "tier": tier}
	}
	v := restVolume(true, map[string][2]string{"r1": {"n1", "n1-cold"}})
	pools := []mayastorrest.Pool{
		restPool("n1-cold", "n1", "Online", lbl("cold")), // holds a replica's node: never a candidate
		restPool("n1-hot", "n1", "Online", lbl("hot")),   // same node: Mayastor never places there
		restPool("n2-hot", "n2", "Online", lbl("hot")),   // the target
		restPool("n3-cold", "n3", "Online", lbl("cold")), // a candidate to block
		restPool("n4-cold", "n4", "Faulted", lbl("cold")),
		restPool("n5-other", "n5", "Online", map[string]string{"tier": "cold"}), // lacks the inclusion label
	}
	b := &RESTBackend{}
	got, err := b.blockers(v, pools, map[string]string{"tier": "hot"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].ID != "n3-cold" {
		t.Fatalf("blockers %v, want [n3-cold]", got)
	}
	_, err = b.blockers(v, pools, map[string]string{"tier": "warm"})
	var refused *RefusedError
	if !errors.As(err, &refused) {
		t.Fatalf("no eligible target: err %v, want a RefusedError", err)
	}
	// created-by cannot be deleted from a pool (400): never the withheld label.
	if k, ok := steerKey(v.Spec.Topology.PoolTopology.Labelled.Inclusion, lbl("cold")); ok {
		t.Fatalf("steerKey %q: only %s in the inclusion, nothing may be withheld", k, created)
	}
	if k, ok := steerKey(map[string]string{created: "operator-diskpool", "zone": ""}, map[string]string{created: "x", "zone": "a"}); !ok || k != "zone" {
		t.Fatalf("steerKey %q %v, want zone", k, ok)
	}
}

func TestNexusLocalReplicaIsRefusedWithAReason(t *testing.T) {
	rules := Rules{NexusLocalRemovedLast: true}
	tier := &Tier{pools: map[string]Pool{"n2-hot": {Name: "n2-hot"}, "n3-hot": {Name: "n3-hot"}}}
	vol := Volume{ID: "v", Published: true, TargetNode: "n1", Replicas: []Replica{
		{UUID: "r1", Pool: "n1-cold", Node: "n1", State: "Online", Synced: true},
		{UUID: "r2", Pool: "n2-hot", Node: "n2", State: "Online", Synced: true},
	}}
	if why := NexusLocalBlock(vol, tier, rules); !strings.Contains(why, "local to the volume's target on node n1") {
		t.Fatalf("NexusLocalBlock = %q", why)
	}
	if why := NexusLocalBlock(vol, tier, Rules{}); why != "" {
		t.Fatalf("without the rule: %q", why)
	}
	// A remote off-tier replica would go first, but the nexus-local one never
	// would: refused before anything moves, not after the remote one moved.
	vol.Replicas = append(vol.Replicas, Replica{UUID: "r3", Pool: "n3-cold", Node: "n3", State: "Online", Synced: true})
	if why := NexusLocalBlock(vol, tier, rules); !strings.Contains(why, "r1") {
		t.Fatalf("with a remote off-tier replica too: %q", why)
	}
	// A single nexus-local replica: the added one would be the one removed.
	single := Volume{ID: "s", Published: true, TargetNode: "n1", Replicas: []Replica{{UUID: "r1", Pool: "n1-cold", Node: "n1", State: "Online", Synced: true}}}
	if why := NexusLocalBlock(single, tier, rules); !strings.Contains(why, "local to the volume's target") {
		t.Fatalf("single nexus-local replica: %q", why)
	}
	// Off-tier replicas all remote: movable.
	remote := Volume{ID: "m", Published: true, TargetNode: "app", Replicas: vol.Replicas}
	if why := NexusLocalBlock(remote, tier, rules); why != "" {
		t.Fatalf("target on a node without replicas: %q", why)
	}
	if got := replacedBy(vol, tier, "n4"); got != "r3" {
		t.Fatalf("replacedBy = %s, want the remote r3 before the nexus-local r1", got)
	}
}

// A pool under this backend's own lever is read as it is without it: a
// concurrent migration to the pool's tier must find it in the tier (the demo
// aborted a move whose replica landed on node-1-hot, "outside tier hot",
// while another move to cold withheld that pool's tier label).
func TestOwnLeverDoesNotChangeAPoolsTier(t *testing.T) {
	pool := func(labels map[string]string, cordoned bool) mayastorrest.Pool {
		p := mayastorrest.Pool{ID: "hot-1", Spec: &mayastorrest.PoolSpec{ID: "hot-1", Node: "n1", Labels: labels, Status: "Created"},
			State: &mayastorrest.PoolState{ID: "hot-1", Node: "n1", Status: "Online", Capacity: 100, Used: 10}}
		if cordoned {
			p.Spec.CordonDrain = &mayastorrest.PoolCordonDrain{Cordoned: &mayastorrest.PoolCordon{Replicas: true}}
		}
		return p
	}
	created := map[string]string{LabelCreatedBy: "operator-diskpool"}
	for _, c := range []struct {
		name       string
		p          mayastorrest.Pool
		s          steeredPool
		tier       string
		online     bool
		tierOfPool bool
	}{
		{"label withheld by our lever", pool(created, false), steeredPool{lever: LeverLabel, SteeredPool: SteeredPool{Pool: "hot-1", Key: "tier", Value: "hot"}}, "hot", true, true},
		{"cordoned by our lever", pool(map[string]string{"tier": "hot"}, true), steeredPool{lever: LeverCordon, SteeredPool: SteeredPool{Pool: "hot-1"}}, "hot", true, true},
		{"label missing, not ours", pool(created, false), steeredPool{}, "", true, false},
		{"cordoned by someone else", pool(map[string]string{"tier": "hot"}, true), steeredPool{}, "hot", false, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := poolFromREST(c.p, c.s)
			if (got.Labels["tier"] == "hot") != c.tierOfPool || got.Online != c.online {
				t.Fatalf("labels %v online %v, want tier hot %v online %v", got.Labels, got.Online, c.tierOfPool, c.online)
			}
			if c.s.lever == LeverLabel && c.p.Labels()["tier"] != "" {
				t.Fatal("the REST pool's labels were changed in place")
			}
		})
	}
}
