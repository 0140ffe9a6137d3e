package erasure

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/zeebo/xxh3"
)

// Checksum strings are self-describing: "<algorithm>:<16 lower-case hex digits>".
const (
	// ShardChecksumPrefix marks a shard checksum: XXH3-64 over the shard's bytes.
	ShardChecksumPrefix = "xxh3:"
	// StripeChecksumPrefix marks a stripe checksum: XXH3-64 over the stripe's
	// data length (8 bytes, big endian) followed by the k+m shard digests
	// (8 bytes each, big endian, in shard order). It is derived from the shard
	// checksums, never from a second pass over the data, and it binds the
	// recorded data length to them.
	StripeChecksumPrefix = "xxh3-shards:"
)

// ErrChecksumMismatch is matched (errors.Is) when checksums disagree in a way
// that no rebuild can explain: the shard checksums do not derive the stripe
// checksum, or a rebuilt shard does not match its recorded checksum.
var ErrChecksumMismatch = errors.New("erasure: checksum mismatch")

// ShardChecksum returns the checksum string of a shard, as stored in
// ECStripe.spec.shardLocations[].checksum.
func ShardChecksum(shard []byte) string {
	return formatDigest(ShardChecksumPrefix, xxh3.Hash(shard))
}

func formatDigest(prefix string, d uint64) string {
	var buf [32]byte
	b := append(buf[:0], prefix...)
	const hexdigits = "0123456789abcdef"
	for shift := 60; shift >= 0; shift -= 4 {
		b = append(b, hexdigits[(d>>uint(shift))&0xf])
	}
	return string(b)
}

// ParseShardChecksum returns the digest of a shard checksum string.
func ParseShardChecksum(s string) (uint64, error) { return parseDigest(ShardChecksumPrefix, s) }

func parseDigest(prefix, s string) (uint64, error) {
	rest, ok := strings.CutPrefix(s, prefix)
	if !ok || len(rest) != 16 {
		return 0, fmt.Errorf("erasure: checksum %q is not %q followed by 16 hex digits", s, prefix)
	}
	d, err := strconv.ParseUint(rest, 16, 64)
	if err != nil {
		return 0, fmt.Errorf("erasure: checksum %q: %w", s, err)
	}
	return d, nil
}

// StripeChecksum derives the stripe checksum from the recorded data length and
// the shard checksums (all k+m, in shard order).
func StripeChecksum(dataLength int64, shardChecksums []string) (string, error) {
	buf := make([]byte, 8+8*len(shardChecksums))
	binary.BigEndian.PutUint64(buf, uint64(dataLength))
	for i, s := range shardChecksums {
		d, err := ParseShardChecksum(s)
		if err != nil {
			return "", fmt.Errorf("shard %d: %w", i, err)
		}
		binary.BigEndian.PutUint64(buf[8+8*i:], d)
	}
	return formatDigest(StripeChecksumPrefix, xxh3.Hash(buf)), nil
}
