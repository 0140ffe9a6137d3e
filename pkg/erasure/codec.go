package erasure

import (
	"errors"
	"fmt"
	"sort"

	"github.com/billyronks/couchestor/apis/storage/v1/geometry"
)

// Algorithm names an erasure code, spelled as ErasureCodingPolicy.spec.algorithm.
type Algorithm string

const (
	// ReedSolomon is a systematic MDS code: any m lost shards are recoverable.
	ReedSolomon Algorithm = "ReedSolomon"
	// LRC is a locally repairable code in the layout pinned by
	// geometry.NewLRCLayout: a single lost shard is rebuilt from its local
	// group; which larger patterns are recoverable is what Decodable says.
	LRC Algorithm = "LRC"
)

// Codec computes parity shards and rebuilds lost ones. Shards are passed as a
// slice of exactly TotalShards byte slices of one common length; a nil or
// zero-length entry means the shard is missing (a zero-length entry with
// enough capacity is reused for the rebuilt bytes). Codecs are safe for
// concurrent use and never verify integrity: callers detect corruption by
// checksum (see StripeCodec) and pass corrupt shards as missing.
type Codec interface {
	Algorithm() Algorithm
	DataShards() int   // k
	ParityShards() int // m
	TotalShards() int  // k+m

	// Encode computes the m parity shards from the k data shards. All shards,
	// parity included, must be allocated with the same non-zero length.
	Encode(shards [][]byte) error

	// Reconstruct rebuilds every missing shard, or returns a *NotDecodableError
	// (errors.Is(err, ErrNotDecodable)) and leaves the present shards untouched.
	Reconstruct(shards [][]byte) error

	// ReconstructSome rebuilds only the missing shards with want[i] true,
	// reading as few shards as the code allows: for LRC a lone loss in a local
	// group reads only that group, so the other shards may be missing (nil).
	ReconstructSome(shards [][]byte, want []bool) error

	// Decodable reports whether all data can be recovered when exactly the
	// shards listed in lost are unavailable (duplicates and out-of-range
	// indices are ignored).
	Decodable(lost []int) bool

	// RepairReadSet returns the fewest shard indices to read to rebuild shard
	// given which shards are available, and false when it cannot be rebuilt.
	RepairReadSet(shard int, available []bool) ([]int, bool)
}

// ErrNotDecodable is matched (errors.Is) by every *NotDecodableError.
var ErrNotDecodable = errors.New("erasure: loss pattern is not decodable")

// NotDecodableError says which shards were unavailable when a rebuild was
// impossible. No bytes are produced in that case.
type NotDecodableError struct {
	Algorithm    Algorithm
	DataShards   int
	ParityShards int
	Lost         []int // sorted shard indices that were missing or corrupt
}

func (e *NotDecodableError) Error() string {
	return fmt.Sprintf("erasure: %s %d+%d cannot recover data with shards %v lost", e.Algorithm, e.DataShards, e.ParityShards, e.Lost)
}

// Is makes errors.Is(err, ErrNotDecodable) true.
func (e *NotDecodableError) Is(target error) bool { return target == ErrNotDecodable }

// NewCodec returns the codec for algorithm with k data and m parity shards.
// Parameters are checked against the schema's rules (k >= 1, m >= 1,
// k+m <= 255) and, for LRC, against geometry.NewLRCLayout.
func NewCodec(algorithm Algorithm, dataShards, parityShards int) (Codec, error) {
	if dataShards < 1 || parityShards < 1 {
		return nil, fmt.Errorf("erasure: dataShards and parityShards must be >= 1, got %d and %d", dataShards, parityShards)
	}
	if dataShards+parityShards > geometry.MaxTotalShards {
		return nil, fmt.Errorf("erasure: dataShards + parityShards must not exceed %d, got %d", geometry.MaxTotalShards, dataShards+parityShards)
	}
	switch algorithm {
	case ReedSolomon:
		return newRSCodec(dataShards, parityShards)
	case LRC:
		return newLRCCodec(dataShards, parityShards)
	default:
		return nil, fmt.Errorf("erasure: algorithm %q is not one of %q, %q", algorithm, ReedSolomon, LRC)
	}
}

// shardSizeOf checks the shard slice shape and returns the common length of
// the present shards and which shards are missing.
func shardSizeOf(shards [][]byte, total int) (size int, missing []int, err error) {
	if len(shards) != total {
		return 0, nil, fmt.Errorf("erasure: got %d shards, want %d", len(shards), total)
	}
	for i, s := range shards {
		if len(s) == 0 {
			missing = append(missing, i)
			continue
		}
		if size == 0 {
			size = len(s)
		} else if len(s) != size {
			return 0, nil, fmt.Errorf("erasure: shard %d has %d bytes, others %d", i, len(s), size)
		}
	}
	if size == 0 {
		return 0, missing, fmt.Errorf("erasure: no shard present")
	}
	return size, missing, nil
}

// normalizeLost returns the sorted, de-duplicated in-range indices of lost.
func normalizeLost(lost []int, total int) []int {
	seen := make(map[int]bool, len(lost))
	out := make([]int, 0, len(lost))
	for _, i := range lost {
		if i < 0 || i >= total || seen[i] {
			continue
		}
		seen[i] = true
		out = append(out, i)
	}
	sort.Ints(out)
	return out
}

// ensureBuf returns s resized to size, reusing its capacity when it can.
func ensureBuf(s []byte, size int) []byte {
	if cap(s) >= size {
		return s[:size]
	}
	return make([]byte, size)
}
