package shardserver

// Journal replicas on a shard server (issue 11, write path). Each volume's
// replica is a journal.FileStore in <data-dir>/journals/<volume>/, and the
// endpoints map 1:1 to journal.Store:
//
//	GET    /v1/journals                              → []JournalUsage (bytes on disk per volume)
//	GET    /v1/journals/{volume}                     → journal.StoreInfo (JSON; zeros when absent)
//	GET    /v1/journals/{volume}/records?after=N     → stream: encoded records with Seq > N, then an end frame
//	GET    /v1/journals/{volume}/records/{seq}       → one encoded record (404: not held)
//	POST   /v1/journals/{volume}/records             body = encoded records; idempotent by seq
//	POST   /v1/journals/{volume}/truncate?after=N
//	POST   /v1/journals/{volume}/trim?through=N
//	POST   /v1/journals/{volume}/reset?through=N
//	POST   /v1/journals/{volume}/epoch?epoch=N       header X-Journal-Writer = the caller's nonce
//	DELETE /v1/journals/{volume}                     removes the replica (the ECVolume is gone)
//
// Appends, truncates, trims and resets carry &writer=E, the epoch the caller
// recorded with SetEpoch: a replica refuses (409) a mutation whose E is below
// its recorded epoch, so a writer another one superseded can no longer trim
// or drop records it did not destage (issue 17 item 1). A mutation without
// it (a client before any SetEpoch: Open's trim to the highest trim point) is
// not fenced.
//
// Records travel in the journal's own encoding (journal.AppendEncoded), so a
// record damaged on the wire fails its checksum exactly like a torn one on
// disk. Every mutation is fsynced by the FileStore before the reply.
//
// Space: the journal lives outside the shard allocator (its own files next
// to shards.dat), so Space() keeps describing shard extents only; the
// journal's bytes are reported by GET /v1/journals. A journal is bounded by
// its writer (journalSizeBytes, plus dead bytes until compaction, at most
// about twice that), so --capacity-bytes must leave that much room on the
// data directory's filesystem for every volume journaled here.

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/billyronks/couchestor/pkg/journal"
)

const (
	// journalsDirName is the subdirectory of the data directory holding one
	// directory per journaled volume.
	journalsDirName = "journals"
	// HeaderJournalWriter carries the nonce that makes a retried SetEpoch
	// recognisable as the same call.
	HeaderJournalWriter = "X-Journal-Writer"
	// maxJournalAppendBytes bounds one append request body: the journal
	// group-commits up to 8 MiB per batch, and one NBD write is at most 32 MiB.
	maxJournalAppendBytes = 128 << 20
	// maxJournalRecordData bounds one record's data on the wire.
	maxJournalRecordData = maxJournalAppendBytes
	// journalEndMagic starts the frame that ends a scan stream: a stream cut
	// short (server crash, aborted handler) lacks it and the client retries.
	journalEndMagic = 0x444e454a // "JEND"
	journalEndSize  = 16         // magic(4) pad(4) count(8)
)

var (
	// ErrBadJournalRequest: the request is invalid (volume name, parameters
	// or a record that does not verify). HTTP 400.
	ErrBadJournalRequest = errors.New("invalid journal request")
	// ErrJournalConflict: an append carries a sequence number the replica
	// already holds with different contents, or an epoch that is not above
	// the recorded one. HTTP 409.
	ErrJournalConflict = errors.New("journal replica conflict")
)

// dns1123Subdomain is the rule Kubernetes applies to an ECVolume's name;
// it also keeps the name safe as a single path element (no "/", no "..").
var dns1123Subdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)

// ValidateJournalVolume checks that volume is a DNS-1123 subdomain (an
// ECVolume name): lower-case alphanumerics, '-' and '.', at most 253 characters.
func ValidateJournalVolume(volume string) error {
	if len(volume) == 0 || len(volume) > 253 || !dns1123Subdomain.MatchString(volume) {
		return fmt.Errorf("%w: volume %q must be a DNS-1123 subdomain (an ECVolume name: lower-case alphanumerics, '-' and '.', starting and ending alphanumeric, at most 253 characters)", ErrBadJournalRequest, volume)
	}
	return nil
}

// JournalUsage is one journal replica held by a shard server.
type JournalUsage struct {
	Volume string `json:"volume"`
	Bytes  int64  `json:"bytes"`
}

// journals holds the open replicas of a server, opened on first use.
type journals struct {
	dir string

	mu   sync.Mutex
	open map[string]*journalReplica
}

