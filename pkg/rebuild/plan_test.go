package rebuild

import (
	"strings"
	"testing"
)

func TestPlanTargets(t *testing.T) {
	kept := func(pairs ...string) (map[int]string, map[int]string) {
		p, n := map[int]string{}, map[int]string{}
		for i := 0; i+1 < len(pairs); i += 2 {
			p[i/2], n[i/2] = pairs[i], pairs[i+1]
		}
		return p, n
	}
	// Shards 0..3 stay on p0..p3 (nodes n0..n3); shards 4, 5 are rebuilt.
	kp, kn := kept("p0", "n0", "p1", "n1", "p2", "n2", "p3", "n3")
	cases := []struct {
		name   string
		cands  []Candidate
		want   []string // pool per rebuilt shard
		shared []bool
		errSub string
	}{
		{"unused nodes first", []Candidate{{Pool: "p0", Node: "n0", FreeBytes: 1 << 40}, {Pool: "x", Node: "n1", FreeBytes: 1 << 30}, {Pool: "p6", Node: "n6", FreeBytes: 1 << 20}, {Pool: "p7", Node: "n7", FreeBytes: 1 << 20}},
			[]string{"p6", "p7"}, []bool{false, false}, ""},
		{"two pools on one unused node: second shard shares it", []Candidate{{Pool: "a", Node: "n9", FreeBytes: 1 << 20}, {Pool: "b", Node: "n9", FreeBytes: 1 << 20}},
			[]string{"a", "b"}, []bool{false, true}, ""},
		{"used node, unused pool, with a warning", []Candidate{{Pool: "q", Node: "n1", FreeBytes: -1}, {Pool: "r", Node: "n2", FreeBytes: -1}},
			[]string{"q", "r"}, []bool{true, true}, ""},
		{"full pool skipped", []Candidate{{Pool: "full", Node: "n8", FreeBytes: 10}, {Pool: "ok", Node: "n2", FreeBytes: 1 << 20}, {Pool: "ok2", Node: "n9", FreeBytes: 1 << 20}},
			[]string{"ok", "ok2"}, []bool{true, false}, ""},
		{"never a pool the stripe uses", []Candidate{{Pool: "p0", Node: "n0", FreeBytes: 1 << 30}, {Pool: "p1", Node: "n1", FreeBytes: 1 << 30}},
			nil, nil, "no healthy pool"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			plan, err := PlanTargets([]int{5, 4}, kp, kn, c.cands, 1000)
			if c.errSub != "" {
				if err == nil || !strings.Contains(err.Error(), c.errSub) {
					t.Fatalf("want error containing %q, got %v (plan %+v)", c.errSub, err, plan)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(plan) != 2 || plan[0].Shard != 4 || plan[1].Shard != 5 {
				t.Fatalf("plan %+v", plan)
			}
			// "ok" (1 MiB free) sorts before "ok2" by name; the first shard prefers an unused node.
			for i, p := range plan {
				if c.name == "full pool skipped" {
					break
				}
				if p.Pool != c.want[i] || p.SharedNode != c.shared[i] {
					t.Fatalf("shard %d → %s shared=%v, want %s shared=%v (plan %+v)", p.Shard, p.Pool, p.SharedNode, c.want[i], c.shared[i], plan)
				}
			}
			if c.name == "full pool skipped" {
				for _, p := range plan {
					if p.Pool == "full" {
						t.Fatalf("a full pool was chosen: %+v", plan)
					}
				}
				if plan[0].Pool != "ok2" || plan[0].SharedNode || plan[1].Pool != "ok" || !plan[1].SharedNode {
					t.Fatalf("want ok2 (unused node) then ok (shared), got %+v", plan)
				}
			}
		})
	}
}
