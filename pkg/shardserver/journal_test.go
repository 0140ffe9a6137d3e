package shardserver

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/billyronks/couchestor/pkg/journal"
)

const journalToken = "journal-secret"

// journalServer is one shard server on loopback that a test can stop and
// start again on the same address and data directory.
type journalServer struct {
	t     testing.TB
	certs *Certificates
	dir   string
	addr  string
	// wrap, when set, sits in front of the Server (fault injection).
	wrap func(http.Handler) http.Handler

	hs    *http.Server
	store *Store
	srv   *Server
}

func newJournalServer(t testing.TB, certs *Certificates, wrap func(http.Handler) http.Handler) *journalServer {
	t.Helper()
	s := &journalServer{t: t, certs: certs, dir: t.TempDir(), wrap: wrap}
	s.start()
	t.Cleanup(s.stop)
	return s
}

func (s *journalServer) start() {
	s.t.Helper()
	st, err := OpenStore(s.dir, 1<<20)
	if err != nil {
		s.t.Fatal(err)
	}
	srv, err := NewServer(st, journalToken)
	if err != nil {
		s.t.Fatal(err)
	}
	kp, err := tls.X509KeyPair(s.certs.CertPEM, s.certs.KeyPEM)
	if err != nil {
		s.t.Fatal(err)
	}
	addr := s.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var ln net.Listener
	for deadline := time.Now().Add(10 * time.Second); ; {
		if ln, err = net.Listen("tcp", addr); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond) // the old listener's port is being released
	}
	if err != nil {
		s.t.Fatal(err)
	}
	s.addr = ln.Addr().String()
	var h http.Handler = srv
	if s.wrap != nil {
		h = s.wrap(h)
	}
	s.hs = &http.Server{Handler: h, TLSConfig: &tls.Config{Certificates: []tls.Certificate{kp}}, HTTP2: HTTP2Config()}
	s.store, s.srv = st, srv
	go s.hs.ServeTLS(ln, "", "")
}

// stop closes the listener and every connection, like a crashed server.
func (s *journalServer) stop() {
	if s.hs == nil {
		return
	}
	s.hs.Close()
	s.srv.Close() // journal directories are locked while open
	s.store.Close()
	s.hs, s.store, s.srv = nil, nil, nil
}

