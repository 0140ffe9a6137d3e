package shardserver

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/billyronks/couchestor/pkg/journal"
	"github.com/billyronks/couchestor/pkg/retry"
)

// JournalStore returns the replica of volume's journal on the shard server
// at addr as a journal.Store. Every call is retried on network errors and
// 5xx answers (with the client's backoff), which is safe because every call
// is idempotent on the server: Append by sequence number, SetEpoch by a
// per-call nonce, the others by nature; Scan resumes after the last record
// it delivered. Close releases nothing (the Client's connections are shared).
func (c *Client) JournalStore(addr, volume string) journal.Store {
	return &remoteJournal{c: c, addr: addr, volume: volume}
}

// DeleteJournal removes volume's journal replica from the shard server at
// addr (when the ECVolume is deleted). Deleting an absent replica succeeds.
func (c *Client) DeleteJournal(ctx context.Context, addr, volume string) error {
	if _, err := c.journalDo(ctx, http.MethodDelete, addr, journalPath(volume), nil, nil, nil); err != nil {
		return fmt.Errorf("delete journal of %s on %s: %w", volume, addr, err)
	}
	return nil
}

// JournalUsage lists the journal replicas on the shard server at addr.
func (c *Client) JournalUsage(ctx context.Context, addr string) ([]JournalUsage, error) {
	data, err := c.journalDo(ctx, http.MethodGet, addr, "/v1/journals", nil, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("list journals on %s: %w", addr, err)
	}
	var out []JournalUsage
	if err := json.Unmarshal(data, &out); err != nil {
		return nil, fmt.Errorf("list journals on %s: decode: %w", addr, err)
	}
	return out, nil
}

func journalPath(volume string, elems ...string) string {
	p := "/v1/journals/" + url.PathEscape(volume)
	for _, e := range elems {
		p += "/" + e
	}
	return p
}

// journalStatus maps a journal endpoint's non-2xx answer back to the error
// the server-side store returned, so errors.Is works across the wire.
func journalStatus(code int, body []byte) error {
	herr := &httpError{code: code, body: string(bytes.TrimSpace(body))}
	switch code {
	case http.StatusNotFound:
		return fmt.Errorf("%w (%v)", journal.ErrNotFound, herr)
	case http.StatusConflict:
		return fmt.Errorf("%w (%v)", ErrJournalConflict, herr)
	case http.StatusBadRequest:
		return fmt.Errorf("%w (%v)", ErrBadJournalRequest, herr)
	case http.StatusUnauthorized:
		return fmt.Errorf("%w (%v)", ErrUnauthorized, herr)
	case http.StatusUnprocessableEntity:
		return fmt.Errorf("%w (%v)", journal.ErrDamaged, herr)
	}
	return herr
}

// retryWait sleeps b's next step before a retry, or returns when ctx ends.
func retryWait(ctx context.Context, b *wait.Backoff, last error) error {
	if err := retry.Wait(ctx, b); err != nil {
		return fmt.Errorf("%w (last error: %v)", err, last)
	}
	return nil
}

// journalDo runs one journal request with retries (all journal calls are
// idempotent on the server) and returns the body of a 2xx answer.
func (c *Client) journalDo(ctx context.Context, method, addr, path string, q url.Values, hdr http.Header, body []byte) ([]byte, error) {
	u := url.URL{Scheme: "https", Host: addr, Path: path, RawQuery: q.Encode()}
	var last error
	backoff := retry.Backoff(c.cfg.Backoff, 0)
	for attempt := 0; attempt <= c.cfg.Retries; attempt++ {
		if attempt > 0 {
			if err := retryWait(ctx, &backoff, last); err != nil {
				return nil, fmt.Errorf("%s %s: %w", method, u.Redacted(), err)
			}
		}
		resp, data, err := c.once(ctx, method, u.String(), hdr, body, nil)
		if err == nil {
			if resp.StatusCode < 300 {
				return data, nil
			}
			jerr := journalStatus(resp.StatusCode, data)
			if resp.StatusCode < 500 {
				return nil, jerr
			}
			last = jerr
			continue
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%s %s: %w", method, u.Redacted(), err)
		}
		last = err
	}
	return nil, fmt.Errorf("%s %s: %d attempts failed: %w", method, u.Redacted(), c.cfg.Retries+1, last)
}

