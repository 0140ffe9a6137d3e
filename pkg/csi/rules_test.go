package csi

import (
	"strings"
	"testing"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
)

func TestVolumeSize(t *testing.T) {
	for _, tc := range []struct {
		req, lim int64
		want     int64
		err      string
	}{
		{0, 0, 1 << 30, ""},
		{0, 100 << 20, 100 << 20, ""},
		{1, 0, 1 << 20, ""},
		{64 << 20, 0, 64 << 20, ""},
		{(64 << 20) + 1, 0, 65 << 20, ""},
		{1000, 1024, 1024, ""}, // a MiB passes the limit: the next LBA multiple
		{1000, 1000, 0, "leaves no multiple of 512"},
		{2048, 1024, 0, "exceeds limit_bytes"},
		{-1, 0, 0, "must not be negative"},
	} {
		got, err := VolumeSize(&csipb.CapacityRange{RequiredBytes: tc.req, LimitBytes: tc.lim})
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("VolumeSize(%d, %d) = %d, %v; want error containing %q", tc.req, tc.lim, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("VolumeSize(%d, %d) = %d, %v; want %d", tc.req, tc.lim, got, err, tc.want)
		}
		if got%lbaBytes != 0 {
			t.Errorf("VolumeSize(%d, %d) = %d: not a multiple of the LBA size", tc.req, tc.lim, got)
		}
	}
}

func TestVolumeName(t *testing.T) {
	if got := VolumeName("pvc-0b7e4ad1-8f0b-4b40-9d35-4f9e9bd7c8a1"); got != "pvc-0b7e4ad1-8f0b-4b40-9d35-4f9e9bd7c8a1" {
		t.Errorf("a DNS name must map to itself, got %q", got)
	}
	a, b := VolumeName("Sanity-Volume"), VolumeName("sanity-volume")
	if a == b || !strings.HasPrefix(a, "csi-") {
		t.Errorf("an upper-case name must map to a distinct hashed name: %q, %q", a, b)
	}
	if VolumeName("Sanity-Volume") != a {
		t.Error("VolumeName must be deterministic (CreateVolume's idempotency)")
	}
	long := strings.Repeat("x", 128) + "_"
	if n := VolumeName(long); len(n) > 63 {
		t.Errorf("hashed name %q is longer than 63", n)
	}
}

func TestPolicyParameter(t *testing.T) {
	for _, tc := range []struct {
		params map[string]string
		want   string
		err    string
	}{
		{map[string]string{"erasureCodingPolicy": "rs-4-2"}, "rs-4-2", ""},
		{map[string]string{"erasureCodingPolicy": "rs-4-2", "csi.storage.k8s.io/pvc/name": "data"}, "rs-4-2", ""},
		{nil, "", "erasureCodingPolicy is required"},
		{map[string]string{"erasureCodingPolicy": "rs", "replicas": "3"}, "", `["replicas"] are unknown`},
	} {
		got, err := PolicyParameter(tc.params)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("PolicyParameter(%v) = %q, %v; want error containing %q", tc.params, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("PolicyParameter(%v) = %q, %v; want %q", tc.params, got, err, tc.want)
		}
	}
}

func mountCap(mode csipb.VolumeCapability_AccessMode_Mode, fs string) *csipb.VolumeCapability {
	return &csipb.VolumeCapability{AccessMode: &csipb.VolumeCapability_AccessMode{Mode: mode},
		AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{FsType: fs}}}
}

func TestCheckCapability(t *testing.T) {
	block := &csipb.VolumeCapability{AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		AccessType: &csipb.VolumeCapability_Block{Block: &csipb.VolumeCapability_BlockVolume{}}}
	for _, tc := range []struct {
		c  *csipb.VolumeCapability
		ok bool
	}{
		{mountCap(csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, ""), true},
		{mountCap(csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, "xfs"), true},
		{mountCap(csipb.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY, "ext4"), true},
		{mountCap(csipb.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER, "ext4"), true},
		{mountCap(csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, "btrfs"), false},
		{mountCap(csipb.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER, "ext4"), false},
		{mountCap(csipb.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY, "ext4"), false},
		{mountCap(csipb.VolumeCapability_AccessMode_UNKNOWN, "ext4"), false},
		{block, true},
		{&csipb.VolumeCapability{AccessMode: block.AccessMode}, false},
		{nil, false},
	} {
		if err := CheckCapability(tc.c); (err == nil) != tc.ok {
			t.Errorf("CheckCapability(%v) = %v, want ok=%v", tc.c, err, tc.ok)
		}
	}
}

func TestPlaceableBytes(t *testing.T) {
	const G = 1 << 30
	for _, tc := range []struct {
		name string
		free []int64
		k, m int
		want int64
	}{
		{"too few pools", []int64{G, G}, 2, 1, 0},
		{"equal pools: all of it times k/(k+m)", []int64{3 * G, 3 * G, 3 * G}, 2, 1, 6 * G},
		{"six equal pools, 4+2", []int64{G, G, G, G, G, G}, 4, 2, 4 * G},
		// One huge pool takes one shard per stripe: the other two limit.
		{"one pool dominates", []int64{100 * G, G, G}, 2, 1, 2 * G},
		// 4 pools, 2+1: x = (4+2+1+1)/3 = 2.67 > f[0]? no (4): cap none -> x=8/3; valid if x >= 4? no.
		// cap pool 0: x = (2+1+1)/2 = 2 -> valid (2 <= 4, 2 >= 2): data 4 G.
		{"uneven", []int64{4 * G, 2 * G, G, G}, 2, 1, 4 * G},
		{"negative free ignored", []int64{G, G, -5}, 1, 1, G},
	} {
		got := PlaceableBytes(tc.free, tc.k, tc.m)
		if got != tc.want {
			t.Errorf("%s: PlaceableBytes(%v, %d, %d) = %d, want %d", tc.name, tc.free, tc.k, tc.m, got, tc.want)
		}
		// Whatever it says must be placeable: each pool holds at most one
		// shard (volume/k bytes) per stripe.
		if got > 0 {
			x := got / int64(tc.k)
			var sum int64
			for _, f := range tc.free {
				sum += max(min(f, x), 0)
			}
			if sum < int64(tc.k+tc.m)*x {
				t.Errorf("%s: %d bytes claimed but only %d of shard space fits", tc.name, got, sum)
			}
		}
	}
}
