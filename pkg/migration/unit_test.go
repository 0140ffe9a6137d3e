package migration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
)

func pool(name, node, tier string, capacity, used int64, online bool) Pool {
	st := "Online"
	if !online {
		st = "Faulted"
	}
	return Pool{Name: name, Node: node, Labels: map[string]string{"tier": tier}, Online: online, Status: st, Capacity: capacity, Used: used, Available: capacity - used}
}

func hotTier(t *testing.T, pools ...Pool) *Tier {
	t.Helper()
	tier, err := NewTier(&metav1.LabelSelector{MatchLabels: map[string]string{"tier": "hot"}}, pools)
	if err != nil {
		t.Fatal(err)
	}
	return tier
}

func TestChooseTarget(t *testing.T) {
	const G = int64(1) << 30
	vol := Volume{ID: "v", Size: 10 * G, NumReplicas: 2, Replicas: []Replica{
		{UUID: "r1", Pool: "n1-cold", Node: "n1", State: "Online", Synced: true},
		{UUID: "r2", Pool: "n2-cold", Node: "n2", State: "Online", Synced: true},
	}}
	cold := func(n string) Pool { return pool(n+"-cold", n, "cold", 100*G, 20*G, true) }
	cases := []struct {
		name      string
		pools     []Pool
		wantPool  string
		replacing string
		wantErr   string
	}{
		{"most free wins", []Pool{cold("n1"), cold("n2"), pool("n3-hot", "n3", "hot", 100*G, 50*G, true), pool("n4-hot", "n4", "hot", 100*G, 10*G, true)}, "n4-hot", "r1", ""},
		{"tie broken by name", []Pool{pool("b-hot", "n3", "hot", 100*G, 10*G, true), pool("a-hot", "n4", "hot", 100*G, 10*G, true)}, "a-hot", "r1", ""},
		{"node of the replaced replica allowed", []Pool{pool("n2-hot", "n2", "hot", 100*G, 0, true)}, "n2-hot", "r2", ""},
		{"faulted refused", []Pool{pool("n3-hot", "n3", "hot", 100*G, 0, false)}, "", "", "not Online"},
		{"headroom", []Pool{pool("n3-hot", "n3", "hot", 100*G, 80*G, true)}, "", "", "headroom 85%"},
		{"too small", []Pool{pool("n3-hot", "n3", "hot", 15*G, 10*G, true)}, "", "", "available < volume size"},
		{"no pool of tier", []Pool{cold("n1")}, "", "", "no DiskPool matches"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := ChooseTarget(vol, hotTier(t, c.pools...), 0.85, Rules{SameNodeMoves: true, TopologyWritable: true})
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.Pool.Name != c.wantPool || p.Replacing != c.replacing {
				t.Fatalf("got pool %s replacing %s, want %s replacing %s", p.Pool.Name, p.Replacing, c.wantPool, c.replacing)
			}
		})
	}
	// A node holding a replica already on the new tier is refused.
	moved := vol
	moved.Replicas = []Replica{{UUID: "r1", Pool: "n1-hot", Node: "n1", State: "Online", Synced: true}, vol.Replicas[1]}
	_, err := ChooseTarget(moved, hotTier(t, pool("n1-hot", "n1", "hot", 100*G, 0, true), pool("n1-hot2", "n1", "hot", 100*G, 0, true)), 0.85, Rules{SameNodeMoves: true, TopologyWritable: true})
	if err == nil || !strings.Contains(err.Error(), "holds replica(s) r1") {
		t.Fatalf("err = %v, want node n1 refused for holding r1", err)
	}
}

func TestCommonLabels(t *testing.T) {
	tier := hotTier(t,
		Pool{Name: "a", Labels: map[string]string{"tier": "hot", "zone": "z1"}},
		Pool{Name: "b", Labels: map[string]string{"tier": "hot", "zone": "z2"}},
		Pool{Name: "c", Labels: map[string]string{"tier": "cold", "zone": "z1"}})
	got := tier.CommonLabels()
	if len(got) != 1 || got["tier"] != "hot" {
		t.Fatalf("CommonLabels = %v, want tier=hot only", got)
	}
}

