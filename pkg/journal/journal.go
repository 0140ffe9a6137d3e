package journal

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/btree"
)

var (
	// ErrJournalFull is matched (errors.Is) when an Append cannot fit: the
	// record alone is larger than journalSizeBytes, or the caller's context
	// ended while Append waited for destaging to free space.
	ErrJournalFull = errors.New("journal: full")
	// ErrNoQuorum is matched when fewer than a write quorum of stores
	// answered: Open then fails, and a trim is not done (the destager
	// retries). An Append never fails with it: it waits for a quorum.
	ErrNoQuorum = errors.New("journal: no write quorum")
	// ErrClosed is returned by calls on a closed journal.
	ErrClosed = errors.New("journal: closed")
)

// Options configure a Journal from ErasureCodingPolicy.spec.journalConfig.
type Options struct {
	// SizeBytes is journalSizeBytes: a hard bound on the bytes of records
	// (headers included) not yet destaged.
	SizeBytes int64
	// MaxBatchBytes bounds one group commit (one write+fsync per store);
	// 0 means 8 MiB.
	MaxBatchBytes int64
	// MaxHeldBytes bounds the undestaged write data the journal also keeps
	// in RAM, so that reads (Lookup) and destaging do not read the stores
	// back; records beyond it are read from a store. 0 means
	// min(SizeBytes, 256 MiB); negative holds nothing.
	MaxHeldBytes int64
	// MaxLagBytes bounds the acknowledged records queued for one replica
	// that is slower than the quorum (a straggler): past it the replica is
	// taken out of sync and caught up from another replica instead. 0 means
	// 4 × MaxBatchBytes.
	MaxLagBytes int64
	// RetryInterval is the first wait before a replica that is out of sync
	// is tried again (doubling up to 2 s). 0 means 250 ms.
	RetryInterval time.Duration
	// Logf, when set, is told when a replica leaves or rejoins the quorum set.
	Logf func(format string, args ...any)
}

// Extent is data for the LBA range [LBA, LBA+len(Data)/512).
type Extent struct {
	LBA  uint64
	Data []byte
}

// Journal is the write journal of one volume, replicated to every store it
// was opened with. A write is acknowledged when it is durable (fsynced) on a
// write quorum: a majority, len(stores)/2+1, so that any later Open, which
// also needs a majority, sees every acknowledged write. Appends are
// group-committed: concurrent Appends share one write and fsync per store.
//
// Replicas heal (replicas.go): each store has a worker that appends the
// batches in order; a batch is acknowledged as soon as a quorum made it
// durable, while a slower replica keeps appending in the background. A
// replica that fails, or falls more than MaxLagBytes behind, leaves the
// quorum set; its worker catches it up under the current epoch (copying the
// records it misses from an in-sync replica) and re-admits it. A batch that
// lacks a quorum waits for one (back-pressure) instead of failing.
type Journal struct {
	reps   []*replica
	quorum int
	epoch  uint64
	opts   Options
	preLog []seqRun // the records of earlier epochs this writer adopted on Open

	trimMu sync.RWMutex // Lookup reads records; trim must not drop them underneath

	mu         sync.Mutex
	used       int64 // bytes of live records plus reservations of in-flight appends
	lastSeq    uint64
	trimmed    uint64
	live       []*liveRec // durable, untrimmed write records, by seq
	index      lbaIndex   // newest live record per LBA
	held       int64      // bytes of record data held in RAM (reserved by Append)
	liveBytes  int64
	spaceFreed chan struct{}
	nextSeq    uint64 // the seq the next batch starts at
	inflight   *batch // the batch being committed, until a quorum has it
	waits      uint64 // batches that waited for a quorum
	lostSince  time.Time
	closing    bool          // Close began: no new trims
	trimGoal   uint64        // the highest trim asked for; workers trim their stores to it
	changed    chan struct{} // closed (and replaced) when a replica trimmed or left the quorum set

	reqs    chan *appendReq
	wake    chan struct{} // pokes the destager
	waiting atomic.Int32  // Appends blocked on space
	done    chan struct{}
	stopped chan struct{}
	// fenced is closed when a newer writer is seen (supersede); fencedErr says how.
	fenced    chan struct{}
	fencedErr error
	fenceOnce sync.Once
	closeMu   sync.Once

	ctx     context.Context // the replica workers' and background trims' calls; ends on Close
	cancel  context.CancelFunc
	workers sync.WaitGroup // replica workers
}

