package shardserver

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/billyronks/couchestor/pkg/retry"
)

// ClientConfig configures a Client.
type ClientConfig struct {
	// CAPEM is the PEM bundle that signs the shard servers' certificates.
	CAPEM []byte
	// Token is the bearer token of the shard servers.
	Token string
	// Timeout bounds one attempt of one request (default 30s).
	Timeout time.Duration
	// Retries is how many times a failed attempt is retried on a network
	// error or a 5xx answer (default 3; 4xx answers are final).
	Retries int
	// Backoff is the wait before the first retry, doubled each time, with
	// jitter (pkg/retry; default 100ms).
	Backoff time.Duration
}

// Client talks to any number of shard servers over one HTTP/2 transport.
type Client struct {
	http *http.Client
	cfg  ClientConfig // Timeout, Retries, Backoff; the credentials are in creds
	// creds are the CA bundle and token of every new TLS handshake and
	// request; SetCredentials swaps them (a rotation needs no restart).
	creds  atomic.Pointer[clientCreds]
	dialer *net.Dialer
}

type clientCreds struct {
	caPEM []byte
	pool  *x509.CertPool
	token string
}

func newClientCreds(caPEM []byte, token string) (*clientCreds, error) {
	if token == "" {
		return nil, errors.New("shard client: token must not be empty")
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("shard client: the CA bundle holds no PEM certificate")
	}
	return &clientCreds{caPEM: bytes.Clone(caPEM), pool: pool, token: token}, nil
}

// SetCredentials makes caPEM and token the credentials of every later TLS
// handshake and request; it reports whether they changed. Connections
// already open stay up (their server was verified when they were opened).
// Bad credentials are refused and the current ones kept.
func (c *Client) SetCredentials(caPEM []byte, token string) (bool, error) {
	cur := c.creds.Load()
	if cur != nil && cur.token == token && bytes.Equal(cur.caPEM, caPEM) {
		return false, nil
	}
	n, err := newClientCreds(caPEM, token)
	if err != nil {
		return false, err
	}
	c.creds.Store(n)
	return true, nil
}

func (c *Client) token() string { return c.creds.Load().token }

// dialTLS opens a connection and runs crypto/tls's own handshake and
// verification (chain and host name, IP addresses included) against the CA
// bundle of the moment.
func (c *Client) dialTLS(ctx context.Context, network, addr string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	raw, err := c.dialer.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(raw, &tls.Config{RootCAs: c.creds.Load().pool, ServerName: host, MinVersion: tls.VersionTLS12,
		NextProtos: []string{"h2", "http/1.1"}})
	hctx, cancel := context.WithTimeout(ctx, tlsHandshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		_ = raw.Close()
		return nil, err
	}
	return tc, nil
}

const tlsHandshakeTimeout = 5 * time.Second

// NewClient checks cfg and returns a client.
func NewClient(cfg ClientConfig) (*Client, error) {
	creds, err := newClientCreds(cfg.CAPEM, cfg.Token)
	if err != nil {
		return nil, err
	}
	cfg.CAPEM, cfg.Token = nil, ""
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.Retries < 0 {
		return nil, fmt.Errorf("shard client: retries %d must be >= 0", cfg.Retries)
	}
	if cfg.Retries == 0 {
		cfg.Retries = 3
	}
	if cfg.Backoff <= 0 {
		cfg.Backoff = 100 * time.Millisecond
	}
	c := &Client{cfg: cfg, dialer: &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}}
	c.creds.Store(creds)
	tr := &http.Transport{
		// Every connection is TLS; dialTLS verifies against the current bundle.
		DialTLSContext:      c.dialTLS,
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
		HTTP2:               HTTP2Config(),
	}
	c.http = &http.Client{Transport: tr}
	return c, nil
}

