package shardserver

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"
)

// Limits bound what clients can make a shard server hold.
type Limits struct {
	// MaxConns caps the connections served at once. A connection past it
	// gets 503 with a message naming the limit on its first request (but
	// /healthz) and is closed; past twice the cap connections are closed at
	// once.
	MaxConns int
	// RequestMemoryBytes bounds the request bodies (shard and journal
	// uploads) and shard read buffers held at once: a request waits for
	// room before its buffer is allocated, one larger than the whole bound
	// is refused (413).
	RequestMemoryBytes int64
	// ReadTimeout bounds reading a request (HTTP/2: each stream's headers
	// and body); WriteTimeout bounds writing its response (a journal scan
	// extends it per record); IdleTimeout closes idle connections.
	ReadTimeout, WriteTimeout, IdleTimeout time.Duration
}

// Defaults of Limits (and of the shard-server flags).
const (
	DefaultMaxConns           = 256
	DefaultRequestMemoryBytes = 256 << 20
	DefaultReadTimeout        = 2 * time.Minute
	DefaultWriteTimeout       = 2 * time.Minute
	DefaultIdleTimeout        = 5 * time.Minute
)

// DefaultLimits are the limits of a Server that was not told otherwise.
func DefaultLimits() Limits {
	return Limits{MaxConns: DefaultMaxConns, RequestMemoryBytes: DefaultRequestMemoryBytes,
		ReadTimeout: DefaultReadTimeout, WriteTimeout: DefaultWriteTimeout, IdleTimeout: DefaultIdleTimeout}
}

func (l Limits) validate() error {
	switch {
	case l.MaxConns < 1:
		return fmt.Errorf("shard server: max connections %d must be at least 1", l.MaxConns)
	case l.RequestMemoryBytes < 1:
		return fmt.Errorf("shard server: request memory %d bytes must be positive", l.RequestMemoryBytes)
	case l.ReadTimeout <= 0 || l.WriteTimeout <= 0 || l.IdleTimeout <= 0:
		return fmt.Errorf("shard server: read, write and idle timeouts (%v, %v, %v) must be positive", l.ReadTimeout, l.WriteTimeout, l.IdleTimeout)
	}
	return nil
}

// CgroupMemoryLimit returns the memory limit of this process's cgroup (v2
// memory.max, else v1 memory.limit_in_bytes); ok is false when there is none.
func CgroupMemoryLimit() (limit int64, ok bool) {
	for _, p := range []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"} {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if err != nil || n <= 0 || n >= 1<<62 { // "max", or v1's "unlimited" near 2^63
			return 0, false
		}
		return n, true
	}
	return 0, false
}

// SetLimits replaces the server's limits; call it before serving.
func (s *Server) SetLimits(l Limits) error {
	if err := l.validate(); err != nil {
		return err
	}
	s.limits = l
	s.memory = semaphore.NewWeighted(l.RequestMemoryBytes)
	return nil
}

// errTooLarge is a request larger than the server's whole request memory.
var errTooLarge = errors.New("request too large for this server")

// hold reserves n bytes of request memory until release is called.
func (s *Server) hold(ctx context.Context, n int64, what string) (release func(), err error) {
	if n > s.limits.RequestMemoryBytes {
		return nil, fmt.Errorf("%w: %s of %d bytes exceeds the server's request memory of %d bytes (--max-request-memory-bytes)", errTooLarge, what, n, s.limits.RequestMemoryBytes)
	}
	if n <= 0 {
		return func() {}, nil
	}
	if err := s.memory.Acquire(ctx, n); err != nil {
		return nil, fmt.Errorf("waiting for %d bytes of request memory for %s: %w", n, what, err)
	}
	var once sync.Once
	return func() { once.Do(func() { s.memory.Release(n) }) }, nil
}

// HTTPServer returns the http.Server serving s with its limits: timeouts,
// and refusal of the connections LimitListener marked as over the cap.
func (s *Server) HTTPServer(tlsCfg *tls.Config) *http.Server {
	return &http.Server{
		Handler:           http.HandlerFunc(s.serveLimited),
		TLSConfig:         tlsCfg,
		ReadHeaderTimeout: min(10*time.Second, s.limits.ReadTimeout),
		ReadTimeout:       s.limits.ReadTimeout,
		WriteTimeout:      s.limits.WriteTimeout,
		IdleTimeout:       s.limits.IdleTimeout,
		HTTP2:             HTTP2Config(),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if tc, ok := c.(*tls.Conn); ok {
				c = tc.NetConn()
			}
			if lc, ok := c.(*limitedConn); ok && lc.over {
				ctx = context.WithValue(ctx, overCapKey{}, true)
			}
			return ctx
		},
	}
}

type overCapKey struct{}

func (s *Server) serveLimited(w http.ResponseWriter, r *http.Request) {
	// /healthz is answered on any connection: the kubelet's probe must not
	// restart a server only because it is busy.
	if over, _ := r.Context().Value(overCapKey{}).(bool); over && r.URL.Path != "/healthz" {
		// Connection: close makes HTTP/1 close and HTTP/2 send GOAWAY.
		w.Header().Set("Connection", "close")
		http.Error(w, fmt.Sprintf("shard server busy: the limit of %d connections (--max-connections) is reached; retry later", s.limits.MaxConns), http.StatusServiceUnavailable)
		return
	}
	s.ServeHTTP(w, r)
}

// LimitListener counts the connections accepted from ln against the
// server's MaxConns: those past it are marked for refusal (HTTPServer
// answers 503), those past twice it are closed without an answer.
func (s *Server) LimitListener(ln net.Listener) net.Listener {
	return &limitListener{Listener: ln, max: int64(s.limits.MaxConns)}
}

type limitListener struct {
	net.Listener
	max  int64
	open atomic.Int64
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		n := l.open.Add(1)
		if n > 2*l.max {
			l.open.Add(-1)
			_ = c.Close()
			continue
		}
		return &limitedConn{Conn: c, l: l, over: n > l.max}, nil
	}
}

type limitedConn struct {
	net.Conn
	l    *limitListener
	over bool
	once sync.Once
}

func (c *limitedConn) Close() error {
	c.once.Do(func() { c.l.open.Add(-1) })
	return c.Conn.Close()
}
