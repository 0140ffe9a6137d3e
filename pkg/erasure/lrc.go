package erasure

import (
	"crypto/subtle"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/klauspost/reedsolomon"

	"github.com/billyronks/couchestor/apis/storage/v1/geometry"
)

// lrcCodec implements the LRC pinned by geometry.NewLRCLayout.
//
// Generator matrix (rows = shards, columns = data shards), over GF(2^8):
//   - data shard i: the unit row e_i;
//   - local parity of group j: 1 on the columns of group j, 0 elsewhere (XOR);
//   - global parity r: the Cauchy row C[r][c] = 1/(x_r + y_c) with
//     y_c = c and x_r = k + r, all distinct, so x_r + y_c != 0.
//
// Why that guarantees every pattern of up to g+1 losses: the local parities
// sum to the all-ones row, and [all-ones; C] is an extended Cauchy matrix
// whose square submatrices are all non-singular, so [I; all-ones; C] is an
// MDS [k+g+1, k] code. If no local parity is lost, the survivors span that
// code minus at most g+1 erasures; if one is lost, at most g data/global
// shards are lost and [I; C] alone is MDS [k+g, k]. The brute-force test
// (TestLRCGuaranteeBruteForce) checks this on every small layout.
type lrcCodec struct {
	layout geometry.LRCLayout
	k, m   int
	gen    gfMatrix            // (k+m) x k generator matrix
	global reedsolomon.Encoder // k data -> g global parities (Cauchy rows)

	mu       sync.Mutex
	decoders map[string]reedsolomon.Encoder // by "inputs|outputs"
}

const maxCachedDecoders = 256

func newLRCCodec(k, m int) (*lrcCodec, error) {
	layout, err := geometry.NewLRCLayout(k, m)
	if err != nil {
		return nil, fmt.Errorf("erasure: %w", err)
	}
	l, g := layout.LocalGroups, layout.GlobalParity
	gen := newGFMatrix(k+m, k)
	for i := 0; i < k; i++ {
		gen[i][i] = 1
	}
	for j := 0; j < l; j++ {
		for _, d := range layout.GroupMembers(j)[:layout.GroupSize()] {
			gen[k+j][d] = 1
		}
	}
	globalRows := make([][]byte, g)
	for r := 0; r < g; r++ {
		row := gen[k+l+r]
		for c := 0; c < k; c++ {
			row[c] = gfInv(byte(k+r) ^ byte(c))
		}
		globalRows[r] = row
	}
	enc, err := reedsolomon.New(k, g, reedsolomon.WithCustomMatrix(globalRows), reedsolomon.WithMaxGoroutines(1))
	if err != nil {
		return nil, fmt.Errorf("erasure: LRC %d+%d global parity encoder: %w", k, m, err)
	}
	return &lrcCodec{layout: layout, k: k, m: m, gen: gen, global: enc, decoders: map[string]reedsolomon.Encoder{}}, nil
}

func (c *lrcCodec) Algorithm() Algorithm { return LRC }
func (c *lrcCodec) DataShards() int      { return c.k }
func (c *lrcCodec) ParityShards() int    { return c.m }
func (c *lrcCodec) TotalShards() int     { return c.k + c.m }

// Layout is the pinned LRC layout the codec implements.
func (c *lrcCodec) Layout() geometry.LRCLayout { return c.layout }

func (c *lrcCodec) Encode(shards [][]byte) error {
	_, missing, err := shardSizeOf(shards, c.k+c.m)
	if err != nil {
		return err
	}
	if len(missing) > 0 {
		return fmt.Errorf("erasure: encode needs every shard allocated, shards %v are empty", missing)
	}
	for j := 0; j < c.layout.LocalGroups; j++ {
		c.xorGroup(shards, j, c.layout.LocalParityIndex(j))
	}
	l := c.layout.LocalGroups
	in := make([][]byte, 0, c.k+c.layout.GlobalParity)
	in = append(in, shards[:c.k]...)
	in = append(in, shards[c.k+l:]...)
	if err := c.global.Encode(in); err != nil {
		return fmt.Errorf("erasure: LRC global parity encode: %w", err)
	}
	return nil
}

// xorGroup writes into shards[target] the XOR of the other members of group j
// (its data shards and its local parity); target must be a member.
func (c *lrcCodec) xorGroup(shards [][]byte, j, target int) {
	dst := shards[target]
	first := true
	for _, i := range c.layout.GroupMembers(j) {
		if i == target {
			continue
		}
		if first {
			copy(dst, shards[i])
			first = false
			continue
		}
		subtle.XORBytes(dst, dst, shards[i])
	}
}

func (c *lrcCodec) Decodable(lost []int) bool {
	lost = normalizeLost(lost, c.k+c.m)
	isLost := make([]bool, c.k+c.m)
	for _, i := range lost {
		isLost[i] = true
	}
	rows := make([][]byte, 0, c.k+c.m)
	for i := 0; i < c.k+c.m; i++ {
		if !isLost[i] {
			rows = append(rows, c.gen[i])
		}
	}
	return len(independentRows(rows, c.k)) == c.k
}

func (c *lrcCodec) Reconstruct(shards [][]byte) error { return c.ReconstructSome(shards, nil) }

