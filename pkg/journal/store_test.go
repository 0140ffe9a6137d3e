package journal

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
)

func segmentFiles(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".log") {
			out = append(out, e.Name())
		}
	}
	return out
}

func scanSeqs(t *testing.T, s *FileStore) []uint64 {
	t.Helper()
	var seqs []uint64
	if err := s.Scan(context.Background(), 0, func(r Record) error { seqs = append(seqs, r.Seq); return nil }); err != nil {
		t.Fatal(err)
	}
	return seqs
}

// TestFileStoreSegments: appends roll into new segment files; Trim deletes
// exactly the segments whose records are all trimmed (no live byte is
// rewritten); a reopen sees the same records; a torn last record is dropped.
func TestFileStoreSegments(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	s, err := OpenFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	s.segmentBytes = 3 * (recordOverhad + 4*LBASize) // three 4-LBA records per segment
	for seq := uint64(1); seq <= 10; seq++ {
		if err := s.Append(ctx, []Record{{Seq: seq, Epoch: 1, Kind: KindWrite, LBA: seq, Data: block(seq, 1, 4)}}); err != nil {
			t.Fatal(err)
		}
	}
	if got := segmentFiles(t, dir); len(got) != 4 {
		t.Fatalf("10 records, 3 per segment: segment files %v, want 4", got)
	}
	// Seqs 1..3 fill segment 0, 4..6 segment 1: trimming through 5 frees only segment 0.
	if err := s.Trim(ctx, 5); err != nil {
		t.Fatal(err)
	}
	s.unlinks.Wait() // deletions run in the background
	if got := segmentFiles(t, dir); len(got) != 3 || got[0] == logName {
		t.Fatalf("after trim through 5: segment files %v, want the 3 newest", got)
	}
	if got := fmt.Sprint(scanSeqs(t, s)); got != "[6 7 8 9 10]" {
		t.Fatalf("live records after trim: %s", got)
	}
	rec, err := s.Read(ctx, 8)
	if err != nil || string(rec.Data) != string(block(8, 1, 4)) {
		t.Fatalf("read seq 8: %v", err)
	}
	s.Close()

	s, err = OpenFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(scanSeqs(t, s)); got != "[6 7 8 9 10]" {
		t.Fatalf("live records after reopen: %s", got)
	}
	info, _ := s.Info(ctx)
	if info.LastSeq != 10 || info.TrimmedThrough != 5 {
		t.Fatalf("info after reopen: %+v", info)
	}
	s.Close()

	// A torn last record (seq 10, alone in the last segment: a crash during
	// its append) is dropped; appends continue after the kept prefix.
	files := segmentFiles(t, dir)
	last := filepath.Join(dir, files[len(files)-1])
	b, err := os.ReadFile(last)
	if err != nil {
		t.Fatal(err)
	}
	b[headerSize+3] ^= 0xff
	if err := os.WriteFile(last, b, 0o640); err != nil {
		t.Fatal(err)
	}
	s, err = OpenFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Damaged(); err != nil {
		t.Fatalf("a torn last record reported as damage: %v", err)
	}
	if got := fmt.Sprint(scanSeqs(t, s)); got != "[6 7 8 9]" {
		t.Fatalf("after a torn record at seq 10: %s, want [6 7 8 9]", got)
	}
	if err := s.Append(ctx, []Record{{Seq: 10, Epoch: 2, Kind: KindWrite, LBA: 1, Data: block(1, 2, 1)}}); err != nil {
		t.Fatal(err)
	}
	if err := s.TruncateAfter(ctx, 6); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(scanSeqs(t, s)); got != "[6]" {
		t.Fatalf("after TruncateAfter(6): %s", got)
	}
}

// TestFileStoreDamageInTheMiddle: a bad record with valid ones after it is
// not a torn tail — the replica is never truncated to the records before it;
// every call fails with ErrDamaged naming the file and offset until Reset,
// which sets the damaged segments aside and restarts the replica empty.
func TestFileStoreDamageInTheMiddle(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	s, err := OpenFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	s.segmentBytes = 3 * (recordOverhad + 4*LBASize)
	for seq := uint64(1); seq <= 10; seq++ {
		if err := s.Append(ctx, []Record{{Seq: seq, Epoch: 1, Kind: KindWrite, LBA: seq, Data: block(seq, 1, 4)}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.SetEpoch(ctx, 3); err != nil {
		t.Fatal(err)
	}
	s.Close()
	for _, tc := range []struct {
		name   string
		seg    string // segment file to damage
		at     int64  // byte offset of the damaged record in it
		naming string
	}{
		{"later records in the same segment", logName, recordOverhad + 4*LBASize, "journal.log offset 2092 does not hold a valid record, yet offset 4184 does"},
		{"later records in a later segment only", logName, 2 * (recordOverhad + 4*LBASize), "journal.log offset 4184 does not hold a valid record, yet journal-0000000000000001.log offset 0 does"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := t.TempDir()
			for _, f := range append(segmentFiles(t, dir), metaName) {
				b, err := os.ReadFile(filepath.Join(dir, f))
				if err != nil {
					t.Fatal(err)
				}
				if f == tc.seg {
					b[tc.at+headerSize+3] ^= 0xff
				}
				if err := os.WriteFile(filepath.Join(d, f), b, 0o640); err != nil {
					t.Fatal(err)
				}
			}
			s, err := OpenFileStore(d)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			_, err = s.Info(ctx)
			if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), tc.naming) {
				t.Fatalf("Info of a replica damaged in the middle: %v; want ErrDamaged naming %q", err, tc.naming)
			}
			if err := s.Scan(ctx, 0, func(Record) error { return nil }); !errors.Is(err, ErrDamaged) {
				t.Fatalf("Scan: %v, want ErrDamaged", err)
			}
			if err := s.Append(ctx, []Record{{Seq: 11, Epoch: 3, Kind: KindEpoch}}); !errors.Is(err, ErrDamaged) {
				t.Fatalf("Append: %v, want ErrDamaged", err)
			}
			if got := segmentFiles(t, d); len(got) != 4 {
				t.Fatalf("segment files of a damaged replica: %v, want all 4 untouched", got)
			}
			// Reset repairs it: empty at the trim point, epoch kept, the
			// damaged segments set aside.
			if err := s.Reset(ctx, 4); err != nil {
				t.Fatal(err)
			}
			info, err := s.Info(ctx)
			if err != nil || info.LastSeq != 4 || info.TrimmedThrough != 4 || info.Epoch != 3 {
				t.Fatalf("after Reset(4): %+v %v", info, err)
			}
			if err := s.Append(ctx, []Record{{Seq: 5, Epoch: 4, Kind: KindEpoch}}); err != nil {
				t.Fatal(err)
			}
			aside, _ := filepath.Glob(filepath.Join(d, "damaged-*", "*.log"))
			if len(aside) != 4 {
				t.Fatalf("damaged segments set aside: %v, want 4", aside)
			}
		})
	}
}