// HTTP2Config is the HTTP/2 tuning of shard clients and servers alike: they
// move shards of hundreds of KiB and journal records of up to 4 MiB, so
// frames of up to 1 MiB and flow-control windows near HTTP/2's limit in Go
// (4 MiB) instead of the defaults (16 KiB frames, 1 MiB server windows)
// spare most WINDOW_UPDATE round trips and per-frame work.
func HTTP2Config() *http.HTTP2Config {
	return &http.HTTP2Config{
		MaxReadFrameSize:              1 << 20,
		MaxReceiveBufferPerConnection: 4<<20 - 1,
		MaxReceiveBufferPerStream:     4<<20 - 1,
	}
}

// Close drops idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

// httpError is a non-2xx answer.
type httpError struct {
	code int
	body string
}

func (e *httpError) Error() string { return fmt.Sprintf("HTTP %d: %s", e.code, e.body) }

// do runs one request with retries; mk builds a fresh request body each attempt.
func (c *Client) do(ctx context.Context, method, addr, path string, q url.Values, hdr http.Header, body []byte) (*http.Response, []byte, error) {
	return c.doInto(ctx, method, addr, path, q, hdr, body, nil)
}

// doInto is do reading the answer into dst when it has room.
func (c *Client) doInto(ctx context.Context, method, addr, path string, q url.Values, hdr http.Header, body, dst []byte) (*http.Response, []byte, error) {
	u := url.URL{Scheme: "https", Host: addr, Path: path, RawQuery: q.Encode()}
	backoff := retry.Backoff(c.cfg.Backoff, 0)
	var last error
	for attempt := 0; attempt <= c.cfg.Retries; attempt++ {
		if attempt > 0 {
			if err := retry.Wait(ctx, &backoff); err != nil {
				return nil, nil, fmt.Errorf("%s %s: %w (last error: %v)", method, u.Redacted(), err, last)
			}
		}
		resp, data, err := c.once(ctx, method, u.String(), hdr, body, dst)
		if err == nil {
			if resp.StatusCode < 300 {
				return resp, data, nil
			}
			herr := &httpError{code: resp.StatusCode, body: string(bytes.TrimSpace(data))}
			if resp.StatusCode < 500 || resp.StatusCode == http.StatusInsufficientStorage || final5xx(herr) {
				return resp, data, mapStatus(herr, data)
			}
			last = herr
			continue
		}
		if ctx.Err() != nil {
			return nil, nil, fmt.Errorf("%s %s: %w", method, u.Redacted(), err)
		}
		last = err
	}
	return nil, nil, fmt.Errorf("%s %s: %d attempts failed: %w", method, u.Redacted(), c.cfg.Retries+1, last)
}

