package shardserver

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// A store that keeps no stripe index answers the group endpoints 503 with
// ErrNoIndex's text; the client returns ErrNoIndex for CountGroup and
// ListGroup, at once (it is how the server was started: retrying cannot
// change it). Another 503 is neither ErrNoIndex nor final: it is retried.
func TestClientMapsA503NoIndexToErrNoIndex(t *testing.T) {
	s, err := OpenStoreWith(t.TempDir(), 8<<20, StoreOptions{WithoutIndex: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	srv, err := NewServer(s, "secret")
	if err != nil {
		t.Fatal(err)
	}
	var requests atomic.Int32
	// Group 7 answers another 503, as a proxy or an overloaded server would.
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		if strings.HasPrefix(r.URL.Path, "/v1/groups/7/") {
			http.Error(w, "overloaded, try again later", http.StatusServiceUnavailable)
			return
		}
		srv.ServeHTTP(w, r)
	})
	certs := testCerts(t)
	addr := serveTLS(t, h, certs)
	const retries = 2
	c, err := NewClient(ClientConfig{CAPEM: certs.CAPEM, Token: "secret", Retries: retries, Backoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	requests.Store(0)
	if _, err := c.CountGroup(ctx, addr, 3); !errors.Is(err, ErrNoIndex) {
		t.Fatalf("CountGroup on a store without an index: %v, want ErrNoIndex", err)
	}
	if n := requests.Load(); n != 1 {
		t.Fatalf("CountGroup on a store without an index took %d requests, want 1", n)
	}
	requests.Store(0)
	if _, err := c.ListGroup(ctx, addr, 3, "", 10); !errors.Is(err, ErrNoIndex) {
		t.Fatalf("ListGroup on a store without an index: %v, want ErrNoIndex", err)
	}
	if n := requests.Load(); n != 1 {
		t.Fatalf("ListGroup on a store without an index took %d requests, want 1", n)
	}

	for name, call := range map[string]func() error{
		"CountGroup": func() error { _, err := c.CountGroup(ctx, addr, 7); return err },
		"ListGroup":  func() error { _, err := c.ListGroup(ctx, addr, 7, "", 10); return err },
	} {
		requests.Store(0)
		err := call()
		if err == nil || errors.Is(err, ErrNoIndex) || !strings.Contains(err.Error(), "HTTP 503: overloaded") {
			t.Fatalf("%s answered another 503: %v, want an HTTP 503 error that is not ErrNoIndex", name, err)
		}
		if n := requests.Load(); n != retries+1 {
			t.Fatalf("%s answered another 503 took %d requests, want %d (retried)", name, n, retries+1)
		}
	}
}
