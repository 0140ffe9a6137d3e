package geometry

import "testing"

func TestShardSizePadsUp(t *testing.T) {
	cases := []struct {
		stripe int64
		k      int
		want   int64
	}{
		{1048576, 4, 262144},
		{1048576, 3, 349526}, // 1048576/3 = 349525.33 -> rounded up
		{65536, 1, 65536},
		{65536, 10, 6554},
	}
	for _, c := range cases {
		if got := ShardSize(c.stripe, c.k); got != c.want {
			t.Errorf("ShardSize(%d,%d)=%d want %d", c.stripe, c.k, got, c.want)
		}
		if ShardSize(c.stripe, c.k)*int64(c.k) < c.stripe {
			t.Errorf("shards of %d/%d do not hold the stripe", c.stripe, c.k)
		}
	}
}

func TestStripeRangeLastStripeShorter(t *testing.T) {
	const stripe = 65536 // 128 LBAs
	vol := int64(3*65536 + 1024)
	s, e, ok := StripeRange(3, stripe, vol)
	if !ok || s != 384 || e != 386 {
		t.Fatalf("last stripe = [%d,%d) ok=%v, want [384,386)", s, e, ok)
	}
	if _, _, ok := StripeRange(4, stripe, vol); ok {
		t.Fatal("stripe beyond the volume reported as present")
	}
	if StripeIndexForLBA(385, stripe) != 3 || StripeIndexForLBA(127, stripe) != 0 || StripeIndexForLBA(128, stripe) != 1 {
		t.Fatal("LBA to stripe mapping is wrong at a boundary")
	}
}

func TestLRCLayout(t *testing.T) {
	l, err := NewLRCLayout(12, 4)
	if err != nil {
		t.Fatal(err)
	}
	if l.LocalGroups != 2 || l.GlobalParity != 2 || l.GroupSize() != 6 || l.TotalShards() != 16 {
		t.Fatalf("layout %+v", l)
	}
	if l.GroupOf(5) != 0 || l.GroupOf(6) != 1 || l.GroupOf(12) != 0 || l.GroupOf(13) != 1 || l.GroupOf(14) != -1 {
		t.Fatal("group membership wrong")
	}
	if got := l.GroupMembers(1); len(got) != 7 || got[0] != 6 || got[6] != 13 {
		t.Fatalf("members %v", got)
	}
	for _, bad := range [][2]int{{4, 1}, {5, 4}, {0, 2}, {250, 6}} {
		if _, err := NewLRCLayout(bad[0], bad[1]); err == nil {
			t.Errorf("NewLRCLayout(%d,%d) accepted", bad[0], bad[1])
		}
	}
}