type journalReplica struct {
	// mu serialises mutations (an append's idempotency check and the append
	// itself must be atomic) and keeps reads off a log being compacted.
	mu     sync.RWMutex
	store  *journal.FileStore // nil once deleted
	writer string             // nonce of the SetEpoch call that set the current epoch (memory only)
}

func newJournals(dataDir string) *journals {
	return &journals{dir: filepath.Join(dataDir, journalsDirName), open: map[string]*journalReplica{}}
}

func (js *journals) path(volume string) string { return filepath.Join(js.dir, volume) }

// get returns the replica of volume; create=false returns nil for a volume
// that has no replica here (reads of an absent journal see an empty one).
func (js *journals) get(volume string, create bool) (*journalReplica, error) {
	js.mu.Lock()
	defer js.mu.Unlock()
	if r, ok := js.open[volume]; ok {
		return r, nil
	}
	p := js.path(volume)
	if !create {
		if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
	}
	s, err := journal.OpenFileStore(p)
	if err != nil {
		return nil, err
	}
	if err := s.Damaged(); err != nil {
		log.Printf("shard-server: %v", err)
	}
	r := &journalReplica{store: s}
	js.open[volume] = r
	return r, nil
}

func (js *journals) remove(volume string) error {
	js.mu.Lock()
	defer js.mu.Unlock()
	if r, ok := js.open[volume]; ok {
		r.mu.Lock()
		err := r.store.Close()
		r.store = nil
		r.mu.Unlock()
		delete(js.open, volume)
		if err != nil {
			return fmt.Errorf("close journal of %s: %w", volume, err)
		}
	}
	if err := os.RemoveAll(js.path(volume)); err != nil {
		return fmt.Errorf("remove journal of %s: %w", volume, err)
	}
	return nil
}

// close closes every open replica (their directories are locked while open).
func (js *journals) close() error {
	js.mu.Lock()
	defer js.mu.Unlock()
	var errs []error
	for v, r := range js.open {
		r.mu.Lock()
		errs = append(errs, r.store.Close())
		r.store = nil
		r.mu.Unlock()
		delete(js.open, v)
	}
	return errors.Join(errs...)
}

func (js *journals) usage() ([]JournalUsage, error) {
	ents, err := os.ReadDir(js.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return []JournalUsage{}, nil
	}
	if err != nil {
		return nil, err
	}
	out := []JournalUsage{}
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		u := JournalUsage{Volume: e.Name()}
		files, _ := os.ReadDir(filepath.Join(js.dir, e.Name()))
		for _, f := range files {
			if fi, err := f.Info(); err == nil {
				u.Bytes += fi.Size()
			}
		}
		out = append(out, u)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Volume < out[j].Volume })
	return out, nil
}

func (s *Server) registerJournalRoutes() {
	s.journals = newJournals(s.store.dir)
	s.mux.HandleFunc("GET /v1/journals", s.auth(s.journalList))
	s.mux.HandleFunc("GET /v1/journals/{volume}", s.auth(s.journalInfo))
	s.mux.HandleFunc("GET /v1/journals/{volume}/records", s.auth(s.journalScan))
	s.mux.HandleFunc("GET /v1/journals/{volume}/records/{seq}", s.auth(s.journalRead))
	s.mux.HandleFunc("POST /v1/journals/{volume}/records", s.auth(s.journalAppend))
	s.mux.HandleFunc("POST /v1/journals/{volume}/truncate", s.auth(s.journalTruncate))
	s.mux.HandleFunc("POST /v1/journals/{volume}/trim", s.auth(s.journalTrim))
	s.mux.HandleFunc("POST /v1/journals/{volume}/reset", s.auth(s.journalReset))
	s.mux.HandleFunc("POST /v1/journals/{volume}/epoch", s.auth(s.journalSetEpoch))
	s.mux.HandleFunc("DELETE /v1/journals/{volume}", s.auth(s.journalDelete))
}

func writeJournalErr(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, ErrBadJournalRequest), errors.Is(err, journal.ErrCorruptRecord):
		http.Error(w, err.Error(), http.StatusBadRequest)
	case errors.Is(err, ErrJournalConflict):
		http.Error(w, err.Error(), http.StatusConflict)
	case errors.Is(err, errTooLarge):
		http.Error(w, err.Error(), http.StatusRequestEntityTooLarge)
	case errors.Is(err, journal.ErrNotFound):
		http.Error(w, err.Error(), http.StatusNotFound)
	case errors.Is(err, journal.ErrDamaged):
		http.Error(w, err.Error(), http.StatusUnprocessableEntity)
	default:
		http.Error(w, err.Error(), http.StatusInternalServerError)
	}
}

