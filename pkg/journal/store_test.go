package journal

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
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
// rewritten); a reopen sees the same records; a torn record in a middle
// segment drops it and everything after, durably.
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

	// Corrupt seq 7 (first record of the third segment file in id order):
	// 7..10 are dropped, the later segment file is deleted.
	files := segmentFiles(t, dir)
	mid := filepath.Join(dir, files[1])
	b, err := os.ReadFile(mid)
	if err != nil {
		t.Fatal(err)
	}
	b[headerSize+3] ^= 0xff
	if err := os.WriteFile(mid, b, 0o644); err != nil {
		t.Fatal(err)
	}
	s, err = OpenFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := fmt.Sprint(scanSeqs(t, s)); got != "[6]" {
		t.Fatalf("after a torn record at seq 7: %s, want [6]", got)
	}
	if got := segmentFiles(t, dir); len(got) != 2 {
		t.Fatalf("segment files after the torn record: %v, want 2", got)
	}
	// Appends continue after the kept prefix.
	if err := s.Append(ctx, []Record{{Seq: 7, Epoch: 2, Kind: KindWrite, LBA: 1, Data: block(1, 2, 1)}}); err != nil {
		t.Fatal(err)
	}
	if err := s.TruncateAfter(ctx, 6); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(scanSeqs(t, s)); got != "[6]" {
		t.Fatalf("after TruncateAfter(6): %s", got)
	}
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