func journalClient(t testing.TB, certs *Certificates) *Client {
	t.Helper()
	c, err := NewClient(ClientConfig{CAPEM: certs.CAPEM, Token: journalToken, Retries: 2, Backoff: 5 * time.Millisecond, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func testCerts(t testing.TB) *Certificates {
	t.Helper()
	certs, err := NewCertificates([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return certs
}

func remoteStores(c *Client, servers []*journalServer, volume string) []journal.Store {
	var out []journal.Store
	for _, s := range servers {
		out = append(out, c.JournalStore(s.addr, volume))
	}
	return out
}

func pattern(lba uint64, version, nlba int) []byte {
	b := make([]byte, nlba*journal.LBASize)
	for i := range b {
		b[i] = byte(int(lba)*7 + version*31 + i/journal.LBASize)
	}
	return b
}

// imageSink is a volume image in memory (the stripes, for the destager).
type imageSink struct {
	mu  sync.Mutex
	img map[uint64][]byte // LBA → 512 bytes
}

func (m *imageSink) WriteStripe(_ context.Context, _ int64, ext []journal.Extent) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, e := range ext {
		for i := 0; i < len(e.Data)/journal.LBASize; i++ {
			m.img[e.LBA+uint64(i)] = append([]byte(nil), e.Data[i*journal.LBASize:(i+1)*journal.LBASize]...)
		}
	}
	return nil
}

// expectImage checks that every LBA of want reads back through the journal
// (newest data) or, where the journal does not cover it, from the sink.
func expectImage(t *testing.T, j *journal.Journal, sink *imageSink, want map[uint64][]byte) {
	t.Helper()
	for lba, w := range want {
		ext, err := j.Lookup(context.Background(), lba, lba+1)
		if err != nil {
			t.Fatalf("lookup LBA %d: %v", lba, err)
		}
		var got []byte
		if len(ext) == 1 {
			got = ext[0].Data
		} else {
			sink.mu.Lock()
			got = sink.img[lba]
			sink.mu.Unlock()
		}
		if !bytes.Equal(got, w) {
			t.Fatalf("LBA %d: acknowledged data lost (journal extents %d, in sink %v)", lba, len(ext), got != nil)
		}
	}
}

func writeBlocks(t *testing.T, j *journal.Journal, want map[uint64][]byte, from, n, version int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		lba := uint64(i * 3 % 200)
		data := pattern(lba, version, 1+i%4)
		if _, err := j.Append(context.Background(), lba, data); err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
		for k := 0; k < len(data)/journal.LBASize; k++ {
			want[lba+uint64(k)] = data[k*journal.LBASize : (k+1)*journal.LBASize]
		}
	}
}

func TestJournalRemoteOpenAppendReopenTrim(t *testing.T) {
	certs := testCerts(t)
	c := journalClient(t, certs)
	servers := []*journalServer{newJournalServer(t, certs, nil), newJournalServer(t, certs, nil), newJournalServer(t, certs, nil)}
	ctx := context.Background()
	opts := journal.Options{SizeBytes: 8 << 20}

	j, err := journal.Open(ctx, remoteStores(c, servers, "vol-a"), opts)
	if err != nil {
		t.Fatal(err)
	}
	want := map[uint64][]byte{}
	writeBlocks(t, j, want, 0, 60, 1)
	sink := &imageSink{img: map[uint64][]byte{}}
	d, err := journal.NewDestager(j, sink, journal.DestagerConfig{StripeSizeBytes: 64 << 10, ThresholdPercent: 50, Interval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := d.DestageOnce(ctx); err != nil || n == 0 {
		t.Fatalf("destage: %d stripes, %v", n, err)
	}
	trimmed := j.LastSeq()
	writeBlocks(t, j, want, 60, 40, 2) // these stay in the journal only
	last := j.LastSeq()
	expectImage(t, j, sink, want)
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	for i, s := range remoteStores(c, servers, "vol-a") {
		info, err := s.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.TrimmedThrough < trimmed || info.LastSeq != last {
			t.Fatalf("replica %d after close: %+v, want trimmed >= %d and last seq %d", i, info, trimmed, last)
		}
	}

	// Restart every server (new processes' view: files only) and reopen.
	for _, s := range servers {
		s.stop()
		s.start()
	}
	j, err = journal.Open(ctx, remoteStores(c, servers, "vol-a"), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if j.LastSeq() <= last {
		t.Fatalf("reopened journal's last seq %d, want above %d (an epoch marker follows the old log)", j.LastSeq(), last)
	}
	expectImage(t, j, sink, want)
	for i, h := range j.HealthyStores() {
		if !h {
			t.Fatalf("replica %d unhealthy after reopen", i)
		}
	}
	// The server reports the journal's bytes, kept apart from shard space.
	u, err := c.JournalUsage(ctx, servers[0].addr)
	if err != nil || len(u) != 1 || u[0].Volume != "vol-a" || u[0].Bytes == 0 {
		t.Fatalf("journal usage: %+v %v", u, err)
	}
	if sp, err := c.Space(ctx, servers[0].addr); err != nil || sp.UsedBytes != 0 {
		t.Fatalf("shard space counts the journal: %+v %v", sp, err)
	}
}

// TestJournalRemoteQuorum: with one of three servers down writes are
// acknowledged by the other two; with two down a write waits (back-pressure,
// counted as a quorum wait) instead of failing, and is acknowledged as soon
// as one server returns, without reopening the journal; the returning
// replicas are caught up and re-admitted. Open itself still needs a quorum.
// The old code failed every write with ErrNoQuorum from the second loss on.
func TestJournalRemoteQuorum(t *testing.T) {
	certs := testCerts(t)
	c := journalClient(t, certs)
	servers := []*journalServer{newJournalServer(t, certs, nil), newJournalServer(t, certs, nil), newJournalServer(t, certs, nil)}
	ctx := context.Background()
	opts := journal.Options{SizeBytes: 8 << 20, RetryInterval: 20 * time.Millisecond}
	j, err := journal.Open(ctx, remoteStores(c, servers, "vol-q"), opts)
	if err != nil {
		t.Fatal(err)
	}
	want := map[uint64][]byte{}
	writeBlocks(t, j, want, 0, 20, 1)

	servers[2].stop()
	writeBlocks(t, j, want, 20, 20, 2) // 2 of 3: still acknowledged
	// Replica 2 leaves the quorum set once its client gives up retrying.
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		h := j.HealthyStores()
		if h[0] && h[1] && !h[2] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("healthy stores with server 2 down: %v", h)
		}
	}

	servers[1].stop()
	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	_, err = j.Append(short, 5, pattern(5, 9, 1))
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("append with 2 of 3 servers down: %v, want it to wait for a quorum", err)
	}
	if h := j.Health(); h.QuorumWaits == 0 || h.QuorumLostSince.IsZero() && h.InSync[1] {
		t.Fatalf("health with 2 of 3 servers down: %+v, want a quorum wait", h)
	}
	done := make(chan error, 1)
	go func() { _, err := j.Append(ctx, 6, pattern(6, 9, 1)); done <- err }()
	servers[1].start()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("append after server 1 returned: %v", err)
		}
		want[6] = pattern(6, 9, 1)
	case <-time.After(30 * time.Second):
		t.Fatal("append still waiting 30s after server 1 returned")
	}
	writeBlocks(t, j, want, 40, 20, 3)
	servers[2].start()
	deadline := time.Now().Add(30 * time.Second)
	for h := j.Health(); !h.InSync[0] || !h.InSync[1] || !h.InSync[2]; h = j.Health() {
		if time.Now().After(deadline) {
			t.Fatalf("replicas not back in sync 30s after their servers returned: %+v", h)
		}
		time.Sleep(20 * time.Millisecond)
	}
	expectImage(t, j, &imageSink{img: map[uint64][]byte{}}, want)
	acked := j.LastSeq()
	j.Close()
	var infos []journal.StoreInfo
	for _, s := range remoteStores(c, servers, "vol-q") {
		info, err := s.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		infos = append(infos, info)
	}
	for i, info := range infos {
		if info.LastSeq != acked || info.Epoch != infos[0].Epoch {
			t.Fatalf("replica %d not caught up: %+v (acknowledged through %d)", i, infos, acked)
		}
	}

	servers[1].stop()
	servers[2].stop()
	if _, err := journal.Open(ctx, remoteStores(c, servers, "vol-q"), opts); !errors.Is(err, journal.ErrNoQuorum) {
		t.Fatalf("open with 2 of 3 servers down: %v, want ErrNoQuorum", err)
	}
	servers[1].start()
	servers[2].start()
	j, err = journal.Open(ctx, remoteStores(c, servers, "vol-q"), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	expectImage(t, j, &imageSink{img: map[uint64][]byte{}}, want)
}

// dropFirst answers the first request matching match with 502 after the
// real server handled it: the reply is lost, the effect is durable.
func dropFirst(match func(*http.Request) bool, hits *atomic.Int32) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !match(r) {
				next.ServeHTTP(w, r)
				return
			}
			if hits.Add(1) == 1 {
				rec := httptest.NewRecorder()
				next.ServeHTTP(rec, r)
				http.Error(w, "reply lost (injected)", http.StatusBadGateway)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

func TestJournalRemoteAppendAndEpochAreIdempotent(t *testing.T) {
	certs := testCerts(t)
	c := journalClient(t, certs)
	var appends, epochs atomic.Int32
	srv := newJournalServer(t, certs, func(h http.Handler) http.Handler {
		h = dropFirst(func(r *http.Request) bool {
			return r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/records")
		}, &appends)(h)
		return dropFirst(func(r *http.Request) bool {
			return r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/epoch")
		}, &epochs)(h)
	})
	ctx := context.Background()
	s := c.JournalStore(srv.addr, "vol-i")
	rec := func(seq, epoch uint64, fill byte) journal.Record {
		return journal.Record{Seq: seq, Epoch: epoch, Kind: journal.KindWrite, LBA: seq, Data: bytes.Repeat([]byte{fill}, journal.LBASize)}
	}

	// The first append's reply is lost after the server made it durable; the
	// client's retry must succeed, not fail with "append seq 1 after 3".
	if err := s.Append(ctx, []journal.Record{rec(1, 1, 'a'), rec(2, 1, 'b'), rec(3, 1, 'c')}); err != nil {
		t.Fatalf("append whose reply was lost: %v", err)
	}
	if n := appends.Load(); n != 2 {
		t.Fatalf("append requests: %d, want 2 (the lost one and the retry)", n)
	}
	// Overlapping with identical records, then new ones: only the new ones land.
	if err := s.Append(ctx, []journal.Record{rec(2, 1, 'b'), rec(3, 1, 'c'), rec(4, 1, 'd')}); err != nil {
		t.Fatal(err)
	}
	if info, err := s.Info(ctx); err != nil || info.LastSeq != 4 {
		t.Fatalf("after overlapping append: %+v %v", info, err)
	}
	var seqs []uint64
	if err := s.Scan(ctx, 0, func(r journal.Record) error { seqs = append(seqs, r.Seq); return nil }); err != nil || fmt.Sprint(seqs) != "[1 2 3 4]" {
		t.Fatalf("scan: %v %v, want [1 2 3 4] once each", seqs, err)
	}
	// The same seq with other bytes or another epoch is a conflict, not a retry.
	if err := s.Append(ctx, []journal.Record{rec(3, 1, 'X')}); !errors.Is(err, ErrJournalConflict) {
		t.Fatalf("append of seq 3 with other data: %v, want ErrJournalConflict", err)
	}
	if err := s.Append(ctx, []journal.Record{rec(4, 2, 'd')}); !errors.Is(err, ErrJournalConflict) {
		t.Fatalf("append of seq 4 with another epoch: %v, want ErrJournalConflict", err)
	}
	if r, err := s.Read(ctx, 3); err != nil || r.Data[0] != 'c' {
		t.Fatalf("seq 3 after refused conflict: %v", err)
	}
	if _, err := s.Read(ctx, 9); !errors.Is(err, journal.ErrNotFound) {
		t.Fatalf("read of an absent seq: %v, want journal.ErrNotFound", err)
	}

	// SetEpoch: a retry of the same call succeeds; another writer with that
	// epoch is refused (it is how two racing writers are told apart).
	if err := s.SetEpoch(ctx, 7); err != nil {
		t.Fatalf("set epoch whose reply was lost: %v", err)
	}
	if n := epochs.Load(); n != 2 {
		t.Fatalf("epoch requests: %d, want 2", n)
	}
	if err := s.SetEpoch(ctx, 7); !errors.Is(err, ErrJournalConflict) {
		t.Fatalf("a second writer with epoch 7: %v, want ErrJournalConflict", err)
	}
	if info, _ := s.Info(ctx); info.Epoch != 7 {
		t.Fatalf("epoch %d, want 7", info.Epoch)
	}
}

// cutScan aborts the first scan stream after limit bytes.
type cutWriter struct {
	http.ResponseWriter
	left int
}

func (w *cutWriter) Write(p []byte) (int, error) {
	if len(p) > w.left {
		w.ResponseWriter.Write(p[:w.left])
		w.ResponseWriter.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	}
	w.left -= len(p)
	return w.ResponseWriter.Write(p)
}

func TestJournalRemoteScanStreamsAndResumes(t *testing.T) {
	certs := testCerts(t)
	c := journalClient(t, certs)
	var scans atomic.Int32
	srv := newJournalServer(t, certs, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/records") && scans.Add(1) == 1 {
				next.ServeHTTP(&cutWriter{ResponseWriter: w, left: 300 << 10}, r)
				return
			}
			next.ServeHTTP(w, r)
		})
	})
	ctx := context.Background()
	s := c.JournalStore(srv.addr, "vol-s")
	const n = 400
	var batch []journal.Record
	for i := 1; i <= n; i++ {
		batch = append(batch, journal.Record{Seq: uint64(i), Epoch: 1, Kind: journal.KindWrite, LBA: uint64(i), Data: pattern(uint64(i), 1, 8)})
		if len(batch) == 50 {
			if err := s.Append(ctx, batch); err != nil {
				t.Fatal(err)
			}
			batch = nil
		}
	}
	if err := s.Trim(ctx, 10); err != nil {
		t.Fatal(err)
	}
	next := uint64(21)
	err := s.Scan(ctx, 20, func(r journal.Record) error {
		if r.Seq != next || !bytes.Equal(r.Data, pattern(r.Seq, 1, 8)) {
			return fmt.Errorf("got seq %d (data ok %v), want seq %d", r.Seq, bytes.Equal(r.Data, pattern(r.Seq, 1, 8)), next)
		}
		next++
		return nil
	})
	if err != nil || next != n+1 {
		t.Fatalf("scan after a cut stream: %v, next %d", err, next)
	}
	if scans.Load() < 2 {
		t.Fatalf("the stream was not cut (scans %d): the test proves nothing", scans.Load())
	}
	stop := errors.New("enough")
	if err := s.Scan(ctx, 0, func(journal.Record) error { return stop }); !errors.Is(err, stop) {
		t.Fatalf("fn's error must end the scan unchanged: %v", err)
	}

	// Truncate, reset, delete.
	if err := s.TruncateAfter(ctx, 100); err != nil {
		t.Fatal(err)
	}
	if info, _ := s.Info(ctx); info.LastSeq != 100 || info.TrimmedThrough != 10 {
		t.Fatalf("after truncate: %+v", info)
	}
	if err := s.Reset(ctx, 500); err != nil {
		t.Fatal(err)
	}
	if info, _ := s.Info(ctx); info.LastSeq != 500 || info.TrimmedThrough != 500 {
		t.Fatalf("after reset: %+v", info)
	}
	if err := c.DeleteJournal(ctx, srv.addr, "vol-s"); err != nil {
		t.Fatal(err)
	}
	if info, err := s.Info(ctx); err != nil || info != (journal.StoreInfo{}) {
		t.Fatalf("after delete: %+v %v", info, err)
	}
	if _, err := os.Stat(filepath.Join(srv.dir, journalsDirName, "vol-s")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("journal directory left after delete: %v", err)
	}
}