type appendReq struct {
	rec  Record
	size int64
	held bool // rec.Data is the journal's own copy, counted in held
	done chan error
}

// Open recovers the journal from its stores and makes it writable: it needs
// a majority of the stores to answer, adopts the newest log among them (the
// one whose last record has the highest writer epoch, then sequence number),
// catches lagging or divergent replicas up to it, drops the tail no quorum
// could have acknowledged, and starts a new writer epoch. Stores that fail
// are caught up and re-admitted in the background once they answer.
func Open(ctx context.Context, stores []Store, opts Options) (*Journal, error) {
	if len(stores) == 0 {
		return nil, fmt.Errorf("journal: replicationFactor must be > 0, got 0 stores")
	}
	if opts.SizeBytes <= recordOverhad {
		return nil, fmt.Errorf("journal: journalSizeBytes %d is too small", opts.SizeBytes)
	}
	if opts.MaxBatchBytes <= 0 {
		opts.MaxBatchBytes = 8 << 20
	}
	if opts.MaxHeldBytes == 0 {
		opts.MaxHeldBytes = min(opts.SizeBytes, 256<<20)
	}
	if opts.MaxLagBytes <= 0 {
		opts.MaxLagBytes = 4 * opts.MaxBatchBytes
	}
	if opts.RetryInterval <= 0 {
		opts.RetryInterval = 250 * time.Millisecond
	}
	j := &Journal{
		quorum: len(stores)/2 + 1, opts: opts,
		spaceFreed: make(chan struct{}), changed: make(chan struct{}), reqs: make(chan *appendReq, 1024), wake: make(chan struct{}, 1),
		done: make(chan struct{}), stopped: make(chan struct{}), fenced: make(chan struct{}), index: newLBAIndex(),
	}
	for i, s := range stores {
		j.reps = append(j.reps, &replica{i: i, store: s, wake: make(chan struct{}, 1)})
	}
	ok, err := j.recover(ctx, stores)
	if err != nil {
		return nil, err
	}
	j.ctx, j.cancel = context.WithCancel(context.Background())
	for i, r := range j.reps {
		r.admitted, r.durable, r.trimTo, r.next = ok[i], j.lastSeq, j.trimmed, j.lastSeq+1
		if !ok[i] {
			r.lastErr = errors.New("did not answer on open")
		}
		j.workers.Add(1)
		go j.runReplica(r)
	}
	go j.commitLoop()
	return j, nil
}

func count(ok []bool) int {
	n := 0
	for _, h := range ok {
		if h {
			n++
		}
	}
	return n
}

func (j *Journal) needQuorum(ok []bool, step string) error {
	if n := count(ok); n < j.quorum {
		return fmt.Errorf("%w: %s: %d of %d stores answered, need %d", ErrNoQuorum, step, n, len(ok), j.quorum)
	}
	return nil
}

type seqEpoch struct{ seq, epoch uint64 }

