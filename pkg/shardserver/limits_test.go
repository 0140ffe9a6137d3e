package shardserver

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func limitedServer(t *testing.T, lim Limits) *Server {
	t.Helper()
	st, err := OpenStore(t.TempDir(), 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	srv, err := NewServer(st, "secret")
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.SetLimits(lim); err != nil {
		t.Fatal(err)
	}
	return srv
}

// serveAsync runs one request against the handler in the background.
func serveAsync(h http.Handler, r *http.Request) <-chan *httptest.ResponseRecorder {
	done := make(chan *httptest.ResponseRecorder, 1)
	go func() {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		done <- w
	}()
	return done
}

func within(t *testing.T, ch <-chan *httptest.ResponseRecorder, what string) *httptest.ResponseRecorder {
	t.Helper()
	select {
	case w := <-ch:
		return w
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: no answer within 10s", what)
		return nil
	}
}

// /healthz answers without a token and without the store lock (a walk of
// every extent under it stalled writers and the probe on big pools).
func TestHealthzTakesNoStoreLock(t *testing.T) {
	srv := limitedServer(t, DefaultLimits())
	srv.store.mu.Lock()
	w := within(t, serveAsync(srv, httptest.NewRequest("GET", "/healthz", nil)), "/healthz with the store lock held")
	srv.store.mu.Unlock()
	if w.Code != http.StatusOK {
		t.Fatalf("/healthz: %d %s", w.Code, w.Body)
	}
}

// countingBody records whether the handler read the body.
type countingBody struct {
	r    io.Reader
	read atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	b.read.Add(int64(n))
	return n, err
}

func putRequest(t *testing.T, payload []byte) (*http.Request, *countingBody) {
	t.Helper()
	enc, err := encodeHeaderParam(header("v", 1, 0, 1, payload))
	if err != nil {
		t.Fatal(err)
	}
	body := &countingBody{r: strings.NewReader(string(payload))}
	r := httptest.NewRequest("PUT", "/v1/shards", body)
	r.Header.Set("Authorization", "Bearer secret")
	r.Header.Set(HeaderShard, enc)
	return r, body
}

// Request bodies are bounded by the server's request memory: one larger than
// all of it is refused (413, naming the flag) before a byte is read, and one
// that does not fit now waits for room before its buffer exists.
func TestRequestMemoryBoundsBodies(t *testing.T) {
	lim := DefaultLimits()
	lim.RequestMemoryBytes = 1 << 20
	srv := limitedServer(t, lim)

	r, body := putRequest(t, randBytes(2<<20, 1))
	w := within(t, serveAsync(srv, r), "PUT of 2 MiB")
	if w.Code != http.StatusRequestEntityTooLarge || !strings.Contains(w.Body.String(), "--max-request-memory-bytes") || body.read.Load() != 0 {
		t.Fatalf("PUT of 2 MiB with 1 MiB of request memory: %d %q, %d body bytes read; want 413 naming the flag, nothing read", w.Code, w.Body, body.read.Load())
	}
	ja := httptest.NewRequest("POST", "/v1/journals/v/records", strings.NewReader(strings.Repeat("x", 2<<20)))
	ja.Header.Set("Authorization", "Bearer secret")
	if w := within(t, serveAsync(srv, ja), "journal append of 2 MiB"); w.Code != http.StatusRequestEntityTooLarge {
		t.Fatalf("journal append of 2 MiB: %d %q, want 413", w.Code, w.Body)
	}

	release, err := srv.hold(context.Background(), 1<<20, "test")
	if err != nil {
		t.Fatal(err)
	}
	r, body = putRequest(t, randBytes(4096, 2))
	done := serveAsync(srv, r)
	select {
	case w := <-done:
		t.Fatalf("PUT answered %d while the request memory was all held", w.Code)
	case <-time.After(200 * time.Millisecond):
	}
	if n := body.read.Load(); n != 0 {
		t.Fatalf("%d body bytes read before there was room for them", n)
	}
	release()
	if w := within(t, done, "PUT after room was made"); w.Code != http.StatusOK {
		t.Fatalf("PUT after release: %d %s", w.Code, w.Body)
	}
}

// startLimited serves srv over TLS with its limits and returns the address.
func startLimited(t *testing.T, srv *Server, certs *Certificates) string {
	t.Helper()
	kp, err := tls.X509KeyPair(certs.CertPEM, certs.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := srv.HTTPServer(&tls.Config{Certificates: []tls.Certificate{kp}})
	go hs.ServeTLS(srv.LimitListener(ln), "", "")
	t.Cleanup(func() { hs.Close() })
	return ln.Addr().String()
}

// The connection past MaxConns is answered 503 naming the limit; once a
// connection closes, requests are served again.
func TestConnectionCapRefusesClearly(t *testing.T) {
	certs := testCerts(t)
	lim := DefaultLimits()
	lim.MaxConns = 2
	addr := startLimited(t, limitedServer(t, lim), certs)
	var held []net.Conn
	for i := 0; i < 2; i++ {
		c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		held = append(held, c)
	}
	c, err := NewClient(ClientConfig{CAPEM: certs.CAPEM, Token: "secret", Retries: 0, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Space(context.Background(), addr)
	if err == nil || !strings.Contains(err.Error(), "503") || !strings.Contains(err.Error(), "limit of 2 connections") {
		t.Fatalf("request on the third connection: %v; want 503 naming the limit of 2", err)
	}
	// The kubelet's probe is answered even past the cap.
	probe := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	resp, err := probe.Get("https://" + addr + "/healthz")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("/healthz past the connection cap: %v %v", resp, err)
	}
	resp.Body.Close()
	probe.CloseIdleConnections()
	held[0].Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c.Close() // a fresh connection each attempt
		if _, err = c.Space(context.Background(), addr); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no request served after a connection closed: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A client that stops sending in the middle of a body, or sends nothing at
// all, is cut off after the read timeout.
func TestStalledClientsCutOff(t *testing.T) {
	certs := testCerts(t)
	lim := DefaultLimits()
	lim.ReadTimeout = 300 * time.Millisecond
	addr := startLimited(t, limitedServer(t, lim), certs)
	dial := func() *tls.Conn {
		c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		return c
	}
	silent := dial()
	if _, err := silent.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("a silent connection was not closed by the server: %v", err)
	}
	stalled := dial()
	enc, _ := encodeHeaderParam(header("v", 1, 0, 1, make([]byte, 4096)))
	fmt.Fprintf(stalled, "PUT /v1/shards HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer secret\r\n%s: %s\r\nContent-Length: 4096\r\n\r\n%s", HeaderShard, enc, strings.Repeat("x", 100))
	resp, err := http.ReadResponse(bufio.NewReader(stalled), nil)
	if err != nil {
		if isTimeout(err) {
			t.Fatal("a client stalled in its body was not cut off")
		}
		return // closed: cut off
	}
	if resp.StatusCode < 400 {
		t.Fatalf("stalled upload answered %d", resp.StatusCode)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
