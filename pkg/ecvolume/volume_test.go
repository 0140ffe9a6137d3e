package ecvolume

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/billyronks/couchestor/pkg/journal"
	"github.com/billyronks/couchestor/pkg/nbd"
)

func journalStores(t *testing.T, dir string, n int) []journal.Store {
	t.Helper()
	var out []journal.Store
	for i := 0; i < n; i++ {
		s, err := journal.OpenFileStore(filepath.Join(dir, fmt.Sprintf("journal-%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	return out
}

func openVolume(t *testing.T, dir string, stripes StripeStore, size, journalSize int64, withCache bool) *VolumeBackend {
	t.Helper()
	mode := "none"
	if withCache {
		mode = "cache"
	}
	return openVolumeMode(t, dir, stripes, size, journalSize, mode)
}

// openVolumeMode opens a volume without a cache ("none"), with one ("cache")
// or with one that fetches the blocks of a read concurrently ("concurrent").
func openVolumeMode(t *testing.T, dir string, stripes StripeStore, size, journalSize int64, mode string) *VolumeBackend {
	t.Helper()
	withCache := mode != "none"
	o := Options{
		Name: "vol-a", SizeBytes: size, StripeSizeBytes: 256 << 10,
		JournalStores: journalStores(t, dir, 3), Journal: journal.Options{SizeBytes: journalSize},
		DestageThresholdPercent: 50, DestageInterval: time.Hour, Stripes: stripes,
		OnDestageError: func(err error) { t.Logf("destage: %v", err) },
	}
	if withCache {
		o.Cache = &CacheOptions{BlockBytes: 16 << 10, MemoryBytes: 256 << 10, DiskDir: filepath.Join(dir, "l2"), DiskBytes: 512 << 10,
			ConcurrentMisses: mode == "concurrent"}
	}
	v, err := Open(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestRandomIOMatchesModel writes random (often unaligned) ranges, destages
// at random moments and reads random ranges; every read must equal a plain
// in-memory model of the disk. Caches are small, so blocks are evicted,
// demoted to L2, promoted and invalidated along the way.
func TestRandomIOMatchesModel(t *testing.T) {
	for _, mode := range []string{"none", "cache", "concurrent"} {
		t.Run("cache="+mode, func(t *testing.T) {
			const size = 4 << 20
			ctx := context.Background()
			stripes := NewMemoryStripeStore(256 << 10)
			v := openVolumeMode(t, t.TempDir(), stripes, size, 2<<20, mode)
			defer v.Close()
			model := make([]byte, size)
			rng := rand.New(rand.NewPCG(1, 2))
			for i := 0; i < 400; i++ {
				off := rng.Int64N(size - 1)
				n := 1 + rng.Int64N(min(size-off, 200<<10))
				switch rng.IntN(10) {
				case 0, 1, 2, 3:
					p := make([]byte, n)
					for j := range p {
						p[j] = byte(rng.Uint32())
					}
					if err := v.WriteAt(ctx, p, off); err != nil {
						t.Fatalf("write %d+%d: %v", off, n, err)
					}
					copy(model[off:], p)
				case 4:
					if err := v.WriteZeroes(ctx, off, n); err != nil {
						t.Fatalf("zeroes %d+%d: %v", off, n, err)
					}
					clear(model[off : off+n])
				case 5:
					if _, err := v.Destager().DestageOnce(ctx); err != nil {
						t.Fatalf("destage: %v", err)
					}
				default:
					p := make([]byte, n)
					if err := v.ReadAt(ctx, p, off); err != nil {
						t.Fatalf("read %d+%d: %v", off, n, err)
					}
					if !bytes.Equal(p, model[off:off+n]) {
						t.Fatalf("op %d: read %d+%d differs from the model", i, off, n)
					}
				}
			}
			if _, err := v.Destager().DestageOnce(ctx); err != nil {
				t.Fatal(err)
			}
			if used, _ := v.Journal().Fill(); used != 0 {
				t.Fatalf("journal holds %d bytes after a full destage", used)
			}
			all := make([]byte, size)
			if err := v.ReadAt(ctx, all, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(all, model) {
				t.Fatal("whole volume differs from the model after destage")
			}
			if stripes.StripeWrites() == 0 {
				t.Fatal("no stripe was ever written")
			}
		})
	}
}

// TestConcurrentOverlappingUnalignedWrites: concurrent writers of bytes that
// share LBAs must not erase each other (the read-modify-write is locked).
func TestConcurrentOverlappingUnalignedWrites(t *testing.T) {
	ctx := context.Background()
	v := openVolume(t, t.TempDir(), NewMemoryStripeStore(256<<10), 1<<20, 4<<20, true)
	defer v.Close()
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Writer w owns every 8th byte-run of 3 bytes: runs share LBAs.
			for i := 0; i < 64; i++ {
				off := int64(i*24 + w*3)
				if err := v.WriteAt(ctx, []byte{byte(w + 1), byte(w + 1), byte(w + 1)}, off); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	got := make([]byte, 64*24)
	if err := v.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	for i, b := range got {
		if want := byte(i%24/3 + 1); b != want {
			t.Fatalf("byte %d = %d, want %d: a concurrent read-modify-write lost data", i, b, want)
		}
	}
}

// TestCacheInvalidationIsExact: after a destage, exactly the cache blocks the
// destaged writes touched are read from the stripes again; the others are
// still served from the cache, and nothing stale is ever returned.
func TestCacheInvalidationIsExact(t *testing.T) {
	ctx := context.Background()
	stripes := NewMemoryStripeStore(256 << 10)
	v := openVolume(t, t.TempDir(), stripes, 1<<20, 4<<20, true)
	defer v.Close()
	// This test counts stripe reads: no read-ahead (nothing was read yet,
	// so no prefetch is running).
	v.ahead.window = 0
	const blk = 16 << 10
	fill := func(b byte, off, n int64) {
		if err := v.WriteAt(ctx, bytes.Repeat([]byte{b}, int(n)), off); err != nil {
			t.Fatal(err)
		}
	}
	read := func(off, n int64) []byte {
		p := make([]byte, n)
		if err := v.ReadAt(ctx, p, off); err != nil {
			t.Fatal(err)
		}
		return p
	}
	fill(0xaa, 0, 4*blk)
	if _, err := v.Destager().DestageOnce(ctx); err != nil {
		t.Fatal(err)
	}
	read(0, 4*blk) // caches blocks 0..3
	v.Cache().Flush()
	before := stripes.Reads()
	read(0, 4*blk)
	if got := stripes.Reads() - before; got != 0 {
		t.Fatalf("cached blocks were read from the stripes %d times", got)
	}

	fill(0xbb, blk+100, 10) // inside block 1 only
	if got := read(blk+100, 10); !bytes.Equal(got, bytes.Repeat([]byte{0xbb}, 10)) {
		t.Fatalf("journaled write not visible before destage: %x", got)
	}
	if _, err := v.Destager().DestageOnce(ctx); err != nil {
		t.Fatal(err)
	}
	before = stripes.Reads()
	want := bytes.Repeat([]byte{0xaa}, 4*blk)
	copy(want[blk+100:], bytes.Repeat([]byte{0xbb}, 10))
	if got := read(0, 4*blk); !bytes.Equal(got, want) {
		t.Fatal("read after destage is stale")
	}
	if got := stripes.Reads() - before; got != 1 {
		t.Fatalf("after destaging a write inside block 1, %d stripe reads; want exactly 1 (block 1)", got)
	}
}

// TestRestartReplaysJournal: acknowledged writes that were never destaged
// come back from the journal after a restart, and destaged ones from the
// stripes.
func TestRestartReplaysJournal(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	stripes, err := OpenFileStripeStore(filepath.Join(dir, "stripes"), 256<<10)
	if err != nil {
		t.Fatal(err)
	}
	defer stripes.Close()
	v := openVolume(t, dir, stripes, 2<<20, 4<<20, true)
	if err := v.WriteAt(ctx, bytes.Repeat([]byte{1}, 300<<10), 1000); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Destager().DestageOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(ctx, bytes.Repeat([]byte{2}, 5000), 200<<10); err != nil {
		t.Fatal(err)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	v = openVolume(t, dir, stripes, 2<<20, 4<<20, true)
	defer v.Close()
	want := make([]byte, 600<<10)
	copy(want[1000:], bytes.Repeat([]byte{1}, 300<<10))
	copy(want[200<<10:], bytes.Repeat([]byte{2}, 5000))
	got := make([]byte, len(want))
	if err := v.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("data after restart differs")
	}
}

type failingSink struct{ StripeStore }

func (failingSink) WriteStripe(context.Context, int64, []journal.Extent) error {
	return errors.New("api server unavailable")
}

// TestFullJournalBackPressuresThenENOSPC: when destaging cannot make room,
// writes wait (back-pressure) and fail with ENOSPC only when WriteTimeout
// passes; earlier writes stay readable.
func TestFullJournalBackPressuresThenENOSPC(t *testing.T) {
	ctx := context.Background()
	var destageErrs sync.Map
	o := Options{
		Name: "vol-b", SizeBytes: 4 << 20, StripeSizeBytes: 256 << 10,
		JournalStores: journalStores(t, t.TempDir(), 1), Journal: journal.Options{SizeBytes: 1 << 20},
		DestageThresholdPercent: 50, DestageInterval: time.Hour,
		Stripes: failingSink{NewMemoryStripeStore(256 << 10)}, WriteTimeout: 300 * time.Millisecond,
		OnDestageError: func(err error) { destageErrs.Store(err.Error(), true) },
	}
	v, err := Open(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	var werr error
	written := 0
	for i := 0; i < 16 && werr == nil; i++ {
		werr = v.WriteAt(ctx, bytes.Repeat([]byte{byte(i + 1)}, 64<<10), int64(i)*(64<<10))
		if werr == nil {
			written++
		}
	}
	if !errors.Is(werr, nbd.ErrNoSpace) {
		t.Fatalf("write into a full journal: %v, want ErrNoSpace", werr)
	}
	if written == 0 {
		t.Fatal("no write fit")
	}
	seen := false
	destageErrs.Range(func(any, any) bool { seen = true; return false })
	if !seen {
		t.Fatal("the destage failure was not reported to OnDestageError")
	}
	p := make([]byte, 64<<10)
	if err := v.ReadAt(ctx, p, 0); err != nil || p[0] != 1 || p[len(p)-1] != 1 {
		t.Fatalf("an acknowledged write is unreadable while the journal is full: %v", err)
	}
}
