package shardserver

// Writer fences (issue 17 item 1). An export stamps every shard it writes
// with its volume's writer epoch (ShardHeader.WriterEpoch, from the volume's
// Lease, pkg/fence); the server remembers the highest epoch it has seen per
// volume, durably (<data-dir>/fences/<volume>), and refuses a write that
// carries a lower one: the export that lost the volume to a newer one may
// still have destages in flight. A write without an epoch (rebuild, scrub,
// recovery tools, which act on stripes the ECStripe precondition guards) is
// not fenced. The record names the volume's UID: a later volume of the same
// name starts its epochs afresh. A new writer of a PlacementGroups volume
// raises the record on every member of its groups before it serves
// (PUT /v1/fences/{volume}, stripes.go); the raise waits for the writes of
// the volume admitted before it (each holds the volume's gate from admission
// to acknowledgement), so none of the older writer's lands after it.

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// ErrFenced: the write carries a writer epoch below the highest one this
// server has seen for the volume. HTTP 412.
var ErrFenced = errors.New("writer fenced: a newer export holds the volume")

const fencesDirName = "fences"

type fenceRecord struct {
	uid   string
	epoch uint64
}

type fences struct {
	dir string
	mu  sync.Mutex
	rec map[string]fenceRecord // loaded on first use
	// gates hold a volume's writes from admission to acknowledgement
	// (read-locked) against a raise of its fence (write-locked): once a
	// raise returns, no write admitted under the older epoch is still on
	// its way to being acknowledged.
	gates map[string]*sync.RWMutex
}

func newFences(dataDir string) *fences {
	return &fences{dir: filepath.Join(dataDir, fencesDirName), rec: map[string]fenceRecord{}, gates: map[string]*sync.RWMutex{}}
}

func (f *fences) gate(volume string) *sync.RWMutex {
	f.mu.Lock()
	defer f.mu.Unlock()
	g := f.gates[volume]
	if g == nil {
		g = &sync.RWMutex{}
		f.gates[volume] = g
	}
	return g
}

// enter admits a write like admit and holds the volume's gate until the
// returned release is called (after the write is acknowledged or failed).
func (f *fences) enter(volume, uid string, epoch uint64) (release func(), err error) {
	if epoch == 0 {
		return func() {}, nil
	}
	if err := ValidateJournalVolume(volume); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadShard, err)
	}
	g := f.gate(volume)
	g.RLock()
	if err := f.admit(volume, uid, epoch); err != nil {
		g.RUnlock()
		return nil, err
	}
	return g.RUnlock, nil
}

// raise records epoch as the volume's writer epoch (refusing one below the
// recorded epoch with ErrFenced) once every write admitted before it has
// finished: a new writer calls it on the members of its volume's placement
// groups before it serves, so an older writer still running can win no
// quorum of a group (README, "At scale", point 2).
func (f *fences) raise(volume, uid string, epoch uint64) error {
	if epoch == 0 {
		return fmt.Errorf("%w: a fence raise needs a writer epoch above 0", ErrBadShard)
	}
	if uid == "" {
		return fmt.Errorf("%w: a fence raise needs the volume's uid", ErrBadShard)
	}
	if err := ValidateJournalVolume(volume); err != nil {
		return fmt.Errorf("%w: %v", ErrBadShard, err)
	}
	g := f.gate(volume)
	if raiseHook != nil {
		raiseHook()
	}
	g.Lock()
	defer g.Unlock()
	return f.admit(volume, uid, epoch)
}

// raiseHook, when set (tests only), runs in raise before it waits for the
// volume's writes in flight.
var raiseHook func()

// admit checks a write of volume (uid) carrying epoch and raises the
// recorded epoch (durably) when the write's is higher.
func (f *fences) admit(volume, uid string, epoch uint64) error {
	if epoch == 0 {
		return nil
	}
	if err := ValidateJournalVolume(volume); err != nil {
		return fmt.Errorf("%w: %v", ErrBadShard, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	cur, ok := f.rec[volume]
	if !ok {
		var err error
		if cur, err = f.load(volume); err != nil {
			return err
		}
		f.rec[volume] = cur
	}
	if cur.uid == uid {
		if epoch < cur.epoch {
			return fmt.Errorf("%w: volume %s: the write carries writer epoch %d, this server has seen epoch %d", ErrFenced, volume, epoch, cur.epoch)
		}
		if epoch == cur.epoch {
			return nil
		}
	}
	next := fenceRecord{uid: uid, epoch: epoch}
	if err := f.store(volume, next); err != nil {
		return err
	}
	f.rec[volume] = next
	return nil
}

func (f *fences) load(volume string) (fenceRecord, error) {
	p := filepath.Join(f.dir, volume)
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return fenceRecord{}, nil
	}
	if err != nil {
		return fenceRecord{}, fmt.Errorf("read writer fence %s: %w", p, err)
	}
	uid, e, ok := strings.Cut(strings.TrimSpace(string(b)), " ")
	n, perr := strconv.ParseUint(e, 10, 64)
	if !ok || perr != nil {
		return fenceRecord{}, fmt.Errorf("writer fence %s holds %q, want \"<volume uid> <epoch>\"", p, b)
	}
	return fenceRecord{uid: uid, epoch: n}, nil
}

// store replaces the record atomically and durably.
func (f *fences) store(volume string, r fenceRecord) error {
	if err := os.MkdirAll(f.dir, 0o750); err != nil {
		return fmt.Errorf("writer fences: %w", err)
	}
	p := filepath.Join(f.dir, volume)
	tmp := p + ".tmp"
	if err := writeFileSync(tmp, []byte(r.uid+" "+strconv.FormatUint(r.epoch, 10)+"\n")); err != nil {
		return fmt.Errorf("write writer fence %s: %w", p, err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return fmt.Errorf("write writer fence %s: %w", p, err)
	}
	if err := syncDirPath(f.dir); err != nil {
		return fmt.Errorf("write writer fence %s: %w", p, err)
	}
	return nil
}

func writeFileSync(p string, b []byte) error {
	fh, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return err
	}
	if _, err := fh.Write(b); err != nil {
		fh.Close()
		return err
	}
	if err := fh.Sync(); err != nil {
		fh.Close()
		return err
	}
	return fh.Close()
}

func syncDirPath(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
