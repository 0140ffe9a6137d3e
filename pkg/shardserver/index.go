package shardserver

// The pool's stripe index (pkg/shardindex, <data-dir>/stripes.db): for every
// shard slot (volume, stripe, shard index) the newest generation this server
// holds, with its offset, payload length, checksum, writer epoch and
// placement group, and exact per-group counts. It is the per-stripe record of
// the at-scale layout (README, "At scale: placement groups and a per-server
// stripe index", point 2), read by rebuild, scrub and the ECStripe view
// through GET /v1/groups/{group}/count and /entries.
//
// Crash safety. The allocation log stays the record of which ranges of the
// store file are allocated (its proof is unchanged: an extent is logged only
// after its bytes are written, fsynced before acknowledgement); the index is
// a second record derived from the same shards, committed in the same write
// step before the acknowledgement:
//
//	PUT:  bytes written → 'A' logged → fsync(data, log) → index commit (fsync) → 200
//	free: 'F' logged → fsync(log) → index delete (fsync) → 204
//
// So every acknowledged write has its entry and every acknowledged free has
// none. A crash between the two commits leaves the index one step behind the
// log; OpenStore therefore compares the index with what the shard headers of
// the logged extents say (it reads every header on open anyway) and, when
// they differ in anything or the file is missing or does not decode, rebuilds
// it from those headers (the damaged file is kept as stripes.db.damaged). A
// failed index commit fails the write and frees its extent durably before
// the error is returned; any index failure but a refused stale generation
// also stops the store acknowledging (like a failed fsync) until a restart
// reconciles the index. Replacing the log by the index was weighed and not
// done: the index would then have to keep every superseded generation's
// extent until it is freed, and a lost index could only be rebuilt by
// scanning the whole store file for headers, where a freed extent's header
// still reads as valid; keeping both, with the index derived, needs neither.
//
// Headers the index cannot hold. Writes refuse a header the index cannot
// key (ShardHeader.Validate), but a store may hold shards of writers that
// predate those checks: a volume UID beyond shardindex.MaxVolumeUIDLen, a
// checksum of another form, a shard index beyond a byte. One such header
// used to fail the whole store's open (the rebuild's Put refused it), so
// every other shard of the pool became unreadable with it. Now OpenStore
// leaves such a shard out of the index and keeps it as it was: allocated in
// the log, listed by GET /v1/shards, readable and freeable (its free has no
// entry to delete); it is only missing from the group counts and listings.
// It is reported, never dropped: Space.Unindexable counts them and
// UnindexableReport names them (the shard server logs it on start).

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/billyronks/couchestor/pkg/erasure"
	"github.com/billyronks/couchestor/pkg/placement"
	"github.com/billyronks/couchestor/pkg/shardindex"
)

const indexFileName = "stripes.db"

// UnknownGroup is the placement group of a shard whose writer sent no volume
// UID or no placement group count (ShardHeader.PlacementGroups): writers
// that predate placement groups. placement.GroupOf never returns it.
const UnknownGroup uint32 = math.MaxUint32

// nameKeyPrefix keys a shard written without a volume UID by its volume's
// name (a Kubernetes UID never contains ':').
const nameKeyPrefix = "name:"

func indexVolume(h *ShardHeader) string {
	if h.VolumeUID != "" {
		return h.VolumeUID
	}
	return nameKeyPrefix + h.Volume
}

// GroupOfHeader is the placement group the index records a shard under.
func GroupOfHeader(h *ShardHeader) uint32 {
	if h.VolumeUID == "" || h.PlacementGroups == 0 || h.PlacementGroups > placement.MaxGroups || h.StripeID < 0 {
		return UnknownGroup
	}
	return placement.GroupOf(h.VolumeUID, uint64(h.StripeID), h.PlacementGroups)
}

func parseShardChecksum(s string) (uint64, error) {
	hex, ok := strings.CutPrefix(s, erasure.ShardChecksumPrefix)
	if !ok || len(hex) != 16 {
		return 0, fmt.Errorf("checksum %q is not %s and 16 hex digits", s, erasure.ShardChecksumPrefix)
	}
	return strconv.ParseUint(hex, 16, 64)
}

func formatShardChecksum(d uint64) string {
	return fmt.Sprintf("%s%016x", erasure.ShardChecksumPrefix, d)
}

// errUnindexable: a shard header the stripe index cannot key or hold (a
// legacy or odd header: a volume key of more than MaxVolumeUIDLen bytes, a
// shard index beyond a byte, a negative stripe or generation, a checksum of
// another form). Writes refuse such headers (Validate); one found on open is
// kept and served without an index entry (Store.UnindexableReport).
var errUnindexable = errors.New("the stripe index cannot hold this shard header")

