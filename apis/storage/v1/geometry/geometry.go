// Package geometry pins, for every package of CoucheStor, the block geometry of
// erasure-coded stripes and the layout of the LRC code. It has no Kubernetes
// imports so that the library under pkg/ can use it while staying free of them.
//
// Block geometry:
//   - An LBA is a 512-byte block.
//   - An LBA range is half-open: [startLba, endLba). startLba < endLba means non-empty.
//   - A stripe spans at most stripeSizeBytes/512 LBAs; only the last stripe of a
//     volume may be shorter.
//   - stripeSizeBytes is a multiple of 4096, within [65536, 67108864].
//   - Each shard is ceil(stripeSizeBytes / k) bytes; the stripe's data is
//     zero-padded to k*shardSize, and the original data length is recorded
//     (a short last stripe holds (endLba-startLba)*512 bytes).
//
// LRC layout (parityShards m = l + g):
//   - l = m / 2 (rounded down) local groups, g = m - l global parities; LRC needs m >= 2.
//   - k must be divisible by l; group j holds data shards [j*k/l, (j+1)*k/l).
//   - Shard order in a stripe: data 0..k-1, then the l local XOR parities
//     (local parity of group j at index k+j), then the g global Reed-Solomon
//     parities at indices k+l .. k+m-1.
//   - A single lost shard of a group is rebuilt from its group alone (k/l reads).
//   - Failure tolerance is "the loss pattern is decodable" (the codec's Decodable
//     oracle), not "any m": every pattern of up to g+1 losses is guaranteed by the
//     construction where the codec's tests prove it; larger patterns may or may
//     not be decodable.
package geometry

import "fmt"

const (
	// LBASize is the size of one logical block in bytes.
	LBASize = 512
	// StripeAlignment is the multiple stripeSizeBytes must be of.
	StripeAlignment = 4096
	// MinStripeSizeBytes and MaxStripeSizeBytes bound stripeSizeBytes (schema 6.2).
	MinStripeSizeBytes = 65536
	MaxStripeSizeBytes = 67108864
	// MaxTotalShards is the most shards a stripe can have: indices are u8.
	MaxTotalShards = 255
)

// ShardSize is the size of each shard of a stripe: ceil(stripeSizeBytes / k).
func ShardSize(stripeSizeBytes int64, dataShards int) int64 {
	if dataShards <= 0 {
		return 0
	}
	k := int64(dataShards)
	return (stripeSizeBytes + k - 1) / k
}

// StripeSpanLBAs is the number of LBAs a full stripe covers.
func StripeSpanLBAs(stripeSizeBytes int64) int64 { return stripeSizeBytes / LBASize }

// StripeIndexForLBA is the index of the stripe (in a volume laid out from LBA 0
// in full stripes) that holds lba.
func StripeIndexForLBA(lba, stripeSizeBytes int64) int64 {
	return lba / StripeSpanLBAs(stripeSizeBytes)
}

// StripeRange is the LBA range of stripe index i in a volume of volumeBytes,
// laid out from LBA 0 in full stripes; the last stripe may be shorter.
// ok is false when the stripe lies beyond the volume.
func StripeRange(i, stripeSizeBytes, volumeBytes int64) (start, end int64, ok bool) {
	span := StripeSpanLBAs(stripeSizeBytes)
	total := (volumeBytes + LBASize - 1) / LBASize
	start = i * span
	if i < 0 || start >= total {
		return 0, 0, false
	}
	end = start + span
	if end > total {
		end = total
	}
	return start, end, true
}

// LRCLayout is the pinned layout of a locally repairable code.
type LRCLayout struct {
	DataShards   int // k
	LocalGroups  int // l
	GlobalParity int // g
}

// NewLRCLayout derives the LRC layout from the policy's dataShards (k) and
// parityShards (m), or says which rule the pair breaks.
func NewLRCLayout(k, m int) (LRCLayout, error) {
	if k < 1 || m < 1 {
		return LRCLayout{}, fmt.Errorf("LRC needs dataShards >= 1 and parityShards >= 1, got %d and %d", k, m)
	}
	if m < 2 {
		return LRCLayout{}, fmt.Errorf("LRC needs parityShards >= 2 (at least one local and one global parity), got %d", m)
	}
	if k+m > MaxTotalShards {
		return LRCLayout{}, fmt.Errorf("dataShards + parityShards must not exceed %d, got %d", MaxTotalShards, k+m)
	}
	l := m / 2
	if k%l != 0 {
		return LRCLayout{}, fmt.Errorf("LRC with parityShards %d uses %d local groups; dataShards %d is not divisible by %d", m, l, k, l)
	}
	return LRCLayout{DataShards: k, LocalGroups: l, GlobalParity: m - l}, nil
}

// GroupSize is the number of data shards in each local group (k/l).
func (l LRCLayout) GroupSize() int { return l.DataShards / l.LocalGroups }

// TotalShards is k + l + g.
func (l LRCLayout) TotalShards() int { return l.DataShards + l.LocalGroups + l.GlobalParity }

// GroupOf returns the local group of a data shard or a local parity shard, and
// -1 for a global parity shard.
func (l LRCLayout) GroupOf(shardIndex int) int {
	switch {
	case shardIndex < 0:
		return -1
	case shardIndex < l.DataShards:
		return shardIndex / l.GroupSize()
	case shardIndex < l.DataShards+l.LocalGroups:
		return shardIndex - l.DataShards
	default:
		return -1
	}
}

// GroupMembers lists the data shard indices of group j followed by its local parity index.
func (l LRCLayout) GroupMembers(j int) []int {
	gs := l.GroupSize()
	out := make([]int, 0, gs+1)
	for i := j * gs; i < (j+1)*gs; i++ {
		out = append(out, i)
	}
	return append(out, l.DataShards+j)
}

// LocalParityIndex is the shard index of group j's XOR parity.
func (l LRCLayout) LocalParityIndex(j int) int { return l.DataShards + j }

// GlobalParityIndex is the shard index of the i-th global parity.
func (l LRCLayout) GlobalParityIndex(i int) int { return l.DataShards + l.LocalGroups + i }
