package journal

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
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
	live       []entry // durable, untrimmed write records, by seq
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

type entry struct {
	seq, lba, nlba uint64
	size           int64
}

type appendReq struct {
	rec  Record
	size int64
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
	j := &Journal{
		stores: stores, healthy: make([]bool, len(stores)), quorum: len(stores)/2 + 1, opts: opts,
		spaceFreed: make(chan struct{}), reqs: make(chan *appendReq, 1024), wake: make(chan struct{}, 1),
		done: make(chan struct{}), stopped: make(chan struct{}),
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
	var live []entry
	var liveBytes int64
	err := j.stores[auth].Scan(ctx, trimmed, func(r Record) error {
		authLog = append(authLog, seqEpoch{r.Seq, r.Epoch})
		liveBytes += r.encodedSize()
		if r.Kind == KindWrite {
			live = append(live, entry{seq: r.Seq, lba: r.LBA, nlba: uint64(len(r.Data) / LBASize), size: r.encodedSize()})
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
	select {
	case j.reqs <- req:
	case <-j.done:
		j.release(req.size)
		return 0, ErrClosed
	case <-ctx.Done():
		j.release(req.size)
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

func (j *Journal) release(size int64) {
	j.mu.Lock()
	j.used -= size
	j.freedLocked()
	j.mu.Unlock()
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
		}
		j.freedLocked()
	} else {
		for _, r := range batch {
			j.live = append(j.live, entry{seq: r.rec.Seq, lba: r.rec.LBA, nlba: uint64(len(r.rec.Data) / LBASize), size: r.size})
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
// only after its stripe holds it.
func (j *Journal) Lookup(ctx context.Context, startLBA, endLBA uint64) ([]Extent, error) {
	return j.lookup(ctx, startLBA, endLBA, ^uint64(0))
}

func (j *Journal) lookup(ctx context.Context, startLBA, endLBA, maxSeq uint64) ([]Extent, error) {
	if endLBA <= startLBA {
		return nil, nil
	}
	j.trimMu.RLock()
	defer j.trimMu.RUnlock()
	j.mu.Lock()
	var hits []entry
	for i := len(j.live) - 1; i >= 0; i-- {
		e := j.live[i]
		if e.seq <= maxSeq && e.lba < endLBA && e.lba+e.nlba > startLBA {
			hits = append(hits, e) // newest first
		}
	}
	j.mu.Unlock()
	if len(hits) == 0 {
		return nil, nil
	}
	n := endLBA - startLBA
	covered := make([]bool, n)
	buf := make([]byte, n*LBASize)
	for _, e := range hits {
		a, b := max(e.lba, startLBA), min(e.lba+e.nlba, endLBA)
		needed := false
		for l := a; l < b; l++ {
			if !covered[l-startLBA] {
				needed = true
				break
			}
		}
		if !needed {
			continue
		}
		rec, err := j.read(ctx, e.seq)
		if err != nil {
			return nil, err
		}
		for l := a; l < b; l++ {
			if covered[l-startLBA] {
				continue
			}
			covered[l-startLBA] = true
			src := (l - e.lba) * LBASize
			copy(buf[(l-startLBA)*LBASize:], rec.Data[src:src+LBASize])
		}
	}
	var out []Extent
	for l := uint64(0); l < n; {
		if !covered[l] {
			l++
			continue
		}
		s := l
		for l < n && covered[l] {
			l++
		}
		out = append(out, Extent{LBA: startLBA + s, Data: buf[s*LBASize : l*LBASize : l*LBASize]})
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
func (j *Journal) snapshot() (uint64, []entry) {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.lastSeq, append([]entry(nil), j.live...)
}

// trim drops every record with seq <= through from a quorum of stores and
// frees their space. Only the Destager calls it, after its sink confirmed.
func (j *Journal) trim(ctx context.Context, through uint64) error {
	j.trimMu.Lock()
	defer j.trimMu.Unlock()
	j.mu.Lock()
	healthy := append([]bool(nil), j.healthy...)
	j.mu.Unlock()
	ok := 0
	var errs []error
	for i, s := range j.stores {
		if !healthy[i] {
			continue
		}
		if err := s.Trim(ctx, through); err != nil {
			errs = append(errs, fmt.Errorf("store %d: %w", i, err))
			j.mu.Lock()
			j.healthy[i] = false
			j.mu.Unlock()
			continue
		}
		ok++
	}
	if ok < j.quorum {
		return fmt.Errorf("%w: trim through %d on %d stores: %w", ErrNoQuorum, through, ok, errors.Join(errs...))
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	i := sort.Search(len(j.live), func(i int) bool { return j.live[i].seq > through })
	var freed int64
	for _, e := range j.live[:i] {
		freed += e.size
	}
	j.live = append([]entry(nil), j.live[i:]...)
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