func TestJournalRemoteRefusals(t *testing.T) {
	certs := testCerts(t)
	c := journalClient(t, certs)
	srv := newJournalServer(t, certs, nil)
	ctx := context.Background()

	for _, bad := range []string{"Bad_Name", "a..b", "a/b", strings.Repeat("a", 254), "-lead"} {
		_, err := c.JournalStore(srv.addr, bad).Info(ctx)
		if !errors.Is(err, ErrBadJournalRequest) || !strings.Contains(err.Error(), "DNS-1123") {
			t.Errorf("volume %q: %v, want a 400 naming the DNS-1123 rule", bad, err)
		}
	}
	if err := c.JournalStore(srv.addr, "Bad_Name").Append(ctx, []journal.Record{{Seq: 1, Epoch: 1, Kind: journal.KindEpoch}}); !errors.Is(err, ErrBadJournalRequest) {
		t.Errorf("append to a bad volume name: %v", err)
	}
	if _, err := os.Stat(filepath.Join(srv.dir, journalsDirName, "Bad_Name")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused name created a directory: %v", err)
	}

	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.creds.Load().pool}}}
	do := func(method, path, token string, body []byte) (int, string) {
		req, _ := http.NewRequest(method, "https://"+srv.addr+path, bytes.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, p := range []string{"/v1/journals/vol", "/v1/journals/vol/records?after=0", "/v1/journals"} {
		if code, _ := do(http.MethodGet, p, "", nil); code != http.StatusUnauthorized {
			t.Errorf("GET %s without a token: %d, want 401", p, code)
		}
		if code, _ := do(http.MethodGet, p, "wrong", nil); code != http.StatusUnauthorized {
			t.Errorf("GET %s with a wrong token: %d, want 401", p, code)
		}
	}
	if code, _ := do(http.MethodDelete, "/v1/journals/vol", "", nil); code != http.StatusUnauthorized {
		t.Errorf("DELETE without a token: %d", code)
	}
	wrong, _ := NewClient(ClientConfig{CAPEM: certs.CAPEM, Token: "wrong", Retries: 1, Backoff: time.Millisecond})
	if err := wrong.JournalStore(srv.addr, "vol").Append(ctx, []journal.Record{{Seq: 1, Epoch: 1, Kind: journal.KindEpoch}}); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("append with a wrong token: %v, want ErrUnauthorized", err)
	}

	good := journal.AppendEncoded(nil, &journal.Record{Seq: 1, Epoch: 1, Kind: journal.KindWrite, Data: make([]byte, 512)})
	torn := append([]byte(nil), good...)
	torn[40] ^= 0xff
	for name, tc := range map[string]struct {
		path string
		body []byte
		want string
	}{
		"corrupt record":  {"/v1/journals/vol/records", torn, "record 0 of the append body"},
		"cut record":      {"/v1/journals/vol/records", good[:len(good)-3], "record 0 of the append body"},
		"empty append":    {"/v1/journals/vol/records", nil, "at least one record"},
		"trim without n":  {"/v1/journals/vol/trim", nil, "through"},
		"epoch not a num": {"/v1/journals/vol/epoch?epoch=x", nil, `epoch="x"`},
	} {
		code, msg := do(http.MethodPost, tc.path, journalToken, tc.body)
		if code != http.StatusBadRequest || !strings.Contains(msg, tc.want) {
			t.Errorf("%s: %d %q, want 400 mentioning %q", name, code, msg, tc.want)
		}
	}
	if code, msg := do(http.MethodGet, "/v1/journals/vol/records/abc", journalToken, nil); code != http.StatusBadRequest || !strings.Contains(msg, "abc") {
		t.Errorf("read of seq abc: %d %q", code, msg)
	}
}