func (c *Client) once(ctx context.Context, method, u string, hdr http.Header, body, dst []byte) (*http.Response, []byte, error) {
	actx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(actx, method, u, rd)
	if err != nil {
		return nil, nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	req.Header.Set("Authorization", "Bearer "+c.token())
	if body != nil {
		req.ContentLength = int64(len(body))
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	var data []byte
	if n := resp.ContentLength; n > 0 && n <= maxAnswerPrealloc {
		// Shards come with their length: read them into one buffer of the
		// right size instead of growing one (and copying) as ReadAll does.
		if int64(cap(dst)) >= n {
			data = dst[:n]
		} else {
			data = make([]byte, n)
		}
		if _, err = io.ReadFull(resp.Body, data); err != nil {
			return nil, nil, fmt.Errorf("read answer: %w", err)
		}
	} else if data, err = io.ReadAll(resp.Body); err != nil {
		return nil, nil, fmt.Errorf("read answer: %w", err)
	}
	return resp, data, nil
}

// final5xx: a 5xx answer no retry can change. ErrNoIndex is how the server
// was started (a store opened WithoutIndex): retried, it was returned as
// "n attempts failed" and never mapped to ErrNoIndex.
func final5xx(herr *httpError) bool {
	return herr.code == http.StatusServiceUnavailable && strings.HasPrefix(herr.body, ErrNoIndex.Error())
}

// maxAnswerPrealloc bounds the buffer allocated up front from an answer's
// Content-Length (larger answers grow as they arrive).
const maxAnswerPrealloc = 64 << 20

// ErrUnauthorized is returned when a server refuses the token.
var ErrUnauthorized = errors.New("shard server refused the bearer token")

func mapStatus(herr *httpError, body []byte) error {
	switch herr.code {
	case http.StatusNotFound:
		return fmt.Errorf("%w (%v)", ErrNotFound, herr)
	case http.StatusConflict:
		se := &StaleError{}
		if json.Unmarshal(body, se) == nil {
			return se
		}
		return fmt.Errorf("%w (%v)", ErrStaleGeneration, herr)
	case http.StatusPreconditionFailed:
		return fmt.Errorf("%w (%v)", ErrFenced, herr)
	case http.StatusInsufficientStorage:
		return fmt.Errorf("%w (%v)", ErrNoSpace, herr)
	case http.StatusBadRequest:
		if strings.HasPrefix(herr.body, ErrBadIndexRequest.Error()) {
			return fmt.Errorf("%w (%v)", ErrBadIndexRequest, herr)
		}
		return fmt.Errorf("%w (%v)", ErrBadShard, herr)
	case http.StatusUnauthorized:
		return fmt.Errorf("%w (%v)", ErrUnauthorized, herr)
	case http.StatusServiceUnavailable:
		if strings.HasPrefix(herr.body, ErrNoIndex.Error()) {
			return fmt.Errorf("%w (%v)", ErrNoIndex, herr)
		}
	}
	return herr
}

// Put stores a shard on the server at addr ("host:port"). Retrying is safe:
// the server recognises an identical shard and returns its location.
func (c *Client) Put(ctx context.Context, addr string, h *ShardHeader, payload []byte) (Location, error) {
	enc, err := encodeHeaderParam(h)
	if err != nil {
		return Location{}, err
	}
	_, data, err := c.do(ctx, http.MethodPut, addr, "/v1/shards", nil, http.Header{HeaderShard: {enc}}, payload)
	if err != nil {
		return Location{}, fmt.Errorf("put shard %s/%d/%d gen %d on %s: %w", h.Volume, h.StripeID, h.ShardIndex, h.Generation, addr, err)
	}
	var loc Location
	if err := json.Unmarshal(data, &loc); err != nil {
		return Location{}, fmt.Errorf("put shard on %s: decode answer: %w", addr, err)
	}
	return loc, nil
}

func expectQuery(x Expect) url.Values {
	return url.Values{
		"volume":     {x.Volume},
		"stripe":     {strconv.FormatInt(x.StripeID, 10)},
		"index":      {strconv.Itoa(x.ShardIndex)},
		"generation": {strconv.FormatInt(x.Generation, 10)},
	}
}

// Get reads the shard x at offset from addr: the payload as stored (verify it
// against the recorded checksum) and the stored header.
func (c *Client) Get(ctx context.Context, addr string, offset int64, x Expect) (*ShardHeader, []byte, error) {
	return c.GetInto(ctx, addr, offset, x, nil)
}

// GetInto is Get reading the payload into buf when its capacity suffices
// (the payload then aliases buf).
func (c *Client) GetInto(ctx context.Context, addr string, offset int64, x Expect, buf []byte) (*ShardHeader, []byte, error) {
	resp, data, err := c.doInto(ctx, http.MethodGet, addr, "/v1/shards/"+strconv.FormatInt(offset, 10), expectQuery(x), nil, nil, buf)
	if err != nil {
		return nil, nil, fmt.Errorf("get shard %s/%d/%d at %d on %s: %w", x.Volume, x.StripeID, x.ShardIndex, offset, addr, err)
	}
	h, err := decodeHeaderParam(resp.Header.Get(HeaderShard))
	if err != nil {
		return nil, nil, fmt.Errorf("get shard on %s: %w", addr, err)
	}
	return h, data, nil
}

// Free releases shard x at offset on addr. ErrNotFound means it is not (or
// no longer) there.
func (c *Client) Free(ctx context.Context, addr string, offset int64, x Expect) error {
	_, _, err := c.do(ctx, http.MethodDelete, addr, "/v1/shards/"+strconv.FormatInt(offset, 10), expectQuery(x), nil, nil)
	if err != nil {
		return fmt.Errorf("free shard %s/%d/%d gen %d at %d on %s: %w", x.Volume, x.StripeID, x.ShardIndex, x.Generation, offset, addr, err)
	}
	return nil
}

// FreeExtent releases an extent that has no valid header.
func (c *Client) FreeExtent(ctx context.Context, addr string, offset int64) error {
	_, _, err := c.do(ctx, http.MethodDelete, addr, "/v1/extents/"+strconv.FormatInt(offset, 10), nil, nil, nil)
	if err != nil {
		return fmt.Errorf("free extent at %d on %s: %w", offset, addr, err)
	}
	return nil
}

// List returns the shards stored for volume ("" = all) and unreadable extents.
func (c *Client) List(ctx context.Context, addr, volume string) ([]StoredShard, error) {
	_, data, err := c.do(ctx, http.MethodGet, addr, "/v1/shards", url.Values{"volume": {volume}}, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("list shards of %q on %s: %w", volume, addr, err)
	}
	var out []StoredShard
	if err := json.Unmarshal(data, &out); err != nil {
		return nil, fmt.Errorf("list shards on %s: decode: %w", addr, err)
	}
	return out, nil
}

// Space returns the pool's capacity and use.
func (c *Client) Space(ctx context.Context, addr string) (Space, error) {
	_, data, err := c.do(ctx, http.MethodGet, addr, "/v1/space", nil, nil, nil)
	if err != nil {
		return Space{}, fmt.Errorf("space of %s: %w", addr, err)
	}
	var sp Space
	if err := json.Unmarshal(data, &sp); err != nil {
		return Space{}, fmt.Errorf("space of %s: decode: %w", addr, err)
	}
	return sp, nil
}

// CountGroup returns the number of stripe index entries (shards) of
// placement group g on addr.
func (c *Client) CountGroup(ctx context.Context, addr string, g uint32) (uint64, error) {
	_, data, err := c.do(ctx, http.MethodGet, addr, "/v1/groups/"+strconv.FormatUint(uint64(g), 10)+"/count", nil, nil, nil)
	if err != nil {
		return 0, fmt.Errorf("count group %d on %s: %w", g, addr, err)
	}
	var gc GroupCount
	if err := json.Unmarshal(data, &gc); err != nil {
		return 0, fmt.Errorf("count group %d on %s: decode: %w", g, addr, err)
	}
	return gc.Entries, nil
}

// ListGroup returns one page of the stripe index entries of placement group
// g on addr, after cursor ("" for the first page), at most limit (0: the
// server's maximum, MaxGroupPageEntries). Continue with the page's Next
// until it is empty.
func (c *Client) ListGroup(ctx context.Context, addr string, g uint32, cursor string, limit int) (GroupPage, error) {
	q := url.Values{}
	if cursor != "" {
		q.Set("after", cursor)
	}
	if limit != 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	_, data, err := c.do(ctx, http.MethodGet, addr, "/v1/groups/"+strconv.FormatUint(uint64(g), 10)+"/entries", q, nil, nil)
	if err != nil {
		return GroupPage{}, fmt.Errorf("list group %d on %s: %w", g, addr, err)
	}
	var p GroupPage
	if err := json.Unmarshal(data, &p); err != nil {
		return GroupPage{}, fmt.Errorf("list group %d on %s: decode: %w", g, addr, err)
	}
	return p, nil
}