type remoteJournal struct {
	c            *Client
	addr, volume string
	// writer is the epoch this store set with SetEpoch (0 before): every
	// later mutation carries it so the replica refuses it once a newer
	// writer recorded a higher epoch.
	writer atomic.Uint64
}

// writerQuery adds the writer epoch to a mutation's query.
func (r *remoteJournal) writerQuery(q url.Values) url.Values {
	if e := r.writer.Load(); e != 0 {
		if q == nil {
			q = url.Values{}
		}
		q.Set("writer", strconv.FormatUint(e, 10))
	}
	return q
}

func (r *remoteJournal) String() string { return r.volume + "@" + r.addr }

func (r *remoteJournal) wrap(op string, err error) error {
	return fmt.Errorf("journal replica of %s on %s: %s: %w", r.volume, r.addr, op, err)
}

func (r *remoteJournal) Info(ctx context.Context) (journal.StoreInfo, error) {
	data, err := r.c.journalDo(ctx, http.MethodGet, r.addr, journalPath(r.volume), nil, nil, nil)
	if err != nil {
		return journal.StoreInfo{}, r.wrap("info", err)
	}
	var info journal.StoreInfo
	if err := json.Unmarshal(data, &info); err != nil {
		return journal.StoreInfo{}, r.wrap("info: decode", err)
	}
	return info, nil
}

// Scan streams the records after `after` and resumes after the last
// delivered record when the stream breaks. The attempt timeout applies to
// silence on the stream (no record for Timeout), not to the whole scan, and
// the time fn takes does not count against it.
func (r *remoteJournal) Scan(ctx context.Context, after uint64, fn func(rec journal.Record) error) error {
	var last error
	delivered := after
	backoff := retry.Backoff(r.c.cfg.Backoff, 0)
	for attempt := 0; attempt <= r.c.cfg.Retries; attempt++ {
		if attempt > 0 {
			if err := retryWait(ctx, &backoff, last); err != nil {
				return r.wrap(fmt.Sprintf("scan after %d", delivered), err)
			}
		}
		progressed := false
		err, final := r.scanOnce(ctx, &delivered, &progressed, fn)
		if err == nil {
			return nil
		}
		if final || ctx.Err() != nil {
			return r.wrap(fmt.Sprintf("scan after %d", delivered), err)
		}
		if progressed {
			attempt = 0 // a stream that moved forward earns fresh retries
			backoff = retry.Backoff(r.c.cfg.Backoff, 0)
		}
		last = err
	}
	return r.wrap(fmt.Sprintf("scan after %d", delivered), fmt.Errorf("%d attempts failed: %w", r.c.cfg.Retries+1, last))
}

// errFromFn marks an error returned by the caller's fn: never retried.
type errFromFn struct{ err error }

func (e errFromFn) Error() string { return e.err.Error() }
func (e errFromFn) Unwrap() error { return e.err }

