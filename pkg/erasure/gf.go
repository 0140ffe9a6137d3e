package erasure

// GF(2^8) arithmetic with the field polynomial x^8+x^4+x^3+x^2+1 (0x11d), the
// same field github.com/klauspost/reedsolomon uses, so matrices built here can
// be handed to its SIMD kernels (WithCustomMatrix) for the bulk work. Only
// small matrices (at most 255x255) are handled here; shard bytes never are.

var (
	gfExp [512]byte // gfExp[i] = 2^i, doubled so gfExp[a+b] needs no modulo
	gfLog [256]int  // gfLog[0] is unused
)

func init() {
	x := 1
	for i := 0; i < 255; i++ {
		gfExp[i] = byte(x)
		gfLog[x] = i
		x <<= 1
		if x&0x100 != 0 {
			x ^= 0x11d
		}
	}
	for i := 255; i < 512; i++ {
		gfExp[i] = gfExp[i-255]
	}
}

func gfMul(a, b byte) byte {
	if a == 0 || b == 0 {
		return 0
	}
	return gfExp[gfLog[a]+gfLog[b]]
}

func gfInv(a byte) byte {
	if a == 0 {
		panic("erasure: inverse of zero in GF(2^8)")
	}
	return gfExp[255-gfLog[a]]
}

// gfMatrix is a dense row-major matrix over GF(2^8).
type gfMatrix [][]byte

func newGFMatrix(rows, cols int) gfMatrix {
	m := make(gfMatrix, rows)
	buf := make([]byte, rows*cols)
	for i := range m {
		m[i] = buf[i*cols : (i+1)*cols : (i+1)*cols]
	}
	return m
}

// mulRow returns row × m (a row vector times a matrix).
func (m gfMatrix) mulRow(row []byte) []byte {
	out := make([]byte, len(m[0]))
	for i, c := range row {
		if c == 0 {
			continue
		}
		for j, v := range m[i] {
			out[j] ^= gfMul(c, v)
		}
	}
	return out
}

// invert returns the inverse of a square matrix, or false when it is singular.
func (m gfMatrix) invert() (gfMatrix, bool) {
	n := len(m)
	work := newGFMatrix(n, 2*n)
	for i := range m {
		copy(work[i], m[i])
		work[i][n+i] = 1
	}
	for col := 0; col < n; col++ {
		pivot := -1
		for r := col; r < n; r++ {
			if work[r][col] != 0 {
				pivot = r
				break
			}
		}
		if pivot < 0 {
			return nil, false
		}
		work[col], work[pivot] = work[pivot], work[col]
		if s := work[col][col]; s != 1 {
			inv := gfInv(s)
			for j := range work[col] {
				work[col][j] = gfMul(work[col][j], inv)
			}
		}
		for r := 0; r < n; r++ {
			if r == col || work[r][col] == 0 {
				continue
			}
			f := work[r][col]
			for j := range work[r] {
				work[r][j] ^= gfMul(f, work[col][j])
			}
		}
	}
	out := newGFMatrix(n, n)
	for i := range out {
		copy(out[i], work[i][n:])
	}
	return out, true
}

// independentRows picks, in the order given, rows of m that are linearly
// independent of the rows picked before, stopping at want rows. It returns the
// indices (into candidates) of the picked rows; fewer than want means the
// candidates' rank is lower than want.
func independentRows(rows [][]byte, want int) []int {
	if want == 0 || len(rows) == 0 {
		return nil
	}
	cols := len(rows[0])
	// basis[c] is a reduced row whose leading non-zero column is c.
	basis := make([][]byte, cols)
	picked := make([]int, 0, want)
	tmp := make([]byte, cols)
	for idx, r := range rows {
		copy(tmp, r)
		lead := -1
		for c := 0; c < cols; c++ {
			if tmp[c] == 0 {
				continue
			}
			if basis[c] == nil {
				lead = c
				break
			}
			f := tmp[c]
			for j := c; j < cols; j++ {
				tmp[j] ^= gfMul(f, basis[c][j])
			}
		}
		if lead < 0 {
			continue
		}
		inv := gfInv(tmp[lead])
		b := make([]byte, cols)
		for j := lead; j < cols; j++ {
			b[j] = gfMul(tmp[j], inv)
		}
		basis[lead] = b
		picked = append(picked, idx)
		if len(picked) == want {
			break
		}
	}
	return picked
}