// localRepairable reports whether shard i lies in a local group whose other
// members are all present.
func (c *lrcCodec) localGroupIfRepairable(i int, present func(int) bool) (int, bool) {
	j := c.layout.GroupOf(i)
	if j < 0 {
		return -1, false
	}
	for _, o := range c.layout.GroupMembers(j) {
		if o != i && !present(o) {
			return -1, false
		}
	}
	return j, true
}

func (c *lrcCodec) ReconstructSome(shards [][]byte, want []bool) error {
	n := c.k + c.m
	size, missing, err := shardSizeOf(shards, n)
	if err != nil {
		if len(shards) == n && len(missing) == n {
			return c.notDecodable(missing)
		}
		return err
	}
	if want != nil && len(want) != n {
		return fmt.Errorf("erasure: want has %d entries, want %d", len(want), n)
	}
	wanted := func(i int) bool { return want == nil || want[i] }
	origPresent := make([]bool, n)
	for i := range shards {
		origPresent[i] = len(shards[i]) != 0
	}

	// Local repairs first: each reads only the k/l other members of one group.
	var rest []int
	for _, i := range missing {
		if !wanted(i) {
			continue
		}
		if j, ok := c.localGroupIfRepairable(i, func(o int) bool { return origPresent[o] }); ok {
			shards[i] = ensureBuf(shards[i], size)
			c.xorGroup(shards, j, i)
			continue
		}
		rest = append(rest, i)
	}
	if len(rest) == 0 {
		return nil
	}

	// Global decode: pick k independent surviving rows (data first, whose
	// rows are unit vectors and cost nothing), invert, and express every
	// wanted shard as a combination of the picked shards.
	survivors := make([]int, 0, n)
	for i := 0; i < n; i++ {
		if origPresent[i] {
			survivors = append(survivors, i)
		}
	}
	rows := make([][]byte, len(survivors))
	for idx, s := range survivors {
		rows[idx] = c.gen[s]
	}
	picked := independentRows(rows, c.k)
	if len(picked) < c.k {
		return c.notDecodable(missing)
	}
	inputs := make([]int, c.k)
	a := newGFMatrix(c.k, c.k)
	for r, p := range picked {
		inputs[r] = survivors[p]
		copy(a[r], rows[p])
	}
	ainv, ok := a.invert()
	if !ok {
		return fmt.Errorf("erasure: LRC internal error: independent rows %v did not invert", inputs)
	}
	enc, err := c.decoder(inputs, rest, ainv)
	if err != nil {
		return err
	}
	bufs := make([][]byte, 0, c.k+len(rest))
	for _, i := range inputs {
		bufs = append(bufs, shards[i])
	}
	for _, i := range rest {
		shards[i] = ensureBuf(shards[i], size)
		bufs = append(bufs, shards[i])
	}
	if err := enc.Encode(bufs); err != nil {
		return fmt.Errorf("erasure: LRC decode: %w", err)
	}
	return nil
}

// decoder returns an encoder whose "parity" rows compute the outputs from the
// inputs: output o = gen[o] × A⁻¹ applied to the input shards.
func (c *lrcCodec) decoder(inputs, outputs []int, ainv gfMatrix) (reedsolomon.Encoder, error) {
	var sb strings.Builder
	for _, i := range inputs {
		sb.WriteString(strconv.Itoa(i))
		sb.WriteByte(',')
	}
	sb.WriteByte('|')
	for _, o := range outputs {
		sb.WriteString(strconv.Itoa(o))
		sb.WriteByte(',')
	}
	key := sb.String()
	c.mu.Lock()
	enc, ok := c.decoders[key]
	c.mu.Unlock()
	if ok {
		return enc, nil
	}
	matrix := make([][]byte, len(outputs))
	for r, o := range outputs {
		matrix[r] = ainv.mulRow(c.gen[o])
	}
	enc, err := reedsolomon.New(c.k, len(outputs), reedsolomon.WithCustomMatrix(matrix), reedsolomon.WithMaxGoroutines(1))
	if err != nil {
		return nil, fmt.Errorf("erasure: LRC decode matrix for inputs %v outputs %v: %w", inputs, outputs, err)
	}
	c.mu.Lock()
	if len(c.decoders) >= maxCachedDecoders {
		clear(c.decoders)
	}
	c.decoders[key] = enc
	c.mu.Unlock()
	return enc, nil
}

func (c *lrcCodec) notDecodable(missing []int) error {
	return &NotDecodableError{Algorithm: LRC, DataShards: c.k, ParityShards: c.m, Lost: missing}
}

func (c *lrcCodec) RepairReadSet(shard int, available []bool) ([]int, bool) {
	n := c.k + c.m
	if shard < 0 || shard >= n || len(available) != n {
		return nil, false
	}
	if j, ok := c.localGroupIfRepairable(shard, func(o int) bool { return available[o] }); ok {
		var out []int
		for _, o := range c.layout.GroupMembers(j) {
			if o != shard {
				out = append(out, o)
			}
		}
		return out, true
	}
	var survivors []int
	var rows [][]byte
	for i := 0; i < n; i++ {
		if i != shard && available[i] {
			survivors = append(survivors, i)
			rows = append(rows, c.gen[i])
		}
	}
	picked := independentRows(rows, c.k)
	if len(picked) < c.k {
		return nil, false
	}
	out := make([]int, len(picked))
	for r, p := range picked {
		out[r] = survivors[p]
	}
	return out, true
}
