package erasure

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"testing"
)

// FuzzDecode drives the stripe decoder with fuzzer-chosen codecs, data and
// damage (dropped, flipped, truncated or extended shards, rewritten shard or
// stripe checksums, wrong data length). It must never panic and never return
// bytes other than the original data without an error.
//
// Input layout: [alg k m seed lenHi lenLo] then 4-byte ops [kind shard a b].
func FuzzDecode(f *testing.F) {
	f.Add([]byte{0, 4, 2, 1, 0x10, 0x00})
	f.Add([]byte{1, 4, 2, 2, 0xff, 0xff, 0, 1, 0, 0})
	f.Add([]byte{0, 10, 4, 3, 0x80, 0x00, 1, 0, 5, 1, 0, 3, 0, 0, 0, 12, 0, 0})
	f.Add([]byte{1, 12, 4, 4, 0x40, 0x00, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0})
	f.Add([]byte{0, 3, 3, 5, 0x01, 0x01, 4, 1, 9, 9, 5, 0, 0, 0, 6, 0, 1, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) < 6 {
			return
		}
		alg := ReedSolomon
		if in[0]&1 == 1 {
			alg = LRC
		}
		k, m := 1+int(in[1])%20, 1+int(in[2])%8
		sc, err := NewStripeCodec(alg, k, m, 65536)
		if err != nil {
			return // e.g. LRC with an invalid layout: refused, fine
		}
		dataLen := int(binary.BigEndian.Uint16(in[4:6])) % 65537
		rng := rand.New(rand.NewPCG(uint64(in[3]), 1))
		data := randomBytes(rng, dataLen)
		st, err := sc.EncodeBytes(data)
		if err != nil {
			t.Fatal(err)
		}
		n := k + m
		set := &ShardSet{Shards: cloneShards(st.Shards), ShardChecksums: append([]string(nil), st.ShardChecksums...), StripeChecksum: st.Checksum, DataLength: int64(dataLen)}
		for ops := in[6:]; len(ops) >= 4; ops = ops[4:] {
			i := int(ops[1]) % n
			a, b := int(ops[2]), ops[3]
			switch ops[0] % 7 {
			case 0:
				set.Shards[i] = nil
			case 1:
				if len(set.Shards[i]) > 0 {
					set.Shards[i][a*257%len(set.Shards[i])] ^= b | 1
				}
			case 2:
				set.Shards[i] = set.Shards[i][:min(a, len(set.Shards[i]))]
			case 3:
				set.Shards[i] = append(set.Shards[i], b)
			case 4:
				set.ShardChecksums[i] = string(ops[1:])
			case 5:
				set.StripeChecksum = ""
			case 6:
				set.DataLength += int64(int8(b))
			}
		}
		got, _, err := sc.Decode(set, nil)
		if err != nil {
			var nd *NotDecodableError
			if errors.As(err, &nd) && !errors.Is(err, ErrNotDecodable) {
				t.Fatal("NotDecodableError does not match ErrNotDecodable")
			}
			return
		}
		// Without a stripe checksum nothing binds the caller's data length;
		// the bytes must then be the stripe's data area (data, then zero
		// padding) up to that length. With one, a changed length must fail.
		if set.StripeChecksum != "" && set.DataLength != int64(dataLen) {
			t.Fatalf("%s %d+%d: data length %d accepted against a stripe checksum for %d", alg, k, m, set.DataLength, dataLen)
		}
		want := append(bytes.Clone(data), make([]byte, 65536)...)[:set.DataLength]
		if !bytes.Equal(got, want) {
			t.Fatalf("%s %d+%d: decode returned wrong bytes without error (len %d vs %d)", alg, k, m, len(got), len(want))
		}
	})
}
