package journal

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func openStores(t testing.TB, root string, n int) []Store {
	t.Helper()
	var out []Store
	for i := 0; i < n; i++ {
		s, err := OpenFileStore(filepath.Join(root, fmt.Sprintf("replica-%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	return out
}

func openJournal(t testing.TB, root string, n int, size int64) *Journal {
	t.Helper()
	j, err := Open(context.Background(), openStores(t, root, n), Options{SizeBytes: size})
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func block(lba uint64, version, nlba int) []byte {
	b := make([]byte, nlba*LBASize)
	for i := range b {
		b[i] = byte(int(lba)*7 + version*31 + i/LBASize)
	}
	return b
}

// memSink is a volume image in memory.
type memSink struct {
	mu   sync.Mutex
	img  map[uint64][]byte // LBA -> 512 bytes
	span uint64
	fail error
}

func (m *memSink) WriteStripe(_ context.Context, idx int64, ext []Extent) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return m.fail
	}
	for _, e := range ext {
		if e.LBA/m.span != uint64(idx) || (e.LBA+uint64(len(e.Data)/LBASize)-1)/m.span != uint64(idx) {
			return fmt.Errorf("extent at %d outside stripe %d", e.LBA, idx)
		}
		for l := 0; l < len(e.Data)/LBASize; l++ {
			m.img[e.LBA+uint64(l)] = bytes.Clone(e.Data[l*LBASize : (l+1)*LBASize])
		}
	}
	return nil
}

// readThrough is what a volume reader does: journal first, then stripes.
func readThrough(t testing.TB, j *Journal, img func(uint64) []byte, lba uint64, nlba int) []byte {
	t.Helper()
	out := make([]byte, nlba*LBASize)
	for l := 0; l < nlba; l++ {
		copy(out[l*LBASize:], img(lba+uint64(l)))
	}
	ext, err := j.Lookup(context.Background(), lba, lba+uint64(nlba))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ext {
		copy(out[(e.LBA-lba)*LBASize:], e.Data)
	}
	return out
}

func TestAppendLookupNewestAndReplay(t *testing.T) {
	root := t.TempDir()
	j := openJournal(t, root, 3, 1<<20)
	ctx := context.Background()
	must := func(_ uint64, err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(j.Append(ctx, 10, block(10, 1, 4))) // LBAs 10..13 v1
	must(j.Append(ctx, 12, block(12, 2, 4))) // LBAs 12..15 v2 overrides 12,13
	ext, err := j.Lookup(ctx, 8, 20)
	if err != nil || len(ext) != 1 || ext[0].LBA != 10 || len(ext[0].Data) != 6*LBASize {
		t.Fatalf("lookup = %+v, %v", ext, err)
	}
	want := append(block(10, 1, 2), block(12, 2, 4)...)
	if !bytes.Equal(ext[0].Data, want) {
		t.Fatal("lookup did not return the newest data per LBA")
	}
	j.Close()
	j = openJournal(t, root, 3, 1<<20)
	defer j.Close()
	ext2, err := j.Lookup(ctx, 8, 20)
	if err != nil || len(ext2) != 1 || !bytes.Equal(ext2[0].Data, want) {
		t.Fatalf("after replay lookup = %+v, %v", ext2, err)
	}
}

func TestTornTailDiscardedOnReplay(t *testing.T) {
	root := t.TempDir()
	j := openJournal(t, root, 1, 1<<20)
	ctx := context.Background()
	if _, err := j.Append(ctx, 0, block(0, 1, 2)); err != nil {
		t.Fatal(err)
	}
	if _, err := j.Append(ctx, 100, block(100, 1, 2)); err != nil {
		t.Fatal(err)
	}
	j.Close()
	log := filepath.Join(root, "replica-0", logName)
	fi, _ := os.Stat(log)
	// Tear the last record: drop its last 100 bytes, as a crash mid-write would.
	if err := os.Truncate(log, fi.Size()-100); err != nil {
		t.Fatal(err)
	}
	j = openJournal(t, root, 1, 1<<20)
	ext, _ := j.Lookup(ctx, 0, 200)
	if len(ext) != 1 || ext[0].LBA != 0 || !bytes.Equal(ext[0].Data, block(0, 1, 2)) {
		t.Fatalf("after torn tail: %+v", ext)
	}
	// The journal keeps working after the tail was dropped.
	if _, err := j.Append(ctx, 100, block(100, 3, 2)); err != nil {
		t.Fatal(err)
	}
	j.Close()
	// A flipped bit in the tail is detected the same way.
	data, _ := os.ReadFile(log)
	data[len(data)-20] ^= 0x40
	os.WriteFile(log, data, 0o644)
	j = openJournal(t, root, 1, 1<<20)
	defer j.Close()
	ext, _ = j.Lookup(ctx, 100, 102)
	if len(ext) != 0 {
		t.Fatalf("corrupt tail record was replayed: %+v", ext)
	}
}

func TestLaggingReplicaCaughtUpAndQuorum(t *testing.T) {
	root := t.TempDir()
	ctx := context.Background()
	j := openJournal(t, root, 3, 1<<20)
	j.Append(ctx, 0, block(0, 1, 1))
	j.Close()
	// Replica 2 is unavailable while two more writes are acknowledged.
	stores := openStores(t, root, 3)
	stores[2].Close()
	stores[2] = failingStore{}
	j, err := Open(ctx, stores, Options{SizeBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	for v := 2; v <= 3; v++ {
		if _, err := j.Append(ctx, uint64(v), block(uint64(v), v, 1)); err != nil {
			t.Fatal(err)
		}
	}
	j.Close()
	// Reopen with all three: replica 2 is caught up. Then lose replicas 0 and
	// 1's data entirely except one: reads still come back through a majority.
	j = openJournal(t, root, 3, 1<<20)
	j.Close()
	only2, err := OpenFileStore(filepath.Join(root, "replica-2"))
	if err != nil {
		t.Fatal(err)
	}
	var seen []uint64
	only2.Scan(ctx, 0, func(r Record) error {
		if r.Kind == KindWrite {
			seen = append(seen, r.LBA)
		}
		return nil
	})
	only2.Close()
	if fmt.Sprint(seen) != "[0 2 3]" {
		t.Fatalf("lagging replica holds writes for LBAs %v after catch-up, want [0 2 3]", seen)
	}
	// With two of three stores failing there is no quorum.
	stores = openStores(t, root, 3)
	stores[0].Close()
	stores[1].Close()
	stores[0], stores[1] = failingStore{}, failingStore{}
	if _, err := Open(ctx, stores, Options{SizeBytes: 1 << 20}); !errors.Is(err, ErrNoQuorum) {
		t.Fatalf("open with 1 of 3 stores: %v", err)
	}
	stores[2].Close()
}

// TestDivergentTailLosesToNewerEpoch: an unacknowledged record left on one
// replica by a crashed writer is dropped when a newer writer's log wins.
func TestDivergentTailLosesToNewerEpoch(t *testing.T) {
	root := t.TempDir()
	ctx := context.Background()
	j := openJournal(t, root, 3, 1<<20)
	j.Append(ctx, 0, block(0, 1, 1))
	last := j.LastSeq()
	j.Close()
	// The crashed writer reached only replica 0 with seq last+1.
	s0, _ := OpenFileStore(filepath.Join(root, "replica-0"))
	info, _ := s0.Info(ctx)
	s0.Append(ctx, []Record{{Seq: last + 1, Epoch: info.Epoch, Kind: KindWrite, LBA: 50, Data: block(50, 9, 1)}})
	s0.Close()
	// A new writer opens without replica 0 and is acknowledged on 1 and 2.
	stores := openStores(t, root, 3)
	stores[0].Close()
	stores[0] = failingStore{}
	j, err := Open(ctx, stores, Options{SizeBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	j.Append(ctx, 60, block(60, 2, 1))
	j.Close()
	// Everyone back: the acknowledged write is there, the stale one is not.
	j = openJournal(t, root, 3, 1<<20)
	defer j.Close()
	if ext, _ := j.Lookup(ctx, 50, 51); len(ext) != 0 {
		t.Fatal("unacknowledged record from an older writer was adopted")
	}
	if ext, _ := j.Lookup(ctx, 60, 61); len(ext) != 1 || !bytes.Equal(ext[0].Data, block(60, 2, 1)) {
		t.Fatal("acknowledged write lost")
	}
}

type failingStore struct{}

var errDown = errors.New("store down")

func (failingStore) Info(context.Context) (StoreInfo, error)                { return StoreInfo{}, errDown }
func (failingStore) Scan(context.Context, uint64, func(Record) error) error { return errDown }
func (failingStore) Read(context.Context, uint64) (Record, error)           { return Record{}, errDown }
func (failingStore) Append(context.Context, []Record) error                 { return errDown }
func (failingStore) TruncateAfter(context.Context, uint64) error            { return errDown }
func (failingStore) Trim(context.Context, uint64) error                     { return errDown }
func (failingStore) Reset(context.Context, uint64) error                    { return errDown }
func (failingStore) SetEpoch(context.Context, uint64) error                 { return errDown }
func (failingStore) Close() error                                           { return nil }

func TestBackPressureAndDestage(t *testing.T) {
	root := t.TempDir()
	ctx := context.Background()
	const size = 64 << 10
	j := openJournal(t, root, 3, size)
	defer j.Close()
	sink := &memSink{img: map[uint64][]byte{}, span: 128}
	ticks := make(chan time.Time)
	d, err := NewDestager(j, sink, DestagerConfig{StripeSizeBytes: 65536, ThresholdPercent: 100, Ticks: ticks})
	if err != nil {
		t.Fatal(err)
	}
	// Larger than the journal: refused at once.
	if _, err := j.Append(ctx, 0, make([]byte, size)); !errors.Is(err, ErrJournalFull) {
		t.Fatalf("oversized append: %v", err)
	}
	// Fill it up; the next append waits and gives up with the context.
	var lba uint64
	for {
		used, _ := j.Fill()
		if used+8*LBASize+recordOverhad > size {
			break
		}
		if _, err := j.Append(ctx, lba, block(lba, 1, 8)); err != nil {
			t.Fatal(err)
		}
		lba += 8
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, err = j.Append(short, lba, block(lba, 1, 8))
	cancel()
	if !errors.Is(err, ErrJournalFull) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("append on a full journal: %v", err)
	}
	// A blocked append proceeds once the destager frees space.
	sinkFail := errors.New("pool offline")
	sink.fail = sinkFail
	if _, err := d.DestageOnce(ctx); !errors.Is(err, sinkFail) {
		t.Fatalf("destage with failing sink: %v", err)
	}
	if used, _ := j.Fill(); used+8*LBASize+recordOverhad <= size {
		t.Fatal("journal trimmed although the sink failed")
	}
	sink.fail = nil
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	go d.Run(runCtx)
	if _, err := j.Append(ctx, lba, block(lba, 2, 8)); err != nil {
		t.Fatalf("append after destage: %v", err)
	}
	// Everything reads back through journal-over-stripes.
	img := func(l uint64) []byte {
		sink.mu.Lock()
		defer sink.mu.Unlock()
		if b, ok := sink.img[l]; ok {
			return b
		}
		return make([]byte, LBASize)
	}
	for l := uint64(0); l < lba; l += 8 {
		if got := readThrough(t, j, img, l, 8); !bytes.Equal(got, block(l, 1, 8)) {
			t.Fatalf("LBA %d wrong after destage", l)
		}
	}
	if got := readThrough(t, j, img, lba, 8); !bytes.Equal(got, block(lba, 2, 8)) {
		t.Fatal("newest write wrong")
	}
}
