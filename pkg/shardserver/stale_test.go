package shardserver

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/billyronks/couchestor/pkg/shardindex"
)

// serveTLS serves h over TLS with certs on a loopback port until the test ends.
func serveTLS(t *testing.T, h http.Handler, certs *Certificates) string {
	t.Helper()
	kp, err := tls.X509KeyPair(certs.CertPEM, certs.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: h, TLSConfig: &tls.Config{Certificates: []tls.Certificate{kp}}}
	go hs.ServeTLS(ln, "", "")
	t.Cleanup(func() { hs.Close() })
	return ln.Addr().String()
}

// A write the stripe index refuses as stale, whose held generation the
// store then cannot read (the newer entry was freed in between, and the
// store holds no generation of the slot past the request), is a StaleError
// that says the held generation is unknown, in the store and across the
// wire. Before, it carried HeldGeneration -1, which a writer read as
// "generation -1 held" and retried at generation 0 or 1.
func TestStaleWriteWithAnUnknownHeldGenerationSaysSo(t *testing.T) {
	s := openStore(t, t.TempDir())
	defer s.Close()
	defer func() { staleHook = nil }()
	p := randBytes(1000, 1)
	newer, err := indexRecord(uidHeader(7, 2, 6, p), 123)
	if err != nil {
		t.Fatal(err)
	}
	// indexNewer puts generation 6 in the index alone and arranges its
	// deletion after the index refuses a write and before the store reads
	// the held generation.
	indexNewer := func() {
		if err := s.index.Put([]shardindex.Record{newer}); err != nil {
			t.Fatal(err)
		}
		staleHook = func() {
			staleHook = nil
			if err := s.index.Delete([]shardindex.Record{newer}); err != nil {
				t.Error(err)
			}
		}
	}
	check := func(what string, err error) {
		t.Helper()
		var stale *StaleError
		if !errors.As(err, &stale) || !errors.Is(err, ErrStaleGeneration) {
			t.Fatalf("%s: %v, want a StaleError", what, err)
		}
		if g, ok := stale.Held(); ok || !stale.HeldUnknown || stale.Requested != 5 {
			t.Fatalf("%s: %+v: Held() = %d, %v; want the held generation unknown", what, stale, g, ok)
		}
		if msg := err.Error(); !strings.Contains(msg, "which one is unknown") || !strings.Contains(msg, "the index holds no entry") {
			t.Fatalf("%s: %q does not say the held generation is unknown and why", what, msg)
		}
	}
	indexNewer()
	_, err = s.Write(uidHeader(7, 2, 5, p), p)
	check("store", err)
	if sp := s.Space(); sp.Shards != 0 || sp.UsedBytes != 0 || s.Err() != nil {
		t.Fatalf("a refused write left %+v (store error %v)", sp, s.Err())
	}

	certs := testCerts(t)
	srv, err := NewServer(s, "secret")
	if err != nil {
		t.Fatal(err)
	}
	addr := serveTLS(t, srv, certs)
	c, err := NewClient(ClientConfig{CAPEM: certs.CAPEM, Token: "secret", Retries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	indexNewer()
	_, err = c.Put(context.Background(), addr, uidHeader(7, 2, 5, p), p)
	check("over the wire", err)

	// With the newer generation still indexed the store names it.
	if err := s.index.Put([]shardindex.Record{newer}); err != nil {
		t.Fatal(err)
	}
	var stale *StaleError
	if _, err := c.Put(context.Background(), addr, uidHeader(7, 2, 5, p), p); !errors.As(err, &stale) {
		t.Fatalf("over an indexed generation 6: %v", err)
	} else if g, ok := stale.Held(); !ok || g != 6 || stale.HeldUnknown {
		t.Fatalf("over an indexed generation 6: %+v, Held() = %d, %v", stale, g, ok)
	}
}

// A 409 of a server that predates HeldUnknown carries HeldGeneration -1
// for an unknown held generation: Held reads it as unknown, not as -1.
func TestStaleErrorOfAnOlderServerWithHeldMinusOneIsUnknown(t *testing.T) {
	se := &StaleError{}
	if err := json.Unmarshal([]byte(`{"Key":{"Volume":"v","StripeID":7,"ShardIndex":2},"Requested":5,"HeldGeneration":-1}`), se); err != nil {
		t.Fatal(err)
	}
	if g, ok := se.Held(); ok {
		t.Fatalf("HeldGeneration -1 read as held generation %d", g)
	}
	if !strings.Contains(se.Error(), "unknown") {
		t.Fatalf("%q does not say the held generation is unknown", se.Error())
	}
}