// indexRecord is the index entry of the shard with header h at offset off.
func indexRecord(h *ShardHeader, off int64) (shardindex.Record, error) {
	bad := func(format string, args ...any) (shardindex.Record, error) {
		return shardindex.Record{}, fmt.Errorf("%w: %w: shard %s/%d/%d: %s", ErrBadShard, errUnindexable, h.Volume, h.StripeID, h.ShardIndex, fmt.Sprintf(format, args...))
	}
	switch v := indexVolume(h); {
	case h.VolumeUID == "" && h.Volume == "":
		return bad("neither volumeUid nor volume is set")
	case len(v) > shardindex.MaxVolumeUIDLen:
		return bad("volume key %.40q… of %d bytes, the index holds at most %d", v, len(v), shardindex.MaxVolumeUIDLen)
	case h.ShardIndex < 0 || h.ShardIndex > 254:
		return bad("shardIndex %d is not within [0, 254]", h.ShardIndex)
	case h.StripeID < 0:
		return bad("stripeId %d is negative", h.StripeID)
	case h.Generation < 0:
		return bad("generation %d is negative", h.Generation)
	}
	sum, err := parseShardChecksum(h.Checksum)
	if err != nil {
		return bad("%v", err)
	}
	return shardindex.Record{
		Key: shardindex.Key{Group: GroupOfHeader(h), Volume: indexVolume(h), Stripe: uint64(h.StripeID), Shard: uint8(h.ShardIndex)},
		Entry: shardindex.Entry{Generation: uint64(h.Generation), Offset: uint64(off), Length: uint64(h.SizeBytes),
			Checksum: sum, Epoch: h.WriterEpoch},
	}, nil
}

// newestLocked is the newest durable extent with a header of h's slot and
// index key (the store's slots are keyed by volume name, the index's by UID:
// two volumes of one name are two index keys), or nil. Caller holds mu.
func (s *Store) newestLocked(h *ShardHeader) *extent {
	var best *extent
	vol := indexVolume(h)
	for _, e := range s.slots[h.Key()] {
		if e.pending || e.header == nil || indexVolume(e.header) != vol {
			continue
		}
		if best == nil || e.header.Generation > best.header.Generation {
			best = e
		}
	}
	return best
}

// expectedIndex is what the index must hold: for every index key, the
// newest generation with a readable header. A header the index cannot hold
// (errUnindexable) is left out and recorded in s.unindexable: one odd
// legacy header must not make the whole store unreadable. Called while
// opening (no concurrency).
func (s *Store) expectedIndex() (map[indexSlot]shardindex.Record, error) {
	want := make(map[indexSlot]shardindex.Record, len(s.extents))
	for _, e := range s.extents {
		if e.header == nil || e.pending {
			continue
		}
		r, err := indexRecord(e.header, e.offset)
		if errors.Is(err, errUnindexable) {
			s.unindexable[e.offset] = err.Error()
			continue
		}
		if err != nil {
			return nil, err
		}
		k := slotOf(r.Key)
		if held, ok := want[k]; ok && held.Generation >= r.Generation {
			continue
		}
		want[k] = r
	}
	return want, nil
}

// indexSlot is what the index keys an entry by (the group is in the value:
// a newer generation may record another one).
type indexSlot struct {
	volume string
	stripe uint64
	shard  uint8
}

func slotOf(k shardindex.Key) indexSlot { return indexSlot{k.Volume, k.Stripe, k.Shard} }

// openIndex opens the index and makes it agree with the shard headers,
// rebuilding it from them when it does not.
func (s *Store) openIndex() error {
	want, err := s.expectedIndex()
	if err != nil {
		return err
	}
	path := filepath.Join(s.dir, indexFileName)
	_, statErr := os.Stat(path)
	existed := statErr == nil
	// An existing file is read whole, read-only, before Open trusts it:
	// Open's freelist walk panics on a damaged page where nothing can
	// recover (shardindex.Open).
	var reason string
	switch {
	case existed:
		ro, err := shardindex.OpenReadOnly(path, time.Second)
		if err != nil {
			reason = fmt.Sprintf("it does not open: %v", err)
			break
		}
		if err := ro.Verify(); err != nil {
			reason = fmt.Sprintf("it does not read: %v", err)
		} else {
			reason = compareIndex(ro, want)
		}
		_ = ro.Close()
	case len(want) > 0:
		reason = "the file was missing"
	}
	if reason == "" {
		x, err := shardindex.Open(path, time.Second)
		if err == nil {
			s.index = x
			return nil
		}
		reason = fmt.Sprintf("it does not open: %v", err)
	}
	if existed {
		if err := os.Rename(path, path+".damaged"); err != nil {
			return fmt.Errorf("stripe index %s: %s; set it aside: %w", path, reason, err)
		}
	} else if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("stripe index %s: %w", path, err)
	}
	x, err := shardindex.Open(path, time.Second)
	if err != nil {
		return err
	}
	if err := fillIndex(x, want); err != nil {
		_ = x.Close()
		return fmt.Errorf("rebuild stripe index %s from the shard headers: %w", path, err)
	}
	if err := syncDir(s.dir); err != nil {
		_ = x.Close()
		return err
	}
	s.index, s.indexRebuilt = x, fmt.Sprintf("stripe index %s rebuilt from %d shard headers: %s", path, len(want), reason)
	return nil
}

