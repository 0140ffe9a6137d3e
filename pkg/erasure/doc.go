// Package erasure owns the erasure coding of CoucheStor's cold data: the
// shard codecs (systematic Reed-Solomon and the LRC pinned in
// apis/storage/v1/geometry), the mapping of a stripe's bytes onto k+m shards
// in that pinned block geometry, and the shard and stripe checksums recorded
// in ECStripe.spec (shardLocations[].checksum and checksum).
//
// It does not own where shards live, how they travel, or the ECStripe objects:
// the stripe writer/reader, the shard servers and the ECStripe controller build
// on it. It imports nothing from Kubernetes.
//
// Guarantees:
//   - Reconstruct/Decode verify every supplied shard by checksum, treat corrupt
//     shards as lost, rebuild when the loss pattern is decodable (any <= m for
//     Reed-Solomon; Codec.Decodable for LRC, which always holds for up to g+1
//     losses), verify rebuilt shards against their recorded checksums, and
//     otherwise return a *NotDecodableError (errors.Is ErrNotDecodable) or an
//     error matching ErrChecksumMismatch — never wrong bytes.
//   - Codecs run one goroutine per call; StripeCodec.EncodeAll parallelises
//     across stripes, which is faster for 1 MiB stripes on small machines.
package erasure
