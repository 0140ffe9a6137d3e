package erasure

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/klauspost/reedsolomon"

	"github.com/billyronks/couchestor/apis/storage/v1/geometry"
)

func randomShards(rng *rand.Rand, c Codec, size int) [][]byte {
	shards := make([][]byte, c.TotalShards())
	for i := range shards {
		shards[i] = make([]byte, size)
		if i < c.DataShards() {
			for j := range shards[i] {
				shards[i][j] = byte(rng.Uint32())
			}
		}
	}
	return shards
}

func cloneShards(s [][]byte) [][]byte {
	out := make([][]byte, len(s))
	for i := range s {
		out[i] = bytes.Clone(s[i])
	}
	return out
}

// validLRC picks a random LRC-valid (k, m) with k in 1..20 and m in 2..8.
func validLRC(rng *rand.Rand) (int, int) {
	for {
		k, m := 1+rng.IntN(20), 2+rng.IntN(7)
		if _, err := geometry.NewLRCLayout(k, m); err == nil {
			return k, m
		}
	}
}

// TestGFMatchesReedSolomonKernels checks this package's GF(2^8) arithmetic
// against the SIMD kernels of klauspost/reedsolomon: the LRC decoder relies on
// both being the same field.
func TestGFMatchesReedSolomonKernels(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := 0; trial < 50; trial++ {
		k, r := 1+rng.IntN(12), 1+rng.IntN(6)
		m := newGFMatrix(r, k)
		for i := range m {
			for j := range m[i] {
				m[i][j] = byte(rng.Uint32())
			}
		}
		enc, err := reedsolomon.New(k, r, reedsolomon.WithCustomMatrix(m), reedsolomon.WithMaxGoroutines(1))
		if err != nil {
			t.Fatal(err)
		}
		const size = 97
		shards := make([][]byte, k+r)
		for i := range shards {
			shards[i] = make([]byte, size)
			if i < k {
				for b := range shards[i] {
					shards[i][b] = byte(rng.Uint32())
				}
			}
		}
		if err := enc.Encode(shards); err != nil {
			t.Fatal(err)
		}
		for row := 0; row < r; row++ {
			for b := 0; b < size; b++ {
				var want byte
				for col := 0; col < k; col++ {
					want ^= gfMul(m[row][col], shards[col][b])
				}
				if shards[k+row][b] != want {
					t.Fatalf("k=%d r=%d row %d byte %d: kernel %d, gfMul %d", k, r, row, b, shards[k+row][b], want)
				}
			}
		}
	}
	// invert really inverts.
	for trial := 0; trial < 100; trial++ {
		n := 1 + rng.IntN(10)
		a := newGFMatrix(n, n)
		for i := range a {
			for j := range a[i] {
				a[i][j] = byte(rng.Uint32())
			}
		}
		inv, ok := a.invert()
		if !ok {
			continue
		}
		for i := 0; i < n; i++ {
			row := inv.mulRow(a[i]) // a[i] × inv = e_i
			for j, v := range row {
				if want := byte(0); i == j && v != 1 || i != j && v != want {
					t.Fatalf("a×a⁻¹ row %d = %v", i, row)
				}
			}
		}
	}
}

