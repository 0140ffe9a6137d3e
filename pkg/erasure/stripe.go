package erasure

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/zeebo/xxh3"

	"github.com/billyronks/couchestor/apis/storage/v1/geometry"
)

// StripeCodec binds a Codec to the block geometry pinned in
// apis/storage/v1/geometry: a stripe holds up to stripeSizeBytes of volume
// data, split into k shards of ceil(stripeSizeBytes/k) bytes (zero-padded),
// plus m parity shards of the same size; the original data length is recorded
// and covered by the stripe checksum. It is safe for concurrent use.
type StripeCodec struct {
	codec      Codec
	stripeSize int64
	shardSize  int
}

// NewStripeCodec returns the stripe codec of a policy: algorithm, dataShards
// (k), parityShards (m) and stripeSizeBytes, checked against the schema's rules.
func NewStripeCodec(algorithm Algorithm, dataShards, parityShards int, stripeSizeBytes int64) (*StripeCodec, error) {
	if stripeSizeBytes < geometry.MinStripeSizeBytes || stripeSizeBytes > geometry.MaxStripeSizeBytes {
		return nil, fmt.Errorf("erasure: stripeSizeBytes %d must be within [%d, %d]", stripeSizeBytes, geometry.MinStripeSizeBytes, geometry.MaxStripeSizeBytes)
	}
	if stripeSizeBytes%geometry.StripeAlignment != 0 {
		return nil, fmt.Errorf("erasure: stripeSizeBytes %d must be a multiple of %d", stripeSizeBytes, geometry.StripeAlignment)
	}
	codec, err := NewCodec(algorithm, dataShards, parityShards)
	if err != nil {
		return nil, err
	}
	return &StripeCodec{codec: codec, stripeSize: stripeSizeBytes, shardSize: int(geometry.ShardSize(stripeSizeBytes, dataShards))}, nil
}

// Codec is the underlying shard codec.
func (c *StripeCodec) Codec() Codec { return c.codec }

// ShardSize is the size of every shard: ceil(stripeSizeBytes / k).
func (c *StripeCodec) ShardSize() int { return c.shardSize }

// StripeSizeBytes is the most data bytes a stripe holds.
func (c *StripeCodec) StripeSizeBytes() int64 { return c.stripeSize }

// Stripe is one encoded stripe in memory: k+m shards cut from one contiguous
// buffer, with their checksums once encoded.
type Stripe struct {
	Shards         [][]byte // k+m shards of ShardSize bytes each
	DataLength     int64    // original data bytes, the rest of the data shards is zero padding
	ShardChecksums []string // ShardChecksum of each shard, by shard index
	Checksum       string   // StripeChecksum(DataLength, ShardChecksums)
	buf            []byte
	dataEnd        int
}

// NewStripe allocates a stripe buffer for this codec. Fill DataBuffer (for
// example by reading the volume straight into it) and call Encode.
func (c *StripeCodec) NewStripe() *Stripe {
	n := c.codec.TotalShards()
	buf := make([]byte, n*c.shardSize)
	s := &Stripe{Shards: make([][]byte, n), ShardChecksums: make([]string, n), buf: buf, dataEnd: c.codec.DataShards() * c.shardSize}
	for i := range s.Shards {
		s.Shards[i] = buf[i*c.shardSize : (i+1)*c.shardSize : (i+1)*c.shardSize]
	}
	return s
}

// DataBuffer is the contiguous data area of the stripe (k*ShardSize bytes, at
// least stripeSizeBytes); the data shards are views into it.
func (s *Stripe) DataBuffer() []byte { return s.buf[:s.dataEnd] }

// Encode zero-pads the data area after dataLength bytes, computes the parity
// shards and every checksum. No data is copied.
func (c *StripeCodec) Encode(s *Stripe, dataLength int64) error {
	if dataLength < 0 || dataLength > c.stripeSize {
		return fmt.Errorf("erasure: stripe data length %d must be within [0, %d]", dataLength, c.stripeSize)
	}
	if len(s.Shards) != c.codec.TotalShards() || s.dataEnd != c.codec.DataShards()*c.shardSize {
		return fmt.Errorf("erasure: stripe was not allocated by this codec's NewStripe")
	}
	clear(s.buf[dataLength:s.dataEnd])
	if err := c.codec.Encode(s.Shards); err != nil {
		return err
	}
	for i, sh := range s.Shards {
		s.ShardChecksums[i] = ShardChecksum(sh)
	}
	s.DataLength = dataLength
	sum, err := StripeChecksum(dataLength, s.ShardChecksums)
	if err != nil {
		return err
	}
	s.Checksum = sum
	return nil
}

// EncodeBytes copies data (at most stripeSizeBytes) into a new stripe and encodes it.
func (c *StripeCodec) EncodeBytes(data []byte) (*Stripe, error) {
	if int64(len(data)) > c.stripeSize {
		return nil, fmt.Errorf("erasure: %d data bytes exceed stripeSizeBytes %d", len(data), c.stripeSize)
	}
	s := c.NewStripe()
	copy(s.DataBuffer(), data)
	if err := c.Encode(s, int64(len(data))); err != nil {
		return nil, err
	}
	return s, nil
}

