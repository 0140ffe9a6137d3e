package shardserver

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/billyronks/couchestor/pkg/journal"
)

// A shard write carrying a writer epoch below the highest one the server saw
// for its volume is refused (412, ErrFenced), also after a server restart;
// writes without an epoch and other volumes are not affected; a later volume
// of the same name (another UID) starts afresh.
func TestShardWritesBelowTheWriterEpochAreRefused(t *testing.T) {
	certs := testCerts(t)
	srv := newJournalServer(t, certs, nil)
	c := journalClient(t, certs)
	ctx := context.Background()
	put := func(vol, uid string, stripe int64, epoch uint64) error {
		p := randBytes(2000, uint64(stripe)+epoch)
		h := header(vol, stripe, 0, 1, p)
		h.VolumeUID, h.WriterEpoch = uid, epoch
		_, err := c.Put(ctx, srv.addr, h, p)
		return err
	}
	if err := put("v", "u1", 1, 1); err != nil {
		t.Fatal(err)
	}
	if err := put("v", "u1", 2, 2); err != nil {
		t.Fatal(err)
	}
	srv.stop()
	srv.start()
	err := put("v", "u1", 3, 1)
	if !errors.Is(err, ErrFenced) || !strings.Contains(err.Error(), "writer epoch 1, this server has seen epoch 2") {
		t.Fatalf("epoch 1 after epoch 2 (across a restart): %v", err)
	}
	for _, ok := range []struct {
		vol, uid string
		epoch    uint64
	}{{"v", "u1", 2}, {"v", "u1", 0}, {"w", "u9", 1}, {"v", "u2", 1}} {
		if err := put(ok.vol, ok.uid, 10+int64(ok.epoch)+int64(len(ok.uid+ok.vol))*7, ok.epoch); err != nil {
			t.Fatalf("%+v: %v", ok, err)
		}
	}
	// The UID-u2 volume now holds the fence at its epoch 1.
	if err := put("v", "u2", 50, 1); err != nil {
		t.Fatal(err)
	}
}

// Once a newer writer recorded its epoch on a replica, the older writer's
// appends, truncates, trims and resets are refused there (409 naming both
// epochs), so it cannot drop records it did not destage.
func TestJournalMutationsOfASupersededWriterAreRefused(t *testing.T) {
	certs := testCerts(t)
	srv := newJournalServer(t, certs, nil)
	c := journalClient(t, certs)
	ctx := context.Background()
	old, cur := c.JournalStore(srv.addr, "vol"), c.JournalStore(srv.addr, "vol")
	if err := old.SetEpoch(ctx, 1); err != nil {
		t.Fatal(err)
	}
	rec := func(seq, epoch uint64) []journal.Record {
		return []journal.Record{{Seq: seq, Epoch: epoch, Kind: journal.KindWrite, LBA: 0, Data: pattern(0, int(seq), 1)}}
	}
	if err := old.Append(ctx, rec(1, 1)); err != nil {
		t.Fatal(err)
	}
	if err := cur.SetEpoch(ctx, 2); err != nil {
		t.Fatal(err)
	}
	if err := cur.Append(ctx, rec(2, 2)); err != nil {
		t.Fatal(err)
	}
	for name, op := range map[string]func() error{
		"append":   func() error { return old.Append(ctx, rec(3, 1)) },
		"truncate": func() error { return old.TruncateAfter(ctx, 1) },
		"trim":     func() error { return old.Trim(ctx, 2) },
		"reset":    func() error { return old.Reset(ctx, 2) },
	} {
		err := op()
		if !errors.Is(err, ErrJournalConflict) || !strings.Contains(err.Error(), "writer epoch 1 is below the replica's epoch 2") {
			t.Fatalf("%s by the superseded writer: %v", name, err)
		}
	}
	info, err := cur.Info(ctx)
	if err != nil || info.LastSeq != 2 || info.TrimmedThrough != 0 {
		t.Fatalf("replica after the refused mutations: %+v %v", info, err)
	}
	if err := cur.Trim(ctx, 2); err != nil {
		t.Fatalf("the current writer's trim: %v", err)
	}
}