// replica resolves the request's volume; create says whether a missing
// replica is created (mutations) or reported as nil (reads).
func (s *Server) replica(r *http.Request, create bool) (string, *journalReplica, error) {
	volume := r.PathValue("volume")
	if err := ValidateJournalVolume(volume); err != nil {
		return volume, nil, err
	}
	rep, err := s.journals.get(volume, create)
	return volume, rep, err
}

// MaxJournalNumber bounds every sequence number, epoch and trim point a
// request carries: nothing legitimate comes near it, and values above it
// would wrap around (seq+1, epoch+1) into 0.
const MaxJournalNumber = math.MaxInt64

func uintParam(r *http.Request, name string) (uint64, error) {
	return parseJournalNumber("query parameter "+name, r.URL.Query().Get(name))
}

func parseJournalNumber(what, v string) (uint64, error) {
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: %s=%q must be an unsigned integer", ErrBadJournalRequest, what, v)
	}
	if n > MaxJournalNumber {
		return 0, fmt.Errorf("%w: %s=%d exceeds %d (2^63-1): refused so that nothing wraps around", ErrBadJournalRequest, what, n, uint64(MaxJournalNumber))
	}
	return n, nil
}

// writerParam is the optional ?writer= epoch of a mutation (0: absent).
func writerParam(r *http.Request) (uint64, error) {
	if !r.URL.Query().Has("writer") {
		return 0, nil
	}
	n, err := uintParam(r, "writer")
	if err == nil && n == 0 {
		err = fmt.Errorf("%w: query parameter writer=0 must be a positive writer epoch", ErrBadJournalRequest)
	}
	return n, err
}

// checkWriter refuses a mutation from a writer below the replica's epoch.
func checkWriter(r *http.Request, writer uint64, info journal.StoreInfo) error {
	if writer != 0 && writer < info.Epoch {
		return fmt.Errorf("%w: journal of %s: writer epoch %d is below the replica's epoch %d (a newer writer opened the journal; this one is fenced)",
			ErrJournalConflict, r.PathValue("volume"), writer, info.Epoch)
	}
	return nil
}

// withReplica runs fn on the volume's replica under its lock (write for
// mutations), retrying once if the replica was deleted in between.
func (s *Server) withReplica(r *http.Request, mutate bool, fn func(*journal.FileStore, *journalReplica) error) error {
	for attempt := 0; ; attempt++ {
		_, rep, err := s.replica(r, mutate)
		if err != nil {
			return err
		}
		if rep == nil {
			return fn(nil, nil)
		}
		ran, err := rep.run(mutate, fn)
		if ran || attempt > 0 {
			return err
		}
	}
}

// run calls fn under the replica's lock; ran is false when the replica was
// deleted before the lock was taken.
func (rep *journalReplica) run(mutate bool, fn func(*journal.FileStore, *journalReplica) error) (ran bool, err error) {
	if mutate {
		rep.mu.Lock()
		defer rep.mu.Unlock()
	} else {
		rep.mu.RLock()
		defer rep.mu.RUnlock()
	}
	if rep.store == nil {
		return false, nil
	}
	return true, fn(rep.store, rep)
}

func (s *Server) journalList(w http.ResponseWriter, _ *http.Request) {
	u, err := s.journals.usage()
	if err != nil {
		writeJournalErr(w, err)
		return
	}
	writeJSON(w, u)
}

func (s *Server) journalInfo(w http.ResponseWriter, r *http.Request) {
	var info journal.StoreInfo
	err := s.withReplica(r, false, func(st *journal.FileStore, _ *journalReplica) error {
		if st == nil {
			return nil
		}
		var err error
		info, err = st.Info(r.Context())
		return err
	})
	if err != nil {
		writeJournalErr(w, err)
		return
	}
	writeJSON(w, info)
}