// failingSyncFile makes Sync fail while armed.
type failingSyncFile struct {
	segFile
	fail *atomic.Bool
}

func (f failingSyncFile) Sync() error {
	if f.fail.Load() {
		return syscall.EIO
	}
	return f.segFile.Sync()
}

// TestFileStoreAcknowledgesNothingAfterAnFsyncError: once an fsync failed,
// a later one may succeed without the pages the kernel dropped, so no later
// mutation is acknowledged.
func TestFileStoreAcknowledgesNothingAfterAnFsyncError(t *testing.T) {
	ctx := context.Background()
	s, err := OpenFileStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Append(ctx, []Record{{Seq: 1, Epoch: 1, Kind: KindEpoch}}); err != nil {
		t.Fatal(err)
	}
	var fail atomic.Bool
	s.segs[0].f = failingSyncFile{s.segs[0].f, &fail}
	fail.Store(true)
	if err := s.Append(ctx, []Record{{Seq: 2, Epoch: 1, Kind: KindWrite, LBA: 0, Data: block(2, 1, 1)}}); !errors.Is(err, syscall.EIO) {
		t.Fatalf("append with a failing fsync: %v, want EIO", err)
	}
	fail.Store(false)
	if err := s.Append(ctx, []Record{{Seq: 2, Epoch: 1, Kind: KindWrite, LBA: 0, Data: block(2, 1, 1)}}); err == nil {
		t.Fatal("an append was acknowledged after an fsync error")
	}
	if err := s.TruncateAfter(ctx, 0); err == nil {
		t.Fatal("a truncate was acknowledged after an fsync error")
	}
}

// TestFileStoreLocksItsDirectory: a second open of a replica directory (by
// this or another process) is refused while the first is open.
func TestFileStoreLocksItsDirectory(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenFileStore(dir); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second open: %v, want the directory in use", err)
	}
	s.Close()
	s2, err := OpenFileStore(dir)
	if err != nil {
		t.Fatalf("open after Close: %v", err)
	}
	s2.Close()
}

// TestFileStoreAppendEncoded: records stored from their received encoding
// read back (and survive a reopen) exactly as records stored by Append, and
// an encoding that does not match the records is refused.
func TestFileStoreAppendEncoded(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := OpenFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	recs := []Record{
		{Seq: 1, Epoch: 1, Kind: KindWrite, LBA: 8, Data: make([]byte, 1024)},
		{Seq: 2, Epoch: 1, Kind: KindWrite, LBA: 0, Data: []byte(strings.Repeat("x", 512))},
	}
	var enc []byte
	for i := range recs {
		enc = AppendEncoded(enc, &recs[i])
	}
	if err := s.AppendEncoded(ctx, recs, enc[:len(enc)-1]); err == nil {
		t.Fatal("an encoding one byte short was accepted")
	}
	// Decode as a shard server does, so Data aliases the received bytes.
	var got []Record
	for off := 0; off < len(enc); {
		r, n, err := DecodeRecord(enc[off:])
		if err != nil {
			t.Fatal(err)
		}
		got, off = append(got, r), off+n
	}
	if err := s.AppendEncoded(ctx, got, enc); err != nil {
		t.Fatal(err)
	}
	if err := s.Append(ctx, []Record{{Seq: 3, Epoch: 1, Kind: KindWrite, LBA: 16, Data: make([]byte, 512)}}); err != nil {
		t.Fatal(err)
	}
	check := func(s *FileStore, when string) {
		t.Helper()
		for i, want := range recs {
			r, err := s.Read(ctx, want.Seq)
			if err != nil {
				t.Fatalf("%s: read seq %d: %v", when, want.Seq, err)
			}
			if r.LBA != want.LBA || r.Epoch != want.Epoch || string(r.Data) != string(want.Data) {
				t.Fatalf("%s: record %d reads back as LBA %d epoch %d (%d bytes)", when, i, r.LBA, r.Epoch, len(r.Data))
			}
		}
		if seqs := scanSeqs(t, s); fmt.Sprint(seqs) != "[1 2 3]" {
			t.Fatalf("%s: scan finds %v", when, seqs)
		}
	}
	check(s, "before reopen")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s, err = OpenFileStore(dir); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	check(s, "after reopen")
}
