package journal

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"
)

// StripeSink takes journaled data into the erasure-coded stripes. The sink
// owns the read-modify-write: it merges the extents (the newest journal data
// inside the stripe) into the stripe's current bytes, re-encodes and stores
// the full stripe. Returning nil means the new stripe is durable; only then
// is the journal trimmed. WriteStripe may be called again with the same data
// after a crash, so it must be idempotent. The Destager calls it for up to
// DestagerConfig.Parallel different stripes at once; the extents' data is
// shared with the journal and must not be modified.
type StripeSink interface {
	WriteStripe(ctx context.Context, stripeIndex int64, extents []Extent) error
}

// DestagerConfig comes from journalConfig and the policy's stripeSizeBytes.
type DestagerConfig struct {
	StripeSizeBytes  int64         // stripeSizeBytes: destaging writes whole stripes
	ThresholdPercent int           // destageThresholdPercent: destage once fill reaches it
	Interval         time.Duration // destageInterval: destage at least this often
	// Ticks replaces the Interval timer (tests inject a clock); nil uses a time.Ticker.
	Ticks <-chan time.Time
	// OnError hears destage failures; Run retries at the next trigger.
	OnError func(error)
	// OnSuccess hears a pass that wrote every stripe it touched (n of them)
	// and trimmed the journal; n is 0 when there was nothing to destage.
	OnSuccess func(n int)
	// Parallel is how many stripes are written at once (0 means 4): a
	// stripe write is mostly waiting on shard servers and the API server.
	Parallel int
}

// Destager moves journaled writes into full stripes and then trims the journal.
type Destager struct {
	j    *Journal
	sink StripeSink
	cfg  DestagerConfig
}

// NewDestager checks cfg and returns a destager for j.
func NewDestager(j *Journal, sink StripeSink, cfg DestagerConfig) (*Destager, error) {
	if cfg.StripeSizeBytes < LBASize || cfg.StripeSizeBytes%LBASize != 0 {
		return nil, fmt.Errorf("journal: stripeSizeBytes %d must be a positive multiple of %d", cfg.StripeSizeBytes, LBASize)
	}
	if cfg.ThresholdPercent < 0 || cfg.ThresholdPercent > 100 {
		return nil, fmt.Errorf("journal: destageThresholdPercent %d must be within [0, 100]", cfg.ThresholdPercent)
	}
	if cfg.Ticks == nil && cfg.Interval <= 0 {
		return nil, fmt.Errorf("journal: destageInterval %s must be positive", cfg.Interval)
	}
	if cfg.Parallel < 0 {
		return nil, fmt.Errorf("journal: destage parallelism %d must be >= 0", cfg.Parallel)
	}
	if cfg.Parallel == 0 {
		cfg.Parallel = 4
	}
	return &Destager{j: j, sink: sink, cfg: cfg}, nil
}

// Run destages every Interval (or tick), whenever the fill reaches
// ThresholdPercent, and whenever an Append waits for space, until ctx ends.
func (d *Destager) Run(ctx context.Context) error {
	ticks := d.cfg.Ticks
	if ticks == nil {
		t := time.NewTicker(d.cfg.Interval)
		defer t.Stop()
		ticks = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-d.j.done:
			return ErrClosed
		case <-ticks:
		case <-d.j.wake:
			used, size := d.j.Fill()
			if d.j.waiting.Load() == 0 && used*100 < int64(d.cfg.ThresholdPercent)*size {
				continue
			}
		}
		n, err := d.DestageOnce(ctx)
		switch {
		case err != nil && d.cfg.OnError != nil:
			d.cfg.OnError(err)
		case err == nil && d.cfg.OnSuccess != nil:
			d.cfg.OnSuccess(n)
		}
	}
}

// DestageOnce writes every stripe touched by the durable journal records to
// the sink, newest data per LBA, then trims those records. It returns the
// number of stripes written. A stripe may also receive data of records
// committed after the snapshot (they are durable too, and newer); those stay
// in the journal past the trim and are written again by a later pass, which
// the sink's idempotence allows.
func (d *Destager) DestageOnce(ctx context.Context) (int, error) {
	through, entries := d.j.snapshot()
	if len(entries) == 0 {
		if through > 0 {
			// Only epoch markers are left: trim them so the space is reused.
			if err := d.j.trim(ctx, through); err != nil {
				return 0, err
			}
		}
		return 0, nil
	}
	span := uint64(d.cfg.StripeSizeBytes / LBASize)
	touched := map[uint64]bool{}
	for _, e := range entries {
		for s := e.lba / span; s <= (e.lba+e.nlba-1)/span; s++ {
			touched[s] = true
		}
	}
	stripes := make([]uint64, 0, len(touched))
	for s := range touched {
		stripes = append(stripes, s)
	}
	sort.Slice(stripes, func(a, b int) bool { return stripes[a] < stripes[b] })
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu       sync.Mutex
		firstErr error
		next     int
		wg       sync.WaitGroup
	)
	for w := 0; w < min(d.cfg.Parallel, len(stripes)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				if next == len(stripes) || firstErr != nil {
					mu.Unlock()
					return
				}
				s := stripes[next]
				next++
				mu.Unlock()
				if err := d.writeStripe(wctx, s, span); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
						cancel()
					}
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return 0, firstErr
	}
	if err := d.j.trim(ctx, through); err != nil {
		return len(stripes), fmt.Errorf("journal: trim after destaging through seq %d: %w", through, err)
	}
	return len(stripes), nil
}

func (d *Destager) writeStripe(ctx context.Context, s, span uint64) error {
	extents, err := d.j.Lookup(ctx, s*span, (s+1)*span)
	if err != nil {
		return fmt.Errorf("journal: destage stripe %d: %w", s, err)
	}
	if err := d.sink.WriteStripe(ctx, int64(s), extents); err != nil {
		return fmt.Errorf("journal: destage stripe %d: sink: %w", s, err)
	}
	return nil
}
