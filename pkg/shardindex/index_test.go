package shardindex

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

const uid = "8d7e3f0a-2f6b-4c1e-9a57-3b1f0c2d4e5f"

func open(t *testing.T, path string) *Index {
	t.Helper()
	x, err := Open(path, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

func rec(g uint32, stripe, gen uint64) Record {
	return Record{Key{g, uid, stripe, uint8(stripe % 6)}, Entry{Generation: gen, Offset: stripe << 20, Length: 262144 + 4096, Checksum: stripe*0x9e3779b97f4a7c15 + gen, Epoch: 3}}
}

func TestPutGetScanCountSurviveReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	x := open(t, path)
	var recs []Record
	for s := uint64(0); s < 300; s++ {
		recs = append(recs, rec(uint32(s%3), s, 1))
	}
	if err := x.Put(recs); err != nil {
		t.Fatal(err)
	}
	if err := x.Close(); err != nil {
		t.Fatal(err)
	}
	x = open(t, path)
	defer x.Close()
	for _, r := range recs {
		e, ok, err := x.Get(r.Key)
		if err != nil || !ok || e != r.Entry {
			t.Fatalf("Get(%s) after reopen = %+v, %v, %v; want %+v", r.Key, e, ok, err, r.Entry)
		}
	}
	for g := uint32(0); g < 3; g++ {
		n, err := x.Count(g)
		if err != nil || n != 100 {
			t.Fatalf("Count(%d) = %d, %v; want 100", g, n, err)
		}
		var prev int64 = -1
		seen := 0
		if err := x.Scan(g, func(r Record) error {
			if r.Group != g || int64(r.Stripe) <= prev || r.Entry != rec(g, r.Stripe, 1).Entry {
				return fmt.Errorf("scan of group %d gave %+v after stripe %d", g, r, prev)
			}
			prev = int64(r.Stripe)
			seen++
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if seen != 100 {
			t.Fatalf("Scan(%d) saw %d entries, Count says 100", g, seen)
		}
	}
	if _, ok, err := x.Get(Key{0, uid, 100000, 0}); ok || err != nil {
		t.Fatalf("Get of an absent stripe: ok %v err %v", ok, err)
	}
}

func TestGenerationsOnlyMoveForward(t *testing.T) {
	x := open(t, filepath.Join(t.TempDir(), "index.db"))
	defer x.Close()
	if err := x.Put([]Record{rec(7, 1, 5)}); err != nil {
		t.Fatal(err)
	}
	// The same entry again (a retried write) is fine and counts once.
	if err := x.Put([]Record{rec(7, 1, 5), rec(7, 1, 5)}); err != nil {
		t.Fatalf("retried identical entry: %v", err)
	}
	older := rec(7, 1, 4)
	sameGenOtherBytes := rec(7, 1, 5)
	sameGenOtherBytes.Offset++
	for name, r := range map[string]Record{"older generation": older, "same generation, other entry": sameGenOtherBytes} {
		err := x.Put([]Record{rec(7, 2, 1), r})
		if !errors.Is(err, ErrStaleGeneration) || !strings.Contains(err.Error(), "group 7 volume "+uid+" stripe 1 shard 1") {
			t.Fatalf("%s: err %v, want ErrStaleGeneration naming the key", name, err)
		}
		// The whole Put failed: stripe 2 was not recorded either.
		if _, ok, _ := x.Get(rec(7, 2, 1).Key); ok {
			t.Fatalf("%s: a refused Put recorded its other entries", name)
		}
	}
	if err := x.Put([]Record{rec(7, 1, 6)}); err != nil {
		t.Fatal(err)
	}
	e, _, _ := x.Get(rec(7, 1, 6).Key)
	if e.Generation != 6 {
		t.Fatalf("generation %d after writing 6", e.Generation)
	}
	if n, _ := x.Count(7); n != 1 {
		t.Fatalf("Count after an overwrite = %d, want 1", n)
	}
	// Deleting an older generation's entry (its copy was freed after the
	// newer one was recorded) leaves the newer one alone.
	if err := x.Delete([]Record{rec(7, 1, 5)}); err != nil {
		t.Fatal(err)
	}
	if n, _ := x.Count(7); n != 1 {
		t.Fatalf("Count after deleting a superseded generation = %d, want 1", n)
	}
	if err := x.Delete([]Record{rec(7, 1, 6), rec(7, 99, 1)}); err != nil {
		t.Fatal(err)
	}
	if n, _ := x.Count(7); n != 0 {
		t.Fatalf("Count after deleting the only entry (and an absent one) = %d, want 0", n)
	}
}

func TestDamagedEntryIsAnErrorNamingItsKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	x := open(t, path)
	if err := x.Put([]Record{rec(2, 9, 1), rec(2, 10, 1)}); err != nil {
		t.Fatal(err)
	}
	x.Close()
	// Truncate stripe 9's value behind the package's back.
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		vol := tx.Bucket(bucketVolumes).Get([]byte(uid))
		return tx.Bucket(bucketEntries).Put(entryKey(vol, 9, 9%6), []byte{2, 3}) // group 2, then too short
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	x = open(t, path)
	defer x.Close()
	_, ok, err := x.Get(rec(2, 9, 1).Key)
	if ok || !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), "stripe 9") {
		t.Fatalf("Get of a damaged entry: ok %v err %v; want ErrDamaged naming stripe 9 (never a zero entry)", ok, err)
	}
	if err := x.Scan(2, func(Record) error { return nil }); !errors.Is(err, ErrDamaged) {
		t.Fatalf("Scan over a damaged entry: %v, want ErrDamaged", err)
	}
	if err := x.Put([]Record{rec(2, 9, 2)}); !errors.Is(err, ErrDamaged) {
		t.Fatalf("Put over a damaged entry: %v, want ErrDamaged (it cannot check the generation)", err)
	}
	if e, ok, err := x.Get(rec(2, 10, 1).Key); err != nil || !ok || e != rec(2, 10, 1).Entry {
		t.Fatalf("the undamaged neighbour: %+v %v %v", e, ok, err)
	}
}

