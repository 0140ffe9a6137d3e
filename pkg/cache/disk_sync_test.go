package cache

import (
	"path/filepath"
	"testing"
)

// TestDiskDeleteSyncsUnsyncedChanges: demoted (non-durable) writes and the
// evictions they cause are made durable by the next Delete in their
// directory — also the Delete of a key already evicted, whose unlink a crash
// could otherwise undo and resurrect stale bytes — and a Delete with nothing
// left to make durable does not fsync.
func TestDiskDeleteSyncsUnsyncedChanges(t *testing.T) {
	d, err := OpenDiskCache(DiskConfig{Dir: t.TempDir(), CapacityBytes: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	syncs := func() int { d.mu.Lock(); defer d.mu.Unlock(); return d.deleteSyncs }
	k := key(1)
	// Open marks every directory: the first Delete there fsyncs.
	if err := d.Delete(k); err != nil || syncs() != 1 {
		t.Fatalf("first delete after open: %d syncs, %v", syncs(), err)
	}
	if err := d.Delete(k); err != nil || syncs() != 1 {
		t.Fatalf("delete with nothing unsynced: %d syncs, want still 1 (%v)", syncs(), err)
	}
	if err := d.putStored(k, &stored{payload: randomBytes(1, 1000), originalSize: 1000, gen: 1}, false); err != nil {
		t.Fatal(err)
	}
	if err := d.Delete(k); err != nil || syncs() != 2 {
		t.Fatalf("delete of a demoted entry: %d syncs, want 2 (%v)", syncs(), err)
	}
	// k is demoted, then evicted by later demotions (unlinked without fsync).
	if err := d.putStored(k, &stored{payload: randomBytes(2, 20000), originalSize: 20000, gen: 2}, false); err != nil {
		t.Fatal(err)
	}
	for i := 2; d.has(k, 2); i++ {
		if err := d.putStored(key(i), &stored{payload: randomBytes(uint64(i), 20000), originalSize: 20000, gen: uint64(i + 2)}, false); err != nil {
			t.Fatal(err)
		}
	}
	before := syncs()
	if err := d.Delete(k); err != nil || syncs() != before+1 {
		t.Fatalf("delete of an evicted key: %d syncs, want %d (%v)", syncs(), before+1, err)
	}
	d.mu.Lock()
	c := d.dirs[filepath.Join(d.dir, filepath.Dir(entryName(k)))]
	d.mu.Unlock()
	if c == nil || c.synced != c.changed {
		t.Fatalf("directory of k still has unsynced changes: %+v", c)
	}
}
