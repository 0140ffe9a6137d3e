package ecvolume

import (
	"testing"

	"github.com/billyronks/couchestor/pkg/erasure"
	"github.com/billyronks/couchestor/pkg/journal"
	"github.com/billyronks/couchestor/pkg/stripe"
)

// covers decides whether a destaged stripe skips reading its old bytes: a
// wrong "true" would write zeros over data the extents do not carry.
func TestCovers(t *testing.T) {
	ext := func(lbaN uint64, blocks int) journal.Extent {
		return journal.Extent{LBA: lbaN, Data: make([]byte, blocks*512)}
	}
	const start, end = 2048 * 512, 4096 * 512 // stripe 1 of 1 MiB stripes
	for _, c := range []struct {
		name string
		ext  []journal.Extent
		want bool
	}{
		{"one extent, whole stripe", []journal.Extent{ext(2048, 2048)}, true},
		{"two halves, out of order", []journal.Extent{ext(3072, 1024), ext(2048, 1024)}, true},
		{"overlapping pieces", []journal.Extent{ext(2048, 1500), ext(3000, 600), ext(3500, 596)}, true},
		{"gap of one LBA", []journal.Extent{ext(2048, 1023), ext(3072, 1024)}, false},
		{"missing the last LBA", []journal.Extent{ext(2048, 2047)}, false},
		{"missing the first LBA", []journal.Extent{ext(2049, 2047)}, false},
		{"none", nil, false},
	} {
		if got := covers(c.ext, start, end); got != c.want {
			t.Errorf("%s: covers = %v, want %v", c.name, got, c.want)
		}
	}
}

// cacheBlock is one data shard when the stripe splits evenly into k, else
// the stripe (a block must divide the stripe).
func TestCacheBlock(t *testing.T) {
	for _, c := range []struct {
		k, m   int
		stripe int64
		want   int64
	}{
		{4, 2, 1 << 20, 256 << 10},
		{8, 3, 4 << 20, 512 << 10},
		{3, 2, 1 << 20, 1 << 20}, // 1 MiB does not split into 3 shards of whole LBAs
	} {
		codec, err := erasure.NewStripeCodec(erasure.ReedSolomon, c.k, c.m, c.stripe)
		if err != nil {
			t.Fatal(err)
		}
		v := &stripe.Volume{K: c.k, M: c.m, StripeSize: c.stripe, Codec: codec}
		if got := cacheBlock(v); got != c.want || c.stripe%got != 0 {
			t.Errorf("%d+%d, %d-byte stripes: block %d, want %d", c.k, c.m, c.stripe, got, c.want)
		}
	}
}
