package restsim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/billyronks/couchestor/pkg/mayastorrest"
)

const gib = int64(1) << 30

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// serve runs the model behind httptest and returns a real client of it.
func serve(t *testing.T, opt Options, pools []PoolDef, vols []VolumeDef) (*Model, *mayastorrest.Client, *clock, string) {
	t.Helper()
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	if opt.Now == nil {
		opt.Now = clk.now
	}
	m, err := New(opt, pools, vols)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(m.Handler())
	t.Cleanup(srv.Close)
	c, err := mayastorrest.New(mayastorrest.Config{URL: srv.URL, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return m, c, clk, srv.URL
}

func poolOf(v mayastorrest.Volume, replica string) string {
	return *v.State.ReplicaTopology[replica].Pool
}

// newReplica is the replica in after that is not in before.
func newReplica(t *testing.T, before, after mayastorrest.Volume) string {
	t.Helper()
	for id := range after.State.ReplicaTopology {
		if _, ok := before.State.ReplicaTopology[id]; !ok {
			return id
		}
	}
	t.Fatalf("no new replica in %+v", after.State.ReplicaTopology)
	return ""
}

func pools(ps ...PoolDef) []PoolDef { return ps }

func TestListVolumesPagingAndMaxEntriesRequired(t *testing.T) {
	var vols []VolumeDef
	for _, id := range []string{"v5", "v1", "v3", "v2", "v4", "v7", "v6"} {
		vols = append(vols, VolumeDef{UUID: id, SizeBytes: gib, Pools: []string{"p1"}})
	}
	m, c, _, url := serve(t, Options{}, pools(PoolDef{ID: "p1", Node: "n1", CapacityBytes: 100 * gib}), vols)

	resp, err := http.Get(url + "/v0/volumes")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var e mayastorrest.RestJsonError
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if resp.StatusCode != 400 || dec.Decode(&e) != nil || e.Kind != "Deserialize" || !strings.Contains(e.Details, "max_entries") {
		t.Fatalf("without max_entries: %d %s", resp.StatusCode, body)
	}

	resp, err = http.Get(url + "/v0/volumes?max_entries=0")
	if err != nil {
		t.Fatal(err)
	}
	var all mayastorrest.Volumes
	_ = json.NewDecoder(resp.Body).Decode(&all)
	resp.Body.Close()
	if len(all.Entries) != 7 || all.NextToken != nil {
		t.Fatalf("max_entries=0: %d entries, next %v", len(all.Entries), all.NextToken)
	}

	c2, _ := mayastorrest.New(mayastorrest.Config{URL: url, PageSize: 3})
	before := m.Requests()
	got, err := c2.ListVolumes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, v := range got {
		ids = append(ids, v.Spec.UUID)
	}
	if strings.Join(ids, ",") != "v1,v2,v3,v4,v5,v6,v7" || m.Requests()-before != 3 {
		t.Fatalf("paged: %v in %d requests", ids, m.Requests()-before)
	}
	if _, err := c.GetVolume(context.Background(), "nope"); !mayastorrest.IsNotFound(err) {
		t.Fatalf("GetVolume(nope): %v", err)
	}
}

// TestScaleUpPlacement: Mayastor's candidate rules and ranking, one rule per row.
func TestScaleUpPlacement(t *testing.T) {
	base := []PoolDef{
		{ID: "p1", Node: "n1", CapacityBytes: 100 * gib},
	}
	cases := []struct {
		name      string
		pools     []PoolDef
		inclusion map[string]string
		setup     func(*Model)
		want      string // "" = 507 ResourceExhausted
	}{
		{"same node never reused", []PoolDef{{ID: "p1b", Node: "n1", CapacityBytes: 500 * gib}, {ID: "p2", Node: "n2", CapacityBytes: 10 * gib}}, nil, nil, "p2"},
		{"most free space", []PoolDef{{ID: "p2", Node: "n2", CapacityBytes: 10 * gib}, {ID: "p3", Node: "n3", CapacityBytes: 20 * gib}}, nil, nil, "p3"},
		{"fewest replicas before free space", []PoolDef{{ID: "p2", Node: "n2", CapacityBytes: 10 * gib}, {ID: "p3", Node: "n3", CapacityBytes: 50 * gib}}, nil, func(m *Model) {
			m.volumes["other"] = &volume{uuid: "other", size: gib, numReplicas: 1, replicas: []*replica{{uuid: "o1", pool: "p3", node: "n3"}}}
		}, "p2"},
		{"offline node", []PoolDef{{ID: "p2", Node: "n2", CapacityBytes: 50 * gib}, {ID: "p3", Node: "n3", CapacityBytes: 10 * gib}}, nil, func(m *Model) { _ = m.SetNode("n2", "Offline", nil) }, "p3"},
		{"cordoned node", []PoolDef{{ID: "p2", Node: "n2", CapacityBytes: 50 * gib}, {ID: "p3", Node: "n3", CapacityBytes: 10 * gib}}, nil, func(m *Model) { yes := true; _ = m.SetNode("n2", "", &yes) }, "p3"},
		{"faulted pool", []PoolDef{{ID: "p2", Node: "n2", CapacityBytes: 50 * gib}, {ID: "p3", Node: "n3", CapacityBytes: 10 * gib}}, nil, func(m *Model) { _ = m.SetPoolStatus("p2", "Faulted") }, "p3"},
		{"unknown pool", []PoolDef{{ID: "p2", Node: "n2", CapacityBytes: 50 * gib}}, nil, func(m *Model) { _ = m.SetPoolStatus("p2", "Unknown") }, ""},
		{"degraded pool still a candidate", []PoolDef{{ID: "p2", Node: "n2", CapacityBytes: 50 * gib}}, nil, func(m *Model) { _ = m.SetPoolStatus("p2", "Degraded") }, "p2"},
		{"no room", []PoolDef{{ID: "p2", Node: "n2", CapacityBytes: gib / 2}}, nil, nil, ""},
		{"inclusion key missing", []PoolDef{{ID: "p2", Node: "n2", CapacityBytes: 50 * gib}, {ID: "p3", Node: "n3", CapacityBytes: 10 * gib, Labels: map[string]string{"tier": "cold"}}}, map[string]string{"tier": ""}, nil, "p3"},
		{"inclusion value mismatch", []PoolDef{{ID: "p2", Node: "n2", CapacityBytes: 50 * gib, Labels: map[string]string{"tier": "hot"}}, {ID: "p3", Node: "n3", CapacityBytes: 10 * gib, Labels: map[string]string{"tier": "cold"}}}, map[string]string{"tier": "cold"}, nil, "p3"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			incl := tc.inclusion
			ps := append(append([]PoolDef(nil), base...), tc.pools...)
			if incl != nil {
				ps[0].Labels = incl // the existing replica's pool satisfies the topology
				for k, v := range incl {
					if v == "" {
						ps[0].Labels = map[string]string{k: "x"}
					}
				}
			}
			m, c, _, _ := serve(t, Options{}, ps, []VolumeDef{{UUID: "v", SizeBytes: gib, Pools: []string{"p1"}, Published: true, PoolInclusion: incl}})
			if tc.setup != nil {
				tc.setup(m)
			}
			ctx := context.Background()
			before, err := c.GetVolume(ctx, "v")
			if err != nil {
				t.Fatal(err)
			}
			after, err := c.SetReplicaCount(ctx, "v", 2)
			if tc.want == "" {
				var a *mayastorrest.APIError
				if !errors.As(err, &a) || a.Status != 507 || a.Kind != "ResourceExhausted" {
					t.Fatalf("want 507 ResourceExhausted, got %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := poolOf(after, newReplica(t, before, after)); got != tc.want {
				t.Fatalf("new replica on %s, want %s", got, tc.want)
			}
		})
	}
}

// TestSteeringByLabelsAndCordon: live labels (set through REST, not the
// DiskPool's) steer, cordon excludes, and the steer-miss knob defeats both.
func TestSteeringByLabelsAndCordon(t *testing.T) {
	ps := pools(
		PoolDef{ID: "p1", Node: "n1", CapacityBytes: 100 * gib, Labels: map[string]string{"steer": "yes"}},
		PoolDef{ID: "big", Node: "n2", CapacityBytes: 500 * gib},
		PoolDef{ID: "small", Node: "n3", CapacityBytes: 10 * gib},
	)
	ctx := context.Background()
	vols := []VolumeDef{{UUID: "v", SizeBytes: gib, Pools: []string{"p1"}, Published: true, PoolInclusion: map[string]string{"steer": ""}}}

	_, c, clk, _ := serve(t, Options{PoolCordon: true}, ps, vols)
	if _, err := c.SetReplicaCount(ctx, "v", 2); err == nil {
		t.Fatal("no pool has the steer label yet: want 507")
	}
	if _, err := c.PutPoolLabel(ctx, "small", "steer", "yes", false); err != nil {
		t.Fatal(err)
	}
	before, _ := c.GetVolume(ctx, "v")
	after, err := c.SetReplicaCount(ctx, "v", 2)
	if err != nil {
		t.Fatal(err)
	}
	if got := poolOf(after, newReplica(t, before, after)); got != "small" {
		t.Fatalf("steered by label to small, landed on %s", got)
	}
	clk.add(time.Hour) // synced
	if _, err := c.SetReplicaCount(ctx, "v", 1); err != nil {
		t.Fatal(err)
	}
	// cordon: label big too, cordon small → big
	if _, err := c.PutPoolLabel(ctx, "big", "steer", "yes", false); err != nil {
		t.Fatal(err)
	}
	if err := c.CordonPool(ctx, "small"); err != nil {
		t.Fatal(err)
	}
	if err := c.CordonPool(ctx, "small"); err != nil {
		t.Fatalf("cordon twice: %v", err)
	}
	ps2, _ := c.ListPools(ctx)
	for _, p := range ps2 {
		if p.ID == "small" && !p.Cordoned() {
			t.Fatal("small not shown cordoned")
		}
	}
	before, _ = c.GetVolume(ctx, "v")
	after, err = c.SetReplicaCount(ctx, "v", 2)
	if err != nil {
		t.Fatal(err)
	}
	if got := poolOf(after, newReplica(t, before, after)); got != "big" && got != "small" {
		t.Fatalf("landed on %s", got)
	} else if got == "small" {
		t.Fatal("cordoned pool chosen")
	}
	if err := c.UncordonPool(ctx, "small"); err != nil {
		t.Fatal(err)
	}

	// steer miss (probability 1): the scheduler ignores live labels and
	// cordons, matching the topology against labels at creation: big had the
	// key at creation and lost it, small got it live — big is chosen.
	ps3 := append([]PoolDef(nil), ps...)
	ps3[1].Labels = map[string]string{"steer": "old"}
	_, c4, _, _ := serve(t, Options{SteerMissProbability: 1}, ps3, vols)
	if _, err := c4.PutPoolLabel(ctx, "small", "steer", "yes", false); err != nil {
		t.Fatal(err)
	}
	if _, err := c4.DeletePoolLabel(ctx, "big", "steer"); err != nil {
		t.Fatal(err)
	}
	before, _ = c4.GetVolume(ctx, "v")
	after, err = c4.SetReplicaCount(ctx, "v", 2)
	if err != nil {
		t.Fatal(err)
	}
	if got := poolOf(after, newReplica(t, before, after)); got != "big" {
		t.Fatalf("steer miss: landed on %s, want big (not the steered small)", got)
	}
}

func TestPoolCordonAbsentOnOlderServer(t *testing.T) {
	_, c, _, _ := serve(t, Options{}, pools(PoolDef{ID: "p1", Node: "n1", CapacityBytes: gib}), nil)
	ok, err := c.SupportsPoolCordon(context.Background())
	if err != nil || ok {
		t.Fatalf("older server: SupportsPoolCordon = %v, %v", ok, err)
	}
	if err := c.CordonPool(context.Background(), "p1"); err == nil || mayastorrest.IsNotFound(err) {
		t.Fatalf("cordon on an older server: %v (a bare 404, not NotFound)", err)
	}
	_, c2, _, _ := serve(t, Options{PoolCordon: true}, pools(PoolDef{ID: "p1", Node: "n1", CapacityBytes: gib}), nil)
	if ok, err := c2.SupportsPoolCordon(context.Background()); err != nil || !ok {
		t.Fatalf("newer server: SupportsPoolCordon = %v, %v", ok, err)
	}
}

func TestLabelErrors(t *testing.T) {
	_, c, _, _ := serve(t, Options{}, pools(PoolDef{ID: "p1", Node: "n1", CapacityBytes: gib, Labels: map[string]string{"openebs.io/tier": "hot"}}), nil)
	ctx := context.Background()
	ps, _ := c.ListPools(ctx)
	if ps[0].Labels()["openebs.io/tier"] != "hot" || ps[0].Labels()[CreatedByKey] != CreatedByValue {
		t.Fatalf("labels at creation: %v", ps[0].Labels())
	}
	if _, err := c.PutPoolLabel(ctx, "p1", "openebs.io/tier", "hot", false); !mayastorrest.IsAlreadyExists(err) {
		t.Fatalf("same value: %v", err)
	}
	if _, err := c.PutPoolLabel(ctx, "p1", "openebs.io/tier", "cold", false); !mayastorrest.IsFailedPrecondition(err) {
		t.Fatalf("other value without overwrite: %v", err)
	}
	if p, err := c.PutPoolLabel(ctx, "p1", "openebs.io/tier", "cold", true); err != nil || p.Labels()["openebs.io/tier"] != "cold" {
		t.Fatalf("overwrite: %v %v", p, err)
	}
	if _, err := c.DeletePoolLabel(ctx, "p1", "nope"); !mayastorrest.IsFailedPrecondition(err) {
		t.Fatalf("delete missing: %v", err)
	}
	var a *mayastorrest.APIError
	if _, err := c.DeletePoolLabel(ctx, "p1", CreatedByKey); !errors.As(err, &a) || a.Status != 400 {
		t.Fatalf("delete created-by: %v", err)
	}
	if _, err := c.PutPoolLabel(ctx, "nope", "a", "b", false); !mayastorrest.IsNotFound(err) {
		t.Fatalf("unknown pool: %v", err)
	}
}

// TestReplicaCountRulesAndRebuild: ±1 only, up only while Online, the 412
// bodies; rebuild-progress 0→100; Degraded while children ≠ num_replicas;
// ReplicaSynced only at the end.
func TestReplicaCountRulesAndRebuild(t *testing.T) {
	ps := pools(PoolDef{ID: "p1", Node: "n1", CapacityBytes: 100 * gib}, PoolDef{ID: "p2", Node: "n2", CapacityBytes: 100 * gib}, PoolDef{ID: "p3", Node: "n3", CapacityBytes: 100 * gib})
	_, c, clk, _ := serve(t, Options{RebuildBytesPerSecond: 100 << 20}, ps, []VolumeDef{{UUID: "v", SizeBytes: gib, Pools: []string{"p1"}, Published: true}})
	ctx := context.Background()
	precond := func(n int, msg string) {
		t.Helper()
		_, err := c.SetReplicaCount(ctx, "v", n)
		var a *mayastorrest.APIError
		if !errors.As(err, &a) || a.Status != 412 || a.Kind != "FailedPrecondition" || !strings.Contains(a.Message, msg) {
			t.Fatalf("SetReplicaCount(%d): %v, want 412 FailedPrecondition %q", n, err, msg)
		}
	}
	precond(1, "ReplicaCountAchieved")
	precond(3, "ReplicaChangeCount")
	before, _ := c.GetVolume(ctx, "v")
	after, err := c.SetReplicaCount(ctx, "v", 2)
	if err != nil {
		t.Fatal(err)
	}
	nr := newReplica(t, before, after)
	rt := after.State.ReplicaTopology[nr]
	if after.State.Status != "Degraded" || rt.RebuildProgress == nil || *rt.RebuildProgress != 0 || *rt.ChildStatus != "Degraded" || mayastorrest.ReplicaSynced(after, nr) {
		t.Fatalf("right after scale-up: %s %+v", after.State.Status, rt)
	}
	if len(after.State.Target.Children) != 2 || after.State.Target.UUID == after.Spec.UUID {
		t.Fatalf("nexus: %+v", after.State.Target)
	}
	precond(3, "ReplicaIncrease") // up while Degraded
	clk.add(5 * time.Second)      // 500 MiB of 1 GiB
	mid, _ := c.GetVolume(ctx, "v")
	if p := mid.State.ReplicaTopology[nr].RebuildProgress; p == nil || *p < 45 || *p > 55 || mayastorrest.ReplicaSynced(mid, nr) {
		t.Fatalf("mid rebuild: %v", p)
	}
	clk.add(6 * time.Second)
	done, _ := c.GetVolume(ctx, "v")
	if done.State.Status != "Online" || done.State.ReplicaTopology[nr].RebuildProgress != nil || !mayastorrest.ReplicaSynced(done, nr) {
		t.Fatalf("after rebuild: %s %+v", done.State.Status, done.State.ReplicaTopology[nr])
	}
	// down is allowed while Degraded: scale up, then down right away removes the rebuilding one
	b2, _ := c.SetReplicaCount(ctx, "v", 3)
	nr3 := newReplica(t, done, b2)
	d2, err := c.SetReplicaCount(ctx, "v", 2)
	if err != nil {
		t.Fatalf("down while Degraded: %v", err)
	}
	if _, still := d2.State.ReplicaTopology[nr3]; still || len(d2.State.ReplicaTopology) != 2 {
		t.Fatalf("the rebuilding replica must be the victim: %v", d2.State.ReplicaTopology)
	}
}

func TestUnpublishedVolumesDoNotRebuild(t *testing.T) {
	ps := pools(PoolDef{ID: "p1", Node: "n1", CapacityBytes: 100 * gib}, PoolDef{ID: "p2", Node: "n2", CapacityBytes: 100 * gib})
	m, c, clk, _ := serve(t, Options{}, ps, []VolumeDef{{UUID: "v", SizeBytes: gib, Pools: []string{"p1"}}})
	ctx := context.Background()
	before, _ := c.GetVolume(ctx, "v")
	if before.State.Status != "Online" || before.State.Target != nil || before.Spec.Target != nil {
		t.Fatalf("unpublished volume: %+v", before.State)
	}
	after, err := c.SetReplicaCount(ctx, "v", 2)
	if err != nil {
		t.Fatal(err)
	}
	nr := newReplica(t, before, after)
	clk.add(time.Hour)
	v, _ := c.GetVolume(ctx, "v")
	if mayastorrest.ReplicaSynced(v, nr) || v.State.ReplicaTopology[nr].ChildStatus != nil {
		t.Fatalf("unpublished: %+v", v.State.ReplicaTopology[nr])
	}
	if err := m.SetPublished("v", true); err != nil {
		t.Fatal(err)
	}
	v, _ = c.GetVolume(ctx, "v")
	if p := v.State.ReplicaTopology[nr].RebuildProgress; p == nil || *p != 0 || v.State.Status != "Degraded" {
		t.Fatalf("published: the never-synced replica starts its rebuild: %+v %s", v.State.ReplicaTopology[nr], v.State.Status)
	}
	clk.add(time.Minute)
	v, _ = c.GetVolume(ctx, "v")
	if !mayastorrest.ReplicaSynced(v, nr) {
		t.Fatalf("after publish and rebuild: %+v", v.State)
	}
}

// TestVictimRules: unhealthy first, then remote before nexus-local, then oldest.
func TestVictimRules(t *testing.T) {
	ps := pools(PoolDef{ID: "p1", Node: "n1", CapacityBytes: 100 * gib}, PoolDef{ID: "p2", Node: "n2", CapacityBytes: 100 * gib}, PoolDef{ID: "p3", Node: "n3", CapacityBytes: 100 * gib})
	ctx := context.Background()
	removed := func(t *testing.T, c *mayastorrest.Client, before mayastorrest.Volume) string {
		t.Helper()
		after, err := c.SetReplicaCount(ctx, "v", len(before.State.ReplicaTopology)-1)
		if err != nil {
			t.Fatal(err)
		}
		for id := range before.State.ReplicaTopology {
			if _, ok := after.State.ReplicaTopology[id]; !ok {
				return *before.State.ReplicaTopology[id].Pool
			}
		}
		t.Fatal("nothing removed")
		return ""
	}
	// p1 is the oldest and nexus-local (target on n1)
	vols := []VolumeDef{{UUID: "v", SizeBytes: gib, Pools: []string{"p1", "p2", "p3"}, Published: true}}

	_, c, _, _ := serve(t, Options{}, ps, vols)
	v, _ := c.GetVolume(ctx, "v")
	if v.State.Target.Node != "n1" {
		t.Fatalf("target on %s", v.State.Target.Node)
	}
	if got := removed(t, c, v); got != "p2" {
		t.Fatalf("remote and oldest of the remote: removed %s, want p2", got)
	}

	m, c, _, _ := serve(t, Options{}, ps, vols)
	v, _ = c.GetVolume(ctx, "v")
	for id, r := range v.State.ReplicaTopology {
		if *r.Pool == "p3" {
			if err := m.SetReplicaFaulted("v", id, true); err != nil {
				t.Fatal(err)
			}
		}
	}
	v, _ = c.GetVolume(ctx, "v")
	if got := removed(t, c, v); got != "p3" {
		t.Fatalf("unhealthy first: removed %s, want p3", got)
	}

	_, c, _, _ = serve(t, Options{}, ps, []VolumeDef{{UUID: "v", SizeBytes: gib, Pools: []string{"p1", "p2"}, Published: true}})
	v, _ = c.GetVolume(ctx, "v")
	if got := removed(t, c, v); got != "p2" {
		t.Fatalf("remote before nexus-local: removed %s, want p2", got)
	}
	_, _, _, url := serve(t, Options{}, ps, []VolumeDef{{UUID: "v", SizeBytes: gib, Pools: []string{"p1"}}})
	req, _ := http.NewRequest(http.MethodPut, url+"/v0/volumes/v/replica_count/0", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var e mayastorrest.RestJsonError
	_ = json.NewDecoder(resp.Body).Decode(&e)
	resp.Body.Close()
	if resp.StatusCode != 412 || e.Kind != "FailedPrecondition" || !strings.Contains(e.Message, "LastReplica") {
		t.Fatalf("to 0: %d %+v", resp.StatusCode, e)
	}
}

// TestReattachKnob: a removed child comes back after the delay, and the
// volume is Degraded while its children outnumber num_replicas.
func TestReattachKnob(t *testing.T) {
	ps := pools(PoolDef{ID: "p1", Node: "n1", CapacityBytes: 100 * gib}, PoolDef{ID: "p2", Node: "n2", CapacityBytes: 100 * gib})
	_, c, clk, _ := serve(t, Options{ReattachAfter: 3 * time.Second}, ps, []VolumeDef{{UUID: "v", SizeBytes: gib, Pools: []string{"p1", "p2"}, Published: true}})
	ctx := context.Background()
	v, err := c.SetReplicaCount(ctx, "v", 1)
	if err != nil {
		t.Fatal(err)
	}
	if v.State.Status != "Online" || len(v.State.Target.Children) != 1 {
		t.Fatalf("after scale-down: %s %d children", v.State.Status, len(v.State.Target.Children))
	}
	clk.add(4 * time.Second)
	v, _ = c.GetVolume(ctx, "v")
	if v.State.Status != "Degraded" || len(v.State.Target.Children) != 2 || v.Spec.NumReplicas != 1 {
		t.Fatalf("after re-attach: %s, %d children, num_replicas %d", v.State.Status, len(v.State.Target.Children), v.Spec.NumReplicas)
	}
	var pools []string
	for _, r := range v.State.ReplicaTopology {
		pools = append(pools, *r.Pool)
	}
	sort.Strings(pools)
	if strings.Join(pools, ",") != "p1,p2" {
		t.Fatalf("pools %v", pools)
	}
}

// TestFaultKnobs: exact counts of 412, 503 and dropped connections, and
// latency beyond the client's timeout.
func TestFaultKnobs(t *testing.T) {
	ps := pools(PoolDef{ID: "p1", Node: "n1", CapacityBytes: 100 * gib}, PoolDef{ID: "p2", Node: "n2", CapacityBytes: 100 * gib})
	m, c, _, url := serve(t, Options{}, ps, []VolumeDef{{UUID: "v", SizeBytes: gib, Pools: []string{"p1"}, Published: true}})
	ctx := context.Background()
	if err := m.AddFaults(Faults{Fail412: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SetReplicaCount(ctx, "v", 2); !mayastorrest.IsFailedPrecondition(err) {
		t.Fatalf("injected 412: %v", err)
	}
	if v, _ := c.GetVolume(ctx, "v"); v.Spec.NumReplicas != 1 {
		t.Fatal("an injected 412 must not act")
	}
	_ = m.AddFaults(Faults{Fail5xx: 1})
	if _, err := c.ListPools(ctx); !mayastorrest.IsUnavailable(err) || !mayastorrest.IsUnavailable(err) {
		t.Fatalf("injected 503: %v", err)
	}
	_ = m.AddFaults(Faults{Drop: 1})
	fresh, _ := mayastorrest.New(mayastorrest.Config{URL: url}) // a reused connection would be retried by net/http
	_, err := fresh.ListVolumes(ctx)
	var te *mayastorrest.TransportError
	if !errors.As(err, &te) {
		t.Fatalf("dropped: %v", err)
	}
	if _, err := c.ListVolumes(ctx); err != nil {
		t.Fatalf("after the faults: %v", err)
	}
	lat := "2s"
	if err := m.SetKnobs(Knobs{Latency: &lat}); err != nil {
		t.Fatal(err)
	}
	quick, _ := mayastorrest.New(mayastorrest.Config{URL: url, Timeout: 200 * time.Millisecond})
	if _, err := quick.ListNodes(ctx); !mayastorrest.IsUnavailable(err) {
		t.Fatalf("latency past the timeout: %v", err)
	}
	bad := 2.0
	if err := m.SetKnobs(Knobs{DropProbability: &bad}); err == nil {
		t.Fatal("probability 2 accepted")
	}
}

func TestHealthyFieldKnob(t *testing.T) {
	ps := pools(PoolDef{ID: "p1", Node: "n1", CapacityBytes: 100 * gib}, PoolDef{ID: "p2", Node: "n2", CapacityBytes: 100 * gib})
	vols := []VolumeDef{{UUID: "v", SizeBytes: gib, Pools: []string{"p1"}, Published: true}}
	_, c, _, _ := serve(t, Options{}, ps, vols)
	v, _ := c.GetVolume(context.Background(), "v")
	for _, r := range v.State.ReplicaTopology {
		if r.Healthy != nil {
			t.Fatal("2.7 sends no healthy field")
		}
	}
	_, c, clk, _ := serve(t, Options{HealthyField: true}, ps, vols)
	before, _ := c.GetVolume(context.Background(), "v")
	after, err := c.SetReplicaCount(context.Background(), "v", 2)
	if err != nil {
		t.Fatal(err)
	}
	nr := newReplica(t, before, after)
	if h := after.State.ReplicaTopology[nr].Healthy; h == nil || *h {
		t.Fatalf("rebuilding replica healthy = %v", h)
	}
	clk.add(time.Minute)
	v, _ = c.GetVolume(context.Background(), "v")
	if h := v.State.ReplicaTopology[nr].Healthy; h == nil || !*h || !mayastorrest.ReplicaSynced(v, nr) {
		t.Fatalf("rebuilt replica healthy = %v", h)
	}
}

// BenchmarkListVolumes10000: one full paged listing of 10,000 volumes through
// the client (requests per listing reported).
func BenchmarkListVolumes10000(b *testing.B) {
	var ps []PoolDef
	for i := 0; i < 12; i++ {
		ps = append(ps, PoolDef{ID: fmt.Sprintf("pool-%d", i), Node: fmt.Sprintf("node-%d", i), CapacityBytes: 1 << 50})
	}
	var vols []VolumeDef
	for i := 0; i < 10000; i++ {
		vols = append(vols, VolumeDef{UUID: fmt.Sprintf("%08d-0000-4000-8000-000000000000", i), SizeBytes: gib,
			Pools: []string{ps[i%12].ID, ps[(i+1)%12].ID, ps[(i+2)%12].ID}, Published: i%2 == 0})
	}
	m, err := New(Options{}, ps, vols)
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	c, _ := mayastorrest.New(mayastorrest.Config{URL: srv.URL})
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		vs, err := c.ListVolumes(context.Background())
		if err != nil || len(vs) != 10000 {
			b.Fatal(len(vs), err)
		}
	}
	b.ReportMetric(float64(c.Requests())/float64(b.N), "requests/listing")
}