func TestBadKeysRefused(t *testing.T) {
	x := open(t, filepath.Join(t.TempDir(), "index.db"))
	defer x.Close()
	for _, v := range []string{"", strings.Repeat("u", MaxVolumeUIDLen+1)} {
		r := rec(0, 1, 1)
		r.Volume = v
		if err := x.Put([]Record{r}); err == nil || !strings.Contains(err.Error(), "volume UID of") {
			t.Errorf("Put with a %d-byte volume UID: %v", len(v), err)
		}
		if _, _, err := x.Get(r.Key); err == nil {
			t.Errorf("Get with a %d-byte volume UID: no error", len(v))
		}
	}
}

func TestASecondProcessIsRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	x := open(t, path)
	defer x.Close()
	// bbolt's lock is flock, per open file: a second Open in this process
	// stands in for a second process.
	if _, err := Open(path, 200*time.Millisecond); err == nil {
		t.Fatal("a second Open of a held index succeeded")
	}
}

// Every Put that returned before a SIGKILL is in the file afterwards. The
// child prints the stripe id once its Put returned; the parent kills it at
// three different points and checks every printed stripe. A SIGKILL proves
// the commit is atomic and the file reopens; the page cache outlives the
// process, so it does not prove the fsync (a power cut is not simulated).
func TestAcknowledgedPutsSurviveSIGKILL(t *testing.T) {
	if os.Getenv("SHARDINDEX_CHILD") != "" {
		child()
		return
	}
	for round := 0; round < 3; round++ {
		path := filepath.Join(t.TempDir(), "index.db")
		cmd := exec.Command(os.Args[0], "-test.run", "^TestAcknowledgedPutsSurviveSIGKILL$")
		cmd.Env = append(os.Environ(), "SHARDINDEX_CHILD="+path)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		var acked []uint64
		sc := bufio.NewScanner(out)
		killAt := 200 + 150*round
		for sc.Scan() {
			line := sc.Text()
			s, err := strconv.ParseUint(strings.TrimPrefix(line, "acked "), 10, 64)
			if err != nil || !strings.HasPrefix(line, "acked ") {
				continue
			}
			acked = append(acked, s)
			if len(acked) == killAt {
				cmd.Process.Signal(syscall.SIGKILL)
			}
		}
		cmd.Wait()
		if len(acked) < killAt {
			t.Fatalf("round %d: the child acknowledged only %d Puts before it ended", round, len(acked))
		}
		x := open(t, path)
		for _, s := range acked {
			r := rec(uint32(s%16), s, 1)
			e, ok, err := x.Get(r.Key)
			if err != nil || !ok || e != r.Entry {
				t.Fatalf("round %d: stripe %d was acknowledged before the SIGKILL and is %+v, %v, %v after it", round, s, e, ok, err)
			}
		}
		var total uint64
		for g := uint32(0); g < 16; g++ {
			n, err := x.Count(g)
			if err != nil {
				t.Fatal(err)
			}
			total += n
		}
		if total < uint64(len(acked)) {
			t.Fatalf("round %d: counts sum to %d, %d Puts were acknowledged", round, total, len(acked))
		}
		x.Close()
	}
}

