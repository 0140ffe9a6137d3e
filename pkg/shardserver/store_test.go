package shardserver

import (
	"context"
	"crypto/tls"
	"errors"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/billyronks/couchestor/pkg/erasure"
)

func header(vol string, stripe int64, idx int, gen int64, payload []byte) *ShardHeader {
	return &ShardHeader{Volume: vol, PolicyRef: "p", StripeID: stripe, ShardIndex: idx, Generation: gen,
		Algorithm: "ReedSolomon", DataShards: 4, ParityShards: 2, StripeSizeBytes: 65536, StartLBA: 0, EndLBA: 128,
		SizeBytes: int64(len(payload)), Checksum: erasure.ShardChecksum(payload), WrittenUnixNano: 1}
}

func randBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestStoreWriteReadFreeReopenNeverOverlaps(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStore(dir, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	type rec struct {
		loc Location
		x   Expect
		p   []byte
	}
	var recs []rec
	for i := 0; i < 20; i++ {
		p := randBytes(1000+i*37, uint64(i))
		h := header("v", int64(i), i%6, 1, p)
		loc, err := s.Write(h, p)
		if err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		recs = append(recs, rec{loc, Expect{"v", int64(i), i % 6, 1}, p})
	}
	// Free every other shard, then reopen as after a crash (no Close).
	for i := 0; i < len(recs); i += 2 {
		if err := s.Free(recs[i].loc.Offset, recs[i].x); err != nil {
			t.Fatal(err)
		}
	}
	used := s.Space().UsedBytes
	s.Close() // the directory is locked while open; Close flushes nothing
	s2, err := OpenStore(dir, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if got := s2.Space().UsedBytes; got != used {
		t.Fatalf("used after reopen %d, before %d", got, used)
	}
	for i, r := range recs {
		_, p, err := s2.Read(r.loc.Offset, r.x)
		if i%2 == 0 {
			if !errors.Is(err, ErrNotFound) {
				t.Fatalf("freed shard %d read back: %v", i, err)
			}
			continue
		}
		if err != nil || string(p) != string(r.p) {
			t.Fatalf("shard %d after reopen: err=%v equal=%v", i, err, string(p) == string(r.p))
		}
	}
	// New writes reuse freed space but never overlap a live extent.
	for i := 0; i < 10; i++ {
		p := randBytes(700, uint64(100+i))
		if _, err := s2.Write(header("w", int64(i), 0, 1, p), p); err != nil {
			t.Fatal(err)
		}
	}
	list := s2.List("")
	for i := 1; i < len(list); i++ {
		if list[i-1].Offset+list[i-1].ExtentBytes > list[i].Offset {
			t.Fatalf("extents overlap: %+v and %+v", list[i-1], list[i])
		}
	}
	for i := 1; i < len(recs); i += 2 {
		if _, p, err := s2.Read(recs[i].loc.Offset, recs[i].x); err != nil || string(p) != string(recs[i].p) {
			t.Fatalf("live shard %d damaged by later writes: %v", i, err)
		}
	}
}

func TestStoreTornLogTailAndNoSpace(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStore(dir, 3*8192)
	if err != nil {
		t.Fatal(err)
	}
	p := randBytes(4096, 1)
	if _, err := s.Write(header("v", 0, 0, 1, p), p); err != nil {
		t.Fatal(err)
	}
	// A torn record at the tail (crash mid-append) is dropped on open.
	f, _ := os.OpenFile(filepath.Join(dir, allocLogName), os.O_WRONLY|os.O_APPEND, 0)
	f.Write([]byte{'A', 0, 0, 0})
	f.Close()
	s.Close()
	s2, err := OpenStore(dir, 3*8192)
	if err != nil {
		t.Fatal(err)
	}
	if sp := s2.Space(); sp.Shards != 1 || sp.UsedBytes != 8192 {
		t.Fatalf("space after torn tail: %+v", sp)
	}
	for i := 1; i < 3; i++ {
		if _, err := s2.Write(header("v", int64(i), 0, 1, p), p); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s2.Write(header("v", 9, 0, 1, p), p); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("write beyond capacity: %v, want ErrNoSpace", err)
	}
}

func TestStoreGenerations(t *testing.T) {
	s, err := OpenStore(t.TempDir(), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	p1, p2 := randBytes(512, 1), randBytes(512, 2)
	l1, err := s.Write(header("v", 3, 1, 5, p1), p1)
	if err != nil {
		t.Fatal(err)
	}
	again, err := s.Write(header("v", 3, 1, 5, p1), p1)
	if err != nil || !again.Existing || again.Offset != l1.Offset {
		t.Fatalf("identical retry: %+v %v", again, err)
	}
	if _, err := s.Write(header("v", 3, 1, 5, p2), p2); !errors.Is(err, ErrStaleGeneration) {
		t.Fatalf("same generation, other bytes: %v", err)
	}
	if _, err := s.Write(header("v", 3, 1, 4, p2), p2); !errors.Is(err, ErrStaleGeneration) {
		t.Fatalf("older generation: %v", err)
	}
	l6, err := s.Write(header("v", 3, 1, 6, p2), p2)
	if err != nil || l6.Offset == l1.Offset {
		t.Fatalf("newer generation must go to a new offset: %+v %v", l6, err)
	}
	if _, _, err := s.Read(l1.Offset, Expect{"v", 3, 1, 4}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("read expecting an older generation than stored: %v", err)
	}
	if err := s.Free(l1.Offset, Expect{"v", 3, 1, 6}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("free with the wrong identity: %v", err)
	}
}

func TestStoreTamperedBytes(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStore(dir, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	p := randBytes(5000, 3)
	loc, err := s.Write(header("v", 0, 2, 1, p), p)
	if err != nil {
		t.Fatal(err)
	}
	f, _ := os.OpenFile(filepath.Join(dir, storeFileName), os.O_RDWR, 0)
	f.WriteAt([]byte{0xff ^ p[100]}, loc.Offset+4096+100) // payload byte
	f.Close()
	h, got, err := s.Read(loc.Offset, Expect{"v", 0, 2, 1})
	if err != nil {
		t.Fatal(err)
	}
	if erasure.ShardChecksum(got) == h.Checksum {
		t.Fatal("tampered payload still matches its checksum")
	}
	f, _ = os.OpenFile(filepath.Join(dir, storeFileName), os.O_RDWR, 0)
	f.WriteAt([]byte("X"), loc.Offset+30) // header JSON byte
	f.Close()
	if _, _, err := s.Read(loc.Offset, Expect{"v", 0, 2, 1}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("tampered header: %v", err)
	}
	s.Close()
	s2, err := OpenStore(dir, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if sp := s2.Space(); sp.Unreadable != 1 || sp.Shards != 0 {
		t.Fatalf("tampered header after reopen: %+v", sp)
	}
	if err := s2.FreeUnreadable(loc.Offset); err != nil {
		t.Fatal(err)
	}
}

func TestServerTLSTokenAndStale(t *testing.T) {
	s, err := OpenStore(t.TempDir(), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := NewCertificates([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(s, "secret")
	if err != nil {
		t.Fatal(err)
	}
	kp, err := tls.X509KeyPair(certs.CertPEM, certs.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: srv, TLSConfig: &tls.Config{Certificates: []tls.Certificate{kp}}}
	go hs.ServeTLS(ln, "", "")
	t.Cleanup(func() { hs.Close() })
	addr := ln.Addr().String()
	ctx := context.Background()

	c, err := NewClient(ClientConfig{CAPEM: certs.CAPEM, Token: "secret", Retries: 1})
	if err != nil {
		t.Fatal(err)
	}
	p := randBytes(3000, 9)
	loc, err := c.Put(ctx, addr, header("v", 1, 0, 2, p), p)
	if err != nil {
		t.Fatal(err)
	}
	h, got, err := c.Get(ctx, addr, loc.Offset, Expect{"v", 1, 0, 2})
	if err != nil || string(got) != string(p) || h.Generation != 2 {
		t.Fatalf("get: %v", err)
	}
	var stale *StaleError
	if _, err := c.Put(ctx, addr, header("v", 1, 0, 1, p), p); !errors.As(err, &stale) || stale.HeldGeneration != 2 {
		t.Fatalf("stale generation over the wire: %v", err)
	}
	bad, _ := NewClient(ClientConfig{CAPEM: certs.CAPEM, Token: "wrong", Retries: 1})
	if _, err := bad.Put(ctx, addr, header("v", 2, 0, 1, p), p); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("wrong token: %v", err)
	}
	if _, err := bad.Space(ctx, addr); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("wrong token on space: %v", err)
	}
	other, _ := NewCertificates([]string{"127.0.0.1"}, time.Hour)
	untrusting, _ := NewClient(ClientConfig{CAPEM: other.CAPEM, Token: "secret", Retries: 1, Backoff: time.Millisecond})
	if _, err := untrusting.Space(ctx, addr); err == nil {
		t.Fatal("a client with another CA trusted the server")
	}
	if err := c.Free(ctx, addr, loc.Offset, Expect{"v", 1, 0, 2}); err != nil {
		t.Fatal(err)
	}
	if sp, err := c.Space(ctx, addr); err != nil || sp.UsedBytes != 0 {
		t.Fatalf("space after free: %+v %v", sp, err)
	}
}
