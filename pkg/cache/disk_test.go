package cache

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func openTestDisk(t *testing.T, dir string, capacity int64, clock *fakeClock) (*DiskCache, *Metrics) {
	t.Helper()
	m, err := NewMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	d, err := OpenDiskCache(DiskConfig{Dir: dir, CapacityBytes: capacity, Now: clock.Now, Metrics: m, Compression: Compression{Codec: CodecLZ4}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d, m
}

func mustPut(t *testing.T, d *DiskCache, k CacheKey, v []byte) {
	t.Helper()
	if err := d.Put(k, v); err != nil {
		t.Fatal(err)
	}
}

func TestDiskSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	clock := newFakeClock()
	d, _ := openTestDisk(t, dir, 1<<20, clock)
	vals := map[CacheKey][]byte{}
	for i := range 20 {
		v := textBytes(key(i).Key, 1000+i*100)
		if i%2 == 1 {
			v = randomBytes(uint64(i), 3000)
		}
		vals[key(i)] = v
		mustPut(t, d, key(i), v)
	}
	_ = d.Close()

	d2, _ := openTestDisk(t, dir, 1<<20, clock)
	if d2.Len() != 20 {
		t.Fatalf("after reopen Len = %d, want 20", d2.Len())
	}
	for k, v := range vals {
		e, ok := d2.Get(k)
		if !ok {
			t.Fatalf("%v missing after restart", k)
		}
		if !bytes.Equal(e.Data, v) {
			t.Fatalf("%v differs after restart", k)
		}
	}
	if e, _ := d2.Get(key(0)); !e.Metadata.Compressed || e.Metadata.CompressionAlgorithm != CodecLZ4 {
		t.Fatalf("compressible entry metadata = %+v", e.Metadata)
	}
	if e, _ := d2.Get(key(1)); e.Metadata.Compressed {
		t.Fatalf("random entry stored compressed: %+v", e.Metadata)
	}
}

func TestDiskAccessStatistics(t *testing.T) {
	clock := newFakeClock()
	d, _ := openTestDisk(t, t.TempDir(), 1<<20, clock)
	k := key(1)
	mustPut(t, d, k, []byte("value"))
	for i := 1; i <= 3; i++ {
		clock.Advance(time.Minute)
		e, ok := d.Get(k)
		if !ok {
			t.Fatal("miss")
		}
		if e.Metadata.AccessCount != uint64(i) || !e.Metadata.LastAccessed.Equal(clock.Now()) {
			t.Fatalf("get %d: metadata %+v", i, e.Metadata)
		}
	}
}

// entryFile is the path of key's file.
func entryFile(dir string, k CacheKey) string { return filepath.Join(dir, entryName(k)) }

func TestDiskCorruptionIsAMiss(t *testing.T) {
	v := textBytes("payload", 4096)
	k := CacheKey{Bucket: "bucket", Key: "object"}
	// Flip one byte in each region: header, key, payload, checksum.
	for _, tc := range []struct {
		name string
		at   func(fileSize int64) int64
	}{
		{"magic", func(int64) int64 { return 0 }},
		{"generation", func(int64) int64 { return 9 }},
		{"payload length", func(int64) int64 { return 48 }},
		{"key", func(int64) int64 { return diskHeaderSize + 2 }},
		{"payload", func(n int64) int64 { return n / 2 }},
		{"checksum", func(n int64) int64 { return n - 1 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			d, m := openTestDisk(t, dir, 1<<20, newFakeClock())
			mustPut(t, d, k, v)
			path := entryFile(dir, k)
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			b[tc.at(int64(len(b)))] ^= 0x5a
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
			if e, ok := d.Get(k); ok {
				t.Fatalf("corrupt file served %d bytes (equal to original: %v)", len(e.Data), bytes.Equal(e.Data, v))
			}
			if got := testutil.ToFloat64(m.corrupt.WithLabelValues("l2")); got != 1 {
				t.Fatalf("corrupt counter = %v, want 1", got)
			}
			if _, err := os.Stat(path); !os.IsNotExist(err) {
				t.Fatalf("corrupt file not removed: %v", err)
			}
			if d.Len() != 0 || d.UsedBytes() != 0 {
				t.Fatalf("index keeps the corrupt entry: len %d, used %d", d.Len(), d.UsedBytes())
			}
			// A rewrite works again.
			mustPut(t, d, k, v)
			if e, ok := d.Get(k); !ok || !bytes.Equal(e.Data, v) {
				t.Fatal("rewrite after corruption not served")
			}
		})
	}
}

func TestDiskTornWritesAreMisses(t *testing.T) {
	dir := t.TempDir()
	clock := newFakeClock()
	d, _ := openTestDisk(t, dir, 1<<20, clock)
	a, b, c := key(1), key(2), key(3)
	for _, k := range []CacheKey{a, b, c} {
		mustPut(t, d, k, randomBytes(uint64(len(k.Key)), 4096))
	}
	// Truncated while open: the read sees the short file.
	pa := entryFile(dir, a)
	if err := os.Truncate(pa, 1000); err != nil {
		t.Fatal(err)
	}
	if _, ok := d.Get(a); ok {
		t.Fatal("truncated file served")
	}
	// Truncated to zero (a rename that outlived its data) and a leftover temp
	// file: both cleaned by the scan on reopen.
	_ = d.Close()
	pb := entryFile(dir, b)
	if err := os.Truncate(pb, 0); err != nil {
		t.Fatal(err)
	}
	tmp := pb + diskTmpMarker + "123"
	if err := os.WriteFile(tmp, []byte("half an entry"), 0o600); err != nil {
		t.Fatal(err)
	}
	d2, m2 := openTestDisk(t, dir, 1<<20, clock)
	if d2.Len() != 1 {
		t.Fatalf("after reopen Len = %d, want 1 (only the intact entry)", d2.Len())
	}
	if _, ok := d2.Get(b); ok {
		t.Fatal("empty file served")
	}
	if _, ok := d2.Get(c); !ok {
		t.Fatal("intact entry lost")
	}
	if _, err := os.Stat(tmp); !os.IsNotExist(err) {
		t.Fatal("temp file left after reopen")
	}
	if got := testutil.ToFloat64(m2.corrupt.WithLabelValues("l2")); got != 1 {
		t.Fatalf("corrupt counter after scan = %v, want 1", got)
	}
}

func TestDiskFileOfAnotherKeyIsAMiss(t *testing.T) {
	dir := t.TempDir()
	d, _ := openTestDisk(t, dir, 1<<20, newFakeClock())
	a, b := key(1), key(2)
	mustPut(t, d, a, []byte("AAAA"))
	mustPut(t, d, b, []byte("BBBB"))
	if err := os.Rename(entryFile(dir, b), entryFile(dir, a)); err != nil {
		t.Fatal(err)
	}
	if e, ok := d.Get(a); ok {
		t.Fatalf("key a served %q from b's file", e.Data)
	}
}

func TestDiskCapacityBoundEvictsLeastRecentlyUsed(t *testing.T) {
	dir := t.TempDir()
	clock := newFakeClock()
	const capacity = 64 << 10
	d, m := openTestDisk(t, dir, capacity, clock)
	v := randomBytes(3, 4000)
	for i := range 40 {
		clock.Advance(time.Second)
		mustPut(t, d, key(i), v)
		if d.UsedBytes() > capacity {
			t.Fatalf("used %d > capacity %d", d.UsedBytes(), capacity)
		}
		if i == 5 {
			d.Get(key(0)) // key 0 becomes recently used
		}
	}
	if got := testutil.ToFloat64(m.evictions.WithLabelValues("l2")); got == 0 {
		t.Fatal("no evictions counted")
	}
	if _, ok := d.Get(key(1)); ok {
		t.Fatal("least recently used entry survived")
	}
	if _, ok := d.Get(key(39)); !ok {
		t.Fatal("newest entry evicted")
	}
	// The files on disk match the index.
	var files int
	var total int64
	_ = filepath.WalkDir(dir, func(p string, e os.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			info, _ := e.Info()
			files++
			total += info.Size()
		}
		return nil
	})
	if files != d.Len() || total != d.UsedBytes() || total > capacity {
		t.Fatalf("disk holds %d files / %d bytes; index %d / %d; capacity %d", files, total, d.Len(), d.UsedBytes(), capacity)
	}
	// A lower bound on reopen evicts down to it.
	_ = d.Close()
	d2, _ := openTestDisk(t, dir, 20<<10, clock)
	if d2.UsedBytes() > 20<<10 || d2.Len() == 0 {
		t.Fatalf("reopened with 20 KiB bound: used %d, len %d", d2.UsedBytes(), d2.Len())
	}
	if _, ok := d2.Get(key(39)); !ok {
		t.Fatal("most recent entry evicted on reopen")
	}
	if err := d2.Put(key(100), randomBytes(4, 30<<10)); err == nil {
		t.Fatal("entry larger than capacity accepted")
	}
}
