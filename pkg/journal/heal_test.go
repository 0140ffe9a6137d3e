package journal

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// switchStore is a store a test can take down (every call fails, like a
// restarting server) or hang (Append blocks, like a SIGSTOPped server).
type switchStore struct {
	Store
	down atomic.Bool
	mu   sync.Mutex
	hang chan struct{} // non-nil: Append waits until it is closed
}

var errSwitchedDown = errors.New("test: replica down")

func (s *switchStore) Info(ctx context.Context) (StoreInfo, error) {
	if s.down.Load() {
		return StoreInfo{}, errSwitchedDown
	}
	return s.Store.Info(ctx)
}

func (s *switchStore) Scan(ctx context.Context, after uint64, fn func(Record) error) error {
	if s.down.Load() {
		return errSwitchedDown
	}
	return s.Store.Scan(ctx, after, fn)
}

func (s *switchStore) Read(ctx context.Context, seq uint64) (Record, error) {
	if s.down.Load() {
		return Record{}, errSwitchedDown
	}
	return s.Store.Read(ctx, seq)
}

func (s *switchStore) Append(ctx context.Context, recs []Record) error {
	s.mu.Lock()
	hang := s.hang
	s.mu.Unlock()
	if hang != nil {
		select {
		case <-hang:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if s.down.Load() {
		return errSwitchedDown
	}
	return s.Store.Append(ctx, recs)
}

func (s *switchStore) TruncateAfter(ctx context.Context, seq uint64) error {
	if s.down.Load() {
		return errSwitchedDown
	}
	return s.Store.TruncateAfter(ctx, seq)
}

func (s *switchStore) Trim(ctx context.Context, through uint64) error {
	if s.down.Load() {
		return errSwitchedDown
	}
	return s.Store.Trim(ctx, through)
}

func (s *switchStore) SetEpoch(ctx context.Context, epoch uint64) error {
	if s.down.Load() {
		return errSwitchedDown
	}
	return s.Store.SetEpoch(ctx, epoch)
}

func switchStores(t *testing.T, root string, n int) []*switchStore {
	var out []*switchStore
	for _, s := range openStores(t, root, n) {
		out = append(out, &switchStore{Store: s})
	}
	return out
}

func asStores(ss []*switchStore) []Store {
	out := make([]Store, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

// waitInSync waits (generously) until every replica is back in the quorum set.
func waitInSync(t *testing.T, j *Journal) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		h := j.Health()
		if count(h.InSync) == len(h.InSync) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("replicas still out of sync after 30s: %v (%v)", h.InSync, h.Errors)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// replicaState reopens replica i under root (the journal is closed) and
// lists its write records (seq:LBA) and its info.
func replicaState(t *testing.T, root string, i int) (string, StoreInfo) {
	t.Helper()
	s, err := OpenFileStore(filepath.Join(root, fmt.Sprintf("replica-%d", i)))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	if err := s.Scan(context.Background(), 0, func(r Record) error {
		if r.Kind == KindWrite {
			out = append(out, fmt.Sprintf("%d:%d", r.Seq, r.LBA))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return fmt.Sprint(out), info
}

// TestQuorumLossWaitsThenResumes: with two of three replicas down a write
// waits (it is neither acknowledged nor failed for good), is counted as a
// quorum wait, and is acknowledged once one replica returns — which is
// caught up and re-admitted without reopening the journal. The old code
// failed the write with ErrNoQuorum and every later one too.
func TestQuorumLossWaitsThenResumes(t *testing.T) {
	root := t.TempDir()
	ctx := context.Background()
	ss := switchStores(t, root, 3)
	j, err := Open(ctx, asStores(ss), Options{SizeBytes: 1 << 20, RetryInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	want := map[uint64][]byte{}
	write := func(ctx context.Context, lba uint64, v int) error {
		d := block(lba, v, 1)
		if _, err := j.Append(ctx, lba, d); err != nil {
			return err
		}
		want[lba] = d
		return nil
	}
	for i := 0; i < 10; i++ {
		if err := write(ctx, uint64(i), 1); err != nil {
			t.Fatal(err)
		}
	}
	ss[1].down.Store(true)
	ss[2].down.Store(true)
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	err = write(short, 20, 1)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("append with 2 of 3 replicas down: %v, want it to wait (until its context ended)", err)
	}
	if h := j.Health(); h.QuorumWaits == 0 || count(h.InSync) != 1 {
		t.Fatalf("health with 2 of 3 replicas down: %+v, want a counted quorum wait and 1 replica in sync", h)
	}
	// A write blocked on the missing quorum is acknowledged once a replica returns.
	done := make(chan error, 1)
	go func() { done <- write(ctx, 21, 1) }()
	time.Sleep(50 * time.Millisecond)
	ss[2].down.Store(false)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("blocked append after a replica returned: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("blocked append not acknowledged 30s after a replica returned")
	}
	for i := 30; i < 40; i++ {
		if err := write(ctx, uint64(i), 2); err != nil {
			t.Fatalf("append after quorum returned: %v", err)
		}
	}
	ss[1].down.Store(false)
	waitInSync(t, j)
	if h := j.Health(); !h.QuorumLostSince.IsZero() {
		t.Fatalf("quorum still reported lost: %+v", h)
	}
	for lba, d := range want {
		if got := readThrough(t, j, func(uint64) []byte { return make([]byte, LBASize) }, lba, 1); !bytes.Equal(got, d) {
			t.Fatalf("LBA %d: acknowledged write lost", lba)
		}
	}
	j.Close()
	// Every replica holds the same writes: the returned ones were caught up.
	w0, i0 := replicaState(t, root, 0)
	for i := 1; i < 3; i++ {
		if w, info := replicaState(t, root, i); w != w0 || info != i0 {
			t.Fatalf("replica %d holds %s (%+v), replica 0 %s (%+v)", i, w, info, w0, i0)
		}
	}
}

// TestRollingRestartsKeepWriting takes the replicas down one after the
// other (a chart upgrade restarting shard servers in turn) while writes go
// on: every write is acknowledged, each returning replica is caught up and
// re-admitted, and after a reopen on the two replicas restarted last (the
// first one lost) every acknowledged write is there. The old code excluded
// each failed replica until reopen, so the second restart stopped writes.
func TestRollingRestartsKeepWriting(t *testing.T) {
	root := t.TempDir()
	ctx := context.Background()
	ss := switchStores(t, root, 3)
	j, err := Open(ctx, asStores(ss), Options{SizeBytes: 1 << 20, RetryInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	want := map[uint64][]byte{}
	v := 0
	writes := func(n int) {
		for i := 0; i < n; i++ {
			v++
			lba := uint64(v % 64)
			d := block(lba, v, 1)
			wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			_, err := j.Append(wctx, lba, d)
			cancel()
			if err != nil {
				t.Fatalf("write %d: %v", v, err)
			}
			want[lba] = d
		}
	}
	writes(20)
	for _, i := range []int{0, 1, 2} {
		ss[i].down.Store(true)
		writes(20)
		ss[i].down.Store(false)
		waitInSync(t, j)
		writes(5)
	}
	j.Close()
	// Reopen without replica 0: 1 and 2 must hold every acknowledged write.
	stores := openStores(t, root, 3)
	stores[0].Close()
	stores[0] = failingStore{}
	j, err = Open(ctx, stores, Options{SizeBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	for lba, d := range want {
		if got := readThrough(t, j, func(uint64) []byte { return make([]byte, LBASize) }, lba, 1); !bytes.Equal(got, d) {
			t.Fatalf("LBA %d: acknowledged write lost after rolling restarts", lba)
		}
	}
}

// TestHungReplicaDoesNotStallAppends: a replica whose appends hang (a
// stopped server) does not hold writes back: they are acknowledged by the
// other two; once it falls MaxLagBytes behind it leaves the quorum set, and
// when it answers again it is caught up and re-admitted. The old code
// waited for every replica on every batch.
func TestHungReplicaDoesNotStallAppends(t *testing.T) {
	root := t.TempDir()
	ctx := context.Background()
	ss := switchStores(t, root, 3)
	j, err := Open(ctx, asStores(ss), Options{SizeBytes: 8 << 20, MaxBatchBytes: 64 << 10, RetryInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	hang := make(chan struct{})
	ss[2].mu.Lock()
	ss[2].hang = hang
	ss[2].mu.Unlock()
	var worst time.Duration
	for i := 0; i < 200; i++ {
		start := time.Now()
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, err := j.Append(wctx, uint64(i%64)*8, block(uint64(i), i, 8))
		cancel()
		if err != nil {
			t.Fatalf("append %d with replica 2 hung: %v", i, err)
		}
		worst = max(worst, time.Since(start))
	}
	if worst > 2*time.Second {
		t.Fatalf("slowest append with a hung replica took %v", worst)
	}
	if h := j.Health(); h.InSync[2] {
		t.Fatalf("replica 2 still in sync after falling %d batches behind: %+v", 200, h)
	}
	ss[2].mu.Lock()
	ss[2].hang = nil
	ss[2].mu.Unlock()
	close(hang)
	waitInSync(t, j)
	if _, err := j.Append(ctx, 0, block(0, 999, 1)); err != nil {
		t.Fatal(err)
	}
	last := j.LastSeq()
	j.Close()
	w0, i0 := replicaState(t, root, 0)
	for i := 1; i < 3; i++ {
		if w, info := replicaState(t, root, i); w != w0 || info.LastSeq != last {
			t.Fatalf("replica %d after catch-up holds %s (%+v), replica 0 %s (%+v), want last seq %d", i, w, info, w0, i0, last)
		}
	}
}

// TestReplicaMissingAtOpenHealsDroppingItsStaleTail: a replica that was
// down when the journal opened holds an unacknowledged tail of an older
// writer. When it returns it records the current epoch, loses that tail,
// receives the current log and rejoins the quorum set.
func TestReplicaMissingAtOpenHealsDroppingItsStaleTail(t *testing.T) {
	root := t.TempDir()
	ctx := context.Background()
	j := openJournal(t, root, 3, 1<<20)
	if _, err := j.Append(ctx, 0, block(0, 1, 1)); err != nil {
		t.Fatal(err)
	}
	last := j.LastSeq()
	j.Close()
	// An older writer's unacknowledged record, on replica 2 only.
	stores := openStores(t, root, 3)
	epoch, _ := stores[2].Info(ctx)
	if err := stores[2].Append(ctx, []Record{{Seq: last + 1, Epoch: epoch.LastEpoch, Kind: KindWrite, LBA: 7, Data: block(7, 1, 1)}}); err != nil {
		t.Fatal(err)
	}
	sw := &switchStore{Store: stores[2]}
	sw.down.Store(true)
	stores[2] = sw
	j, err := Open(ctx, stores, Options{SizeBytes: 1 << 20, RetryInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	for v := 2; v < 6; v++ {
		if _, err := j.Append(ctx, uint64(v), block(uint64(v), v, 1)); err != nil {
			t.Fatal(err)
		}
	}
	sw.down.Store(false)
	waitInSync(t, j)
	if ext, _ := j.Lookup(ctx, 7, 8); len(ext) != 0 {
		t.Fatalf("the stale unacknowledged record is visible: %v", ext)
	}
	j.Close()
	w0, i0 := replicaState(t, root, 0)
	if w2, i2 := replicaState(t, root, 2); w2 != w0 || i2 != i0 {
		t.Fatalf("healed replica holds %s (%+v), in-sync one %s (%+v)", w2, i2, w0, i0)
	}
}

// fencingStore refuses appends below the epoch it records, as a shard
// server's journal endpoint does.
type fencingStore struct{ Store }

func (s fencingStore) Append(ctx context.Context, recs []Record) error {
	info, err := s.Store.Info(ctx)
	if err != nil {
		return err
	}
	if len(recs) > 0 && recs[0].Epoch < info.Epoch {
		return fmt.Errorf("test: epoch %d below the recorded %d", recs[0].Epoch, info.Epoch)
	}
	return s.Store.Append(ctx, recs)
}

// TestSupersededWriterFailsInsteadOfWaiting: once a newer writer opened the
// journal (its epoch recorded on the replicas), the older writer's appends
// fail with ErrSuperseded; before, they waited for a quorum forever, and an
// export that had lost its Lease could not shut down.
func TestSupersededWriterFailsInsteadOfWaiting(t *testing.T) {
	ctx := context.Background()
	ss := switchStores(t, t.TempDir(), 3)
	stores := make([]Store, len(ss))
	for i, s := range ss {
		stores[i] = fencingStore{s}
	}
	opts := Options{SizeBytes: 1 << 20, RetryInterval: 10 * time.Millisecond}
	a, err := Open(ctx, stores, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if _, err := a.Append(ctx, 0, block(0, 1, 1)); err != nil {
		t.Fatal(err)
	}
	b, err := Open(ctx, stores, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	bounded, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	_, err = a.Append(bounded, 1, block(1, 1, 1))
	if !errors.Is(err, ErrSuperseded) {
		t.Fatalf("append of the superseded writer: %v, want ErrSuperseded", err)
	}
	if _, err := a.Append(bounded, 2, block(2, 1, 1)); !errors.Is(err, ErrSuperseded) {
		t.Fatalf("later append: %v, want ErrSuperseded at once", err)
	}
	if _, err := b.Append(ctx, 1, block(1, 2, 1)); err != nil {
		t.Fatalf("the newer writer: %v", err)
	}
}

// leaseStore refuses every mutation once fenced, as the export's fencedStore
// does after its writer Lease is lost; reads still answer. It counts calls.
type leaseStore struct {
	Store
	fenced *atomic.Bool
	calls  *atomic.Int64
}

func (s leaseStore) refuse(op string) error {
	s.calls.Add(1)
	if s.fenced.Load() {
		return fmt.Errorf("test: %s refused: %w: the Lease is lost", op, ErrFenced)
	}
	return nil
}

func (s leaseStore) Info(ctx context.Context) (StoreInfo, error) {
	s.calls.Add(1)
	return s.Store.Info(ctx)
}

func (s leaseStore) Append(ctx context.Context, recs []Record) error {
	if err := s.refuse("append"); err != nil {
		return err
	}
	return s.Store.Append(ctx, recs)
}

func (s leaseStore) Trim(ctx context.Context, through uint64) error {
	if err := s.refuse("trim"); err != nil {
		return err
	}
	return s.Store.Trim(ctx, through)
}

// TestFencedStoresEndTheJournal: once the stores refuse mutations for good
// (ErrFenced), trims and appends fail at once and the replica workers stop.
// Before, a refused trim dropped the replica, heal re-admitted it without a
// mutation (nothing to catch up), the trim was refused again, and so on: a
// hot loop (TestCrashOfTheExportOverShardServers logged it thousands of
// times a second after its export lost the Lease under load).
func TestFencedStoresEndTheJournal(t *testing.T) {
	ctx := context.Background()
	var fenced atomic.Bool
	var calls atomic.Int64
	var stores []Store
	for _, s := range openStores(t, t.TempDir(), 3) {
		stores = append(stores, leaseStore{Store: s, fenced: &fenced, calls: &calls})
	}
	j, err := Open(ctx, stores, Options{SizeBytes: 1 << 20, RetryInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	seq, err := j.Append(ctx, 0, block(0, 1, 1))
	if err != nil {
		t.Fatal(err)
	}
	fenced.Store(true)
	bounded, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := j.trim(bounded, seq); !errors.Is(err, ErrFenced) {
		t.Fatalf("trim with fenced stores: %v, want ErrFenced", err)
	}
	if _, err := j.Append(bounded, 8, block(8, 1, 1)); !errors.Is(err, ErrFenced) {
		t.Fatalf("append after the fence: %v, want ErrFenced", err)
	}
	// The replica workers stop on their own (before, they healed and
	// re-trimmed until Close).
	stopped := make(chan struct{})
	go func() { j.workers.Wait(); close(stopped) }()
	select {
	case <-stopped:
	case <-bounded.Done():
		t.Fatalf("the replica workers still run after the journal ended (%d store calls so far)", calls.Load())
	}
}
