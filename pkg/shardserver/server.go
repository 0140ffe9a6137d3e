// Package shardserver owns one pool's shard storage and its network service:
// the on-disk store (a persisted allocator over one store file, every shard
// with a self-describing header, fsync before acknowledgement), the HTTPS
// (HTTP/2) server with bearer-token authentication, and the client writers,
// readers and the operator use. It knows nothing about ECStripe objects: the
// stripe layer (pkg/stripe) decides what to store where.
//
// API (all but /healthz need "Authorization: Bearer <token>"):
//
//	PUT    /v1/shards                 body = payload, header X-Shard-Header = base64(JSON ShardHeader) → Location
//	GET    /v1/shards/{offset}?volume=&stripe=&index=&generation=   → payload (X-Shard-Header = stored header)
//	DELETE /v1/shards/{offset}?volume=&stripe=&index=&generation=   frees it
//	DELETE /v1/extents/{offset}       frees an extent without a valid header
//	GET    /v1/shards?volume=         → []StoredShard
//	GET    /v1/space                  → Space
//	GET    /v1/groups/{group}/count   → GroupCount (stripe index, index.go)
//	GET    /v1/groups/{group}/entries?limit=&after=   → GroupPage, at most MaxGroupPageEntries
//	GET    /healthz                   → 200 when the store answers
//	…      /v1/journals/{volume}/…    journal replicas (journal_server.go)
//
// Status codes: 404 ErrNotFound, 409 ErrStaleGeneration (body: StaleError
// JSON; HeldUnknown when the held generation could not be read), 507 ErrNoSpace, 400 ErrBadShard and ErrBadIndexRequest, 401 bad
// token, 503 ErrNoIndex and a store that stopped acknowledging.
package shardserver

import (
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/semaphore"
)

// HeaderShard is the HTTP header carrying a base64 JSON ShardHeader.
const HeaderShard = "X-Shard-Header"

// maxShardBytes bounds one request body: a 64 MiB stripe with k=1.
const maxShardBytes = 64<<20 + 1

// Server serves one Store over HTTP.
type Server struct {
	store    *Store
	tokens   atomic.Pointer[[][]byte] // accepted "Bearer <token>" headers (SetTokens)
	mux      *http.ServeMux
	journals *journals
	limits   Limits
	memory   *semaphore.Weighted // request memory (limits.RequestMemoryBytes)
}

// NewServer returns the HTTP handler of a pool. token must not be empty.
func NewServer(store *Store, token string) (*Server, error) {
	s := &Server{store: store, mux: http.NewServeMux()}
	if err := s.SetTokens([]string{token}); err != nil {
		return nil, err
	}
	if err := s.SetLimits(DefaultLimits()); err != nil {
		return nil, err
	}
	s.mux.HandleFunc("PUT /v1/shards", s.auth(s.putShard))
	s.mux.HandleFunc("GET /v1/shards/{offset}", s.auth(s.getShard))
	s.mux.HandleFunc("DELETE /v1/shards/{offset}", s.auth(s.deleteShard))
	s.mux.HandleFunc("DELETE /v1/extents/{offset}", s.auth(s.deleteExtent))
	s.mux.HandleFunc("GET /v1/shards", s.auth(s.listShards))
	s.mux.HandleFunc("GET /v1/space", s.auth(s.space))
	s.mux.HandleFunc("GET /v1/groups/{group}/count", s.auth(s.groupCount))
	s.mux.HandleFunc("GET /v1/groups/{group}/entries", s.auth(s.groupEntries))
	s.mux.HandleFunc("GET /v1/stripes/{stripe}", s.auth(s.stripeShards))
	s.mux.HandleFunc("PUT /v1/fences/{volume}", s.auth(s.raiseFence))
	s.registerJournalRoutes()
	// /healthz is unauthenticated and cheap: it takes no store lock and
	// walks nothing, it only reports a store that stopped acknowledging.
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if err := s.store.Err(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, "ok\n")
	})
	return s, nil
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// Close closes the journal replicas the server opened (not the Store).
func (s *Server) Close() error { return s.journals.close() }

// SetTokens replaces the bearer tokens the server accepts; every request
// after it returns is judged against the new set (a rotation accepts the old
// and the new token side by side until clients have moved). The set must
// not be empty and no token may be empty.
func (s *Server) SetTokens(tokens []string) error {
	if len(tokens) == 0 {
		return errors.New("shard server: a bearer token is required")
	}
	want := make([][]byte, 0, len(tokens))
	for i, t := range tokens {
		if t == "" {
			return fmt.Errorf("shard server: bearer token %d is empty", i)
		}
		want = append(want, []byte("Bearer "+t))
	}
	s.tokens.Store(&want)
	return nil
}

