package shardrollout

import (
	"strings"
	"testing"
)

func pod(name, rev string, ready, registered bool) *Pod {
	return &Pod{Name: name, Revision: rev, Ready: ready, Registered: registered}
}

func srv(sts, pool, updateRev string, p *Pod) Server {
	return Server{StatefulSet: sts, Pool: pool, UpdateRevision: updateRev, Observed: true, Pod: p}
}

func live(pools ...string) map[string]bool {
	m := map[string]bool{}
	for _, p := range pools {
		m[p] = true
	}
	return m
}

func TestNext(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      Input
		action  Action
		pod     string
		reason  []string // substrings of Reason
		outdate int
	}{
		{
			name: "all at the update revision",
			in: Input{Servers: []Server{
				srv("cold-a", "pa", "r2", pod("cold-a-0", "r2", true, true)),
				srv("cold-b", "pb", "r2", pod("cold-b-0", "r2", true, true)),
			}, Live: live("pa", "pb")},
			action: UpToDate, reason: []string{"all 2 shard servers"},
		},
		{
			name: "up to date while one is down: nothing to restart, the reason says who",
			in: Input{Servers: []Server{
				srv("cold-a", "pa", "r2", pod("cold-a-0", "r2", false, false)),
				srv("cold-b", "pb", "r2", pod("cold-b-0", "r2", true, true)),
			}, Live: live("pb")},
			action: UpToDate, reason: []string{"pod cold-a-0 (pool pa) is not Ready"},
		},
		{
			name: "one at a time, in name order",
			in: Input{Servers: []Server{
				srv("cold-c", "pc", "r2", pod("cold-c-0", "r1", true, true)),
				srv("cold-a", "pa", "r2", pod("cold-a-0", "r1", true, true)),
				srv("cold-b", "pb", "r2", pod("cold-b-0", "r1", true, true)),
			}, Live: live("pa", "pb", "pc")},
			action: Restart, pod: "cold-a-0", outdate: 3, reason: []string{"3 of 3 shard servers outdated", "to revision r2"},
		},
		{
			name: "the replaced pod is not Ready yet: wait",
			in: Input{Servers: []Server{
				srv("cold-a", "pa", "r2", pod("cold-a-0", "r2", false, false)),
				srv("cold-b", "pb", "r2", pod("cold-b-0", "r1", true, true)),
			}, Live: live("pb")},
			action: Wait, outdate: 1, reason: []string{"waiting for pod cold-a-0 (pool pa) is not Ready"},
		},
		{
			name: "the replaced pod is Ready but has not registered: wait",
			in: Input{Servers: []Server{
				srv("cold-a", "pa", "r2", pod("cold-a-0", "r2", true, false)),
				srv("cold-b", "pb", "r2", pod("cold-b-0", "r1", true, true)),
			}, Live: live("pb")},
			action: Wait, outdate: 1, reason: []string{"has not registered"},
		},
		{
			name: "the deleted pod is terminating: wait",
			in: Input{Servers: []Server{
				srv("cold-a", "pa", "r2", &Pod{Name: "cold-a-0", Revision: "r1", Deleting: true, Ready: true, Registered: true}),
				srv("cold-b", "pb", "r2", pod("cold-b-0", "r1", true, true)),
			}, Live: live("pa", "pb")},
			action: Wait, outdate: 2, reason: []string{"pod cold-a-0 (pool pa) is terminating"},
		},
		{
			name: "the deleted pod is gone and not yet recreated: wait",
			in: Input{Servers: []Server{
				srv("cold-a", "pa", "r2", nil),
				srv("cold-b", "pb", "r2", pod("cold-b-0", "r1", true, true)),
			}, Live: live("pb")},
			action: Wait, outdate: 1, reason: []string{"shard server cold-a (pool pa) has no pod"},
		},
		{
			name: "an outdated server already down is restarted while every other is up",
			in: Input{Servers: []Server{
				srv("cold-a", "pa", "r2", pod("cold-a-0", "r2", true, true)),
				srv("cold-b", "pb", "r2", pod("cold-b-0", "r1", false, false)),
				srv("cold-c", "pc", "r2", pod("cold-c-0", "r1", true, true)),
			}, Live: live("pa", "pc")},
			action: Restart, pod: "cold-b-0", outdate: 2,
		},
		{
			name: "two down: wait, even if one is outdated",
			in: Input{Servers: []Server{
				srv("cold-a", "pa", "r2", pod("cold-a-0", "r1", false, false)),
				srv("cold-b", "pb", "r2", pod("cold-b-0", "r2", false, true)),
				srv("cold-c", "pc", "r2", pod("cold-c-0", "r1", true, true)),
			}, Live: live("pb", "pc")},
			action: Wait, outdate: 2, reason: []string{"2 are down", "cold-a-0", "cold-b-0"},
		},
		{
			name: "a StatefulSet the controller has not observed: wait",
			in: Input{Servers: []Server{
				{StatefulSet: "cold-a", Pool: "pa", UpdateRevision: "r1", Observed: false, Pod: pod("cold-a-0", "r1", true, true)},
				srv("cold-b", "pb", "r2", pod("cold-b-0", "r1", true, true)),
			}, Live: live("pa", "pb")},
			action: Wait, outdate: 2, reason: []string{"observe cold-a"},
		},
		{
			name: "a journal on 3 pools keeps 2 when one restarts",
			in: Input{Servers: []Server{
				srv("cold-a", "pa", "r2", pod("cold-a-0", "r1", true, true)),
			}, Journals: []Journal{{Volume: "v1", Pools: []string{"pa", "px", "py"}}}, Live: live("pa", "px", "py")},
			action: Restart, pod: "cold-a-0", outdate: 1,
		},
		{
			name: "a journal with another replica already down would lose its quorum: wait",
			in: Input{Servers: []Server{
				srv("cold-a", "pa", "r2", pod("cold-a-0", "r1", true, true)),
			}, Journals: []Journal{
				{Volume: "v0", Pools: []string{"px", "py", "pz"}},
				{Volume: "v1", Pools: []string{"pa", "px", "py"}},
			}, Live: live("pa", "px")},
			action: Wait, outdate: 1, reason: []string{"ECVolume v1 (journal on pools pa,px,py) would keep 1 live replicas, its quorum is 2"},
		},
		{
			name: "a single-replica journal on the pool cannot survive a restart: wait",
			in: Input{Servers: []Server{
				srv("cold-a", "pa", "r2", pod("cold-a-0", "r1", true, true)),
			}, Journals: []Journal{{Volume: "v1", Pools: []string{"pa"}}}, Live: live("pa")},
			action: Wait, outdate: 1, reason: []string{"ECVolume v1", "quorum is 1"},
		},
		{
			name: "a server whose restart would break a quorum waits, the next safe one goes",
			in: Input{Servers: []Server{
				srv("cold-a", "pa", "r2", pod("cold-a-0", "r1", true, true)),
				srv("cold-b", "pb", "r2", pod("cold-b-0", "r1", true, true)),
				srv("cold-c", "pc", "r2", pod("cold-c-0", "r1", true, true)),
			}, Journals: []Journal{{Volume: "v1", Pools: []string{"pa", "pb", "px"}}}, Live: live("pa", "pb", "pc")},
			action: Restart, pod: "cold-c-0", outdate: 3,
		},
		{
			name: "every outdated server would break a quorum: wait, naming each",
			in: Input{Servers: []Server{
				srv("cold-a", "pa", "r2", pod("cold-a-0", "r1", true, true)),
				srv("cold-b", "pb", "r2", pod("cold-b-0", "r1", true, true)),
				srv("cold-c", "pc", "r2", pod("cold-c-0", "r2", true, true)),
			}, Journals: []Journal{{Volume: "v1", Pools: []string{"pa", "pb", "px"}}}, Live: live("pa", "pb", "pc")},
			action: Wait, outdate: 2, reason: []string{"restarting pod cold-a-0 (pool pa)", "restarting pod cold-b-0 (pool pb)", "ECVolume v1 (journal on pools pa,pb,px) would keep 1 live replicas, its quorum is 2"},
		},
		{
			name: "journals on other pools do not matter",
			in: Input{Servers: []Server{
				srv("cold-a", "pa", "r2", pod("cold-a-0", "r1", true, true)),
			}, Journals: []Journal{{Volume: "v1", Pools: []string{"px"}}}, Live: live("pa")},
			action: Restart, pod: "cold-a-0", outdate: 1,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := Next(tc.in)
			if d.Action != tc.action || d.Pod != tc.pod || d.Outdated != tc.outdate || d.Total != len(tc.in.Servers) {
				t.Errorf("Next = %+v, want action %s pod %q outdated %d total %d", d, tc.action, tc.pod, tc.outdate, len(tc.in.Servers))
			}
			for _, s := range tc.reason {
				if !strings.Contains(d.Reason, s) {
					t.Errorf("reason %q lacks %q", d.Reason, s)
				}
			}
		})
	}
}