// recover is Open's work on the stores; it reports which of them took part.
func (j *Journal) recover(ctx context.Context, stores []Store) ([]bool, error) {
	ok := make([]bool, len(stores))
	infos := make([]StoreInfo, len(stores))
	infoErrs := make([]error, len(stores))
	for i, s := range stores {
		info, err := s.Info(ctx)
		infos[i], ok[i], infoErrs[i] = info, err == nil, err
	}
	if err := j.needQuorum(ok, "open"); err != nil {
		return nil, err
	}
	// Records up to the highest trim point were destaged: trim everywhere.
	var trimmed, maxEpoch uint64
	for i, info := range infos {
		if ok[i] {
			trimmed = max(trimmed, info.TrimmedThrough)
			maxEpoch = max(maxEpoch, info.Epoch)
		}
	}
	for i, s := range stores {
		if ok[i] && infos[i].TrimmedThrough < trimmed {
			if err := s.Trim(ctx, trimmed); err != nil {
				ok[i] = false
				continue
			}
			if infos[i], _ = s.Info(ctx); infos[i].LastSeq < trimmed {
				infos[i].LastSeq, infos[i].LastEpoch = trimmed, 0
			}
		}
	}
	// A new epoch, recorded on a majority before anything is written, is
	// higher than that of any earlier writer (majorities intersect).
	j.epoch = maxEpoch + 1
	for i, s := range stores {
		if ok[i] && s.SetEpoch(ctx, j.epoch) != nil {
			ok[i] = false
		}
	}
	if err := j.needQuorum(ok, "record epoch"); err != nil {
		return nil, err
	}
	var auth int
	var authLog []seqEpoch
	var live []*liveRec
	var liveBytes int64
	for {
		auth = -1
		for i, info := range infos {
			if !ok[i] {
				continue
			}
			if auth < 0 || info.LastEpoch > infos[auth].LastEpoch || info.LastEpoch == infos[auth].LastEpoch && info.LastSeq > infos[auth].LastSeq {
				auth = i
			}
		}
		authLog, live, liveBytes = nil, nil, 0
		err := stores[auth].Scan(ctx, trimmed, func(r Record) error {
			authLog = append(authLog, seqEpoch{r.Seq, r.Epoch})
			liveBytes += r.encodedSize()
			if r.Kind == KindWrite {
				lr := &liveRec{seq: r.Seq, lba: r.LBA, nlba: uint64(len(r.Data) / LBASize), size: r.encodedSize()}
				if j.tryHold(int64(len(r.Data))) {
					lr.data = append([]byte(nil), r.Data...)
				}
				live = append(live, lr)
			}
			return nil
		})
		if err == nil {
			break
		}
		if !errors.Is(err, ErrDamaged) {
			return nil, fmt.Errorf("journal: replay store %d: %w", auth, err)
		}
		// The adopted replica turned out damaged: as if it had not
		// answered (it is repaired below); the next best one is adopted.
		for _, lr := range live {
			if lr.data != nil {
				j.mu.Lock()
				j.held -= int64(len(lr.data))
				j.mu.Unlock()
			}
		}
		ok[auth], infoErrs[auth] = false, err
		if err := j.needQuorum(ok, "replay"); err != nil {
			return nil, fmt.Errorf("%w (store %d: %w)", err, auth, infoErrs[auth])
		}
	}
	j.preLog = runsOf(authLog)
	// Catch every other replica up: keep the prefix it shares with the
	// adopted log, drop the rest, copy the adopted records after it.
	for i, s := range stores {
		if i == auth || !ok[i] {
			continue
		}
		if err := j.catchUp(ctx, s, stores[auth], trimmed, authLog); err != nil {
			ok[i] = false
		}
	}
	// A replica damaged in the middle of its log was skipped above; it is
	// repaired now: reset to the trim point, then caught up like a new one.
	for i, s := range stores {
		if !ok[i] && errors.Is(infoErrs[i], ErrDamaged) && j.repair(ctx, s, stores[auth], trimmed, authLog) == nil {
			ok[i] = true
		}
	}
	if err := j.needQuorum(ok, "catch up replicas"); err != nil {
		return nil, err
	}
	j.trimmed = trimmed
	j.lastSeq = infos[auth].LastSeq
	j.live, j.liveBytes, j.used = live, liveBytes, liveBytes
	for _, lr := range live {
		j.index.insert(lr)
	}
	// The epoch marker makes this writer's log the newest from now on, so a
	// stale unacknowledged tail elsewhere can never be adopted over it.
	marker := Record{Seq: j.lastSeq + 1, Epoch: j.epoch, Kind: KindEpoch}
	errs := make([]error, len(stores))
	var wg sync.WaitGroup
	for i, s := range stores {
		if ok[i] {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = s.Append(ctx, []Record{marker})
			}()
		}
	}
	wg.Wait()
	var failures []error
	for i, err := range errs {
		if err != nil {
			ok[i] = false
			failures = append(failures, fmt.Errorf("store %d: %w", i, err))
		}
	}
	if err := j.needQuorum(ok, "write the epoch marker"); err != nil {
		return nil, fmt.Errorf("%w: %w", err, errors.Join(failures...))
	}
	j.lastSeq, j.nextSeq = marker.Seq, marker.Seq+1
	j.liveBytes += marker.encodedSize()
	j.used += marker.encodedSize()
	return ok, nil
}

