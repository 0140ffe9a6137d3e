package journal

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// damageRecordOf flips a byte inside the record writing lba on one replica.
func damageRecordOf(t *testing.T, dir string, lba uint64) {
	t.Helper()
	s, err := OpenFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	var at *recLoc
	for i := range s.locs {
		rec, err := s.Read(context.Background(), s.locs[i].seq)
		if err == nil && rec.Kind == KindWrite && rec.LBA == lba {
			at = &s.locs[i]
		}
	}
	if at == nil || at == &s.locs[len(s.locs)-1] {
		t.Fatalf("%s: no record of LBA %d with records after it", dir, lba)
	}
	path := filepath.Join(dir, at.seg.name)
	off := at.off + headerSize + 3
	s.Close()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[off] ^= 0xff
	if err := os.WriteFile(path, b, 0o640); err != nil {
		t.Fatal(err)
	}
}

// TestDamagedReplicaSkippedAndRepaired: a replica damaged in the middle of
// its log does not take the volume down — it is skipped, then reset and
// caught up — and two damaged replicas of three (the third down) refuse to
// open instead of adopting a log that lost acknowledged writes.
func TestDamagedReplicaSkippedAndRepaired(t *testing.T) {
	root := t.TempDir()
	ctx := context.Background()
	j := openJournal(t, root, 3, 1<<20)
	for lba := uint64(0); lba < 4; lba++ {
		if _, err := j.Append(ctx, lba, block(lba, 1, 1)); err != nil {
			t.Fatal(err)
		}
	}
	j.Close()

	damageRecordOf(t, filepath.Join(root, "replica-1"), 1)
	j = openJournal(t, root, 3, 1<<20)
	if h := fmt.Sprint(j.HealthyStores()); h != "[true true true]" {
		t.Fatalf("healthy stores after opening with a damaged replica: %s, want it repaired", h)
	}
	for lba := uint64(0); lba < 4; lba++ {
		ext, err := j.Lookup(ctx, lba, lba+1)
		if err != nil || len(ext) != 1 || !bytes.Equal(ext[0].Data, block(lba, 1, 1)) {
			t.Fatalf("LBA %d after the repair: %v %v", lba, ext, err)
		}
	}
	j.Close()
	rep, err := OpenFileStore(filepath.Join(root, "replica-1"))
	if err != nil {
		t.Fatal(err)
	}
	var lbas []uint64
	if err := rep.Scan(ctx, 0, func(r Record) error {
		if r.Kind == KindWrite {
			lbas = append(lbas, r.LBA)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	rep.Close()
	if fmt.Sprint(lbas) != "[0 1 2 3]" {
		t.Fatalf("repaired replica holds writes of LBAs %v, want [0 1 2 3]", lbas)
	}

	damageRecordOf(t, filepath.Join(root, "replica-0"), 2)
	damageRecordOf(t, filepath.Join(root, "replica-1"), 2)
	stores := openStores(t, root, 3)
	stores[2].Close()
	stores[2] = failingStore{}
	if _, err := Open(ctx, stores, Options{SizeBytes: 1 << 20}); !errors.Is(err, ErrNoQuorum) {
		t.Fatalf("open with two damaged replicas and the third down: %v, want ErrNoQuorum (not a log missing acknowledged writes)", err)
	}
	stores[0].Close()
	stores[1].Close()
}

// TestReplicaDamagedAfterOpenSkippedOnReplay: bytes that verified when the
// replica was opened and rot before the journal replays it (a shard server
// keeps its replicas open) make the adopted replica fail its scan; the
// journal adopts the next one instead of failing the volume, and repairs the
// damaged one.
func TestReplicaDamagedAfterOpenSkippedOnReplay(t *testing.T) {
	root := t.TempDir()
	ctx := context.Background()
	j := openJournal(t, root, 3, 1<<20)
	for lba := uint64(0); lba < 4; lba++ {
		if _, err := j.Append(ctx, lba, block(lba, 1, 1)); err != nil {
			t.Fatal(err)
		}
	}
	j.Close()
	stores := openStores(t, root, 3)
	// Replica 0 is the one adopted (ties go to the first); its record of
	// LBA 1 rots after it was opened.
	fs := stores[0].(*FileStore)
	var at recLoc
	for _, l := range fs.locs {
		if rec, err := fs.Read(ctx, l.seq); err == nil && rec.Kind == KindWrite && rec.LBA == 1 {
			at = l
		}
	}
	b := []byte{0}
	if _, err := at.seg.f.ReadAt(b, at.off+headerSize+3); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := at.seg.f.WriteAt(b, at.off+headerSize+3); err != nil {
		t.Fatal(err)
	}
	j, err := Open(ctx, stores, Options{SizeBytes: 1 << 20})
	if err != nil {
		t.Fatalf("open with the adopted replica damaged after it was opened: %v", err)
	}
	defer j.Close()
	if h := fmt.Sprint(j.HealthyStores()); h != "[true true true]" {
		t.Fatalf("healthy stores: %s, want the damaged one repaired", h)
	}
	for lba := uint64(0); lba < 4; lba++ {
		ext, err := j.Lookup(ctx, lba, lba+1)
		if err != nil || len(ext) != 1 || !bytes.Equal(ext[0].Data, block(lba, 1, 1)) {
			t.Fatalf("LBA %d: %v %v", lba, ext, err)
		}
	}
}

// Journal replicas hold volume data: no file or directory of one is
// readable by other users.
func TestFileStoreFilesNotWorldReadable(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "replica")
	s, err := OpenFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := s.Append(ctx, []Record{{Seq: 1, Epoch: 1, Kind: KindWrite, Data: block(0, 1, 1)}}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetEpoch(ctx, 2); err != nil {
		t.Fatal(err)
	}
	s.Close()
	err = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().Perm()&0o007 != 0 {
			t.Errorf("%s has mode %v: readable by other users", p, fi.Mode().Perm())
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}
