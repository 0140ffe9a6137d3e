package shardserver

import (
	"context"
	"errors"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// A stripe lookup lists every durable shard of the stripe the server holds,
// every shard index and generation, with the header's stripe metadata, and
// nothing of another volume of the same name; after a restart the answer is
// the same (it is read from the shard headers); a stripe the server holds
// nothing of is an empty holding, and bad requests name the parameter.
func TestStripeLookupListsEveryHeldGeneration(t *testing.T) {
	certs := testCerts(t)
	srv := newJournalServer(t, certs, nil)
	c := journalClient(t, certs)
	ctx := context.Background()
	put := func(uid string, stripe int64, idx int, gen int64) {
		t.Helper()
		p := randBytes(3000, uint64(stripe*100+int64(idx)*10+gen))
		h := header("v", stripe, idx, gen, p)
		h.VolumeUID, h.PlacementGroups, h.WriterEpoch = uid, 8, 3
		h.ShardChecksums, h.StripeChecksum = []string{h.Checksum}, "stripe-sum"
		if _, err := c.Put(ctx, srv.addr, h, p); err != nil {
			t.Fatal(err)
		}
	}
	put("u1", 7, 0, 1)
	put("u1", 7, 0, 2)
	put("u1", 7, 3, 1)
	put("u2", 7, 1, 1) // another volume named v
	put("u1", 8, 0, 1) // another stripe
	check := func(when string) {
		t.Helper()
		h, err := c.StripeShards(ctx, srv.addr, "v", "u1", 7)
		if err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		var got []string
		for _, s := range h.Shards {
			if s.WriterEpoch != 3 || s.PlacementGroups != 8 || s.StripeChecksum != "stripe-sum" || len(s.ShardChecksums) != 1 || s.Offset < 0 {
				t.Fatalf("%s: shard %+v lost header metadata", when, s)
			}
			got = append(got, strconv.Itoa(s.ShardIndex)+"/"+strconv.FormatInt(s.Generation, 10))
		}
		if strings.Join(got, " ") != "0/1 0/2 3/1" {
			t.Fatalf("%s: holding %v, want 0/1 0/2 3/1", when, got)
		}
		none, err := c.StripeShards(ctx, srv.addr, "v", "u1", 9)
		if err != nil || len(none.Shards) != 0 {
			t.Fatalf("%s: a stripe the server holds nothing of: %+v %v", when, none, err)
		}
	}
	check("after the writes")
	srv.stop()
	srv.start()
	check("after a restart")
	for q, want := range map[string]string{
		"":             "needs volume",
		"volume=v":     "needs volume",
		"uid=u1":       "needs volume",
		"volume=v&x=1": "query parameter \"x\"",
	} {
		err := getRaw(ctx, c, srv.addr, "/v1/stripes/7", q)
		if err == nil || !strings.Contains(err.Error(), "HTTP 400") || !strings.Contains(err.Error(), want) {
			t.Fatalf("query %q: %v, want a 400 saying %q", q, err, want)
		}
	}
	if err := getRaw(ctx, c, srv.addr, "/v1/stripes/-1", "volume=v&uid=u1"); err == nil || !strings.Contains(err.Error(), "stripe \"-1\" must be a stripe id >= 0") {
		t.Fatalf("stripe -1: %v", err)
	}
}

// A raised fence refuses shard writes below its epoch, and a raise below the
// recorded epoch is refused itself (the raiser is the stale writer).
func TestRaisedFenceRefusesOlderWriters(t *testing.T) {
	certs := testCerts(t)
	srv := newJournalServer(t, certs, nil)
	c := journalClient(t, certs)
	ctx := context.Background()
	if err := c.RaiseFence(ctx, srv.addr, "v", "u1", 5); err != nil {
		t.Fatal(err)
	}
	p := randBytes(2000, 1)
	h := header("v", 1, 0, 1, p)
	h.VolumeUID, h.WriterEpoch = "u1", 4
	if _, err := c.Put(ctx, srv.addr, h, p); !errors.Is(err, ErrFenced) {
		t.Fatalf("a write at epoch 4 after a raise to 5: %v", err)
	}
	if err := c.RaiseFence(ctx, srv.addr, "v", "u1", 3); !errors.Is(err, ErrFenced) {
		t.Fatalf("a raise to 3 after 5: %v", err)
	}
	h.WriterEpoch = 5
	if _, err := c.Put(ctx, srv.addr, h, p); err != nil {
		t.Fatalf("a write at the raised epoch: %v", err)
	}
	if err := c.RaiseFence(ctx, srv.addr, "v", "", 6); err == nil || !strings.Contains(err.Error(), "needs the volume's uid") {
		t.Fatalf("a raise without uid: %v", err)
	}
}

// getRaw GETs path with the raw query q on addr.
func getRaw(ctx context.Context, c *Client, addr, path, q string) error {
	vals, err := url.ParseQuery(q)
	if err != nil {
		return err
	}
	_, _, err = c.do(ctx, "GET", addr, path, vals, nil, nil)
	return err
}

// blockingWrite holds the store file's first payload write until released.
type blockingWrite struct {
	storeFile
	entered chan struct{}
	release chan struct{}
	once    *sync.Once
}

func (b blockingWrite) WriteAt(p []byte, off int64) (int, error) {
	b.once.Do(func() {
		close(b.entered)
		<-b.release
	})
	return b.storeFile.WriteAt(p, off)
}

// A fence raise returns only after the volume's writes admitted under the
// older epoch have finished (so a new writer that raised the fence and then
// reads sees every write the old one will ever get acknowledged on this
// server), and those writes still succeed; the old epoch's next write is
// refused.
func TestFenceRaiseWaitsForWritesInFlight(t *testing.T) {
	srv := limitedServer(t, DefaultLimits())
	s := srv.store
	bw := blockingWrite{storeFile: s.data, entered: make(chan struct{}), release: make(chan struct{}), once: &sync.Once{}}
	s.data = bw
	p := randBytes(4096, 9)
	h := header("v", 0, 0, 1, p)
	h.VolumeUID, h.WriterEpoch = "u1", 1
	var written atomic.Bool
	writeErr := make(chan error, 1)
	go func() {
		_, err := s.Write(h, p)
		written.Store(true)
		writeErr <- err
	}()
	<-bw.entered // the write is admitted and in flight
	raiseHook = func() { close(bw.release) }
	defer func() { raiseHook = nil }()
	if err := s.RaiseFence("v", "u1", 2); err != nil {
		t.Fatal(err)
	}
	if !written.Load() {
		t.Fatal("the fence raise returned while a write admitted under the older epoch was still in flight")
	}
	if err := <-writeErr; err != nil {
		t.Fatalf("the write admitted before the raise: %v", err)
	}
	h2 := header("v", 1, 0, 1, p)
	h2.VolumeUID, h2.WriterEpoch = "u1", 1
	if _, err := s.Write(h2, p); !errors.Is(err, ErrFenced) {
		t.Fatalf("a write of epoch 1 after the raise to 2: %v", err)
	}
}
