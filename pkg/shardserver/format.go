package shardserver

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/zeebo/xxh3"

	"github.com/billyronks/couchestor/pkg/placement"
	"github.com/billyronks/couchestor/pkg/shardindex"
)

// On-disk record of one shard inside the pool's store file:
//
//	[0:8)    magic "CSSHARD1"
//	[8:12)   header JSON length n (big endian)
//	[12:20)  XXH3-64 of the header JSON (big endian)
//	[20:20+n) header JSON (ShardHeader)
//	padding to HeaderBlockSize(n), then the shard payload (Header.SizeBytes bytes).
//
// The header is self-describing: with the headers alone (ListShards) the
// ECStripe objects of a volume can be rebuilt (`couchestor ec recover`). The
// header checksum makes a torn or overwritten header read as "no shard here".

const (
	recordMagic     = "CSSHARD1"
	recordPrefixLen = 20
	blockAlign      = 4096
	// maxHeaderJSON bounds a header (255 shard checksums fit comfortably).
	maxHeaderJSON = 64 << 10
)

// ShardHeader describes one stored shard: whose it is, which version, and the
// stripe metadata needed to rebuild its ECStripe from the shards alone.
type ShardHeader struct {
	Volume string `json:"volume"`
	// VolumeUID is the ECVolume's metadata.uid: a later volume of the same
	// name never adopts these shards.
	VolumeUID  string `json:"volumeUid,omitempty"`
	PolicyRef  string `json:"policyRef"`
	StripeID   int64  `json:"stripeId"`
	ShardIndex int    `json:"shardIndex"`
	// Generation is the ECStripe spec.generation the shard was written for.
	Generation int64 `json:"generation"`
	// Algorithm, DataShards, ParityShards and StripeSizeBytes are the
	// policy's geometry at write time.
	Algorithm       string `json:"algorithm"`
	DataShards      int    `json:"dataShards"`
	ParityShards    int    `json:"parityShards"`
	StripeSizeBytes int64  `json:"stripeSizeBytes"`
	// StartLBA and EndLBA are the stripe's LBA range [start, end).
	StartLBA int64 `json:"startLba"`
	EndLBA   int64 `json:"endLba"`
	// SizeBytes of the payload; Checksum is its erasure.ShardChecksum.
	SizeBytes int64  `json:"sizeBytes"`
	Checksum  string `json:"checksum"`
	// ShardChecksums are all k+m shard checksums of the stripe and
	// StripeChecksum the stripe checksum, so any surviving shard describes
	// the whole stripe.
	ShardChecksums []string `json:"shardChecksums"`
	StripeChecksum string   `json:"stripeChecksum"`
	// WrittenUnixNano is when the writer produced the shard (orphan grace).
	WrittenUnixNano int64 `json:"writtenUnixNano"`
	// WriterEpoch is the writer epoch of the export that wrote the shard
	// (its volume Lease's, pkg/fence); 0 for writers that are not fenced.
	// The server refuses a write below the highest epoch it saw (fence.go).
	WriterEpoch uint64 `json:"writerEpoch,omitempty"`
	// PlacementGroups is the group count of the volume's policy
	// (pkg/placement), optional: with it and VolumeUID the server records
	// the shard under placement.GroupOf(VolumeUID, StripeID,
	// PlacementGroups) in its stripe index, and a rebuild of the index from
	// the headers computes the same group. Without either (writers that
	// predate placement groups) the shard is recorded under UnknownGroup.
	PlacementGroups uint32 `json:"placementGroups,omitempty"`
}

// Validate checks the header fields a server relies on.
func (h *ShardHeader) Validate() error {
	switch {
	case h.Volume == "":
		return errors.New("shard header: volume must not be empty")
	case h.StripeID < 0:
		return fmt.Errorf("shard header: stripeId %d must be >= 0", h.StripeID)
	case h.ShardIndex < 0 || h.ShardIndex > 254:
		return fmt.Errorf("shard header: shardIndex %d must be within [0, 254]", h.ShardIndex)
	case h.Generation < 0:
		return fmt.Errorf("shard header: generation %d must be >= 0", h.Generation)
	case h.SizeBytes <= 0:
		return fmt.Errorf("shard header: sizeBytes %d must be > 0", h.SizeBytes)
	case h.Checksum == "":
		return errors.New("shard header: checksum must not be empty")
	case h.PlacementGroups > placement.MaxGroups:
		return fmt.Errorf("shard header: placementGroups %d must be within [0, %d] (0: not sent)", h.PlacementGroups, placement.MaxGroups)
	case len(indexVolume(h)) > shardindex.MaxVolumeUIDLen:
		return fmt.Errorf("shard header: volumeUid %q (or, without one, volume %q) is too long for the stripe index: at most %d bytes", h.VolumeUID, h.Volume, shardindex.MaxVolumeUIDLen-len(nameKeyPrefix))
	}
	return nil
}

// Key identifies a shard slot regardless of version.
type Key struct {
	Volume     string
	StripeID   int64
	ShardIndex int
}

// Key of the header.
func (h *ShardHeader) Key() Key { return Key{h.Volume, h.StripeID, h.ShardIndex} }

// headerBlockSize is the on-disk size of the header block, 4 KiB aligned.
func headerBlockSize(jsonLen int) int64 {
	n := int64(recordPrefixLen + jsonLen)
	return (n + blockAlign - 1) / blockAlign * blockAlign
}

// encodeHeader returns the header block (prefix + JSON + zero padding).
func encodeHeader(h *ShardHeader) ([]byte, error) {
	js, err := json.Marshal(h)
	if err != nil {
		return nil, fmt.Errorf("encode shard header: %w", err)
	}
	if len(js) > maxHeaderJSON {
		return nil, fmt.Errorf("shard header is %d bytes, at most %d allowed", len(js), maxHeaderJSON)
	}
	buf := make([]byte, headerBlockSize(len(js)))
	copy(buf, recordMagic)
	binary.BigEndian.PutUint32(buf[8:], uint32(len(js)))
	binary.BigEndian.PutUint64(buf[12:], xxh3.Hash(js))
	copy(buf[recordPrefixLen:], js)
	return buf, nil
}

// errNoHeader means the bytes at an offset are not a valid shard header.
var errNoHeader = errors.New("no valid shard header")

// decodePrefix returns the header JSON length from the first bytes of a record.
func decodePrefix(p []byte) (jsonLen int, sum uint64, err error) {
	if len(p) < recordPrefixLen || string(p[:8]) != recordMagic {
		return 0, 0, errNoHeader
	}
	n := binary.BigEndian.Uint32(p[8:])
	if n == 0 || n > maxHeaderJSON {
		return 0, 0, fmt.Errorf("%w: header length %d", errNoHeader, n)
	}
	return int(n), binary.BigEndian.Uint64(p[12:]), nil
}

// decodeHeaderJSON checks and parses the header JSON.
func decodeHeaderJSON(js []byte, sum uint64) (*ShardHeader, error) {
	if xxh3.Hash(js) != sum {
		return nil, fmt.Errorf("%w: header checksum mismatch", errNoHeader)
	}
	h := &ShardHeader{}
	if err := json.Unmarshal(js, h); err != nil {
		return nil, fmt.Errorf("%w: %v", errNoHeader, err)
	}
	return h, nil
}
