package sim

import (
	"strings"
	"testing"
	"time"
)

func TestCountersFollowTheIOPSScheduleAndPublication(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	clock := func() time.Time { return now }
	rf := 0.75
	sc := &Scenario{
		Pools: []PoolSpec{{Name: "p", Node: "n1", CapacityBytes: 1 << 30}},
		Volumes: []VolumeSpec{
			{Name: "a", UUID: "u-a", Replicas: []string{"p"}, Published: true, IOPS: 100, ReadFraction: &rf,
				Schedule: []IOPSStep{{After: Duration{10 * time.Second}, IOPS: 1000}}, PVC: PVCSpec{Namespace: "d", Name: "a"}},
			{Name: "b", UUID: "u-b", Replicas: []string{"p"}, Published: false, IOPS: 500, PVC: PVCSpec{Namespace: "d", Name: "b"}},
			{Name: "c", UUID: "u-c", Replicas: []string{"p"}, Published: true, NoMetrics: true, IOPS: 5, PVC: PVCSpec{Namespace: "d", Name: "c"}},
		},
	}
	s, err := New(nil, sc, clock)
	if err != nil {
		t.Fatal(err)
	}
	now = now.Add(20 * time.Second) // 10 s at 100 + 10 s at 1000 = 11000 ops
	var b strings.Builder
	s.WriteMetrics(&b)
	out := b.String()
	for _, want := range []string{`volume_num_read_ops{pv_name="a"} 8250`, `volume_num_write_ops{pv_name="a"} 2750`} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %s in\n%s", want, out)
		}
	}
	if strings.Contains(out, `"b"`) || strings.Contains(out, `"c"`) {
		t.Errorf("unpublished or metric-less volumes exported:\n%s", out)
	}
	if err := s.SetIOPS("a", 0); err != nil {
		t.Fatal(err)
	}
	_ = s.SetPublished("b", true)
	now = now.Add(10 * time.Second)
	b.Reset()
	s.WriteMetrics(&b)
	if out := b.String(); !strings.Contains(out, `volume_num_read_ops{pv_name="a"} 8250`) || !strings.Contains(out, `volume_num_read_ops{pv_name="b"} 2500`) {
		t.Errorf("after SetIOPS(a,0) and publishing b:\n%s", out)
	}
	if err := s.SetIOPS("nope", 1); err == nil {
		t.Error("unknown volume accepted")
	}
	if err := s.SetIOPS("a", -1); err == nil {
		t.Error("negative IOPS accepted")
	}
}

func TestScenarioValidation(t *testing.T) {
	bad := &Scenario{Pools: []PoolSpec{{Name: "p", Node: "n"}}, Volumes: []VolumeSpec{{Name: "a", UUID: "u", Replicas: []string{"q"}, PVC: PVCSpec{Namespace: "d", Name: "a"}}}}
	if err := bad.normalize(); err == nil || !strings.Contains(err.Error(), `unknown pool "q"`) {
		t.Fatalf("got %v", err)
	}
}
