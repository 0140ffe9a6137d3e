package journal

import (
	"errors"
	"strings"
	"testing"
)

// Records that verify but have an impossible shape are refused wherever they
// are decoded (disk, wire): replay and destage trust the geometry.
func TestRecordGeometryChecked(t *testing.T) {
	for _, tc := range []struct {
		name string
		rec  Record
		want string
	}{
		{"data not a multiple of 512", Record{Seq: 1, Epoch: 1, Kind: KindWrite, Data: make([]byte, 100)}, "100 data bytes"},
		{"empty write", Record{Seq: 1, Epoch: 1, Kind: KindWrite}, "0 data bytes"},
		{"LBA range that wraps", Record{Seq: 1, Epoch: 1, Kind: KindWrite, LBA: ^uint64(0), Data: make([]byte, 512)}, "ends past LBA"},
		{"byte offset past int64", Record{Seq: 1, Epoch: 1, Kind: KindWrite, LBA: 1 << 60, Data: make([]byte, 512)}, "ends past LBA"},
		{"epoch record with data", Record{Seq: 1, Epoch: 1, Kind: KindEpoch, Data: make([]byte, 512)}, "epoch record"},
		{"unknown kind", Record{Seq: 1, Epoch: 1, Kind: 9}, "unknown kind 9"},
	} {
		_, _, err := DecodeRecord(AppendEncoded(nil, &tc.rec))
		if !errors.Is(err, ErrCorruptRecord) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want ErrCorruptRecord saying %q", tc.name, err, tc.want)
		}
	}
	ok := Record{Seq: 1, Epoch: 1, Kind: KindWrite, LBA: maxRecordLBA - 1, Data: make([]byte, 512)}
	if _, _, err := DecodeRecord(AppendEncoded(nil, &ok)); err != nil {
		t.Fatalf("the last LBA: %v", err)
	}
}
