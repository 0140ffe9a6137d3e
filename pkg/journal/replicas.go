package journal

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"
)

// Replication and healing. Decisions written down:
//   - One worker per store does everything that changes the store's log
//     (appends, catch-up, truncation), so those never race each other.
//   - A batch is acknowledged once a quorum of replicas made it durable; a
//     slower replica keeps appending its queue in the background (merging
//     queued batches into one append), so a hung replica stalls no write.
//     A replica whose queue holds more than MaxLagBytes, or whose append or
//     trim fails, leaves the quorum set ("out of sync").
//   - An out-of-sync replica's worker catches it up under the current epoch
//     and re-admits it: it records the epoch (refusing a replica that
//     records a higher one: another writer owns the journal), trims it,
//     drops any tail it does not share with this writer's log (a record of
//     this epoch is always shared: a sequence number is never reused within
//     an epoch; an older record is shared when the log adopted on Open has
//     it), copies the records it misses from an in-sync replica, and joins
//     the quorum set once it holds every record before the batch being
//     committed, which it is then sent too.
//   - A batch without a quorum waits for one (back-pressure: Append blocks
//     until enough replicas are back) and is counted in Health.QuorumWaits.
//   - Every acknowledged record is on a quorum: an in-sync replica's log is
//     contiguous, so a replica that has a batch also has every earlier one.

// replica is one store and its worker's state; fields are guarded by j.mu
// unless noted.
type replica struct {
	i     int
	store Store
	wake  chan struct{} // pokes the worker (cap 1)

	admitted bool     // in the quorum set: takes every batch in order
	durable  uint64   // the store holds every record of the log through this seq
	queue    []*batch // batches for the worker to append
	queued   int64    // bytes in queue
	busy     bool     // the worker is inside a store call
	trimTo   uint64   // the store trimmed through at least this
	lastErr  error    // why it is out of sync

	next uint64 // worker only: the first seq the store does not hold
}

// batch is one group commit on its way to the replicas.
type batch struct {
	recs        []Record
	first, last uint64
	bytes       int64
	acked       []bool        // by replica: it made the batch durable
	acks        int           // count of acked
	quorum      chan struct{} // closed when acks reaches the quorum
	counted     bool          // counted in waits
}

// seqRun is a run of consecutive seqs written in one epoch.
type seqRun struct{ first, last, epoch uint64 }

func runsOf(log []seqEpoch) []seqRun {
	var runs []seqRun
	for _, r := range log {
		if n := len(runs); n > 0 && runs[n-1].epoch == r.epoch && runs[n-1].last+1 == r.seq {
			runs[n-1].last = r.seq
			continue
		}
		runs = append(runs, seqRun{r.seq, r.seq, r.epoch})
	}
	return runs
}

// inLog reports whether (seq, epoch) is a record of this writer's log.
func (j *Journal) inLog(seq, epoch uint64) bool {
	if epoch == j.epoch {
		return true
	}
	i := sort.Search(len(j.preLog), func(i int) bool { return j.preLog[i].last >= seq })
	return i < len(j.preLog) && j.preLog[i].first <= seq && j.preLog[i].epoch == epoch
}

