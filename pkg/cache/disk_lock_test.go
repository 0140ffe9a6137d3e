package cache

import (
	"errors"
	"testing"

	"github.com/billyronks/couchestor/pkg/dirlock"
)

// Two opens of one cache directory (two exports, or one export started
// twice) would serve and evict each other's entries: the second is refused
// until the first is closed.
func TestDiskCacheDirectoryIsLocked(t *testing.T) {
	dir := t.TempDir()
	cfg := DiskConfig{Dir: dir, CapacityBytes: 1 << 20}
	d, err := OpenDiskCache(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenDiskCache(cfg); !errors.Is(err, dirlock.ErrLocked) {
		t.Fatalf("second open of %s: %v, want it refused as in use", dir, err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	d2, err := OpenDiskCache(cfg)
	if err != nil {
		t.Fatalf("open after Close: %v", err)
	}
	d2.Close()
}
