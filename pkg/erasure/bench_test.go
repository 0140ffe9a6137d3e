package erasure

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

const benchStripe = 1 << 20

var benchLayouts = [][2]int{{4, 2}, {8, 3}, {10, 4}}

func benchShards(b *testing.B, c Codec) [][]byte {
	size := (benchStripe + c.DataShards() - 1) / c.DataShards()
	shards := randomShards(rand.New(rand.NewPCG(1, 2)), c, size)
	if err := c.Encode(shards); err != nil {
		b.Fatal(err)
	}
	return shards
}

// BenchmarkEncode: Reed-Solomon parity of one 1 MiB stripe on one goroutine
// (bytes = data bytes).
func BenchmarkEncode(b *testing.B) {
	for _, km := range benchLayouts {
		b.Run(fmt.Sprintf("%d+%d", km[0], km[1]), func(b *testing.B) {
			c, _ := NewCodec(ReedSolomon, km[0], km[1])
			shards := benchShards(b, c)
			b.SetBytes(benchStripe)
			for b.Loop() {
				if err := c.Encode(shards); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkEncodeParallel: the same, one stripe per goroutine on every core
// (the way StripeCodec.EncodeAll runs); MB/s is for the whole machine.
func BenchmarkEncodeParallel(b *testing.B) {
	for _, km := range benchLayouts {
		b.Run(fmt.Sprintf("%d+%d", km[0], km[1]), func(b *testing.B) {
			c, _ := NewCodec(ReedSolomon, km[0], km[1])
			b.SetBytes(benchStripe)
			b.RunParallel(func(pb *testing.PB) {
				shards := benchShards(b, c)
				for pb.Next() {
					if err := c.Encode(shards); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkStripeEncode: zero-padding, parity and every shard and stripe
// checksum of a 1 MiB stripe (bytes = data bytes).
func BenchmarkStripeEncode(b *testing.B) {
	for _, alg := range []Algorithm{ReedSolomon, LRC} {
		for _, km := range [][2]int{{4, 2}, {8, 4}} {
			b.Run(fmt.Sprintf("%s/%d+%d", alg, km[0], km[1]), func(b *testing.B) {
				sc, err := NewStripeCodec(alg, km[0], km[1], benchStripe)
				if err != nil {
					b.Fatal(err)
				}
				st := sc.NewStripe()
				copy(st.DataBuffer(), randomBytes(rand.New(rand.NewPCG(1, 1)), benchStripe))
				b.SetBytes(benchStripe)
				for b.Loop() {
					if err := sc.Encode(st, benchStripe); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkReconstruct: rebuild 1 or 2 lost data shards of a 1 MiB stripe
// (bytes = stripe data bytes), buffers reused as a reader would.
func BenchmarkReconstruct(b *testing.B) {
	for _, km := range benchLayouts {
		for _, lost := range []int{1, 2} {
			b.Run(fmt.Sprintf("%d+%d/lost%d", km[0], km[1], lost), func(b *testing.B) {
				c, _ := NewCodec(ReedSolomon, km[0], km[1])
				shards := benchShards(b, c)
				b.SetBytes(benchStripe)
				for b.Loop() {
					for i := 0; i < lost; i++ {
						shards[i] = shards[i][:0]
					}
					if err := c.Reconstruct(shards); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkDecodeVerified: the reader's path — verify every shard checksum,
// rebuild one corrupt data shard, check it and copy out the data.
func BenchmarkDecodeVerified(b *testing.B) {
	sc, _ := NewStripeCodec(ReedSolomon, 4, 2, benchStripe)
	st, _ := sc.EncodeBytes(randomBytes(rand.New(rand.NewPCG(1, 1)), benchStripe))
	shards := cloneShards(st.Shards)
	dst := make([]byte, 0, benchStripe)
	b.SetBytes(benchStripe)
	for b.Loop() {
		shards[2] = shards[2][:0]
		set := ShardSet{Shards: shards, ShardChecksums: st.ShardChecksums, StripeChecksum: st.Checksum, DataLength: benchStripe}
		if _, _, err := sc.Decode(&set, dst); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLRCRepair: rebuilding one lost data shard of a 1 MiB LRC stripe
// from its local group (k/l reads, XOR) versus from the global parities
// (k reads, GF multiplies). Bytes = stripe data bytes, as BenchmarkReconstruct.
func BenchmarkLRCRepair(b *testing.B) {
	for _, km := range [][2]int{{8, 4}, {12, 4}} {
		c, _ := NewCodec(LRC, km[0], km[1])
		layout := c.(*lrcCodec).layout
		full := benchShards(b, c)
		b.Run(fmt.Sprintf("%d+%d/local", km[0], km[1]), func(b *testing.B) {
			shards := make([][]byte, len(full))
			for _, i := range layout.GroupMembers(0) {
				shards[i] = full[i]
			}
			want := make([]bool, len(full))
			want[0] = true
			b.SetBytes(benchStripe)
			for b.Loop() {
				shards[0] = shards[0][:0]
				if err := c.ReconstructSome(shards, want); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("%d+%d/global", km[0], km[1]), func(b *testing.B) {
			shards := cloneShards(full)
			lp := layout.LocalParityIndex(0)
			shards[lp] = nil // the group cannot help: global decode
			want := make([]bool, len(full))
			want[0] = true
			b.SetBytes(benchStripe)
			for b.Loop() {
				shards[0] = shards[0][:0]
				if err := c.ReconstructSome(shards, want); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
