package ecvolume

import (
	"context"
	"fmt"

	"github.com/billyronks/couchestor/pkg/journal"
	"github.com/billyronks/couchestor/pkg/nbd"
)

// fencedBackend serves I/O only while the export holds its volume's writer
// Lease (issue 17 item 1): every request checks the Lease before it starts
// and again before it is answered, so a holder that lost it (paused past its
// Lease, or taken over) answers with errors, never with bytes a newer export
// may have overwritten.
type fencedBackend struct {
	nbd.Backend
	check func() error
}

func (b fencedBackend) fenced(op string, err error) error {
	if err != nil {
		return err
	}
	if err := b.check(); err != nil {
		return fmt.Errorf("%s refused: %w", op, err)
	}
	return nil
}

func (b fencedBackend) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := b.fenced("read", nil); err != nil {
		return err
	}
	return b.fenced("read", b.Backend.ReadAt(ctx, p, off))
}

func (b fencedBackend) WriteAt(ctx context.Context, p []byte, off int64) error {
	if err := b.fenced("write", nil); err != nil {
		return err
	}
	return b.fenced("write", b.Backend.WriteAt(ctx, p, off))
}

func (b fencedBackend) Flush(ctx context.Context) error {
	return b.fenced("flush", b.Backend.Flush(ctx))
}

func (b fencedBackend) Trim(ctx context.Context, off, length int64) error {
	return b.fenced("trim", b.Backend.Trim(ctx, off, length))
}

func (b fencedBackend) WriteZeroes(ctx context.Context, off, length int64) error {
	if err := b.fenced("write zeroes", nil); err != nil {
		return err
	}
	return b.fenced("write zeroes", b.Backend.WriteZeroes(ctx, off, length))
}

// fencedStore is a journal replica that refuses mutations once the export
// lost its Lease; the replica itself refuses those of a writer whose journal
// epoch a newer writer superseded (shardserver's writer parameter).
type fencedStore struct {
	journal.Store
	check func() error
}

func (s fencedStore) guard(op string) error {
	if err := s.check(); err != nil {
		// Check fails for good once it fails: the journal ends (ErrFenced).
		return fmt.Errorf("journal %s refused: %w: %w", op, journal.ErrFenced, err)
	}
	return nil
}

func (s fencedStore) Append(ctx context.Context, recs []journal.Record) error {
	if err := s.guard("append"); err != nil {
		return err
	}
	return s.Store.Append(ctx, recs)
}

func (s fencedStore) TruncateAfter(ctx context.Context, seq uint64) error {
	if err := s.guard("truncate"); err != nil {
		return err
	}
	return s.Store.TruncateAfter(ctx, seq)
}

func (s fencedStore) Trim(ctx context.Context, through uint64) error {
	if err := s.guard("trim"); err != nil {
		return err
	}
	return s.Store.Trim(ctx, through)
}

func (s fencedStore) Reset(ctx context.Context, through uint64) error {
	if err := s.guard("reset"); err != nil {
		return err
	}
	return s.Store.Reset(ctx, through)
}

func (s fencedStore) SetEpoch(ctx context.Context, epoch uint64) error {
	if err := s.guard("set epoch"); err != nil {
		return err
	}
	return s.Store.SetEpoch(ctx, epoch)
}
