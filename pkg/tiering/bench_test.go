package tiering

import (
	"fmt"
	"testing"
	"time"

	"github.com/billyronks/couchestor/pkg/iops"
)

// One policy's decisions over 10,000 volumes (3 replicas each), measurements given.
func BenchmarkEvaluate10kVolumes(b *testing.B) {
	p := testPolicy()
	pools := map[string]Tier{}
	for i := range 30 {
		pools[fmt.Sprintf("pool-%d", i)] = Tiers[i%3]
	}
	vols := make([]Volume, 10000)
	ms := make(map[string]iops.Measurement, len(vols))
	for i := range vols {
		name := fmt.Sprintf("pvc-%08d", i)
		vols[i] = Volume{Name: name, MayastorVolume: true, Published: true, SizeBytes: 1 << 34,
			ReplicaPools: []string{fmt.Sprintf("pool-%d", i%30), fmt.Sprintf("pool-%d", (i+1)%30), fmt.Sprintf("pool-%d", (i+2)%30)}}
		ms[name] = iops.Measurement{IOPS: float64(i % 7000), Known: i%50 != 0, Coverage: 1}
	}
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		e := Evaluate(p, vols, ms, pools, now)
		if len(e.Decisions) != len(vols) {
			b.Fatal("short")
		}
	}
}
