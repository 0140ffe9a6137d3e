package shardserver

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/billyronks/couchestor/pkg/placement"
	"github.com/billyronks/couchestor/pkg/shardindex"
)

const testUID = "6f1c2d3e-4a5b-4c6d-8e7f-9a0b1c2d3e4f"

// uidHeader is a shard of a volume that sends its UID and group count.
func uidHeader(stripe int64, idx int, gen int64, payload []byte) *ShardHeader {
	h := header("v", stripe, idx, gen, payload)
	h.VolumeUID, h.PlacementGroups, h.WriterEpoch = testUID, 16, 3
	return h
}

func dumpIndex(t *testing.T, s *Store) []shardindex.Record {
	t.Helper()
	var out []shardindex.Record
	if err := s.index.ForEach(func(r shardindex.Record) error { out = append(out, r); return nil }); err != nil {
		t.Fatal(err)
	}
	// By key: a rebuild numbers the volumes afresh, so the file's order of
	// volumes may differ; the records may not.
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Volume != b.Volume {
			return a.Volume < b.Volume
		}
		if a.Stripe != b.Stripe {
			return a.Stripe < b.Stripe
		}
		return a.Shard < b.Shard
	})
	return out
}

func openStore(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := OpenStore(dir, 8<<20)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Writes, overwrites and frees keep the index equal to the newest
// generation of every slot; a lost or damaged index is rebuilt from the
// shard headers into exactly the one lost, and a consistent one is kept.
func TestIndexFollowsWritesAndFreesAndRebuildsEqual(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	type shard struct {
		h   *ShardHeader
		loc Location
	}
	var live []shard
	for i := 0; i < 40; i++ {
		p := randBytes(700+i, uint64(i))
		h := uidHeader(int64(i/2), i%2, 1, p)
		if i%5 == 0 { // an old writer: no UID, no group count
			h = header("old", int64(i), 0, 1, p)
		}
		loc, err := s.Write(h, p)
		if err != nil {
			t.Fatal(err)
		}
		live = append(live, shard{h, loc})
	}
	// A newer generation of stripe 1 shard 1; the old copy is freed after.
	p := randBytes(900, 99)
	h2 := uidHeader(1, 1, 2, p)
	loc2, err := s.Write(h2, p)
	if err != nil {
		t.Fatal(err)
	}
	old := live[3] // stripe 1 shard 1 generation 1
	if err := s.Free(old.loc.Offset, Expect{"v", 1, 1, 1}); err != nil {
		t.Fatal(err)
	}
	if e, ok, err := s.index.Get(shardindex.Key{Group: GroupOfHeader(h2), Volume: testUID, Stripe: 1, Shard: 1}); err != nil || !ok || e.Generation != 2 || e.Offset != uint64(loc2.Offset) {
		t.Fatalf("after the old copy was freed the index holds %+v %v %v, want generation 2 at %d", e, ok, err, loc2.Offset)
	}
	// An abandoned newer version of stripe 2 shard 0, freed: generation 1
	// is the slot's record again.
	h3 := uidHeader(2, 0, 5, p)
	loc3, err := s.Write(h3, p)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Free(loc3.Offset, Expect{"v", 2, 0, 5}); err != nil {
		t.Fatal(err)
	}
	if e, ok, _ := s.index.Get(shardindex.Key{Group: GroupOfHeader(h3), Volume: testUID, Stripe: 2, Shard: 0}); !ok || e.Generation != 1 || e.Offset != uint64(live[4].loc.Offset) {
		t.Fatalf("after the abandoned generation 5 was freed the index holds %+v %v, want generation 1 at %d", e, ok, live[4].loc.Offset)
	}
	// A later volume of the same name (another UID) writes a slot the
	// first one still holds: two index entries.
	h4 := uidHeader(6, 0, 3, p)
	h4.VolumeUID = "0a1b2c3d-other-volume-of-the-same-name"
	if _, err := s.Write(h4, p); err != nil {
		t.Fatal(err)
	}
	// A newer generation under another group count moves the entry's group.
	h5 := uidHeader(7, 0, 2, p)
	h5.PlacementGroups = 1024
	if _, err := s.Write(h5, p); err != nil {
		t.Fatal(err)
	}
	// Free a whole stripe of an old writer.
	if err := s.Free(live[10].loc.Offset, Expect{"old", 10, 0, 1}); err != nil {
		t.Fatal(err)
	}
	want := dumpIndex(t, s)
	if len(want) != 40 {
		t.Fatalf("index holds %d entries, want 40 (40 written, one freed, one of another UID; overwrites and an abandoned version add none)", len(want))
	}
	var total uint64
	counts, _ := s.index.Counts()
	for g, n := range counts {
		if g != UnknownGroup && g >= 16 && g != GroupOfHeader(h5) {
			t.Fatalf("entries in group %d of 16", g)
		}
		total += n
	}
	if total != 40 || counts[UnknownGroup] != 7 || counts[GroupOfHeader(h5)] == 0 {
		t.Fatalf("counts %v: total %d want 40, unknown group %d want 7, group %d of stripe 7 empty", counts, total, counts[UnknownGroup], GroupOfHeader(h5))
	}
	s.Close()

	s = openStore(t, dir)
	if why := s.IndexRebuilt(); why != "" {
		t.Fatalf("a consistent index was rebuilt: %s", why)
	}
	s.Close()
	path := filepath.Join(dir, indexFileName)
	for name, damage := range map[string]func() error{
		"missing": func() error { return os.Remove(path) },
		"garbage": func() error { return os.WriteFile(path, []byte(strings.Repeat("not a bbolt file ", 512)), 0o600) },
		"an entry lost": func() error {
			x, err := shardindex.Open(path, time.Second)
			if err != nil {
				return err
			}
			defer x.Close()
			return x.Delete([]shardindex.Record{want[0]})
		},
		// A page past the meta pages overwritten (bbolt checks only the
		// meta pages on open; its freelist walk panics on such a page in
		// a goroutine of its own, where nothing recovers): the file is
		// grown to many pages first, every one after the first ten damaged.
		"a damaged data page": func() error {
			x, err := shardindex.Open(path, time.Second)
			if err != nil {
				return err
			}
			var recs []shardindex.Record
			for i := uint64(0); i < 20000; i++ {
				r := want[0]
				r.Stripe, r.Group = 1_000_000+i, UnknownGroup
				recs = append(recs, r)
			}
			err = x.Put(recs)
			x.Close()
			if err != nil {
				return err
			}
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			fi, err := f.Stat()
			if err != nil {
				return err
			}
			if fi.Size() < 64*4096 {
				return fmt.Errorf("index file of %d bytes: too small to damage past its first pages", fi.Size())
			}
			junk := []byte(strings.Repeat("\xa5", 4096))
			for off := int64(10 * 4096); off < fi.Size(); off += 4096 {
				if _, err := f.WriteAt(junk, off); err != nil {
					return err
				}
			}
			return f.Sync()
		},
		"a stale entry": func() error { // a crash after a free's 'F', before its index delete
			x, err := shardindex.Open(path, time.Second)
			if err != nil {
				return err
			}
			defer x.Close()
			r := want[0]
			r.Stripe, r.Group = 999999, UnknownGroup
			return x.Put([]shardindex.Record{r})
		},
	} {
		if err := damage(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		s = openStore(t, dir)
		if why := s.IndexRebuilt(); why == "" {
			t.Fatalf("%s: the index was not rebuilt", name)
		}
		if got := dumpIndex(t, s); !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: the rebuilt index differs from the lost one:\n got %v\nwant %v", name, got, want)
		}
		if c, _ := s.index.Counts(); fmt.Sprint(c) != fmt.Sprint(counts) {
			t.Fatalf("%s: rebuilt counts %v, lost %v", name, c, counts)
		}
		s.Close()
	}
}

// A failed index commit fails the write, and its extent is free, now and
// after a restart.
func TestIndexCommitFailureFailsTheWriteAndFreesItsExtent(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	p := randBytes(3000, 5)
	if _, err := s.Write(uidHeader(1, 0, 1, p), p); err != nil {
		t.Fatal(err)
	}
	s.index.Close() // every commit now fails
	_, err := s.Write(uidHeader(2, 0, 1, p), p)
	if err == nil || !strings.Contains(err.Error(), "stripe index") {
		t.Fatalf("write with a failing index: %v, want an error naming the stripe index", err)
	}
	if sp := s.Space(); sp.Shards != 1 {
		t.Fatalf("after the failed write the store holds %d shards, want 1", sp.Shards)
	}
	if s.Err() == nil {
		t.Fatal("the store still acknowledges after an index commit failed")
	}
	s.data.Close()
	s.log.Close()
	s.lock.Close()
	s = openStore(t, dir)
	defer s.Close()
	if l := s.List(""); len(l) != 1 || l[0].Header.StripeID != 1 {
		t.Fatalf("after a restart the store lists %+v, want only stripe 1", l)
	}
	if got := dumpIndex(t, s); len(got) != 1 || got[0].Stripe != 1 {
		t.Fatalf("after a restart the index holds %v, want only stripe 1", got)
	}
}

// The index refuses a generation older than the one it holds (a concurrent
// write of the slot committed first): the write is a StaleError and leaves
// no shard behind.
func TestIndexRefusesAStaleGeneration(t *testing.T) {
	s := openStore(t, t.TempDir())
	defer s.Close()
	p := randBytes(1000, 1)
	h := uidHeader(7, 2, 5, p)
	r, err := indexRecord(uidHeader(7, 2, 6, p), 123)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.index.Put([]shardindex.Record{r}); err != nil {
		t.Fatal(err)
	}
	var stale *StaleError
	if _, err := s.Write(h, p); !errors.As(err, &stale) || stale.HeldGeneration != 6 || stale.Requested != 5 {
		t.Fatalf("write of generation 5 over an indexed 6: %v, want a StaleError holding 6", err)
	}
	if sp := s.Space(); sp.Shards != 0 || sp.UsedBytes != 0 {
		t.Fatalf("a refused write left %+v", sp)
	}
	if s.Err() != nil {
		t.Fatalf("a stale generation stopped the store: %v", s.Err())
	}
}

// The group endpoints answer counts and pages, and refuse what is out of
// bounds with an error naming the field, the value and the rule.
func TestGroupEndpoints(t *testing.T) {
	s := openStore(t, t.TempDir())
	defer s.Close()
	var inGroup []int64
	for i := 0; i < 60; i++ {
		p := randBytes(500, uint64(i))
		h := uidHeader(int64(i), 0, 1, p)
		if _, err := s.Write(h, p); err != nil {
			t.Fatal(err)
		}
		if GroupOfHeader(h) == 3 {
			inGroup = append(inGroup, int64(i))
		}
	}
	if len(inGroup) < 2 {
		t.Fatalf("only %d stripes in group 3", len(inGroup))
	}
	if g := placement.GroupOf(testUID, uint64(inGroup[0]), 16); g != 3 {
		t.Fatalf("GroupOfHeader disagrees with placement.GroupOf: %d", g)
	}
	srv, err := NewServer(s, "secret")
	if err != nil {
		t.Fatal(err)
	}
	certs := testCerts(t)
	kp, _ := tls.X509KeyPair(certs.CertPEM, certs.KeyPEM)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: srv, TLSConfig: &tls.Config{Certificates: []tls.Certificate{kp}}}
	go hs.ServeTLS(ln, "", "")
	defer hs.Close()
	addr := ln.Addr().String()
	ctx := context.Background()
	c, err := NewClient(ClientConfig{CAPEM: certs.CAPEM, Token: "secret", Retries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	n, err := c.CountGroup(ctx, addr, 3)
	if err != nil || n != uint64(len(inGroup)) {
		t.Fatalf("CountGroup(3) = %d, %v; want %d", n, err, len(inGroup))
	}
	var got []int64
	cur := ""
	for pages := 0; ; pages++ {
		p, err := c.ListGroup(ctx, addr, 3, cur, 1)
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Entries) > 1 || pages > 100 {
			t.Fatalf("page %d holds %d entries with limit 1", pages, len(p.Entries))
		}
		for _, e := range p.Entries {
			if e.Group != 3 || e.Volume != testUID || e.WriterEpoch != 3 || !strings.HasPrefix(e.Checksum, "xxh3:") {
				t.Fatalf("entry %+v", e)
			}
			got = append(got, int64(e.StripeID))
		}
		if cur = p.Next; cur == "" {
			break
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(inGroup) {
		t.Fatalf("listing of group 3: %v, want %v in order", got, inGroup)
	}
	bad, _ := NewClient(ClientConfig{CAPEM: certs.CAPEM, Token: "wrong", Retries: 1})
	defer bad.Close()
	if _, err := bad.CountGroup(ctx, addr, 3); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("count with a wrong token: %v", err)
	}
	if _, err := bad.ListGroup(ctx, addr, 3, "", 0); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("list with a wrong token: %v", err)
	}
	if _, err := c.ListGroup(ctx, addr, 3, "", MaxGroupPageEntries+1); !errors.Is(err, ErrBadIndexRequest) {
		t.Fatalf("list beyond the page limit: %v, want ErrBadIndexRequest", err)
	}
	for _, tc := range []struct{ path, want string }{
		{"/v1/groups/x/count", `group "x" must be a placement group number within [0, 4294967295]`},
		{"/v1/groups/4294967296/count", `group "4294967296" must be`},
		{"/v1/groups/-1/entries", `group "-1" must be`},
		{"/v1/groups/3/count?limit=1", `query parameter "limit" is not one of`},
		{"/v1/groups/3/entries?limit=0", `limit="0" must be an integer within [1, 1000]`},
		{"/v1/groups/3/entries?limit=1001", `limit="1001" must be an integer within [1, 1000]`},
		{"/v1/groups/3/entries?limit=ten", `limit="ten" must be an integer within [1, 1000]`},
		{"/v1/groups/3/entries?limit=1&limit=2", "query parameter limit given 2 times, at most once allowed"},
		{"/v1/groups/3/entries?after=zz", `after="zz" must be a cursor a previous page returned (42 lower-case hex digits)`},
		{"/v1/groups/3/entries?after=" + strings.Repeat("AB", 13), `after="ABAB`},
		{"/v1/groups/3/entries?volume=v", `query parameter "volume" is not one of limit, after`},
		{"/v1/groups/3/entries?after=" + strings.Repeat("a", 300), "a query of 306 bytes, at most 256 allowed"},
	} {
		req := httptest.NewRequest(http.MethodGet, tc.path, nil)
		req.Header.Set("Authorization", "Bearer secret")
		rr := httptest.NewRecorder()
		srv.ServeHTTP(rr, req)
		if rr.Code != http.StatusBadRequest || !strings.Contains(rr.Body.String(), tc.want) {
			t.Errorf("GET %s: %d %q, want 400 containing %q", tc.path, rr.Code, rr.Body.String(), tc.want)
		}
	}
	req := httptest.NewRequest(http.MethodGet, "/v1/groups/3/entries", nil)
	rr := httptest.NewRecorder()
	srv.ServeHTTP(rr, req)
	if rr.Code != http.StatusUnauthorized {
		t.Errorf("listing without a token: %d", rr.Code)
	}
	var page GroupPage
	req = httptest.NewRequest(http.MethodGet, "/v1/groups/3/entries", nil)
	req.Header.Set("Authorization", "Bearer secret")
	rr = httptest.NewRecorder()
	srv.ServeHTTP(rr, req)
	if err := json.Unmarshal(rr.Body.Bytes(), &page); err != nil || len(page.Entries) != len(inGroup) || page.Next != "" {
		t.Fatalf("default page: %d %v %+v", rr.Code, err, page)
	}
}

// Every PUT a real shard-server process acknowledged has its index entry
// after the process is SIGKILLed during a burst of 16 concurrent writers
// (read from the index file itself, before OpenStore could reconcile it).
// As in pkg/shardindex, a SIGKILL proves the commit happens before the
// acknowledgement and is atomic; the page cache outlives the process, so it
// does not prove the fsync.
func TestAcknowledgedPutsAreIndexedAfterSIGKILL(t *testing.T) {
	if dir := os.Getenv("SHARDSERVER_INDEX_CHILD"); dir != "" {
		indexChild(dir)
		return
	}
	for round := 0; round < 2; round++ {
		dir := t.TempDir()
		cmd := exec.Command(os.Args[0], "-test.run", "^TestAcknowledgedPutsAreIndexedAfterSIGKILL$")
		cmd.Env = append(os.Environ(), "SHARDSERVER_INDEX_CHILD="+dir)
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(out)
		var addr string
		var caPEM []byte
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "serving "); ok {
				addr = a
				break
			}
		}
		if addr == "" {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatal("the child never served")
		}
		caPEM, err = os.ReadFile(filepath.Join(dir, "ca.pem"))
		if err != nil {
			t.Fatal(err)
		}
		c, err := NewClient(ClientConfig{CAPEM: caPEM, Token: "secret", Retries: 0, Timeout: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		acked := map[int64]*ShardHeader{}
		killAt := 150 + 150*round
		var killed sync.Once
		var wg sync.WaitGroup
		ctx, cancel := context.WithCancel(context.Background())
		for w := 0; w < 16; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				for i := 0; ctx.Err() == nil; i++ {
					stripe := int64(w*100000 + i)
					p := randBytes(4096, uint64(stripe))
					h := uidHeader(stripe, w%6, 1, p)
					if _, err := c.Put(ctx, addr, h, p); err != nil {
						return // the server is gone
					}
					mu.Lock()
					acked[stripe] = h
					n := len(acked)
					mu.Unlock()
					if n >= killAt {
						killed.Do(func() { cmd.Process.Signal(syscall.SIGKILL) })
					}
				}
			}(w)
		}
		// Bound the burst: the child is killed by then whatever happens.
		deadline := time.AfterFunc(2*time.Minute, func() { killed.Do(func() { cmd.Process.Signal(syscall.SIGKILL) }) })
		cmd.Wait()
		deadline.Stop()
		cancel()
		wg.Wait()
		c.Close()
		if len(acked) < killAt {
			t.Fatalf("round %d: only %d PUTs were acknowledged before the child ended", round, len(acked))
		}
		x, err := shardindex.Open(filepath.Join(dir, "data", indexFileName), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		for stripe, h := range acked {
			r, _ := indexRecord(h, 0)
			e, ok, err := x.Get(r.Key)
			if err != nil || !ok || e.Generation != 1 || e.Checksum != r.Checksum || e.Epoch != 3 {
				t.Fatalf("round %d: stripe %d was acknowledged before the SIGKILL; its index entry is %+v, %v, %v", round, stripe, e, ok, err)
			}
		}
		x.Close()
		s := openStore(t, filepath.Join(dir, "data"))
		for stripe, h := range acked {
			r, _ := indexRecord(h, 0)
			e, ok, _ := s.index.Get(r.Key)
			if !ok {
				t.Fatalf("round %d: stripe %d lost by reopening", round, stripe)
			}
			if _, p, err := s.Read(int64(e.Offset), Expect{"v", stripe, h.ShardIndex, 1}); err != nil || string(p) != string(randBytes(4096, uint64(stripe))) {
				t.Fatalf("round %d: stripe %d reads back %v", round, stripe, err)
			}
		}
		t.Logf("round %d: %d PUTs acknowledged before the SIGKILL, all indexed; reopen: %q", round, len(acked), s.IndexRebuilt())
		s.Close()
	}
}