// journalScan streams the records after ?after= and ends with an end frame
// carrying the record count. An error after the first byte aborts the
// stream, which the client sees as a cut-short body.
func (s *Server) journalScan(w http.ResponseWriter, r *http.Request) {
	after, err := uintParam(r, "after")
	if err != nil {
		writeJournalErr(w, err)
		return
	}
	var bw *bufio.Writer
	var count uint64
	var enc []byte
	started := false
	err = s.withReplica(r, false, func(st *journal.FileStore, _ *journalReplica) error {
		w.Header().Set("Content-Type", "application/octet-stream")
		bw = bufio.NewWriterSize(w, 256<<10)
		started = true
		if st == nil {
			return nil
		}
		rc := http.NewResponseController(w)
		return st.Scan(r.Context(), after, func(rec journal.Record) error {
			// A long scan keeps going while each record moves in time.
			_ = rc.SetWriteDeadline(time.Now().Add(s.limits.WriteTimeout))
			enc = journal.AppendEncoded(enc[:0], &rec)
			count++
			_, err := bw.Write(enc)
			return err
		})
	})
	if err != nil {
		if !started {
			writeJournalErr(w, err)
			return
		}
		panic(http.ErrAbortHandler)
	}
	end := binary.LittleEndian.AppendUint32(nil, journalEndMagic)
	end = binary.LittleEndian.AppendUint32(end, 0)
	end = binary.LittleEndian.AppendUint64(end, count)
	if _, err := bw.Write(end); err != nil {
		panic(http.ErrAbortHandler)
	}
	if err := bw.Flush(); err != nil {
		panic(http.ErrAbortHandler)
	}
}