// EncodeAll encodes many stripes in parallel, one goroutine per stripe at a
// time and GOMAXPROCS at most: on this class of machine that beats splitting
// a stripe across goroutines. dataLengths[i] is stripes[i]'s data length.
func (c *StripeCodec) EncodeAll(stripes []*Stripe, dataLengths []int64) error {
	if len(stripes) != len(dataLengths) {
		return fmt.Errorf("erasure: %d stripes but %d data lengths", len(stripes), len(dataLengths))
	}
	workers := min(runtime.GOMAXPROCS(0), len(stripes))
	var next atomic.Int64
	errs := make([]error, len(stripes))
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(stripes) {
					return
				}
				if err := c.Encode(stripes[i], dataLengths[i]); err != nil {
					errs[i] = fmt.Errorf("stripe %d: %w", i, err)
				}
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// ShardSet is what a reader has of a stripe: the shard bytes it could read
// (nil when a shard was not read or is unavailable) and the metadata recorded
// in the ECStripe (shardLocations[].checksum by shardIndex, spec.checksum and
// the data length implied by lbaRange).
type ShardSet struct {
	Shards         [][]byte // k+m entries; nil = missing
	ShardChecksums []string // k+m recorded shard checksums
	StripeChecksum string   // recorded stripe checksum; "" skips the check
	DataLength     int64
}

// DecodeReport says what a decode found and did.
type DecodeReport struct {
	Missing []int // shards that were not supplied
	Corrupt []int // shards supplied with the wrong size, a checksum mismatch or an unusable recorded checksum
	Rebuilt []int // shards rebuilt and verified against their recorded checksums
}

// Reconstruct verifies every supplied shard against its recorded checksum,
// treats corrupt ones as lost, and rebuilds in place the lost shards selected
// by want (nil = all). Rebuilt shards reuse the capacity of corrupt ones and
// are checked against their recorded checksums. It returns a
// *NotDecodableError when the loss pattern is not decodable and an error
// matching ErrChecksumMismatch when the metadata is inconsistent; wrong bytes
// are never returned as good.
func (c *StripeCodec) Reconstruct(set *ShardSet, want []bool) (DecodeReport, error) {
	var rep DecodeReport
	n := c.codec.TotalShards()
	if len(set.Shards) != n || len(set.ShardChecksums) != n {
		return rep, fmt.Errorf("erasure: shard set has %d shards and %d checksums, want %d of each", len(set.Shards), len(set.ShardChecksums), n)
	}
	if want != nil && len(want) != n {
		return rep, fmt.Errorf("erasure: want has %d entries, want %d", len(want), n)
	}
	if set.DataLength < 0 || set.DataLength > c.stripeSize {
		return rep, fmt.Errorf("erasure: stripe data length %d must be within [0, %d]", set.DataLength, c.stripeSize)
	}
	if set.StripeChecksum != "" {
		derived, err := StripeChecksum(set.DataLength, set.ShardChecksums)
		if err != nil {
			return rep, fmt.Errorf("%w: recorded shard checksums: %w", ErrChecksumMismatch, err)
		}
		if derived != set.StripeChecksum {
			return rep, fmt.Errorf("%w: stripe checksum %q does not derive from the recorded shard checksums and data length %d (%q)", ErrChecksumMismatch, set.StripeChecksum, set.DataLength, derived)
		}
	}
	expected := make([]uint64, n)
	known := make([]bool, n)
	for i := 0; i < n; i++ {
		d, err := ParseShardChecksum(set.ShardChecksums[i])
		expected[i], known[i] = d, err == nil
		sh := set.Shards[i]
		switch {
		case len(sh) == 0:
			rep.Missing = append(rep.Missing, i)
		case len(sh) != c.shardSize || !known[i] || xxh3.Hash(sh) != d:
			rep.Corrupt = append(rep.Corrupt, i)
			set.Shards[i] = sh[:0]
		}
	}
	if err := c.codec.ReconstructSome(set.Shards, want); err != nil {
		var nd *NotDecodableError
		if errors.As(err, &nd) {
			nd.Lost = normalizeLost(append(append([]int(nil), rep.Missing...), rep.Corrupt...), n)
		}
		return rep, err
	}
	lost := normalizeLost(append(append([]int(nil), rep.Missing...), rep.Corrupt...), n)
	for _, i := range lost {
		if want != nil && !want[i] {
			continue
		}
		// A rebuilt shard that fails its recorded checksum means the
		// survivors or the metadata lie: refuse rather than hand it out.
		if known[i] && xxh3.Hash(set.Shards[i]) != expected[i] {
			return rep, fmt.Errorf("%w: rebuilt shard %d does not match its recorded checksum %q", ErrChecksumMismatch, i, set.ShardChecksums[i])
		}
		rep.Rebuilt = append(rep.Rebuilt, i)
	}
	return rep, nil
}

// Decode returns the stripe's DataLength data bytes (appended to dst[:0]),
// rebuilding only missing or corrupt data shards. Errors as Reconstruct.
func (c *StripeCodec) Decode(set *ShardSet, dst []byte) ([]byte, DecodeReport, error) {
	k := c.codec.DataShards()
	want := make([]bool, c.codec.TotalShards())
	for i := 0; i < k; i++ {
		want[i] = true
	}
	rep, err := c.Reconstruct(set, want)
	if err != nil {
		return nil, rep, err
	}
	out := dst[:0]
	remaining := set.DataLength
	for i := 0; i < k && remaining > 0; i++ {
		take := min(int64(c.shardSize), remaining)
		out = append(out, set.Shards[i][:take]...)
		remaining -= take
	}
	return out, rep, nil
}