// indexChild serves a store in dir/data over TLS until it is killed.
func indexChild(dir string) {
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	s, err := OpenStore(filepath.Join(dir, "data"), 1<<30)
	if err != nil {
		fail(err)
	}
	srv, err := NewServer(s, "secret")
	if err != nil {
		fail(err)
	}
	certs, err := NewCertificates([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		fail(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), certs.CAPEM, 0o600); err != nil {
		fail(err)
	}
	kp, err := tls.X509KeyPair(certs.CertPEM, certs.KeyPEM)
	if err != nil {
		fail(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail(err)
	}
	hs := srv.HTTPServer(&tls.Config{Certificates: []tls.Certificate{kp}})
	fmt.Println("serving " + ln.Addr().String())
	fail(hs.ServeTLS(ln, "", ""))
}

// Two frees of one slot's generations at once: the newer's free puts the
// older generation back in the index while the older's free runs. Both
// acknowledged, the index must hold nothing of the slot (before, the
// put-back could follow the older's delete and leave an entry of a freed
// extent, which the next allocation reuses).
func TestConcurrentFreesOfOneSlotLeaveNoEntry(t *testing.T) {
	s := openStore(t, t.TempDir())
	defer s.Close()
	p := randBytes(1000, 1)
	l5, err := s.Write(uidHeader(1, 0, 5, p), p)
	if err != nil {
		t.Fatal(err)
	}
	l6, err := s.Write(uidHeader(1, 0, 6, p), p)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	unindexHook = func() {
		unindexHook = nil
		go func() { done <- s.Free(l5.Offset, Expect{"v", 1, 0, 5}) }()
		// Let the older free run as far as it can: to its end (before the
		// fix) or to the index step the newer free holds.
		deadline := time.Now().Add(time.Minute)
		for {
			gone := true
			for _, sh := range s.List("v") {
				gone = gone && sh.Offset != l5.Offset
			}
			if gone || time.Now().After(deadline) {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		select {
		case err := <-done:
			done <- err
		case <-time.After(2 * time.Second):
		}
	}
	defer func() { unindexHook = nil }()
	if err := s.Free(l6.Offset, Expect{"v", 1, 0, 6}); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := dumpIndex(t, s); len(got) != 0 {
		t.Fatalf("both generations freed, the index still holds %+v", got)
	}
	counts, err := s.index.Counts()
	if err != nil {
		t.Fatal(err)
	}
	for g, n := range counts {
		if n != 0 {
			t.Fatalf("group %d counts %d entries, want none", g, n)
		}
	}
}