func (s *Server) journalRead(w http.ResponseWriter, r *http.Request) {
	seq, err := parseJournalNumber("sequence number", r.PathValue("seq"))
	if err != nil {
		writeJournalErr(w, err)
		return
	}
	var enc []byte
	err = s.withReplica(r, false, func(st *journal.FileStore, _ *journalReplica) error {
		if st == nil {
			return fmt.Errorf("no journal of %s here: seq %d: %w", r.PathValue("volume"), seq, journal.ErrNotFound)
		}
		rec, err := st.Read(r.Context(), seq)
		if err != nil {
			return err
		}
		enc = journal.AppendEncoded(nil, &rec)
		return nil
	})
	if err != nil {
		writeJournalErr(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(len(enc)))
	_, _ = w.Write(enc)
}

// journalAppend appends the body's records. It is idempotent by sequence
// number: records the replica already holds with the same seq, epoch and
// checksum (a retry whose first reply was lost) are skipped, and records at
// or below the trim point count as held (they were acknowledged and
// destaged). Any other overlap is a 409 conflict.
func (s *Server) journalAppend(w http.ResponseWriter, r *http.Request) {
	if r.ContentLength > maxJournalAppendBytes {
		writeJournalErr(w, fmt.Errorf("%w: append body of %d bytes exceeds %d", ErrBadJournalRequest, r.ContentLength, maxJournalAppendBytes))
		return
	}
	// Room in the server's request memory before the body buffer exists;
	// a body of unknown length may use all the room an append may take.
	size := r.ContentLength
	if size < 0 {
		size = min(maxJournalAppendBytes, s.limits.RequestMemoryBytes)
	}
	release, err := s.hold(r.Context(), size, "journal append body")
	if err != nil {
		writeJournalErr(w, err)
		return
	}
	defer release()
	// One buffer for the whole body, records decoded in place: no copy or
	// allocation per record.
	body, err := readBody(http.MaxBytesReader(w, r.Body, size), r.ContentLength)
	if err != nil {
		writeJournalErr(w, fmt.Errorf("%w: read append body: %w", ErrBadJournalRequest, err))
		return
	}
	var recs []journal.Record
	var starts []int // where each record begins in body
	for off := 0; off < len(body); {
		rec, n, err := journal.DecodeRecord(body[off:])
		if err != nil {
			writeJournalErr(w, fmt.Errorf("%w: record %d of the append body (byte %d of %d): %w", ErrBadJournalRequest, len(recs), off, len(body), err))
			return
		}
		if rec.Seq > MaxJournalNumber || rec.Epoch > MaxJournalNumber {
			writeJournalErr(w, fmt.Errorf("%w: record %d has seq %d and epoch %d; both must be at most %d (2^63-1) so that nothing wraps around", ErrBadJournalRequest, len(recs), rec.Seq, rec.Epoch, uint64(MaxJournalNumber)))
			return
		}
		if len(recs) > 0 && rec.Seq <= recs[len(recs)-1].Seq {
			writeJournalErr(w, fmt.Errorf("%w: record %d has seq %d after seq %d; sequence numbers must increase", ErrBadJournalRequest, len(recs), rec.Seq, recs[len(recs)-1].Seq))
			return
		}
		recs = append(recs, rec)
		starts = append(starts, off)
		off += n
	}
	if len(recs) == 0 {
		writeJournalErr(w, fmt.Errorf("%w: an append needs at least one record", ErrBadJournalRequest))
		return
	}
	writer, err := writerParam(r)
	if err != nil {
		writeJournalErr(w, err)
		return
	}
	err = s.withReplica(r, true, func(st *journal.FileStore, _ *journalReplica) error {
		info, err := st.Info(r.Context())
		if err != nil {
			return err
		}
		if err := checkWriter(r, writer, info); err != nil {
			return err
		}
		i := 0
		for ; i < len(recs) && recs[i].Seq <= info.LastSeq; i++ {
			if recs[i].Seq <= info.TrimmedThrough {
				continue
			}
			held, err := st.Read(r.Context(), recs[i].Seq)
			if err != nil {
				return fmt.Errorf("%w: seq %d is at or below the last seq %d but not held: %w", ErrJournalConflict, recs[i].Seq, info.LastSeq, err)
			}
			if string(journal.AppendEncoded(nil, &held)) != string(journal.AppendEncoded(nil, &recs[i])) {
				return fmt.Errorf("%w: seq %d is already held with epoch %d, the append carries epoch %d or other bytes", ErrJournalConflict, recs[i].Seq, held.Epoch, recs[i].Epoch)
			}
		}
		if i == len(recs) {
			return nil
		}
		// The records were verified as they were decoded: store their bytes
		// as received rather than encoding them again.
		return st.AppendEncoded(r.Context(), recs[i:], body[starts[i]:])
	})
	if err != nil {
		writeJournalErr(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// readBody reads a request body whose length is usually known up front.
func readBody(r io.Reader, length int64) ([]byte, error) {
	if length < 0 {
		return io.ReadAll(r)
	}
	b := make([]byte, length)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	// The declared length must be the whole body.
	if n, _ := r.Read(make([]byte, 1)); n != 0 {
		return nil, fmt.Errorf("body longer than its Content-Length %d", length)
	}
	return b, nil
}

func (s *Server) journalMutation(w http.ResponseWriter, r *http.Request, param string, fn func(*journal.FileStore, uint64) error) {
	n, err := uintParam(r, param)
	if err != nil {
		writeJournalErr(w, err)
		return
	}
	writer, err := writerParam(r)
	if err != nil {
		writeJournalErr(w, err)
		return
	}
	if err := s.withReplica(r, true, func(st *journal.FileStore, _ *journalReplica) error {
		info, err := st.Info(r.Context())
		if err != nil {
			return err
		}
		if err := checkWriter(r, writer, info); err != nil {
			return err
		}
		return fn(st, n)
	}); err != nil {
		writeJournalErr(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) journalTruncate(w http.ResponseWriter, r *http.Request) {
	s.journalMutation(w, r, "after", func(st *journal.FileStore, n uint64) error { return st.TruncateAfter(r.Context(), n) })
}

func (s *Server) journalTrim(w http.ResponseWriter, r *http.Request) {
	s.journalMutation(w, r, "through", func(st *journal.FileStore, n uint64) error { return st.Trim(r.Context(), n) })
}

func (s *Server) journalReset(w http.ResponseWriter, r *http.Request) {
	s.journalMutation(w, r, "through", func(st *journal.FileStore, n uint64) error { return st.Reset(r.Context(), n) })
}

// journalSetEpoch records a writer's epoch. The replica refuses an epoch not
// above its own — that is what makes two writers racing for one epoch fail
// on the replica their majorities share — except for a retry of the very
// call that set it, recognised by the X-Journal-Writer nonce. The nonce is
// kept in memory only: after a server restart such a retry is refused,
// which is the safe answer.
func (s *Server) journalSetEpoch(w http.ResponseWriter, r *http.Request) {
	epoch, err := uintParam(r, "epoch")
	if err != nil {
		writeJournalErr(w, err)
		return
	}
	nonce := r.Header.Get(HeaderJournalWriter)
	err = s.withReplica(r, true, func(st *journal.FileStore, rep *journalReplica) error {
		info, err := st.Info(r.Context())
		if err != nil {
			return err
		}
		if epoch == info.Epoch && nonce != "" && nonce == rep.writer {
			return nil
		}
		if epoch <= info.Epoch {
			return fmt.Errorf("%w: epoch %d is not above the recorded epoch %d (another writer opened the journal)", ErrJournalConflict, epoch, info.Epoch)
		}
		if err := st.SetEpoch(r.Context(), epoch); err != nil {
			return err
		}
		rep.writer = nonce
		return nil
	})
	if err != nil {
		writeJournalErr(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) journalDelete(w http.ResponseWriter, r *http.Request) {
	volume := r.PathValue("volume")
	if err := ValidateJournalVolume(volume); err != nil {
		writeJournalErr(w, err)
		return
	}
	if err := s.journals.remove(volume); err != nil {
		writeJournalErr(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
