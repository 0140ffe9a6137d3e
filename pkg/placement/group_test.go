package placement

import (
	"errors"
	"reflect"
	"testing"
)

// members turns an assignment into recorded members, all Up.
func members(a Assignment, node map[string]string) []Member {
	out := make([]Member, len(a.Members))
	for i, p := range a.Members {
		out[i] = Member{Pool: p, Node: node[p], Health: HealthUp}
	}
	return out
}

func withWeight(ps []Pool, pool string, w uint64) []Pool {
	out := append([]Pool(nil), ps...)
	for i := range out {
		if out[i].Name == pool {
			out[i].Weight = w
		}
	}
	return out
}

func without(ps []Pool, pool string) []Pool {
	var out []Pool
	for _, p := range ps {
		if p.Name != pool {
			out = append(out, p)
		}
	}
	return out
}

func TestNext(t *testing.T) {
	const width = 6
	all := pools(9, 1) // 9 pools on 9 nodes
	node := nodeOf(all)
	ideal, err := Choose("p", 3, width, all, nil)
	if err != nil {
		t.Fatal(err)
	}
	lost := ideal.Members[2]
	six := pools(6, 1)
	ideal6, _ := Choose("p", 3, width, six, nil)

	cases := []struct {
		name  string
		pools []Pool
		cur   func() []Member
		// wantSame: the members stay as recorded; else wantReplaced slot.
		wantSame    bool
		wantChanged bool
		wantSlot    int
		wantStuck   []int
		wantErr     error
	}{
		{name: "new group gets its ideal members", pools: all, cur: func() []Member { return nil }, wantChanged: true, wantSlot: -1},
		{name: "all up: nothing changes", pools: all, cur: func() []Member { return members(ideal, node) }, wantSame: true},
		{name: "suspect member keeps its slot", pools: withWeight(all, lost, 0), cur: func() []Member {
			m := members(ideal, node)
			m[2].Health = HealthSuspect
			return m
		}, wantSame: true},
		{name: "suspect member whose pool is no longer listed keeps its slot", pools: without(all, lost), cur: func() []Member {
			m := members(ideal, node)
			m[2].Health = HealthSuspect
			return m
		}, wantSame: true},
		{name: "out member is replaced, the others keep their slots", pools: withWeight(all, lost, 0), cur: func() []Member {
			m := members(ideal, node)
			m[2].Health = HealthOut
			return m
		}, wantChanged: true, wantSlot: 2},
		{name: "out member whose pool is gone is replaced", pools: without(all, lost), cur: func() []Member {
			m := members(ideal, node)
			m[2].Health = HealthOut
			return m
		}, wantChanged: true, wantSlot: 2},
		{name: "too few pools: the out member stays, reported", pools: withWeight(six, ideal6.Members[4], 0), cur: func() []Member {
			m := members(ideal6, nodeOf(six))
			m[4].Health = HealthOut
			return m
		}, wantSame: true, wantStuck: []int{4}},
		{name: "new group with too few pools is an error", pools: pools(5, 1), cur: func() []Member { return nil }, wantErr: ErrNotEnoughPools},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cur := c.cur()
			p, err := Next("p", 3, width, c.pools, cur)
			if c.wantErr != nil {
				if !errors.Is(err, c.wantErr) {
					t.Fatalf("err = %v, want %v", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.Changed != c.wantChanged {
				t.Errorf("Changed = %v, want %v", p.Changed, c.wantChanged)
			}
			if !reflect.DeepEqual(p.Stuck, c.wantStuck) {
				t.Errorf("Stuck = %v, want %v", p.Stuck, c.wantStuck)
			}
			if len(p.Members) != width {
				t.Fatalf("members %v", p.Members)
			}
			if c.wantSame {
				for i, m := range cur {
					if p.Members[i] != m.Pool {
						t.Errorf("slot %d: %s, want %s kept", i, p.Members[i], m.Pool)
					}
				}
				if len(p.Replaced) != 0 {
					t.Errorf("Replaced = %v", p.Replaced)
				}
				return
			}
			if c.wantSlot < 0 {
				return
			}
			for i, m := range cur {
				if i != c.wantSlot && p.Members[i] != m.Pool {
					t.Errorf("slot %d moved from %s to %s", i, m.Pool, p.Members[i])
				}
			}
			want := []Replacement{{Slot: c.wantSlot, From: cur[c.wantSlot].Pool, To: p.Members[c.wantSlot]}}
			if !reflect.DeepEqual(p.Replaced, want) || p.Members[c.wantSlot] == lost {
				t.Errorf("Replaced = %v, want %v (not back onto %s)", p.Replaced, want, lost)
			}
			// The replacement is the pool Choose ranks next: the same as
			// choosing over the pools without the lost one, keeping the rest.
			keep := make([]string, width)
			for i, m := range cur {
				if i != c.wantSlot {
					keep[i] = m.Pool
				}
			}
			exp, _ := Choose("p", 3, width, withWeight(c.pools, lost, 0), keep)
			if !reflect.DeepEqual(p.Members, exp.Members) {
				t.Errorf("members %v, want %v", p.Members, exp.Members)
			}
		})
	}
}

// A recorded membership of the wrong width is an error naming both.
func TestNextRefusesAWrongWidth(t *testing.T) {
	all := pools(9, 1)
	_, err := Next("p", 1, 6, all, []Member{{Pool: "pool-00", Node: "node-00"}})
	if err == nil || err.Error() != "placement: group p/1 records 1 members for 6 slots" {
		t.Fatal(err)
	}
}