func (j *Journal) catchUp(ctx context.Context, s, auth Store, trimmed uint64, authLog []seqEpoch) error {
	common := trimmed
	idx := 0
	err := s.Scan(ctx, trimmed, func(r Record) error {
		if idx < len(authLog) && authLog[idx] == (seqEpoch{r.Seq, r.Epoch}) {
			common = r.Seq
			idx++
			return nil
		}
		return errStopScan
	})
	if err != nil && !errors.Is(err, errStopScan) {
		return err
	}
	if err := s.TruncateAfter(ctx, common); err != nil {
		return err
	}
	_, err = j.copyRecords(ctx, auth, s, common, ^uint64(0))
	return err
}

// copyRecords appends to dst the records of src after seq `after` and below
// `until`, in batches of MaxBatchBytes, and returns the last seq appended
// (after when none was).
func (j *Journal) copyRecords(ctx context.Context, src, dst Store, after, until uint64) (uint64, error) {
	last := after
	var batch []Record
	var batchBytes int64
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		if err := dst.Append(ctx, batch); err != nil {
			return err
		}
		last = batch[len(batch)-1].Seq
		batch, batchBytes = batch[:0], 0
		return nil
	}
	err := src.Scan(ctx, after, func(r Record) error {
		if r.Seq >= until {
			return errStopScan
		}
		r.Data = append([]byte(nil), r.Data...)
		batch = append(batch, r)
		batchBytes += r.encodedSize()
		if batchBytes >= j.opts.MaxBatchBytes {
			return flush()
		}
		return nil
	})
	if err != nil && !errors.Is(err, errStopScan) {
		return last, err
	}
	return last, flush()
}

var errStopScan = errors.New("stop scan")

// repair resets a damaged replica to the trim point, records the current
// epoch on it (unless it already has it) and catches it up from auth.
func (j *Journal) repair(ctx context.Context, s, auth Store, trimmed uint64, authLog []seqEpoch) error {
	if err := s.Reset(ctx, trimmed); err != nil {
		return err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return err
	}
	if info.Epoch < j.epoch {
		if err := s.SetEpoch(ctx, j.epoch); err != nil {
			return err
		}
	}
	return j.catchUp(ctx, s, auth, trimmed, authLog)
}

