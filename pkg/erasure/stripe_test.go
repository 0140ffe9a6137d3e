package erasure

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
)

func randomBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// TestStripeDecodeProperty: random codecs, data lengths and mixes of missing
// and corrupt shards (bit flips, truncation, wrong recorded checksum);
// decodable patterns return the exact data, others the typed error, and no
// case returns wrong bytes.
func TestStripeDecodeProperty(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	const stripeSize = 65536
	for trial := 0; trial < 300; trial++ {
		alg := ReedSolomon
		k, m := 1+rng.IntN(20), 1+rng.IntN(8)
		if trial%2 == 1 {
			alg = LRC
			k, m = validLRC(rng)
		}
		sc, err := NewStripeCodec(alg, k, m, stripeSize)
		if err != nil {
			t.Fatal(err)
		}
		dataLen := rng.IntN(stripeSize/512+1) * 512
		if trial%7 == 0 {
			dataLen = rng.IntN(stripeSize + 1) // any byte length works too
		}
		data := randomBytes(rng, dataLen)
		st, err := sc.EncodeBytes(data)
		if err != nil {
			t.Fatal(err)
		}
		if want, _ := StripeChecksum(int64(dataLen), st.ShardChecksums); want != st.Checksum {
			t.Fatalf("stripe checksum %q, derived %q", st.Checksum, want)
		}
		set := &ShardSet{Shards: cloneShards(st.Shards), ShardChecksums: append([]string(nil), st.ShardChecksums...), DataLength: int64(dataLen)}
		if rng.IntN(2) == 0 {
			set.StripeChecksum = st.Checksum
		}
		var lost []int
		for _, i := range rng.Perm(k + m)[:min(rng.IntN(m+3), k+m)] {
			lost = append(lost, i)
			switch rng.IntN(4) {
			case 0:
				set.Shards[i] = nil
			case 1:
				set.Shards[i][rng.IntN(len(set.Shards[i]))] ^= byte(1 + rng.IntN(255))
			case 2:
				set.Shards[i] = set.Shards[i][:rng.IntN(len(set.Shards[i]))]
			case 3:
				if set.StripeChecksum == "" { // a lying shard checksum marks a good shard as corrupt
					set.ShardChecksums[i] = formatDigest(ShardChecksumPrefix, rng.Uint64())
				} else {
					set.Shards[i] = nil
				}
			}
		}
		decodable := sc.Codec().Decodable(lost)
		got, rep, err := sc.Decode(set, nil)
		name := fmt.Sprintf("%s %d+%d len %d lost %v", alg, k, m, dataLen, lost)
		if err == nil {
			if !bytes.Equal(got, data) {
				t.Fatalf("%s: wrong bytes returned without error", name)
			}
			if !decodable {
				// Possible only if every lost shard was a parity shard the
				// data decode did not need.
				for _, i := range lost {
					if i < k {
						t.Fatalf("%s: undecodable pattern decoded", name)
					}
				}
			}
			continue
		}
		if errors.Is(err, ErrChecksumMismatch) {
			continue // a lying recorded checksum: refused, as it must be
		}
		if !errors.Is(err, ErrNotDecodable) {
			t.Fatalf("%s: unexpected error %v (report %+v)", name, err, rep)
		}
		if decodable {
			t.Fatalf("%s: decodable pattern refused: %v", name, err)
		}
	}
}