// compareIndex says how x differs from want ("" when it does not). A file
// damaged in ways bbolt does not check can panic a read: that is a
// difference too.
func compareIndex(x *shardindex.Index, want map[indexSlot]shardindex.Record) (reason string) {
	defer func() {
		if p := recover(); p != nil {
			reason = fmt.Sprintf("reading it failed: %v", p)
		}
	}()
	seen := 0
	errDiffer := errors.New("differs")
	err := x.ForEach(func(r shardindex.Record) error {
		w, ok := want[slotOf(r.Key)]
		switch {
		case !ok:
			reason = fmt.Sprintf("it holds %s, which no shard header names", r.Key)
		case w != r:
			reason = fmt.Sprintf("its entry of %s is %+v, the shard header says %s %+v", r.Key, r.Entry, w.Key, w.Entry)
		default:
			seen++
			return nil
		}
		return errDiffer
	})
	if err != nil && !errors.Is(err, errDiffer) {
		return fmt.Sprintf("it does not decode: %v", err)
	}
	if reason != "" {
		return reason
	}
	if seen != len(want) {
		return fmt.Sprintf("it holds %d of the %d shards the headers name", seen, len(want))
	}
	counts, err := x.Counts()
	if err != nil {
		return fmt.Sprintf("its counts do not decode: %v", err)
	}
	wantCounts := map[uint32]uint64{}
	for _, r := range want {
		wantCounts[r.Group]++
	}
	for g, n := range wantCounts {
		if counts[g] != n {
			return fmt.Sprintf("it counts %d entries in group %d, it holds %d", counts[g], g, n)
		}
	}
	if len(counts) != len(wantCounts) {
		return fmt.Sprintf("it counts entries in %d groups, it holds entries of %d", len(counts), len(wantCounts))
	}
	return ""
}

// fillIndex puts want into an empty index, in key order, 10,000 a commit.
func fillIndex(x *shardindex.Index, want map[indexSlot]shardindex.Record) error {
	recs := make([]shardindex.Record, 0, len(want))
	for _, r := range want {
		recs = append(recs, r)
	}
	sort.Slice(recs, func(i, j int) bool {
		a, b := recs[i].Key, recs[j].Key
		if a.Volume != b.Volume {
			return a.Volume < b.Volume
		}
		if a.Stripe != b.Stripe {
			return a.Stripe < b.Stripe
		}
		return a.Shard < b.Shard
	})
	for len(recs) > 0 {
		n := min(len(recs), 10000)
		if err := x.Put(recs[:n]); err != nil {
			return err
		}
		recs = recs[n:]
	}
	return nil
}

// IndexRebuilt says why OpenStore rebuilt the stripe index from the shard
// headers ("" when it was found consistent, or the store keeps no index).
func (s *Store) IndexRebuilt() string { return s.indexRebuilt }

// UnindexableReport says which shards the store holds without a stripe
// index entry because their headers cannot be indexed (errUnindexable): ""
// when there are none. They are stored, listed (List), readable and freed
// like any other shard, through the allocation log; they are missing from
// the group counts and listings only. Space.Unindexable counts them.
func (s *Store) UnindexableReport() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.unindexable) == 0 {
		return ""
	}
	offs := make([]int64, 0, len(s.unindexable))
	for off := range s.unindexable {
		offs = append(offs, off)
	}
	sort.Slice(offs, func(i, j int) bool { return offs[i] < offs[j] })
	const shown = 3
	var b strings.Builder
	fmt.Fprintf(&b, "stripe index %s cannot hold the headers of %d stored shards; they are kept, listed, readable and freeable, but missing from the group counts and listings:", filepath.Join(s.dir, indexFileName), len(offs))
	for i, off := range offs {
		if i == shown {
			fmt.Fprintf(&b, "; and %d more", len(offs)-shown)
			break
		}
		fmt.Fprintf(&b, " [offset %d: %s]", off, s.unindexable[off])
	}
	return b.String()
}

// IndexSizeBytes is the stripe index file's size (0 without an index).
func (s *Store) IndexSizeBytes() (int64, error) {
	if s.index == nil {
		return 0, nil
	}
	return s.index.SizeBytes()
}