// Append journals data (a non-empty multiple of 512 bytes) for the LBAs
// starting at lba and returns its sequence number once it is durable on a
// write quorum. data must not be modified until Append returns.
//
// Back-pressure (the documented choice): when the journal holds
// journalSizeBytes of undestaged records, Append blocks until destaging
// frees space, and gives up with an error matching both ErrJournalFull and
// ctx.Err() when ctx ends. Likewise, while fewer than a quorum of replicas
// are in sync, Append waits until enough of them are caught up again. A
// record larger than the whole journal fails at once with ErrJournalFull.
// If ctx ends after the record was handed to the committer, Append returns
// ctx.Err() and the write may or may not be durable.
func (j *Journal) Append(ctx context.Context, lba uint64, data []byte) (uint64, error) {
	if len(data) == 0 || len(data)%LBASize != 0 {
		return 0, fmt.Errorf("journal: write of %d bytes at LBA %d is not a non-empty multiple of %d", len(data), lba, LBASize)
	}
	req := &appendReq{rec: Record{Kind: KindWrite, LBA: lba, Data: data}, done: make(chan error, 1)}
	req.size = req.rec.encodedSize()
	if req.size > j.opts.SizeBytes {
		return 0, fmt.Errorf("%w: a %d-byte write needs %d bytes, journalSizeBytes is %d", ErrJournalFull, len(data), req.size, j.opts.SizeBytes)
	}
	if err := j.superseded(); err != nil {
		return 0, err
	}
	if err := j.reserve(ctx, req.size); err != nil {
		return 0, err
	}
	if j.tryHold(int64(len(data))) {
		// The copy is what the stores encode and what Lookup and the
		// destager read, so the caller's buffer is free once Append returns.
		req.rec.Data, req.held = append([]byte(nil), data...), true
	}
	select {
	case j.reqs <- req:
	case <-j.done:
		j.release(req)
		return 0, ErrClosed
	case <-ctx.Done():
		j.release(req)
		return 0, ctx.Err()
	}
	select {
	case err := <-req.done:
		if err != nil {
			return 0, err
		}
		return req.rec.Seq, nil
	case <-j.stopped:
		select {
		case err := <-req.done:
			if err != nil {
				return 0, err
			}
			return req.rec.Seq, nil
		default:
			return 0, ErrClosed
		}
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

func (j *Journal) reserve(ctx context.Context, size int64) error {
	for {
		j.mu.Lock()
		if j.used+size <= j.opts.SizeBytes {
			j.used += size
			j.mu.Unlock()
			return nil
		}
		freed := j.spaceFreed
		j.mu.Unlock()
		j.waiting.Add(1)
		j.poke()
		select {
		case <-freed:
			j.waiting.Add(-1)
		case <-j.done:
			j.waiting.Add(-1)
			return ErrClosed
		case <-j.fenced:
			j.waiting.Add(-1)
			return j.superseded()
		case <-ctx.Done():
			j.waiting.Add(-1)
			return fmt.Errorf("%w: waited for destaging to free %d bytes: %w", ErrJournalFull, size, ctx.Err())
		}
	}
}

// release gives back what a request that was never committed reserved.
func (j *Journal) release(req *appendReq) {
	j.mu.Lock()
	j.used -= req.size
	if req.held {
		j.held -= int64(len(req.rec.Data))
	}
	j.freedLocked()
	j.mu.Unlock()
}

// tryHold reserves n bytes of the RAM budget for a record's data.
func (j *Journal) tryHold(n int64) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.held+n > j.opts.MaxHeldBytes {
		return false
	}
	j.held += n
	return true
}

func (j *Journal) freedLocked() {
	close(j.spaceFreed)
	j.spaceFreed = make(chan struct{})
}

func (j *Journal) poke() {
	select {
	case j.wake <- struct{}{}:
	default:
	}
}

func (j *Journal) commitLoop() {
	defer close(j.stopped)
	for {
		var batch []*appendReq
		select {
		case r := <-j.reqs:
			batch = append(batch, r)
		case <-j.done:
			return
		}
		bytes := batch[0].size
	drain:
		for bytes < j.opts.MaxBatchBytes {
			select {
			case r := <-j.reqs:
				batch = append(batch, r)
				bytes += r.size
			default:
				break drain
			}
		}
		j.commit(batch)
	}
}

// commit hands one group commit to the replicas in sync and waits until a
// quorum made it durable (however long that takes: back-pressure), or the
// journal closes.
func (j *Journal) commit(reqs []*appendReq) {
	b := &batch{recs: make([]Record, len(reqs)), acked: make([]bool, len(j.reps)), quorum: make(chan struct{})}
	for i, r := range reqs {
		b.recs[i] = r.rec
		if !r.held {
			// A straggler may still send the record after Append returned
			// and the caller reused its buffer.
			b.recs[i].Data = append([]byte(nil), r.rec.Data...)
		}
		b.bytes += r.size
	}
	j.mu.Lock()
	for i, r := range reqs {
		r.rec.Seq, r.rec.Epoch = j.nextSeq, j.epoch
		b.recs[i].Seq, b.recs[i].Epoch = j.nextSeq, j.epoch
		j.nextSeq++
	}
	b.first, b.last = b.recs[0].Seq, b.recs[len(b.recs)-1].Seq
	j.inflight = b
	for _, rp := range j.reps {
		if rp.admitted {
			j.enqueueLocked(rp, b)
		}
	}
	j.noteQuorumLocked()
	j.mu.Unlock()

	var err error
	select {
	case <-b.quorum:
	case <-j.done:
		select {
		case <-b.quorum:
		default:
			err = ErrClosed
		}
	case <-j.fenced:
		select {
		case <-b.quorum:
		default:
			err = j.superseded()
		}
	}
	j.mu.Lock()
	j.inflight, j.lostSince = nil, time.Time{}
	if err != nil {
		for _, r := range reqs {
			j.used -= r.size
			if r.held {
				j.held -= int64(len(r.rec.Data))
			}
		}
		j.freedLocked()
	} else {
		for _, r := range reqs {
			lr := &liveRec{seq: r.rec.Seq, lba: r.rec.LBA, nlba: uint64(len(r.rec.Data) / LBASize), size: r.size}
			if r.held {
				lr.data = r.rec.Data
			}
			j.live = append(j.live, lr)
			j.index.insert(lr)
			j.liveBytes += r.size
		}
		j.lastSeq = b.last
	}
	j.mu.Unlock()
	for _, r := range reqs {
		r.done <- err
	}
	j.poke()
}

// superseded is the error of a journal a newer writer owns, nil otherwise.
func (j *Journal) superseded() error {
	select {
	case <-j.fenced:
		j.mu.Lock()
		defer j.mu.Unlock()
		return j.fencedErr
	default:
		return nil
	}
}

// Fill reports the bytes of undestaged records (plus in-flight appends) and journalSizeBytes.
func (j *Journal) Fill() (used, size int64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.used, j.opts.SizeBytes
}

// Epoch is this writer's epoch: one above every epoch the stores had seen
// when Open recovered them. It is fixed for the journal's life.
func (j *Journal) Epoch() uint64 { return j.epoch }

// LastSeq is the sequence number of the newest durable record.
func (j *Journal) LastSeq() uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.lastSeq
}

