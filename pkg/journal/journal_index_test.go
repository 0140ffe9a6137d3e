package journal

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// naiveIndex is the obvious model of lbaIndex: the newest live record per
// LBA, found by scanning every live record newest first.
type naiveIndex struct{ live []*liveRec }

func (n *naiveIndex) newest(l uint64) *liveRec {
	for i := len(n.live) - 1; i >= 0; i-- {
		if r := n.live[i]; r.lba <= l && l < r.lba+r.nlba {
			return r
		}
	}
	return nil
}

// TestLBAIndexMatchesNaiveModel drives the interval index and the naive scan
// with the same random inserts (overlapping, nested, adjacent) and removals
// in sequence order (what trim does) and compares every LBA, and checks the
// spans stay sorted, non-empty and non-overlapping.
func TestLBAIndexMatchesNaiveModel(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		rng := rand.New(rand.NewPCG(seed, 7))
		const lbas = 300
		x := newLBAIndex()
		var model naiveIndex
		var seq uint64
		for step := 0; step < 2000; step++ {
			switch op := rng.IntN(10); {
			case op < 7: // append
				seq++
				lba := rng.Uint64N(lbas)
				r := &liveRec{seq: seq, lba: lba, nlba: 1 + rng.Uint64N(min(40, lbas-lba))}
				x.insert(r)
				model.live = append(model.live, r)
			default: // trim the oldest few
				k := min(len(model.live), rng.IntN(6))
				for _, r := range model.live[:k] {
					x.remove(r)
				}
				model.live = append([]*liveRec(nil), model.live[k:]...)
			}
			// Compare the whole LBA space, and a random window through overlapping.
			got := make([]*liveRec, lbas)
			prevEnd := uint64(0)
			x.t.Ascend(func(s span) bool {
				if s.start >= s.end || s.start < prevEnd {
					t.Fatalf("seed %d step %d: bad span [%d,%d) after end %d", seed, step, s.start, s.end, prevEnd)
				}
				prevEnd = s.end
				for l := s.start; l < s.end; l++ {
					got[l] = s.rec
				}
				return true
			})
			for l := uint64(0); l < lbas; l++ {
				if want := model.newest(l); got[l] != want {
					t.Fatalf("seed %d step %d: LBA %d indexed %v, model %v", seed, step, l, got[l], want)
				}
			}
			a := rng.Uint64N(lbas)
			b := a + rng.Uint64N(lbas-a+1)
			covered := map[uint64]bool{}
			x.overlapping(a, b, func(s span) bool {
				if s.end <= a || s.start >= b {
					t.Fatalf("seed %d step %d: span [%d,%d) outside window [%d,%d)", seed, step, s.start, s.end, a, b)
				}
				for l := max(s.start, a); l < min(s.end, b); l++ {
					covered[l] = true
				}
				return true
			})
			for l := a; l < b; l++ {
				if covered[l] != (model.newest(l) != nil) {
					t.Fatalf("seed %d step %d: window [%d,%d) LBA %d covered=%v", seed, step, a, b, l, covered[l])
				}
			}
		}
	}
}

// TestLookupMatchesModelAcrossDestageAndReplay checks Lookup over the
// stripes against a byte image of every acknowledged write, with random
// overlapping writes, destage passes (parallel stripe writes, trims) and a
// reopen, once with record data held in RAM and once read from the stores.
func TestLookupMatchesModelAcrossDestageAndReplay(t *testing.T) {
	for _, held := range []int64{0, -1} {
		root := t.TempDir()
		ctx := context.Background()
		open := func() *Journal {
			j, err := Open(ctx, openStores(t, root, 3), Options{SizeBytes: 4 << 20, MaxHeldBytes: held})
			if err != nil {
				t.Fatal(err)
			}
			return j
		}
		j := open()
		sink := &memSink{img: map[uint64][]byte{}, span: 64}
		newDestager := func(j *Journal) *Destager {
			d, err := NewDestager(j, sink, DestagerConfig{StripeSizeBytes: 64 * LBASize, ThresholdPercent: 100, Ticks: make(chan time.Time)})
			if err != nil {
				t.Fatal(err)
			}
			return d
		}
		d := newDestager(j)
		const lbas = 1000
		model := make([]byte, lbas*LBASize)
		img := func(l uint64) []byte {
			sink.mu.Lock()
			defer sink.mu.Unlock()
			if b, ok := sink.img[l]; ok {
				return b
			}
			return make([]byte, LBASize)
		}
		rng := rand.New(rand.NewPCG(uint64(held)+3, 11))
		for step := 0; step < 400; step++ {
			switch op := rng.IntN(20); {
			case op < 16:
				lba := rng.Uint64N(lbas)
				n := 1 + rng.IntN(int(min(100, lbas-lba)))
				data := block(lba, step, n)
				if _, err := j.Append(ctx, lba, data); err != nil {
					t.Fatal(err)
				}
				clear(data[:LBASize]) // the caller's buffer is free once Append returned
				copy(model[lba*LBASize:], block(lba, step, n))
			case op < 19:
				if _, err := d.DestageOnce(ctx); err != nil {
					t.Fatal(err)
				}
			default:
				if err := j.Close(); err != nil {
					t.Fatal(err)
				}
				j = open()
				d = newDestager(j)
			}
			a := rng.Uint64N(lbas)
			n := 1 + rng.IntN(int(lbas-a))
			if got := readThrough(t, j, img, a, n); !bytes.Equal(got, model[a*LBASize:(a+uint64(n))*LBASize]) {
				t.Fatalf("held %d step %d: LBAs [%d,%d) differ from the model", held, step, a, a+uint64(n))
			}
		}
		if _, err := d.DestageOnce(ctx); err != nil {
			t.Fatal(err)
		}
		if used, _ := j.Fill(); used != 0 {
			t.Fatalf("held %d: %d bytes left after a full destage", held, used)
		}
		for l := uint64(0); l < lbas; l++ {
			if !bytes.Equal(img(l), model[l*LBASize:(l+1)*LBASize]) {
				t.Fatalf("held %d: stripe LBA %d differs from the model after destaging everything", held, l)
			}
		}
		j.Close()
	}
}