// Driving the rule to the end, with a pod that comes back only after the
// rule was asked again, restarts each server exactly once and never has
// two down at a time.
func TestNextRollsOneByOneToTheEnd(t *testing.T) {
	var servers []Server
	for _, n := range []string{"a", "b", "c", "d", "e"} {
		servers = append(servers, srv("cold-"+n, "p"+n, "r2", pod("cold-"+n+"-0", "r1", true, true)))
	}
	restarts := map[string]int{}
	for step := 0; step < 100; step++ {
		livePools := map[string]bool{}
		down := 0
		for _, s := range servers {
			if s.up() {
				livePools[s.Pool] = true
			} else {
				down++
			}
		}
		if down > 1 {
			t.Fatalf("step %d: %d servers down", step, down)
		}
		d := Next(Input{Servers: servers, Live: livePools,
			Journals: []Journal{{Volume: "v", Pools: []string{"pa", "pc", "pe"}}}})
		switch d.Action {
		case UpToDate:
			for _, s := range servers {
				if restarts[s.Pod.Name] != 1 {
					t.Fatalf("restarts %v: want each server restarted once", restarts)
				}
			}
			return
		case Restart:
			restarts[d.Pod]++
			for i := range servers {
				if servers[i].Pod.Name == d.Pod {
					// Recreated at the update revision, not Ready yet.
					servers[i].Pod = pod(d.Pod, "r2", false, false)
				}
			}
		case Wait:
			// The kubelet brings the pending pod up.
			for i := range servers {
				if p := servers[i].Pod; !p.Ready {
					p.Ready, p.Registered = true, true
				}
			}
		}
	}
	t.Fatal("the rollout did not finish in 100 steps")
}