// Lookup returns the newest journaled data inside [startLBA, endLBA) as
// non-overlapping extents sorted by LBA; LBAs not covered are not in the
// journal and must be read from the stripes. Reading the journal first and
// then the stripes is safe against a concurrent destage: a record is trimmed
// only after its stripe holds it. Extent data may be shared with the
// journal: callers must not modify it.
func (j *Journal) Lookup(ctx context.Context, startLBA, endLBA uint64) ([]Extent, error) {
	if endLBA <= startLBA {
		return nil, nil
	}
	j.trimMu.RLock()
	defer j.trimMu.RUnlock()
	j.mu.Lock()
	var hits []span
	j.index.overlapping(startLBA, endLBA, func(s span) bool { hits = append(hits, s); return true })
	j.mu.Unlock()
	if len(hits) == 0 {
		return nil, nil
	}
	out := make([]Extent, 0, len(hits))
	var merged []bool             // out[i].Data is a private copy
	var fetched map[uint64][]byte // records read from a store, once each
	for _, s := range hits {
		data := s.rec.data
		if data == nil {
			if data = fetched[s.rec.seq]; data == nil {
				rec, err := j.read(ctx, s.rec.seq)
				if err != nil {
					return nil, err
				}
				if fetched == nil {
					fetched = map[uint64][]byte{}
				}
				data = rec.Data
				fetched[s.rec.seq] = data
			}
		}
		a, b := max(s.start, startLBA), min(s.end, endLBA)
		from, to := (a-s.rec.lba)*LBASize, (b-s.rec.lba)*LBASize
		if n := len(out); n > 0 && out[n-1].LBA+uint64(len(out[n-1].Data)/LBASize) == a {
			// Contiguous with the previous span (another record): one extent,
			// as callers expect maximal runs. Copy on the first merge only.
			prev := &out[n-1]
			if !merged[n-1] {
				prev.Data = append(make([]byte, 0, (endLBA-prev.LBA)*LBASize), prev.Data...)
				merged[n-1] = true
			}
			prev.Data = append(prev.Data, data[from:to]...)
			continue
		}
		out = append(out, Extent{LBA: a, Data: data[from:to:to]})
		merged = append(merged, false)
	}
	return out, nil
}