// failOneSink fails the writes of one stripe and counts concurrent calls.
type failOneSink struct {
	memSink
	failStripe    int64
	inFlight, top atomic.Int32
}

func (s *failOneSink) WriteStripe(ctx context.Context, idx int64, ext []Extent) error {
	n := s.inFlight.Add(1)
	defer s.inFlight.Add(-1)
	for {
		top := s.top.Load()
		if n <= top || s.top.CompareAndSwap(top, n) {
			break
		}
	}
	time.Sleep(2 * time.Millisecond) // a stripe write waits on the network
	if idx == s.failStripe {
		return errors.New("shard server unreachable")
	}
	return s.memSink.WriteStripe(ctx, idx, ext)
}

// TestParallelDestageTrimsOnlyWhenEveryStripeSucceeded: stripes are written
// concurrently, and one failing stripe among many keeps the whole pass
// untrimmed (its records stay readable from the journal); the next pass
// succeeds and empties the journal.
func TestParallelDestageTrimsOnlyWhenEveryStripeSucceeded(t *testing.T) {
	ctx := context.Background()
	j := openJournal(t, t.TempDir(), 3, 1<<20)
	defer j.Close()
	sink := &failOneSink{memSink: memSink{img: map[uint64][]byte{}, span: 8}, failStripe: 5}
	d, err := NewDestager(j, sink, DestagerConfig{StripeSizeBytes: 8 * LBASize, ThresholdPercent: 100, Ticks: make(chan time.Time), Parallel: 4})
	if err != nil {
		t.Fatal(err)
	}
	for s := uint64(0); s < 16; s++ {
		if _, err := j.Append(ctx, s*8, block(s*8, 1, 8)); err != nil {
			t.Fatal(err)
		}
	}
	used, _ := j.Fill()
	if _, err := d.DestageOnce(ctx); err == nil || !strings.Contains(err.Error(), "stripe 5") {
		t.Fatalf("destage with stripe 5 failing: %v", err)
	}
	if after, _ := j.Fill(); after != used {
		t.Fatalf("journal trimmed (%d -> %d bytes) although stripe 5 failed", used, after)
	}
	if got := readThrough(t, j, func(uint64) []byte { return make([]byte, LBASize) }, 40, 8); !bytes.Equal(got, block(40, 1, 8)) {
		t.Fatal("stripe 5's data is not readable from the journal after the failed pass")
	}
	sink.failStripe = -1
	if n, err := d.DestageOnce(ctx); err != nil || n != 16 {
		t.Fatalf("second pass: %d stripes, %v", n, err)
	}
	if after, _ := j.Fill(); after != 0 {
		t.Fatalf("%d bytes left after a successful pass", after)
	}
	if top := sink.top.Load(); top < 2 || top > 4 {
		t.Fatalf("at most %d stripe writes ran at once, want 2..4 (Parallel 4)", top)
	}
}

// Run reports each pass: OnError for a pass with a failing stripe (even
// though other stripes of it were written), OnSuccess only for a pass that
// wrote everything and trimmed — what the export's "destage failing" metric
// is built on.
func TestRunReportsFailedAndWholePasses(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	j := openJournal(t, t.TempDir(), 3, 1<<20)
	defer j.Close()
	sink := &failOneSink{memSink: memSink{img: map[uint64][]byte{}, span: 8}, failStripe: 5}
	ticks := make(chan time.Time)
	errs, oks := make(chan error, 4), make(chan int, 4)
	d, err := NewDestager(j, sink, DestagerConfig{StripeSizeBytes: 8 * LBASize, ThresholdPercent: 100, Ticks: ticks, Parallel: 4,
		OnError: func(err error) { errs <- err }, OnSuccess: func(n int) { oks <- n }})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = d.Run(ctx) }()
	for s := uint64(0); s < 16; s++ {
		if _, err := j.Append(ctx, s*8, block(s*8, 1, 8)); err != nil {
			t.Fatal(err)
		}
	}
	ticks <- time.Now()
	select {
	case err := <-errs:
		if !strings.Contains(err.Error(), "stripe 5") {
			t.Fatalf("OnError got %v", err)
		}
	case n := <-oks:
		t.Fatalf("OnSuccess(%d) for a pass whose stripe 5 failed", n)
	case <-time.After(30 * time.Second):
		t.Fatal("no report of the failed pass")
	}
	sink.failStripe = -1
	ticks <- time.Now()
	select {
	case n := <-oks:
		if n != 16 {
			t.Fatalf("OnSuccess(%d), want 16 stripes", n)
		}
	case err := <-errs:
		t.Fatalf("second pass failed: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("no report of the whole pass")
	}
}