func child() {
	x, err := Open(os.Getenv("SHARDINDEX_CHILD"), 5*time.Second)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	w := bufio.NewWriter(os.Stdout)
	for s := uint64(0); ; s++ {
		if err := x.Put([]Record{rec(uint32(s%16), s, 1)}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		fmt.Fprintf(w, "acked %d\n", s)
		w.Flush()
	}
}

// Pages list a group in Scan's order, and every Page call examines at most
// budget entries of the file and stops early only for its limit or its
// budget. The entries a call examined are counted from where its cursors
// fall in the file's key order, so the bound is checked for every call of
// every case: the file holds 3,000 entries (1,000 of the group), more than
// every case's budget.
func TestPagesListAGroupInScanOrderWithinTheirBounds(t *testing.T) {
	x := open(t, filepath.Join(t.TempDir(), "index.db"))
	defer x.Close()
	const total = 3000
	var recs []Record
	for s := uint64(0); s < total; s++ {
		recs = append(recs, rec(uint32(s%3), s, 1))
	}
	if err := x.Put(recs); err != nil {
		t.Fatal(err)
	}
	var want []Record
	if err := x.Scan(1, func(r Record) error { want = append(want, r); return nil }); err != nil {
		t.Fatal(err)
	}
	// pos is the place of every entry key in the file's order.
	pos := map[string]int{}
	if err := x.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketEntries).ForEach(func(k, _ []byte) error { pos[string(k)] = len(pos); return nil })
	}); err != nil {
		t.Fatal(err)
	}
	if len(pos) != total {
		t.Fatalf("the file holds %d entries, want %d", len(pos), total)
	}
	at := func(c Cursor) int { // entries before the one after c
		if c == nil {
			return 0
		}
		p, ok := pos[string(c[fileIDLen:])]
		if !ok {
			t.Fatalf("cursor %x names no entry of the file", c)
		}
		return p + 1
	}
	for _, b := range []struct{ limit, budget int }{{7, 7}, {7, 20}, {1000, 1000}, {1, 2}} {
		var got []Record
		var cur Cursor
		pages := 0
		for {
			page, next, err := x.Page(1, cur, b.limit, b.budget)
			if err != nil {
				t.Fatal(err)
			}
			if len(page) > b.limit {
				t.Fatalf("limit %d: a page of %d entries", b.limit, len(page))
			}
			if next != nil && len(next) != CursorLen {
				t.Fatalf("a cursor of %d bytes", len(next))
			}
			end := total
			if next != nil {
				end = at(next)
			}
			examined := end - at(cur)
			if examined > b.budget {
				t.Fatalf("limit %d budget %d: page %d examined %d entries (from %d to %d of %d)", b.limit, b.budget, pages, examined, at(cur), end, total)
			}
			if next != nil && len(page) < b.limit && examined < b.budget {
				t.Fatalf("limit %d budget %d: page %d stopped after %d entries and %d examined, within both bounds", b.limit, b.budget, pages, len(page), examined)
			}
			got = append(got, page...)
			pages++
			if next == nil {
				break
			}
			cur = next
			if pages > 2*total {
				t.Fatal("paging does not end")
			}
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("limit %d budget %d: pages gave %d entries, Scan %d (or another order)", b.limit, b.budget, len(got), len(want))
		}
	}
	for _, c := range []struct {
		limit, budget int
		cur           Cursor
		want          string
	}{
		{0, 10, nil, "page limit 0 and budget 10"},
		{10, 5, nil, "page limit 10 and budget 5"},
		{1, 1, Cursor{1, 2}, "a cursor of 2 bytes, want 21"},
	} {
		if _, _, err := x.Page(1, c.cur, c.limit, c.budget); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Page(limit %d, budget %d, cursor %v) = %v, want an error containing %q", c.limit, c.budget, c.cur, err, c.want)
		}
	}
}

// A cursor names its file: it continues across a reopen of that file, and
// a file built afresh (a rebuild renumbers the volumes) refuses it rather
// than continue at another volume's entries.
func TestCursorOfAnotherFileIsRefused(t *testing.T) {
	dir := t.TempDir()
	recs := make([]Record, 0, 50)
	for s := uint64(0); s < 50; s++ {
		recs = append(recs, rec(1, s, 1))
	}
	a := open(t, filepath.Join(dir, "a.db"))
	if err := a.Put(recs); err != nil {
		t.Fatal(err)
	}
	first, cur, err := a.Page(1, nil, 10, 10)
	if err != nil || len(first) != 10 || cur == nil {
		t.Fatalf("first page: %d entries, next %x, %v", len(first), cur, err)
	}
	a.Close()
	a = open(t, filepath.Join(dir, "a.db"))
	defer a.Close()
	second, _, err := a.Page(1, cur, 10, 10)
	if err != nil || len(second) != 10 || second[0].Stripe != first[9].Stripe+1 {
		t.Fatalf("after a reopen the cursor continues: %d entries from stripe %v, %v", len(second), second, err)
	}
	b := open(t, filepath.Join(dir, "b.db"))
	defer b.Close()
	if err := b.Put(recs); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Page(1, cur, 10, 10); !errors.Is(err, ErrForeignCursor) {
		t.Fatalf("a cursor of another file: %v, want ErrForeignCursor", err)
	}
}