func result(i int, ok bool) Result {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Minute)
	r := Result{Policy: "p", VolumeName: fmt.Sprintf("pv-%02d", i), VolumeID: "v", FromTier: "cold", ToTier: "hot", TriggerIOPS: 6000 + float64(i),
		StartedAt: start, FinishedAt: start.Add(90 * time.Second), Outcome: Succeeded}
	if !ok {
		r.Outcome, r.Error = Aborted, "timed out"
	}
	return r
}

func TestFoldResults(t *testing.T) {
	dry := storagev1.MigrationHistoryEntry{VolumeName: "pv-dry", Timestamp: metav1.NewTime(time.Date(2026, 1, 1, 0, 30, 30, 0, time.UTC)), FromTier: "warm", ToTier: "hot", TriggerIOPS: 1, Success: true, DryRun: true}
	st := storagev1.StoragePolicyStatus{TotalMigrations: 7, FailedMigrations: 2, MigrationHistory: []storagev1.MigrationHistoryEntry{dry}}
	var rs []Result
	for i := range 60 {
		rs = append(rs, result(i, i%3 != 0))
	}
	out := FoldResults(st, rs[:30], 4)
	out = FoldResults(out, rs[30:], 1)
	if out.TotalMigrations != 67 || out.FailedMigrations != 2+20 || out.ActiveMigrations != 1 {
		t.Fatalf("total %d failed %d active %d, want 67 22 1", out.TotalMigrations, out.FailedMigrations, out.ActiveMigrations)
	}
	if len(out.MigrationHistory) != storagev1.MaxMigrationHistory {
		t.Fatalf("history has %d entries, want %d", len(out.MigrationHistory), storagev1.MaxMigrationHistory)
	}
	// 60 results and the dry-run entry (00:30:30): the 50 newest are pv-59 ..
	// pv-11 with the dry-run entry among them.
	if out.MigrationHistory[0].VolumeName != "pv-59" || out.MigrationHistory[49].VolumeName != "pv-11" || out.MigrationHistory[29].VolumeName != "pv-dry" {
		t.Fatalf("history not newest first: first %s last %s", out.MigrationHistory[0].VolumeName, out.MigrationHistory[49].VolumeName)
	}
	for i := 1; i < len(out.MigrationHistory); i++ {
		if out.MigrationHistory[i].Timestamp.After(out.MigrationHistory[i-1].Timestamp.Time) {
			t.Fatalf("entry %d newer than entry %d", i, i-1)
		}
	}
	h := out.MigrationHistory[0]
	if h.FromTier != "cold" || h.ToTier != "hot" || h.TriggerIOPS != 6059 || h.Duration != "1m30s" || !h.Success || h.Timestamp.IsZero() {
		t.Fatalf("entry fields not filled: %+v", h)
	}
	if f := out.MigrationHistory[2]; f.VolumeName != "pv-57" || f.Success || f.Error != "timed out" {
		t.Fatalf("failed entry: %+v", f)
	}
	// The dry-run entry is kept while it is among the 50 newest.
	small := FoldResults(st, rs[:5], 0)
	if small.MigrationHistory[0].VolumeName != "pv-dry" || !small.MigrationHistory[0].DryRun || small.TotalMigrations != 12 {
		t.Fatalf("dry-run entry lost or counted: %+v total %d", small.MigrationHistory[0], small.TotalMigrations)
	}
	// Folding the same results again counts nothing (crash before Acknowledge).
	again := FoldResults(out, rs[55:], 0)
	if again.TotalMigrations != out.TotalMigrations || again.FailedMigrations != out.FailedMigrations || len(again.MigrationHistory) != 50 {
		t.Fatalf("refold counted again: total %d failed %d", again.TotalMigrations, again.FailedMigrations)
	}
	// The input is not modified.
	if st.TotalMigrations != 7 || len(st.MigrationHistory) != 1 {
		t.Fatal("FoldResults modified its input")
	}
}
