package placement

import "testing"

// GroupOf is on every stripe read and write: it must cost next to nothing.
func BenchmarkGroupOf(b *testing.B) {
	b.ReportAllocs()
	var sink uint32
	for i := 0; b.Loop(); i++ {
		sink += GroupOf("8d7e3f0a-2f6b-4c1e-9a57-3b1f0c2d4e5f", uint64(i), 256)
	}
	_ = sink
}

// Choose runs per group on a topology event: 256 groups over 100 pools.
func BenchmarkChoose256GroupsOver100Pools(b *testing.B) {
	ps := pools(100, 1)
	b.ReportAllocs()
	for b.Loop() {
		for g := uint32(0); g < 256; g++ {
			if _, err := Choose("cold-4-2", g, 6, ps, nil); err != nil {
				b.Fatal(err)
			}
		}
	}
}