// ErrNoIndex: the store was opened WithoutIndex (benchmarks only). HTTP 503.
var ErrNoIndex = errors.New("this shard store keeps no stripe index")

// ErrBadIndexRequest: a stripe index request is invalid. HTTP 400.
var ErrBadIndexRequest = errors.New("invalid stripe index request")

// indexFailed stops the store acknowledging after an index commit failed:
// the commit may have reached the disk partly, and only a restart (which
// compares the index with the headers) knows what it holds.
func (s *Store) indexFailed(err error) error {
	err = fmt.Errorf("stripe index %s: %w; the store acknowledges nothing more until the server restarts", filepath.Join(s.dir, indexFileName), err)
	s.broken.CompareAndSwap(nil, &err)
	return err
}

// IndexEntry is one entry of a group listing.
type IndexEntry struct {
	Group uint32 `json:"group"`
	// Volume is the volume's UID, or "name:" and its name for shards
	// written without a UID.
	Volume      string `json:"volume"`
	StripeID    uint64 `json:"stripeId"`
	ShardIndex  uint8  `json:"shardIndex"`
	Generation  uint64 `json:"generation"`
	Offset      uint64 `json:"offset"`
	SizeBytes   uint64 `json:"sizeBytes"`
	Checksum    string `json:"checksum"`
	WriterEpoch uint64 `json:"writerEpoch,omitempty"`
}

// GroupPage is one page of a group's entries. Next is empty when the
// listing is complete, else the cursor of the next page (a page may hold
// fewer than the limit, even none, and still have one).
type GroupPage struct {
	Group   uint32       `json:"group"`
	Entries []IndexEntry `json:"entries"`
	Next    string       `json:"next,omitempty"`
}

// GroupCount is the number of index entries (shards) of a group.
type GroupCount struct {
	Group   uint32 `json:"group"`
	Entries uint64 `json:"entries"`
}

const (
	// MaxGroupPageEntries bounds a page of a group listing.
	MaxGroupPageEntries = 1000
	// groupPageBudget bounds the entries of the server one page request
	// examines (every group's entries share the file).
	groupPageBudget = 100000
)

// CountGroup returns the exact number of entries of group g.
func (s *Store) CountGroup(g uint32) (uint64, error) {
	// A store that stopped acknowledging may hold an index known to be
	// wrong: it answers nothing from it until a restart rebuilds it.
	if err := s.Err(); err != nil {
		return 0, err
	}
	if s.index == nil {
		return 0, ErrNoIndex
	}
	return s.index.Count(g)
}

// ListGroup returns up to limit entries of group g after cursor ("" first).
func (s *Store) ListGroup(g uint32, cursor string, limit int) (GroupPage, error) {
	// A store that stopped acknowledging may hold an index known to be
	// wrong: it answers nothing from it until a restart rebuilds it.
	if err := s.Err(); err != nil {
		return GroupPage{}, err
	}
	if s.index == nil {
		return GroupPage{}, ErrNoIndex
	}
	var after shardindex.Cursor
	if cursor != "" {
		b, err := decodeCursor(cursor)
		if err != nil {
			return GroupPage{}, err
		}
		after = b
	}
	recs, next, err := s.index.Page(g, after, limit, groupPageBudget)
	if errors.Is(err, shardindex.ErrForeignCursor) {
		return GroupPage{}, fmt.Errorf("%w: after=%q is a cursor of an index since rebuilt (which renumbers its volumes): list the group again from the start", ErrBadIndexRequest, cursor)
	}
	if err != nil {
		return GroupPage{}, err
	}
	p := GroupPage{Group: g, Entries: make([]IndexEntry, 0, len(recs))}
	for _, r := range recs {
		p.Entries = append(p.Entries, IndexEntry{Group: r.Group, Volume: r.Volume, StripeID: r.Stripe, ShardIndex: r.Shard,
			Generation: r.Generation, Offset: r.Offset, SizeBytes: r.Length, Checksum: formatShardChecksum(r.Checksum), WriterEpoch: r.Epoch})
	}
	if next != nil {
		p.Next = fmt.Sprintf("%x", []byte(next))
	}
	return p, nil
}

func decodeCursor(c string) (shardindex.Cursor, error) {
	bad := fmt.Errorf("%w: after=%q must be a cursor a previous page returned (%d lower-case hex digits)", ErrBadIndexRequest, c, 2*shardindex.CursorLen)
	if len(c) != 2*shardindex.CursorLen {
		return nil, bad
	}
	b := make([]byte, shardindex.CursorLen)
	for i := range b {
		v, err := strconv.ParseUint(c[2*i:2*i+2], 16, 8)
		if err != nil || strings.ToLower(c[2*i:2*i+2]) != c[2*i:2*i+2] {
			return nil, bad
		}
		b[i] = byte(v)
	}
	return b, nil
}