func (s *Server) auth(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		got := []byte(r.Header.Get("Authorization"))
		ok := 0
		for _, want := range *s.tokens.Load() {
			ok |= subtle.ConstantTimeCompare(got, want)
		}
		if ok != 1 {
			http.Error(w, "missing or wrong bearer token", http.StatusUnauthorized)
			return
		}
		next(w, r)
	}
}

func writeErr(w http.ResponseWriter, err error) {
	var stale *StaleError
	switch {
	case errors.As(err, &stale):
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusConflict)
		_ = json.NewEncoder(w).Encode(stale)
	case errors.Is(err, ErrFenced):
		http.Error(w, err.Error(), http.StatusPreconditionFailed)
	case errors.Is(err, ErrNotFound):
		http.Error(w, err.Error(), http.StatusNotFound)
	case errors.Is(err, ErrNoSpace):
		http.Error(w, err.Error(), http.StatusInsufficientStorage)
	case errors.Is(err, ErrBadShard), errors.Is(err, ErrBadIndexRequest):
		http.Error(w, err.Error(), http.StatusBadRequest)
	case errors.Is(err, ErrNoIndex):
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
	case errors.Is(err, errTooLarge):
		http.Error(w, err.Error(), http.StatusRequestEntityTooLarge)
	default:
		http.Error(w, err.Error(), http.StatusInternalServerError)
	}
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func (s *Server) putShard(w http.ResponseWriter, r *http.Request) {
	h, err := decodeHeaderParam(r.Header.Get(HeaderShard))
	if err != nil {
		writeErr(w, err)
		return
	}
	if h.SizeBytes <= 0 || h.SizeBytes > maxShardBytes {
		writeErr(w, fmt.Errorf("%w: sizeBytes %d must be within [1, %d]", ErrBadShard, h.SizeBytes, maxShardBytes))
		return
	}
	release, err := s.hold(r.Context(), h.SizeBytes, "shard upload")
	if err != nil {
		writeErr(w, err)
		return
	}
	defer release()
	payload := make([]byte, h.SizeBytes)
	if _, err := io.ReadFull(r.Body, payload); err != nil {
		writeErr(w, fmt.Errorf("%w: read %d payload bytes: %v", ErrBadShard, h.SizeBytes, err))
		return
	}
	loc, err := s.store.Write(h, payload)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, loc)
}

func parseExpect(r *http.Request) (int64, Expect, error) {
	off, err := strconv.ParseInt(r.PathValue("offset"), 10, 64)
	if err != nil || off < 0 {
		return 0, Expect{}, fmt.Errorf("%w: offset %q must be a non-negative integer", ErrBadShard, r.PathValue("offset"))
	}
	q := r.URL.Query()
	x := Expect{Volume: q.Get("volume")}
	var e1, e2, e3 error
	x.StripeID, e1 = strconv.ParseInt(q.Get("stripe"), 10, 64)
	idx, e2 := strconv.Atoi(q.Get("index"))
	x.ShardIndex = idx
	x.Generation, e3 = strconv.ParseInt(q.Get("generation"), 10, 64)
	if x.Volume == "" || e1 != nil || e2 != nil || e3 != nil {
		return 0, Expect{}, fmt.Errorf("%w: volume, stripe, index and generation query parameters are required", ErrBadShard)
	}
	return off, x, nil
}

// readBuffers holds shard read buffers between requests.
var readBuffers sync.Pool

func (s *Server) getShard(w http.ResponseWriter, r *http.Request) {
	off, x, err := parseExpect(r)
	if err != nil {
		writeErr(w, err)
		return
	}
	release, err := s.hold(r.Context(), s.store.extentLength(off), "shard read")
	if err != nil {
		writeErr(w, err)
		return
	}
	defer release()
	// Shard reads reuse buffers: a fresh one per read made the server's
	// garbage collector run (and scan its extent map) every few reads.
	bp, _ := readBuffers.Get().(*[]byte)
	if bp == nil {
		bp = new([]byte)
	}
	h, payload, whole, err := s.store.ReadBuffered(off, x, *bp)
	defer func() { *bp = whole; readBuffers.Put(bp) }()
	if err != nil {
		writeErr(w, err)
		return
	}
	enc, err := encodeHeaderParam(h)
	if err != nil {
		writeErr(w, err)
		return
	}
	w.Header().Set(HeaderShard, enc)
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(len(payload)))
	_, _ = w.Write(payload)
}