func wakeUp(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

func (j *Journal) enqueueLocked(r *replica, b *batch) {
	if len(r.queue) > 0 && r.queued+b.bytes > j.opts.MaxLagBytes {
		j.dropLocked(r, fmt.Errorf("fell %d bytes behind the quorum (limit %d)", r.queued+b.bytes, j.opts.MaxLagBytes))
		return
	}
	r.queue = append(r.queue, b)
	r.queued += b.bytes
	wakeUp(r.wake)
}

// dropLocked takes r out of the quorum set; its worker catches it up.
func (j *Journal) dropLocked(r *replica, err error) {
	if !r.admitted {
		return
	}
	r.admitted, r.queue, r.queued, r.lastErr = false, nil, 0, err
	if j.opts.Logf != nil {
		j.opts.Logf("journal replica %d out of sync (catching it up in the background): %v", r.i, err)
	}
	j.noteQuorumLocked()
	j.changedLocked()
	wakeUp(r.wake)
}

func (j *Journal) admittedLocked() int {
	n := 0
	for _, r := range j.reps {
		if r.admitted {
			n++
		}
	}
	return n
}

// noteQuorumLocked counts the batch being committed as waiting for a quorum
// when too few replicas are in sync to give it one.
func (j *Journal) noteQuorumLocked() {
	b := j.inflight
	if b == nil || b.acks >= j.quorum || b.acks+j.pendingLocked(b) >= j.quorum {
		return
	}
	if !b.counted {
		b.counted = true
		j.waits++
		j.lostSince = time.Now()
	}
}

// pendingLocked counts the in-sync replicas that may still ack b.
func (j *Journal) pendingLocked(b *batch) int {
	n := 0
	for _, r := range j.reps {
		if r.admitted && !b.acked[r.i] {
			n++
		}
	}
	return n
}

func (j *Journal) ackLocked(b *batch, i int) {
	if b.acked[i] {
		return
	}
	b.acked[i] = true
	b.acks++
	if b.acks == j.quorum {
		close(b.quorum)
	}
}

// runReplica is the worker of one store until Close.
func (j *Journal) runReplica(r *replica) {
	defer j.workers.Done()
	wait := j.opts.RetryInterval
	for j.ctx.Err() == nil {
		select {
		case <-j.fenced:
			// Nothing this writer sends would be accepted: stop (Close still waits for us).
			return
		default:
		}
		if j.trimBehind(r) {
			continue
		}
		j.mu.Lock()
		admitted := r.admitted
		var work []*batch
		if admitted {
			var bytes int64
			for len(r.queue) > 0 && (len(work) == 0 || bytes+r.queue[0].bytes <= j.opts.MaxLagBytes) {
				work = append(work, r.queue[0])
				bytes += r.queue[0].bytes
				r.queue = r.queue[1:]
			}
			r.queued -= bytes
		}
		r.busy = admitted && len(work) > 0 || !admitted
		j.mu.Unlock()
		switch {
		case admitted && len(work) == 0:
			select {
			case <-r.wake:
			case <-j.ctx.Done():
			}
		case admitted:
			if err := j.appendTo(r, work); err != nil {
				if final(err) {
					j.supersede(err)
				}
				j.mu.Lock()
				j.dropLocked(r, err)
				j.mu.Unlock()
			}
		default:
			err := j.heal(r)
			if final(err) {
				j.supersede(err)
			}
			j.mu.Lock()
			r.busy = false
			if err != nil {
				r.lastErr = err
			}
			j.mu.Unlock()
			if err == nil {
				wait = j.opts.RetryInterval
				continue
			}
			select {
			case <-time.After(wait):
			case <-j.ctx.Done():
			}
			wait = min(2*wait, 2*time.Second)
		}
	}
}

// trimBehind trims r's store through the trim the destager asked for
// (trimGoal) once the store holds it; it reports whether it tried. Trims run
// on the worker, between appends, so they never race the store's appends.
func (j *Journal) trimBehind(r *replica) bool {
	j.mu.Lock()
	through := j.trimGoal
	if !r.admitted || r.trimTo >= through || r.durable < through {
		j.mu.Unlock()
		return false
	}
	r.busy = true
	j.mu.Unlock()
	err := r.store.Trim(j.ctx, through)
	if final(err) {
		j.supersede(err)
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	r.busy = false
	if err != nil {
		j.dropLocked(r, fmt.Errorf("trim through %d: %w", through, err))
	} else {
		r.trimTo = max(r.trimTo, through)
	}
	j.changedLocked()
	return true
}

// changedLocked wakes trim, which waits for replicas to trim.
func (j *Journal) changedLocked() {
	close(j.changed)
	j.changed = make(chan struct{})
}

// appendTo appends the batches to r's store (skipping records it already
// holds) and counts its acknowledgements.
func (j *Journal) appendTo(r *replica, work []*batch) error {
	var recs []Record
	for _, b := range work {
		for _, rec := range b.recs {
			if rec.Seq >= r.next {
				recs = append(recs, rec)
			}
		}
	}
	if len(recs) > 0 {
		if err := r.store.Append(j.ctx, recs); err != nil {
			return err
		}
	}
	last := work[len(work)-1].last
	r.next = max(r.next, last+1)
	j.mu.Lock()
	defer j.mu.Unlock()
	r.busy = false
	r.durable = max(r.durable, last)
	for _, b := range work {
		j.ackLocked(b, r.i)
	}
	if r.trimTo < j.trimGoal {
		wakeUp(r.wake)
	}
	return nil
}

// ErrSuperseded: a replica records a higher epoch, so a newer writer opened
// the journal. Every waiting and later append fails with it (never waits for
// a quorum that this writer can no longer reach).
var ErrSuperseded = errors.New("journal: a newer writer owns the journal")

var errFenced = ErrSuperseded

// ErrFenced: the writer was fenced off outside the journal (its stores
// refuse every mutation for good, e.g. because the export lost its writer
// Lease). A store error wrapping it ends the journal as ErrSuperseded does:
// every waiting and later append and trim fails at once, and the replica
// workers stop instead of catching the store up again and again.
var ErrFenced = errors.New("journal: this writer is fenced off")

// final reports whether a store's error means this writer may never write again.
func final(err error) bool { return errors.Is(err, ErrSuperseded) || errors.Is(err, ErrFenced) }

// supersede ends this writer's journal: waiting and later appends fail with err.
func (j *Journal) supersede(err error) {
	j.fenceOnce.Do(func() {
		j.mu.Lock()
		j.fencedErr = err
		j.mu.Unlock()
		close(j.fenced)
		if j.opts.Logf != nil {
			j.opts.Logf("journal ends (this writer may not write again): %v", err)
		}
	})
}

// heal catches r's store up under the current epoch and re-admits it; see
// the decisions at the top of the file.
func (j *Journal) heal(r *replica) error {
	ctx := j.ctx
	info, err := r.store.Info(ctx)
	if err != nil {
		return err
	}
	j.mu.Lock()
	trimmed := j.trimmed
	j.mu.Unlock()
	switch {
	case info.Epoch > j.epoch:
		return fmt.Errorf("%w: the replica records epoch %d, this writer's is %d: not re-admitted", errFenced, info.Epoch, j.epoch)
	case info.Epoch < j.epoch:
		if err := r.store.SetEpoch(ctx, j.epoch); err != nil {
			return err
		}
	}
	if info.TrimmedThrough < trimmed {
		if err := r.store.Trim(ctx, trimmed); err != nil {
			return err
		}
		if info, err = r.store.Info(ctx); err != nil {
			return err
		}
	}
	have := info.LastSeq
	trimTo := info.TrimmedThrough
	if info.LastSeq > info.TrimmedThrough && info.LastEpoch != j.epoch {
		// It ends in an older epoch (it missed Open): keep what it shares
		// with this writer's log, drop the rest.
		common := info.TrimmedThrough
		err := r.store.Scan(ctx, info.TrimmedThrough, func(rec Record) error {
			if !j.inLog(rec.Seq, rec.Epoch) {
				return errStopScan
			}
			common = rec.Seq
			return nil
		})
		if err != nil && !errors.Is(err, errStopScan) {
			return err
		}
		if common < info.LastSeq {
			if err := r.store.TruncateAfter(ctx, common); err != nil {
				return err
			}
		}
		have = common
	}
	for {
		j.mu.Lock()
		if have >= j.nextSeq {
			j.mu.Unlock()
			return fmt.Errorf("the replica holds seq %d, beyond this writer's last seq %d", have, j.nextSeq-1)
		}
		from := j.nextSeq
		if j.inflight != nil {
			from = j.inflight.first
		}
		if have+1 >= from {
			r.admitted, r.durable, r.lastErr, r.next = true, have, nil, have+1
			r.trimTo = max(r.trimTo, trimTo)
			if b := j.inflight; b != nil {
				if have >= b.last {
					j.ackLocked(b, r.i)
				} else {
					r.queue, r.queued = []*batch{b}, b.bytes
				}
			}
			if j.opts.Logf != nil {
				j.opts.Logf("journal replica %d caught up through seq %d and back in sync", r.i, have)
			}
			j.mu.Unlock()
			return nil
		}
		var src *replica
		for _, o := range j.reps {
			if o != r && o.admitted && o.durable > have && (src == nil || o.durable > src.durable) {
				src = o
			}
		}
		j.mu.Unlock()
		if src == nil {
			return fmt.Errorf("it holds seq %d, the quorum is at %d, and no replica in sync holds the records in between", have, from-1)
		}
		got, err := j.copyRecords(ctx, src.store, r.store, have, from)
		if err != nil {
			return fmt.Errorf("copy records after seq %d from replica %d: %w", have, src.i, err)
		}
		if got == have {
			return fmt.Errorf("replica %d sent no records after seq %d", src.i, have)
		}
		have = got
	}
}

// read fetches a record from a replica that has it, preferring idle ones
// (a hung replica is busy with an append that does not return).
func (j *Journal) read(ctx context.Context, seq uint64) (Record, error) {
	j.mu.Lock()
	var cands []*replica
	for _, r := range j.reps {
		if r.admitted && r.durable >= seq {
			cands = append(cands, r)
		}
	}
	sort.SliceStable(cands, func(a, b int) bool {
		return !cands[a].busy && cands[b].busy || cands[a].busy == cands[b].busy && cands[a].queued < cands[b].queued
	})
	j.mu.Unlock()
	var errs []error
	for _, r := range cands {
		rec, err := r.store.Read(ctx, seq)
		if err == nil && rec.Kind == KindWrite {
			return rec, nil
		}
		errs = append(errs, fmt.Errorf("store %d: %w", r.i, err))
	}
	if len(cands) == 0 {
		errs = append(errs, errors.New("no replica in sync holds it"))
	}
	return Record{}, fmt.Errorf("journal: read seq %d: %w", seq, errors.Join(errs...))
}

// snapshot is in journal.go.

// trim drops every record with seq <= through from a quorum of stores and
// frees their space. Only the Destager calls it, after its sink confirmed.
// Each in-sync store's worker trims it (a durable metadata write) once it
// holds through; trim returns once a quorum did, a slower store trims when
// it gets there. A store whose trim fails leaves the quorum set.
func (j *Journal) trim(ctx context.Context, through uint64) error {
	j.trimMu.Lock()
	defer j.trimMu.Unlock()
	j.mu.Lock()
	if j.closing {
		j.mu.Unlock()
		return ErrClosed
	}
	j.trimGoal = max(j.trimGoal, through)
	for _, r := range j.reps {
		if r.admitted {
			wakeUp(r.wake)
		}
	}
	for {
		ok, in := 0, 0
		var errs []error
		for _, r := range j.reps {
			switch {
			case !r.admitted:
				if r.lastErr != nil {
					errs = append(errs, fmt.Errorf("store %d: %w", r.i, r.lastErr))
				}
			case r.trimTo >= through:
				ok++
				in++
			default:
				in++
			}
		}
		if ok >= j.quorum {
			break
		}
		if in < j.quorum {
			j.mu.Unlock()
			return fmt.Errorf("%w: trim through %d: %d of %d stores trimmed, %d in sync: %w", ErrNoQuorum, through, ok, len(j.reps), in, errors.Join(errs...))
		}
		changed := j.changed
		j.mu.Unlock()
		select {
		case <-changed:
		case <-j.done:
			return ErrClosed
		case <-j.fenced:
			return fmt.Errorf("journal: trim through %d: %w", through, j.superseded())
		case <-ctx.Done():
			return fmt.Errorf("journal: trim through %d: waiting for a quorum of stores to trim: %w", through, ctx.Err())
		}
		j.mu.Lock()
	}
	j.mu.Unlock()
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

// HealthyStores reports which stores are in sync (in the quorum set); a
// store out of sync is being caught up in the background.
func (j *Journal) HealthyStores() []bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	out := make([]bool, len(j.reps))
	for i, r := range j.reps {
		out[i] = r.admitted
	}
	return out
}

// Health is the replication state of a journal.
type Health struct {
	InSync []bool  // by store: in the quorum set
	Errors []error // by store: why it is out of sync (nil when in sync)
	Quorum int     // replicas a write needs
	// QuorumLostSince is when the write being committed found too few
	// replicas in sync to be acknowledged; zero while writes are acknowledged.
	QuorumLostSince time.Time
	// QuorumWaits counts the batches of writes that had to wait for a quorum.
	QuorumWaits uint64
}

// Health reports the replication state.
func (j *Journal) Health() Health {
	j.mu.Lock()
	defer j.mu.Unlock()
	h := Health{InSync: make([]bool, len(j.reps)), Errors: make([]error, len(j.reps)), Quorum: j.quorum,
		QuorumLostSince: j.lostSince, QuorumWaits: j.waits}
	for i, r := range j.reps {
		h.InSync[i] = r.admitted
		if !r.admitted {
			h.Errors[i] = r.lastErr
		}
	}
	return h
}

// closeGrace bounds how long Close lets in-sync replicas finish their
// queued appends and trims, so that a clean stop leaves them all current.
const closeGrace = time.Second

// Close stops the committer (a commit waiting for a quorum ends with
// ErrClosed), lets the in-sync replicas finish their queues for up to
// closeGrace, stops the replica workers and closes the stores.
func (j *Journal) Close() error {
	var errs []error
	j.closeMu.Do(func() {
		close(j.done)
		<-j.stopped
		for deadline := time.Now().Add(closeGrace); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			j.mu.Lock()
			idle := true
			for _, r := range j.reps {
				if r.admitted && (len(r.queue) > 0 || r.busy || r.trimTo < j.trimGoal && r.durable >= j.trimGoal) {
					idle = false
				}
			}
			j.mu.Unlock()
			if idle {
				break
			}
		}
		j.mu.Lock()
		j.closing = true
		j.mu.Unlock()
		j.cancel()
		j.workers.Wait()
		for i, r := range j.reps {
			if err := r.store.Close(); err != nil {
				errs = append(errs, fmt.Errorf("store %d: %w", i, err))
			}
		}
	})
	return errors.Join(errs...)
}