func (r *remoteJournal) scanOnce(ctx context.Context, delivered *uint64, progressed *bool, fn func(journal.Record) error) (err error, final bool) {
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	idle := time.AfterFunc(r.c.cfg.Timeout, cancel)
	defer idle.Stop()
	u := url.URL{Scheme: "https", Host: r.addr, Path: journalPath(r.volume, "records"),
		RawQuery: url.Values{"after": {strconv.FormatUint(*delivered, 10)}}.Encode()}
	req, err := http.NewRequestWithContext(actx, http.MethodGet, u.String(), nil)
	if err != nil {
		return err, true
	}
	req.Header.Set("Authorization", "Bearer "+r.c.token())
	resp, err := r.c.http.Do(req)
	if err != nil {
		return err, false
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return journalStatus(resp.StatusCode, data), resp.StatusCode < 500
	}
	br := bufio.NewReaderSize(resp.Body, 256<<10)
	var buf []byte
	var count uint64
	for {
		idle.Reset(r.c.cfg.Timeout)
		head, err := br.Peek(4)
		if err != nil {
			return fmt.Errorf("stream cut short after %d records (no end frame): %w", count, err), false
		}
		if binary.LittleEndian.Uint32(head) == journalEndMagic {
			end := make([]byte, journalEndSize)
			if _, err := io.ReadFull(br, end); err != nil {
				return fmt.Errorf("end frame: %w", err), false
			}
			if n := binary.LittleEndian.Uint64(end[8:]); n != count {
				return fmt.Errorf("end frame counts %d records, received %d", n, count), false
			}
			return nil, false
		}
		rec, err := journal.ReadRecord(br, &buf, maxJournalRecordData)
		if err != nil {
			return fmt.Errorf("record %d of the stream: %w", count, err), false
		}
		if rec.Seq <= *delivered {
			return fmt.Errorf("stream sent seq %d after seq %d", rec.Seq, *delivered), true
		}
		count++
		idle.Stop()
		if err := fn(rec); err != nil {
			return errFromFn{err}, true
		}
		*delivered, *progressed = rec.Seq, true
	}
}

func (r *remoteJournal) Read(ctx context.Context, seq uint64) (journal.Record, error) {
	data, err := r.c.journalDo(ctx, http.MethodGet, r.addr, journalPath(r.volume, "records", strconv.FormatUint(seq, 10)), nil, nil, nil)
	if err != nil {
		return journal.Record{}, r.wrap(fmt.Sprintf("read seq %d", seq), err)
	}
	rec, n, err := journal.DecodeRecord(data)
	if err != nil || n != len(data) || rec.Seq != seq {
		return journal.Record{}, r.wrap(fmt.Sprintf("read seq %d", seq), fmt.Errorf("answer of %d bytes is not that record: %w", len(data), journal.ErrCorruptRecord))
	}
	return rec, nil
}

func (r *remoteJournal) Append(ctx context.Context, recs []journal.Record) error {
	if len(recs) == 0 {
		return nil
	}
	var size int64
	for i := range recs {
		size += journal.EncodedSize(&recs[i])
	}
	body := make([]byte, 0, size)
	for i := range recs {
		body = journal.AppendEncoded(body, &recs[i])
	}
	if _, err := r.c.journalDo(ctx, http.MethodPost, r.addr, journalPath(r.volume, "records"), r.writerQuery(nil), nil, body); err != nil {
		return r.wrap(fmt.Sprintf("append seq %d..%d", recs[0].Seq, recs[len(recs)-1].Seq), err)
	}
	return nil
}

func (r *remoteJournal) post(ctx context.Context, op, param string, n uint64, hdr http.Header) error {
	q := url.Values{param: {strconv.FormatUint(n, 10)}}
	if op != "epoch" {
		q = r.writerQuery(q)
	}
	if _, err := r.c.journalDo(ctx, http.MethodPost, r.addr, journalPath(r.volume, op), q, hdr, nil); err != nil {
		return r.wrap(fmt.Sprintf("%s %s=%d", op, param, n), err)
	}
	return nil
}

func (r *remoteJournal) TruncateAfter(ctx context.Context, seq uint64) error {
	return r.post(ctx, "truncate", "after", seq, nil)
}

func (r *remoteJournal) Trim(ctx context.Context, through uint64) error {
	return r.post(ctx, "trim", "through", through, nil)
}

func (r *remoteJournal) Reset(ctx context.Context, through uint64) error {
	return r.post(ctx, "reset", "through", through, nil)
}

// SetEpoch sends a fresh nonce with the call, the same on every retry, so
// the server can tell its own retry from a second writer with that epoch.
func (r *remoteJournal) SetEpoch(ctx context.Context, epoch uint64) error {
	var nonce [16]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return r.wrap("set epoch", err)
	}
	if err := r.post(ctx, "epoch", "epoch", epoch, http.Header{HeaderJournalWriter: {hex.EncodeToString(nonce[:])}}); err != nil {
		return err
	}
	r.writer.Store(epoch)
	return nil
}

func (r *remoteJournal) Close() error { return nil }

var _ journal.Store = (*remoteJournal)(nil)
