package shardserver

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/billyronks/couchestor/pkg/shardindex"
)

// writeRaw stores h and payload as Write would, without Write's checks: a
// shard a writer that predates them left behind. It bypasses the index.
func writeRaw(t *testing.T, s *Store, h *ShardHeader, payload []byte) int64 {
	t.Helper()
	hdr, err := encodeHeader(h)
	if err != nil {
		t.Fatal(err)
	}
	length := int64(len(hdr) + len(payload))
	s.mu.Lock()
	off, err := s.allocate(length)
	s.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.data.WriteAt(hdr, off); err != nil {
		t.Fatal(err)
	}
	if _, err := s.data.WriteAt(payload, off+int64(len(hdr))); err != nil {
		t.Fatal(err)
	}
	if _, err := s.log.Write(encodeLogRec('A', off, length, time.Now())); err != nil {
		t.Fatal(err)
	}
	if err := s.data.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := s.log.Sync(); err != nil {
		t.Fatal(err)
	}
	return off
}

// Legacy shard headers the stripe index cannot hold (a volume UID beyond
// its key limit, a checksum of another form) among good ones: the store
// opens, whether its index file is kept or rebuilt; the good shards are
// indexed and served; the odd ones are reported (Space.Unindexable,
// UnindexableReport), listed, readable and freed through the allocation
// log. Before, either header failed the whole store's open.
func TestUnindexableLegacyHeadersDoNotFailTheStoreOpen(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	good := map[int64][]byte{} // stripe → payload
	for i := int64(0); i < 10; i++ {
		p := randBytes(600+int(i), uint64(i))
		if _, err := s.Write(uidHeader(i, 0, 1, p), p); err != nil {
			t.Fatal(err)
		}
		good[i] = p
	}
	want := dumpIndex(t, s)
	longP := randBytes(800, 100)
	long := header("legacy", 3, 0, 1, longP)
	long.VolumeUID, long.PlacementGroups = strings.Repeat("u", shardindex.MaxVolumeUIDLen+80), 16
	longOff := writeRaw(t, s, long, longP)
	sumP := randBytes(900, 101)
	sum := header("legacy2", 4, 1, 2, sumP)
	sum.Checksum = "sha256:0123"
	sumOff := writeRaw(t, s, sum, sumP)
	s.Close()

	check := func(what string, s *Store, unindexable int) {
		t.Helper()
		if got := dumpIndex(t, s); len(got) != len(want) {
			t.Fatalf("%s: the index holds %d entries, want the %d good shards", what, len(got), len(want))
		}
		if n, err := s.CountGroup(want[0].Group); err != nil || n == 0 {
			t.Fatalf("%s: CountGroup(%d) = %d, %v", what, want[0].Group, n, err)
		}
		for i, p := range good {
			loc := -1
			for _, sh := range s.List("v") {
				if sh.Header.StripeID == i {
					loc = int(sh.Offset)
				}
			}
			if _, got, err := s.Read(int64(loc), Expect{"v", i, 0, 1}); err != nil || string(got) != string(p) {
				t.Fatalf("%s: good stripe %d reads back %v", what, i, err)
			}
		}
		if sp := s.Space(); sp.Shards != len(good)+unindexable || sp.Unindexable != unindexable || sp.Unreadable != 0 {
			t.Fatalf("%s: space %+v, want %d shards of which %d unindexable", what, sp, len(good)+unindexable, unindexable)
		}
	}

	for _, rebuild := range []bool{false, true} {
		what := "index kept"
		if rebuild {
			what = "index rebuilt"
			if err := os.Remove(filepath.Join(dir, indexFileName)); err != nil {
				t.Fatal(err)
			}
		}
		s, err := OpenStore(dir, 8<<20)
		if err != nil {
			t.Fatalf("%s: one legacy header failed the store's open: %v", what, err)
		}
		if why := s.IndexRebuilt(); (why != "") != rebuild {
			t.Fatalf("%s: IndexRebuilt() = %q", what, why)
		}
		check(what, s, 2)
		r := s.UnindexableReport()
		for _, w := range []string{"the headers of 2 stored shards", "offset", "of 400 bytes, the index holds at most 320", `checksum "sha256:0123"`, "legacy/3/0", "legacy2/4/1"} {
			if !strings.Contains(r, w) {
				t.Fatalf("%s: UnindexableReport() = %q, want it to contain %q", what, r, w)
			}
		}
		if _, got, err := s.Read(longOff, Expect{"legacy", 3, 0, 1}); err != nil || string(got) != string(longP) {
			t.Fatalf("%s: the long-UID shard reads back %v", what, err)
		}
		if _, got, err := s.Read(sumOff, Expect{"legacy2", 4, 1, 2}); err != nil || string(got) != string(sumP) {
			t.Fatalf("%s: the odd-checksum shard reads back %v", what, err)
		}
		if l := s.List("legacy"); len(l) != 1 || l[0].Offset != longOff {
			t.Fatalf("%s: List(legacy) = %+v", what, l)
		}
		s.Close()
	}

	// Freeing an unindexable shard frees its extent and touches no entry.
	s = openStore(t, dir)
	if err := s.Free(longOff, Expect{"legacy", 3, 0, 1}); err != nil {
		t.Fatalf("free of the long-UID shard: %v", err)
	}
	if s.Err() != nil {
		t.Fatalf("the free of an unindexable shard stopped the store: %v", s.Err())
	}
	check("after the free", s, 1)
	if r := s.UnindexableReport(); !strings.Contains(r, "the headers of 1 stored shards") || strings.Contains(r, "legacy/3/0") {
		t.Fatalf("after the free: UnindexableReport() = %q", r)
	}
	s.Close()
	s = openStore(t, dir)
	defer s.Close()
	check("reopened after the free", s, 1)
	if l := s.List("legacy"); len(l) != 0 {
		t.Fatalf("the freed long-UID shard is still stored: %+v", l)
	}
	if why := s.IndexRebuilt(); why != "" {
		t.Fatalf("the index was rebuilt after the free: %s", why)
	}
}
