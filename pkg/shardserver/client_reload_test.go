package shardserver

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"
)

// TestClientReloadsRotatedCredentials rotates a server's CA, certificate and
// token: a client built with the old ones is refused, and after its
// ClientReloader read the new ones from the source it works, without a new
// Client. A source with a bad CA bundle keeps the working credentials.
func TestClientReloadsRotatedCredentials(t *testing.T) {
	s, err := OpenStore(t.TempDir(), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	oldCerts, err := NewCertificates([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	newCerts, err := NewCertificates([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(s, "old-token")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	serving := oldCerts
	getCert := func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		mu.Lock()
		defer mu.Unlock()
		kp, err := tls.X509KeyPair(serving.CertPEM, serving.KeyPEM)
		return &kp, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: srv, TLSConfig: &tls.Config{GetCertificate: getCert}}
	go hs.ServeTLS(ln, "", "")
	t.Cleanup(func() { hs.Close() })
	addr := ln.Addr().String()
	ctx := context.Background()

	c, err := NewClient(ClientConfig{CAPEM: oldCerts.CAPEM, Token: "old-token", Retries: 1, Backoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Space(ctx, addr); err != nil {
		t.Fatalf("before the rotation: %v", err)
	}
	source := ClientConfig{CAPEM: oldCerts.CAPEM, Token: "old-token"}
	var changes int
	var errs []error
	r := &ClientReloader{Client: c, Load: func(context.Context) (ClientConfig, error) { return source, nil },
		OnChange: func() { changes++ }, OnError: func(err error) { errs = append(errs, err) }}

	// The server rotates: new certificate from a new CA, new token only.
	mu.Lock()
	serving = newCerts
	mu.Unlock()
	if err := srv.SetTokens([]string{"new-token"}); err != nil {
		t.Fatal(err)
	}
	c.Close() // the next request opens a new connection (a server restart would close it too)
	if _, err := c.Space(ctx, addr); err == nil {
		t.Fatal("the old credentials still work after the rotation: the test rotates nothing")
	}

	// A half-written source is refused; the current credentials stay.
	source = ClientConfig{CAPEM: []byte("not PEM"), Token: "new-token"}
	if err := r.Reload(ctx); err == nil || len(errs) != 1 {
		t.Fatalf("reload of a bad CA bundle: %v (errors reported %d)", err, len(errs))
	}
	if c.token() != "old-token" {
		t.Fatalf("a refused reload changed the token to %q", c.token())
	}

	source = ClientConfig{CAPEM: newCerts.CAPEM, Token: "new-token"}
	if err := r.Reload(ctx); err != nil || changes != 1 {
		t.Fatalf("reload: %v (changes %d)", err, changes)
	}
	if _, err := c.Space(ctx, addr); err != nil {
		t.Fatalf("after the reload: %v", err)
	}
	if err := r.Reload(ctx); err != nil || changes != 1 {
		t.Fatalf("a reload of unchanged credentials: %v (changes %d, want still 1)", err, changes)
	}

	// The host name is still verified: a certificate of the new CA for
	// another address is refused.
	wrongHost, err := NewCertificates([]string{"127.0.0.2"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	serving = wrongHost
	mu.Unlock()
	if _, err := c.SetCredentials(wrongHost.CAPEM, "new-token"); err != nil {
		t.Fatal(err)
	}
	c.Close()
	var certErr *tls.CertificateVerificationError
	if _, err := c.Space(ctx, addr); !errors.As(err, &certErr) {
		t.Fatalf("a certificate for 127.0.0.2 served on 127.0.0.1: %v, want a verification error", err)
	}
}

// TestPokeReloadsInTheBackgroundAtMostOncePerInterval: Poke never blocks,
// starts at most one reload per Interval, and applies what it read.
func TestPokeReloadsInTheBackgroundAtMostOncePerInterval(t *testing.T) {
	a, err := NewCertificates([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewClient(ClientConfig{CAPEM: a.CAPEM, Token: "one"})
	if err != nil {
		t.Fatal(err)
	}
	loads := make(chan struct{}, 10)
	release := make(chan struct{})
	r := &ClientReloader{Client: c, Interval: time.Hour, Load: func(context.Context) (ClientConfig, error) {
		loads <- struct{}{}
		<-release // a slow API server: Poke must not wait for it
		return ClientConfig{CAPEM: a.CAPEM, Token: "two"}, nil
	}}
	ctx := context.Background()
	r.Poke(ctx, time.Minute)
	r.Poke(ctx, time.Minute)
	<-loads
	close(release)
	deadline := time.Now().Add(60 * time.Second)
	for c.token() != "two" {
		if time.Now().After(deadline) {
			t.Fatal("the poked reload was not applied within 60s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	r.Poke(ctx, time.Minute) // within the interval: no reload
	select {
	case <-loads:
		t.Fatal("a second reload started within the interval")
	default:
	}
}