// snapshot returns the newest durable seq and the write records up to it.
func (j *Journal) snapshot() (uint64, []*liveRec) {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.lastSeq, append([]*liveRec(nil), j.live...)
}

// liveRec is a durable, untrimmed write record as the journal tracks it.
type liveRec struct {
	seq, lba, nlba uint64
	size           int64  // encoded bytes (what it costs of journalSizeBytes)
	data           []byte // a copy held in RAM (Options.MaxHeldBytes), or nil: read it from a store
}

// span says that LBAs [start, end) are newest in rec.
type span struct {
	start, end uint64
	rec        *liveRec
}

// lbaIndex maps every LBA the journal holds to the newest live record that
// wrote it, as non-overlapping spans ordered by start LBA. Insert, remove and
// lookup cost O(log n + spans touched) instead of a scan of every record.
type lbaIndex struct{ t *btree.BTreeG[span] }

func newLBAIndex() lbaIndex {
	return lbaIndex{btree.NewG(32, func(a, b span) bool { return a.start < b.start })}
}

// overlapping calls fn for every span that overlaps [a, b), in LBA order.
func (x lbaIndex) overlapping(a, b uint64, fn func(span) bool) {
	if a >= b {
		return
	}
	more := true
	x.t.DescendLessOrEqual(span{start: a}, func(s span) bool {
		if s.end > a {
			more = fn(s)
		}
		return false // only the one span that may start before a and reach into it
	})
	if !more {
		return
	}
	x.t.AscendRange(span{start: a + 1}, span{start: b}, fn)
}

// insert makes rec the newest data for its LBAs (rec must be newer than
// every record already indexed over them).
func (x lbaIndex) insert(rec *liveRec) {
	a, b := rec.lba, rec.lba+rec.nlba
	var hit []span
	x.overlapping(a, b, func(s span) bool { hit = append(hit, s); return true })
	for _, s := range hit {
		x.t.Delete(s)
		if s.start < a {
			x.t.ReplaceOrInsert(span{s.start, a, s.rec})
		}
		if s.end > b {
			x.t.ReplaceOrInsert(span{b, s.end, s.rec})
		}
	}
	x.t.ReplaceOrInsert(span{a, b, rec})
}

// remove drops what is left of rec (it was trimmed; anything newer stays).
func (x lbaIndex) remove(rec *liveRec) {
	var hit []span
	x.overlapping(rec.lba, rec.lba+rec.nlba, func(s span) bool {
		if s.rec == rec {
			hit = append(hit, s)
		}
		return true
	})
	for _, s := range hit {
		x.t.Delete(s)
	}
}