// BenchmarkJournalRemoteAppend3Replicas measures acknowledged journal writes
// over three shard servers on loopback (TLS, HTTP/2, fsync on each), one
// writer and many concurrent writers (group commit). Compare with
// pkg/journal's BenchmarkAppend (three local FileStores).
func BenchmarkJournalRemoteAppend3Replicas(b *testing.B) {
	for _, size := range []int{4 << 10, 64 << 10, 1 << 20} {
		for _, writers := range []int{1, 8, 16, 64} {
			if size == 1<<20 && writers > 8 {
				continue // NBD clients send 1 MiB writes a few at a time
			}
			b.Run(fmt.Sprintf("%dKiB/writers=%d", size>>10, writers), func(b *testing.B) {
				certs := testCerts(b)
				c := journalClient(b, certs)
				servers := []*journalServer{newJournalServer(b, certs, nil), newJournalServer(b, certs, nil), newJournalServer(b, certs, nil)}
				j, err := journal.Open(context.Background(), remoteStores(c, servers, "bench"), journal.Options{SizeBytes: 1 << 40})
				if err != nil {
					b.Fatal(err)
				}
				defer j.Close()
				data := pattern(0, 1, size/journal.LBASize)
				b.SetBytes(int64(size))
				b.ResetTimer()
				var next atomic.Uint64
				var wg sync.WaitGroup
				errs := make(chan error, writers)
				for w := 0; w < writers; w++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for next.Add(1) <= uint64(b.N) {
							if _, err := j.Append(context.Background(), 0, data); err != nil {
								errs <- err
								return
							}
						}
					}()
				}
				wg.Wait()
				b.StopTimer()
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
				select {
				case err := <-errs:
					b.Fatal(err)
				default:
				}
			})
		}
	}
}