func (s *Server) deleteShard(w http.ResponseWriter, r *http.Request) {
	off, x, err := parseExpect(r)
	if err != nil {
		writeErr(w, err)
		return
	}
	if err := s.store.Free(off, x); err != nil {
		writeErr(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) deleteExtent(w http.ResponseWriter, r *http.Request) {
	off, err := strconv.ParseInt(r.PathValue("offset"), 10, 64)
	if err != nil {
		writeErr(w, fmt.Errorf("%w: offset %q", ErrBadShard, r.PathValue("offset")))
		return
	}
	if err := s.store.FreeUnreadable(off); err != nil {
		writeErr(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) listShards(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, s.store.List(r.URL.Query().Get("volume")))
}

func (s *Server) space(w http.ResponseWriter, _ *http.Request) { writeJSON(w, s.store.Space()) }

func encodeHeaderParam(h *ShardHeader) (string, error) {
	js, err := json.Marshal(h)
	if err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(js), nil
}

func decodeHeaderParam(v string) (*ShardHeader, error) {
	if v == "" {
		return nil, fmt.Errorf("%w: the %s header is required", ErrBadShard, HeaderShard)
	}
	js, err := base64.RawURLEncoding.DecodeString(strings.TrimSpace(v))
	if err != nil {
		return nil, fmt.Errorf("%w: %s is not base64url: %v", ErrBadShard, HeaderShard, err)
	}
	h := &ShardHeader{}
	if err := json.Unmarshal(js, h); err != nil {
		return nil, fmt.Errorf("%w: %s is not a shard header: %v", ErrBadShard, HeaderShard, err)
	}
	return h, nil
}

// maxIndexQueryBytes bounds a stripe index request's query string.
const maxIndexQueryBytes = 256

func parseGroup(r *http.Request) (uint32, error) {
	v := r.PathValue("group")
	g, err := strconv.ParseUint(v, 10, 32)
	if err != nil || len(v) > 10 {
		return 0, fmt.Errorf("%w: group %q must be a placement group number within [0, %d] (%d: unknown group)", ErrBadIndexRequest, truncateParam(v), UnknownGroup, UnknownGroup)
	}
	return uint32(g), nil
}

func truncateParam(v string) string {
	if len(v) > 64 {
		return v[:64] + "…"
	}
	return v
}

// indexQuery parses the query of a stripe index request: at most
// maxIndexQueryBytes, only the allowed parameters, each at most once.
func indexQuery(r *http.Request, allowed ...string) (map[string]string, error) {
	if n := len(r.URL.RawQuery); n > maxIndexQueryBytes {
		return nil, fmt.Errorf("%w: a query of %d bytes, at most %d allowed", ErrBadIndexRequest, n, maxIndexQueryBytes)
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, fmt.Errorf("%w: query %q does not parse: %v", ErrBadIndexRequest, r.URL.RawQuery, err)
	}
	out := map[string]string{}
	for k, vs := range q {
		if !slices.Contains(allowed, k) {
			return nil, fmt.Errorf("%w: query parameter %q is not one of %s", ErrBadIndexRequest, truncateParam(k), strings.Join(allowed, ", "))
		}
		if len(vs) != 1 {
			return nil, fmt.Errorf("%w: query parameter %s given %d times, at most once allowed", ErrBadIndexRequest, k, len(vs))
		}
		out[k] = vs[0]
	}
	return out, nil
}

func (s *Server) groupCount(w http.ResponseWriter, r *http.Request) {
	g, err := parseGroup(r)
	if err == nil {
		_, err = indexQuery(r)
	}
	if err != nil {
		writeErr(w, err)
		return
	}
	n, err := s.store.CountGroup(g)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, GroupCount{Group: g, Entries: n})
}

func (s *Server) groupEntries(w http.ResponseWriter, r *http.Request) {
	g, err := parseGroup(r)
	var q map[string]string
	if err == nil {
		q, err = indexQuery(r, "limit", "after")
	}
	limit := MaxGroupPageEntries
	if v, ok := q["limit"]; ok && err == nil {
		n, perr := strconv.Atoi(v)
		if perr != nil || n < 1 || n > MaxGroupPageEntries {
			err = fmt.Errorf("%w: limit=%q must be an integer within [1, %d]", ErrBadIndexRequest, truncateParam(v), MaxGroupPageEntries)
		}
		limit = n
	}
	if err != nil {
		writeErr(w, err)
		return
	}
	p, err := s.store.ListGroup(g, q["after"], limit)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, p)
}
