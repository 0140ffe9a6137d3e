package erasure

import (
	"errors"
	"fmt"

	"github.com/klauspost/reedsolomon"
)

// rsCodec is systematic Reed-Solomon on klauspost/reedsolomon (GF(2^8), since
// k+m <= 255). One goroutine per call: on small machines parallelising
// across stripes beats splitting one 1 MiB stripe (FACTS.md).
type rsCodec struct {
	k, m int
	enc  reedsolomon.Encoder
}

func newRSCodec(k, m int) (*rsCodec, error) {
	enc, err := reedsolomon.New(k, m, reedsolomon.WithMaxGoroutines(1))
	if err != nil {
		return nil, fmt.Errorf("erasure: new Reed-Solomon %d+%d: %w", k, m, err)
	}
	return &rsCodec{k: k, m: m, enc: enc}, nil
}

func (c *rsCodec) Algorithm() Algorithm { return ReedSolomon }
func (c *rsCodec) DataShards() int      { return c.k }
func (c *rsCodec) ParityShards() int    { return c.m }
func (c *rsCodec) TotalShards() int     { return c.k + c.m }

func (c *rsCodec) Encode(shards [][]byte) error {
	_, missing, err := shardSizeOf(shards, c.k+c.m)
	if err != nil {
		return err
	}
	if len(missing) > 0 {
		return fmt.Errorf("erasure: encode needs every shard allocated, shards %v are empty", missing)
	}
	if err := c.enc.Encode(shards); err != nil {
		return fmt.Errorf("erasure: Reed-Solomon encode: %w", err)
	}
	return nil
}

func (c *rsCodec) Decodable(lost []int) bool {
	return len(normalizeLost(lost, c.k+c.m)) <= c.m
}

func (c *rsCodec) notDecodable(missing []int) error {
	return &NotDecodableError{Algorithm: ReedSolomon, DataShards: c.k, ParityShards: c.m, Lost: missing}
}

func (c *rsCodec) Reconstruct(shards [][]byte) error {
	return c.ReconstructSome(shards, nil)
}

func (c *rsCodec) ReconstructSome(shards [][]byte, want []bool) error {
	_, missing, err := shardSizeOf(shards, c.k+c.m)
	if err != nil {
		if len(missing) == len(shards) && len(shards) == c.k+c.m {
			return c.notDecodable(missing)
		}
		return err
	}
	if want != nil && len(want) != c.k+c.m {
		return fmt.Errorf("erasure: want has %d entries, want %d", len(want), c.k+c.m)
	}
	needed := false
	for _, i := range missing {
		if want == nil || want[i] {
			needed = true
		}
	}
	if !needed {
		return nil
	}
	if len(missing) > c.m {
		return c.notDecodable(missing)
	}
	if want == nil {
		err = c.enc.Reconstruct(shards)
	} else {
		err = c.enc.ReconstructSome(shards, want)
	}
	if errors.Is(err, reedsolomon.ErrTooFewShards) {
		return c.notDecodable(missing)
	}
	if err != nil {
		return fmt.Errorf("erasure: Reed-Solomon reconstruct: %w", err)
	}
	return nil
}

func (c *rsCodec) RepairReadSet(shard int, available []bool) ([]int, bool) {
	if shard < 0 || shard >= c.k+c.m || len(available) != c.k+c.m {
		return nil, false
	}
	// Data shards first: when every data shard is there, parity is a plain
	// re-encode and a lost data shard needs the fewest parity multiplies.
	out := make([]int, 0, c.k)
	for i := 0; i < c.k+c.m && len(out) < c.k; i++ {
		if i != shard && available[i] {
			out = append(out, i)
		}
	}
	if len(out) < c.k {
		return nil, false
	}
	return out, true
}
