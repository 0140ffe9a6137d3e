package journal

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/google/btree"
)

var (
	// ErrJournalFull is matched (errors.Is) when an Append cannot fit: the
	// record alone is larger than journalSizeBytes, or the caller's context
	// ended while Append waited for destaging to free space.
	ErrJournalFull = errors.New("journal: full")
	// ErrNoQuorum is matched when fewer than a write quorum of stores took a
	// write. The journal then refuses further appends: reopen it.
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
type Journal struct {
	stores  []Store
	healthy []bool // guarded by mu; a failed store is left out until reopen
	quorum  int
	epoch   uint64
	opts    Options

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
	broken     error

	nextSeq uint64 // owned by the committer after Open
	reqs    chan *appendReq
	wake    chan struct{} // pokes the destager
	waiting atomic.Int32  // Appends blocked on space
	done    chan struct{}
	stopped chan struct{}
	closeMu sync.Once
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
// are left out until the next Open.
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
	j := &Journal{
		stores: stores, healthy: make([]bool, len(stores)), quorum: len(stores)/2 + 1, opts: opts,
		spaceFreed: make(chan struct{}), reqs: make(chan *appendReq, 1024), wake: make(chan struct{}, 1),
		done: make(chan struct{}), stopped: make(chan struct{}), index: newLBAIndex(),
	}
	if err := j.recover(ctx); err != nil {
		return nil, err
	}
	go j.commitLoop()
	return j, nil
}

func (j *Journal) healthyCount() int {
	n := 0
	for _, h := range j.healthy {
		if h {
			n++
		}
	}
	return n
}

func (j *Journal) needQuorum(step string) error {
	if n := j.healthyCount(); n < j.quorum {
		return fmt.Errorf("%w: %s: %d of %d stores answered, need %d", ErrNoQuorum, step, n, len(j.stores), j.quorum)
	}
	return nil
}

type seqEpoch struct{ seq, epoch uint64 }

func (j *Journal) recover(ctx context.Context) error {
	infos := make([]StoreInfo, len(j.stores))
	for i, s := range j.stores {
		info, err := s.Info(ctx)
		infos[i], j.healthy[i] = info, err == nil
	}
	if err := j.needQuorum("open"); err != nil {
		return err
	}
	// Records up to the highest trim point were destaged: trim everywhere.
	var trimmed, maxEpoch uint64
	for i, info := range infos {
		if j.healthy[i] {
			trimmed = max(trimmed, info.TrimmedThrough)
			maxEpoch = max(maxEpoch, info.Epoch)
		}
	}
	for i, s := range j.stores {
		if j.healthy[i] && infos[i].TrimmedThrough < trimmed {
			if err := s.Trim(ctx, trimmed); err != nil {
				j.healthy[i] = false
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
	for i, s := range j.stores {
		if j.healthy[i] && s.SetEpoch(ctx, j.epoch) != nil {
			j.healthy[i] = false
		}
	}
	if err := j.needQuorum("record epoch"); err != nil {
		return err
	}
	auth := -1
	for i, info := range infos {
		if !j.healthy[i] {
			continue
		}
		if auth < 0 || info.LastEpoch > infos[auth].LastEpoch || info.LastEpoch == infos[auth].LastEpoch && info.LastSeq > infos[auth].LastSeq {
			auth = i
		}
	}
	var authLog []seqEpoch
	var live []*liveRec
	var liveBytes int64
	err := j.stores[auth].Scan(ctx, trimmed, func(r Record) error {
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
	if err != nil {
		return fmt.Errorf("journal: replay store %d: %w", auth, err)
	}
	// Catch every other replica up: keep the prefix it shares with the
	// adopted log, drop the rest, copy the adopted records after it.
	for i, s := range j.stores {
		if i == auth || !j.healthy[i] {
			continue
		}
		if err := j.catchUp(ctx, s, j.stores[auth], trimmed, authLog); err != nil {
			j.healthy[i] = false
		}
	}
	if err := j.needQuorum("catch up replicas"); err != nil {
		return err
	}
	j.trimmed = trimmed
	j.lastSeq = infos[auth].LastSeq
	j.nextSeq = j.lastSeq + 1
	j.live, j.liveBytes, j.used = live, liveBytes, liveBytes
	for _, lr := range live {
		j.index.insert(lr)
	}
	// The epoch marker makes this writer's log the newest from now on, so a
	// stale unacknowledged tail elsewhere can never be adopted over it.
	marker := Record{Seq: j.nextSeq, Epoch: j.epoch, Kind: KindEpoch}
	if err := j.replicate(ctx, []Record{marker}); err != nil {
		return err
	}
	j.lastSeq, j.nextSeq = marker.Seq, marker.Seq+1
	j.liveBytes += marker.encodedSize()
	j.used += marker.encodedSize()
	return nil
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
	var batch []Record
	var batchBytes int64
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := s.Append(ctx, batch)
		batch, batchBytes = batch[:0], 0
		return err
	}
	err = auth.Scan(ctx, common, func(r Record) error {
		r.Data = append([]byte(nil), r.Data...)
		batch = append(batch, r)
		batchBytes += r.encodedSize()
		if batchBytes >= j.opts.MaxBatchBytes {
			return flush()
		}
		return nil
	})
	if err != nil {
		return err
	}
	return flush()
}

var errStopScan = errors.New("stop scan")

// replicate appends recs to every healthy store in parallel and succeeds when
// a quorum made them durable; stores that failed are marked unhealthy.
func (j *Journal) replicate(ctx context.Context, recs []Record) error {
	j.mu.Lock()
	healthy := append([]bool(nil), j.healthy...)
	j.mu.Unlock()
	errs := make([]error, len(j.stores))
	var wg sync.WaitGroup
	for i, s := range j.stores {
		if !healthy[i] {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.Append(ctx, recs)
		}()
	}
	wg.Wait()
	j.mu.Lock()
	defer j.mu.Unlock()
	var failures []error
	for i, err := range errs {
		if healthy[i] && err != nil {
			j.healthy[i] = false
			failures = append(failures, fmt.Errorf("store %d: %w", i, err))
		}
	}
	if j.healthyCount() < j.quorum {
		return fmt.Errorf("%w: seq %d..%d durable on %d of %d stores, need %d: %w", ErrNoQuorum, recs[0].Seq, recs[len(recs)-1].Seq, j.healthyCount(), len(j.stores), j.quorum, errors.Join(failures...))
	}
	return nil
}

// Append journals data (a non-empty multiple of 512 bytes) for the LBAs
// starting at lba and returns its sequence number once it is durable on a
// write quorum. data must not be modified until Append returns.
//
// Back-pressure (the documented choice): when the journal holds
// journalSizeBytes of undestaged records, Append blocks until destaging
// frees space, and gives up with an error matching both ErrJournalFull and
// ctx.Err() when ctx ends. A record larger than the whole journal fails at
// once with ErrJournalFull. If ctx ends after the record was handed to the
// committer, Append returns ctx.Err() and the write may or may not be durable.
func (j *Journal) Append(ctx context.Context, lba uint64, data []byte) (uint64, error) {
	if len(data) == 0 || len(data)%LBASize != 0 {
		return 0, fmt.Errorf("journal: write of %d bytes at LBA %d is not a non-empty multiple of %d", len(data), lba, LBASize)
	}
	req := &appendReq{rec: Record{Kind: KindWrite, LBA: lba, Data: data}, done: make(chan error, 1)}
	req.size = req.rec.encodedSize()
	if req.size > j.opts.SizeBytes {
		return 0, fmt.Errorf("%w: a %d-byte write needs %d bytes, journalSizeBytes is %d", ErrJournalFull, len(data), req.size, j.opts.SizeBytes)
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
		if j.broken != nil {
			j.mu.Unlock()
			return j.broken
		}
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

func (j *Journal) commit(batch []*appendReq) {
	j.mu.Lock()
	broken := j.broken
	j.mu.Unlock()
	recs := make([]Record, len(batch))
	for i, r := range batch {
		r.rec.Seq, r.rec.Epoch = j.nextSeq, j.epoch
		j.nextSeq++
		recs[i] = r.rec
	}
	err := broken
	if err == nil {
		err = j.replicate(context.Background(), recs)
	}
	j.mu.Lock()
	if err != nil {
		if j.broken == nil {
			j.broken = err
		}
		for _, r := range batch {
			j.used -= r.size
			if r.held {
				j.held -= int64(len(r.rec.Data))
			}
		}
		j.freedLocked()
	} else {
		for _, r := range batch {
			lr := &liveRec{seq: r.rec.Seq, lba: r.rec.LBA, nlba: uint64(len(r.rec.Data) / LBASize), size: r.size}
			if r.held {
				lr.data = r.rec.Data
			}
			j.live = append(j.live, lr)
			j.index.insert(lr)
			j.liveBytes += r.size
		}
		j.lastSeq = recs[len(recs)-1].Seq
	}
	j.mu.Unlock()
	for _, r := range batch {
		r.done <- err
	}
	j.poke()
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

// HealthyStores reports which stores take writes (false: failed, left out until reopen).
func (j *Journal) HealthyStores() []bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	return append([]bool(nil), j.healthy...)
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

// read fetches a record from the first healthy store that has it intact.
func (j *Journal) read(ctx context.Context, seq uint64) (Record, error) {
	j.mu.Lock()
	healthy := append([]bool(nil), j.healthy...)
	j.mu.Unlock()
	var errs []error
	for i, s := range j.stores {
		if !healthy[i] {
			continue
		}
		rec, err := s.Read(ctx, seq)
		if err == nil && rec.Kind == KindWrite {
			return rec, nil
		}
		errs = append(errs, fmt.Errorf("store %d: %w", i, err))
	}
	return Record{}, fmt.Errorf("journal: read seq %d: %w", seq, errors.Join(errs...))
}

// snapshot returns the newest durable seq and the write records up to it.
func (j *Journal) snapshot() (uint64, []*liveRec) {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.lastSeq, append([]*liveRec(nil), j.live...)
}

// trim drops every record with seq <= through from a quorum of stores and
// frees their space. Only the Destager calls it, after its sink confirmed.
// The stores trim in parallel: each one's Trim is a durable metadata write.
func (j *Journal) trim(ctx context.Context, through uint64) error {
	j.trimMu.Lock()
	defer j.trimMu.Unlock()
	j.mu.Lock()
	healthy := append([]bool(nil), j.healthy...)
	j.mu.Unlock()
	errs := make([]error, len(j.stores))
	var wg sync.WaitGroup
	for i, s := range j.stores {
		if !healthy[i] {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.Trim(ctx, through)
		}()
	}
	wg.Wait()
	ok := 0
	var failures []error
	j.mu.Lock()
	for i, err := range errs {
		if !healthy[i] {
			continue
		}
		if err != nil {
			failures = append(failures, fmt.Errorf("store %d: %w", i, err))
			j.healthy[i] = false
			continue
		}
		ok++
	}
	j.mu.Unlock()
	if ok < j.quorum {
		return fmt.Errorf("%w: trim through %d on %d stores: %w", ErrNoQuorum, through, ok, errors.Join(failures...))
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	i := sort.Search(len(j.live), func(i int) bool { return j.live[i].seq > through })
	var freed int64
	for _, lr := range j.live[:i] {
		freed += lr.size
		j.index.remove(lr)
		if lr.data != nil {
			j.held -= int64(len(lr.data))
		}
	}
	j.live = append([]*liveRec(nil), j.live[i:]...)
	// Epoch markers are small; count them freed with the writes around them.
	if len(j.live) == 0 && j.lastSeq <= through {
		freed = j.liveBytes
	}
	j.liveBytes -= freed
	j.used -= freed
	j.trimmed = max(j.trimmed, through)
	j.freedLocked()
	return nil
}

// Close stops the committer (in-flight commits finish) and closes the stores.
func (j *Journal) Close() error {
	var errs []error
	j.closeMu.Do(func() {
		close(j.done)
		<-j.stopped
		for i, s := range j.stores {
			if err := s.Close(); err != nil {
				errs = append(errs, fmt.Errorf("store %d: %w", i, err))
			}
		}
	})
	return errors.Join(errs...)
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