// TestCodecProperty: random k, m, sizes and erasure patterns on both codecs;
// decodable patterns give the exact bytes back, others the typed error.
func TestCodecProperty(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for trial := 0; trial < 400; trial++ {
		alg := ReedSolomon
		k, m := 1+rng.IntN(20), 1+rng.IntN(8)
		if trial%2 == 1 {
			alg = LRC
			k, m = validLRC(rng)
		}
		c, err := NewCodec(alg, k, m)
		if err != nil {
			t.Fatal(err)
		}
		size := 1 + rng.IntN(3000)
		orig := randomShards(rng, c, size)
		if err := c.Encode(orig); err != nil {
			t.Fatal(err)
		}
		shards := cloneShards(orig)
		nLost := rng.IntN(m + 3)
		lost := rng.Perm(k + m)[:min(nLost, k+m)]
		for _, i := range lost {
			shards[i] = nil
		}
		decodable := c.Decodable(lost)
		if alg == ReedSolomon && decodable != (len(lost) <= m) {
			t.Fatalf("RS %d+%d Decodable(%v)=%v", k, m, lost, decodable)
		}
		err = c.Reconstruct(shards)
		name := fmt.Sprintf("%s %d+%d size %d lost %v", alg, k, m, size, lost)
		if !decodable {
			var nd *NotDecodableError
			if !errors.Is(err, ErrNotDecodable) || !errors.As(err, &nd) {
				t.Fatalf("%s: not decodable but err = %v", name, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for i := range orig {
			if !bytes.Equal(orig[i], shards[i]) {
				t.Fatalf("%s: shard %d differs after reconstruct", name, i)
			}
		}
	}
}

// nullVector returns a non-zero v with rows·v = 0, or nil when the rows have
// full column rank.
func nullVector(rows [][]byte, k int) []byte {
	work := make([][]byte, len(rows))
	for i := range rows {
		work[i] = bytes.Clone(rows[i])
	}
	pivotCol := []int{}
	r := 0
	for col := 0; col < k && r < len(work); col++ {
		p := -1
		for i := r; i < len(work); i++ {
			if work[i][col] != 0 {
				p = i
				break
			}
		}
		if p < 0 {
			continue
		}
		work[r], work[p] = work[p], work[r]
		inv := gfInv(work[r][col])
		for j := range work[r] {
			work[r][j] = gfMul(work[r][j], inv)
		}
		for i := range work {
			if i != r && work[i][col] != 0 {
				f := work[i][col]
				for j := range work[i] {
					work[i][j] ^= gfMul(f, work[r][j])
				}
			}
		}
		pivotCol = append(pivotCol, col)
		r++
	}
	if len(pivotCol) == k {
		return nil
	}
	isPivot := make([]bool, k)
	for _, c := range pivotCol {
		isPivot[c] = true
	}
	free := 0
	for isPivot[free] {
		free++
	}
	v := make([]byte, k)
	v[free] = 1
	for i, c := range pivotCol {
		v[c] = work[i][free] // x_c + a·x_free = 0 in characteristic 2
	}
	return v
}

// TestLRCDecodableOracleBruteForce checks Decodable on every loss pattern of
// small layouts against decoding itself: a decodable pattern must rebuild the
// exact bytes; an undecodable one must fail with the typed error AND have a
// witness — a non-zero data vector that the production Encode maps to all
// zeros on every surviving shard, so no decoder could tell it from zero data.
// It also proves the geometry doc's guarantee: every pattern of up to g+1
// losses is decodable.
func TestLRCDecodableOracleBruteForce(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	layouts := 0
	for k := 1; k <= 8; k++ {
		for m := 2; m <= 6; m++ {
			layout, err := geometry.NewLRCLayout(k, m)
			if err != nil || k+m > 13 {
				continue
			}
			layouts++
			c, err := NewCodec(LRC, k, m)
			if err != nil {
				t.Fatal(err)
			}
			lc := c.(*lrcCodec)
			n := k + m
			orig := randomShards(rng, c, 8)
			if err := c.Encode(orig); err != nil {
				t.Fatal(err)
			}
			for mask := 0; mask < 1<<n; mask++ {
				var lost []int
				var rows [][]byte
				for i := 0; i < n; i++ {
					if mask&(1<<i) != 0 {
						lost = append(lost, i)
					} else {
						rows = append(rows, lc.gen[i])
					}
				}
				dec := c.Decodable(lost)
				if len(lost) <= layout.GlobalParity+1 && !dec {
					t.Fatalf("LRC %d+%d: %d losses %v not decodable, the g+1 guarantee is broken", k, m, len(lost), lost)
				}
				shards := cloneShards(orig)
				for _, i := range lost {
					shards[i] = nil
				}
				err := c.Reconstruct(shards)
				if dec {
					if err != nil {
						t.Fatalf("LRC %d+%d lost %v: oracle says decodable, reconstruct: %v", k, m, lost, err)
					}
					for i := range orig {
						if !bytes.Equal(orig[i], shards[i]) {
							t.Fatalf("LRC %d+%d lost %v: shard %d wrong", k, m, lost, i)
						}
					}
					continue
				}
				if !errors.Is(err, ErrNotDecodable) {
					t.Fatalf("LRC %d+%d lost %v: oracle says undecodable, reconstruct err = %v", k, m, lost, err)
				}
				v := nullVector(rows, k)
				if v == nil {
					t.Fatalf("LRC %d+%d lost %v: undecodable but survivors have full rank", k, m, lost)
				}
				w := make([][]byte, n)
				for i := range w {
					w[i] = make([]byte, 1)
					if i < k {
						w[i][0] = v[i]
					}
				}
				if err := c.Encode(w); err != nil {
					t.Fatal(err)
				}
				for i := 0; i < n; i++ {
					if mask&(1<<i) == 0 && w[i][0] != 0 {
						t.Fatalf("LRC %d+%d lost %v: witness %v is not zero on surviving shard %d", k, m, lost, v, i)
					}
				}
			}
		}
	}
	if layouts < 10 {
		t.Fatalf("only %d layouts checked", layouts)
	}
}

// TestLRCGuaranteeLargerLayouts checks every pattern of up to g+1 losses on
// layouts too big to enumerate completely, up to k=20, m=8.
func TestLRCGuaranteeLargerLayouts(t *testing.T) {
	for _, km := range [][2]int{{12, 4}, {20, 8}, {18, 6}, {20, 4}, {16, 8}} {
		k, m := km[0], km[1]
		c, err := NewCodec(LRC, k, m)
		if err != nil {
			t.Fatal(err)
		}
		g := c.(*lrcCodec).layout.GlobalParity
		n := k + m
		count := 0
		var rec func(start int, lost []int)
		rec = func(start int, lost []int) {
			if !c.Decodable(lost) {
				t.Fatalf("LRC %d+%d: %v not decodable (g=%d)", k, m, lost, g)
			}
			count++
			if len(lost) == g+1 {
				return
			}
			for i := start; i < n; i++ {
				rec(i+1, append(lost, i))
			}
		}
		rec(0, nil)
		// One more than g+1 in one group is never decodable: only g+1
		// equations (local + globals) touch that group's unknowns.
		layout := c.(*lrcCodec).layout
		if layout.GroupSize() >= g+2 {
			if c.Decodable(layout.GroupMembers(0)[:g+2]) {
				t.Fatalf("LRC %d+%d: g+2 losses in one group reported decodable", k, m)
			}
		}
		t.Logf("LRC %d+%d: all %d patterns of <= %d losses decodable", k, m, count, g+1)
	}
}

// TestLRCLocalRepairReadsOnlyGroup: every single loss of a data shard or local
// parity is rebuilt with every shard outside its group absent (nil).
func TestLRCLocalRepairReadsOnlyGroup(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for trial := 0; trial < 60; trial++ {
		k, m := validLRC(rng)
		c, _ := NewCodec(LRC, k, m)
		layout := c.(*lrcCodec).layout
		orig := randomShards(rng, c, 1+rng.IntN(2000))
		if err := c.Encode(orig); err != nil {
			t.Fatal(err)
		}
		for j := 0; j < layout.LocalGroups; j++ {
			members := layout.GroupMembers(j)
			for _, target := range members {
				shards := make([][]byte, k+m)
				for _, o := range members {
					if o != target {
						shards[o] = bytes.Clone(orig[o])
					}
				}
				want := make([]bool, k+m)
				want[target] = true
				if err := c.ReconstructSome(shards, want); err != nil {
					t.Fatalf("LRC %d+%d local repair of %d from group %v: %v", k, m, target, members, err)
				}
				if !bytes.Equal(shards[target], orig[target]) {
					t.Fatalf("LRC %d+%d local repair of %d: wrong bytes", k, m, target)
				}
				for i := range shards {
					if layout.GroupOf(i) != j && len(shards[i]) != 0 {
						t.Fatalf("shard %d outside the group was produced", i)
					}
				}
				avail := make([]bool, k+m)
				for i := range avail {
					avail[i] = i != target
				}
				set, ok := c.RepairReadSet(target, avail)
				if !ok || len(set) != layout.GroupSize() {
					t.Fatalf("LRC %d+%d RepairReadSet(%d) = %v, want the %d other group members", k, m, target, set, layout.GroupSize())
				}
			}
		}
		// A global parity needs k reads.
		avail := make([]bool, k+m)
		for i := range avail {
			avail[i] = true
		}
		gi := layout.GlobalParityIndex(0)
		avail[gi] = false
		if set, ok := c.RepairReadSet(gi, avail); !ok || len(set) != k {
			t.Fatalf("RepairReadSet(global) = %v", set)
		}
	}
}

func TestNewCodecRejects(t *testing.T) {
	for _, tc := range []struct {
		alg  Algorithm
		k, m int
	}{{ReedSolomon, 0, 2}, {ReedSolomon, 4, 0}, {ReedSolomon, 250, 6}, {LRC, 4, 1}, {LRC, 5, 4}, {"Raid5", 4, 1}} {
		if _, err := NewCodec(tc.alg, tc.k, tc.m); err == nil {
			t.Errorf("NewCodec(%s, %d, %d) accepted", tc.alg, tc.k, tc.m)
		}
	}
	if c, err := NewCodec(ReedSolomon, 247, 8); err != nil || c.TotalShards() != 255 {
		t.Fatalf("255 shards: %v", err)
	}
}