func TestStripeReconstructRebuildsCorruptShardsInPlace(t *testing.T) {
	sc, err := NewStripeCodec(ReedSolomon, 4, 2, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 1))
	data := randomBytes(rng, 1<<20-4096)
	st, _ := sc.EncodeBytes(data)
	set := &ShardSet{Shards: cloneShards(st.Shards), ShardChecksums: st.ShardChecksums, StripeChecksum: st.Checksum, DataLength: int64(len(data))}
	set.Shards[1][7] ^= 1
	set.Shards[5] = nil
	rep, err := sc.Reconstruct(set, nil)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(rep.Corrupt, rep.Missing, rep.Rebuilt) != "[1] [5] [1 5]" {
		t.Fatalf("report %+v", rep)
	}
	for i := range st.Shards {
		if !bytes.Equal(set.Shards[i], st.Shards[i]) {
			t.Fatalf("shard %d not restored", i)
		}
	}
	// Three losses on 4+2: typed error, Lost lists them.
	set.Shards[0][0] ^= 1
	set.Shards[2], set.Shards[3] = nil, nil
	_, err = sc.Reconstruct(set, nil)
	var nd *NotDecodableError
	if !errors.As(err, &nd) || fmt.Sprint(nd.Lost) != "[0 2 3]" {
		t.Fatalf("err = %v", err)
	}
}

func TestStripeChecksumBindsMetadata(t *testing.T) {
	sc, _ := NewStripeCodec(LRC, 4, 2, 65536)
	st, _ := sc.EncodeBytes(bytes.Repeat([]byte{7}, 1000))
	base := func() *ShardSet {
		return &ShardSet{Shards: cloneShards(st.Shards), ShardChecksums: append([]string(nil), st.ShardChecksums...), StripeChecksum: st.Checksum, DataLength: 1000}
	}
	s := base()
	s.DataLength = 1024 // a wrong length would silently return padding
	if _, _, err := sc.Decode(s, nil); !errors.Is(err, ErrChecksumMismatch) {
		t.Fatalf("wrong data length: err = %v", err)
	}
	s = base()
	s.ShardChecksums[2] = "crc32:00000000"
	if _, _, err := sc.Decode(s, nil); !errors.Is(err, ErrChecksumMismatch) {
		t.Fatalf("tampered shard checksum: err = %v", err)
	}
	s = base()
	if got, _, err := sc.Decode(s, nil); err != nil || !bytes.Equal(got, bytes.Repeat([]byte{7}, 1000)) {
		t.Fatalf("clean decode: %v", err)
	}
	if _, err := ParseShardChecksum(st.ShardChecksums[0]); err != nil || len(st.ShardChecksums[0]) != len("xxh3:")+16 {
		t.Fatalf("checksum form %q: %v", st.ShardChecksums[0], err)
	}
}

func TestEncodeAllMatchesEncode(t *testing.T) {
	sc, _ := NewStripeCodec(ReedSolomon, 8, 3, 65536)
	rng := rand.New(rand.NewPCG(9, 9))
	var stripes []*Stripe
	var lens []int64
	var want []string
	for i := 0; i < 9; i++ {
		d := randomBytes(rng, rng.IntN(65537))
		s := sc.NewStripe()
		copy(s.DataBuffer(), d)
		stripes = append(stripes, s)
		lens = append(lens, int64(len(d)))
		one, _ := sc.EncodeBytes(d)
		want = append(want, one.Checksum)
	}
	if err := sc.EncodeAll(stripes, lens); err != nil {
		t.Fatal(err)
	}
	for i, s := range stripes {
		if s.Checksum != want[i] {
			t.Fatalf("stripe %d: %s vs %s", i, s.Checksum, want[i])
		}
	}
}

func TestNewStripeCodecRejectsGeometry(t *testing.T) {
	for _, size := range []int64{4096, 65536 + 512, 1 << 27} {
		if _, err := NewStripeCodec(ReedSolomon, 4, 2, size); err == nil {
			t.Errorf("stripeSizeBytes %d accepted", size)
		}
	}
	sc, _ := NewStripeCodec(ReedSolomon, 3, 2, 1<<20)
	if sc.ShardSize() != 349526 {
		t.Fatalf("shard size %d", sc.ShardSize())
	}
	if _, err := sc.EncodeBytes(make([]byte, 1<<20+1)); err == nil {
		t.Fatal("oversized stripe accepted")
	}
}
