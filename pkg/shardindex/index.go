// Package shardindex is one shard server's record of the stripes whose shards
// it holds, the authoritative per-stripe record of the at-scale layout (issue
// "Erasure coding at scale"; the design is in the README, "At scale:
// placement groups and a per-server stripe index"). It replaces one API
// object per stripe: the cluster keeps only placement groups (pkg/placement),
// and each member of a group keeps here, for every stripe of the group, the
// shard it holds: shard index, generation, offset and length in the pool's
// store, checksum and the writer epoch that wrote it.
//
// It is an embedded bbolt database (the store etcd uses), one file per pool:
// every Put is one transaction, durable (fsync) when Put returns, and
// concurrent Puts share a commit (bbolt's Batch). An entry's key is the
// volume's number on this server (4 bytes; the volumes bucket maps UIDs to
// numbers), the stripe id (8 bytes, big-endian) and the shard index (1 byte),
// so a writer's stripes land in order on a few pages and a commit rewrites
// only those; the value holds the group and a compact varint encoding of the
// rest, about 50 bytes per entry on disk. One entry per shard slot: the
// newest generation this server holds (generations only move forward).
// Keying by group first was measured and rejected: a batch of stripes
// spreads over every group, and each commit rewrote a page per group (3× the
// bytes per stripe, a third of the rate). Per-group entry counts are kept in
// the same transactions, so counts are exact and O(1); a group's entries are
// listed by one ordered scan (Scan), or a page at a time with a bound on the
// entries examined (Page), which a rebuild or a scrub does once per pass.
//
// Status: on the shard server's write path (pkg/shardserver commits a
// shard's entry after its bytes and allocation are durable and before the
// write is acknowledged, and rebuilds the file from the shard headers when
// it is missing or disagrees with them).
//
// What it owns: the index file's format and its rules (a stale generation is
// refused, a damaged entry is an error naming its key, never a zero). What it
// must not do: decide placement or health, or touch shard bytes.
package shardindex

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"
)

// MaxVolumeUIDLen bounds a volume key: a Kubernetes UID is 36 bytes, and a
// shard server keys shards written without a UID by "name:" and the volume's
// name (at most 253 bytes).
const MaxVolumeUIDLen = 320

var (
	bucketVolumes = []byte("volumes") // volume UID → number (4 B)
	bucketEntries = []byte("entries") // number (4 B) + stripe (8 B) + shard (1 B) → entry
	bucketCounts  = []byte("counts")  // group (4 B) → entry count (8 B)
	bucketMeta    = []byte("meta")    // "id" → the file's random id (8 B)
	keyFileID     = []byte("id")
)

// ErrStaleGeneration: the index already holds a newer generation for the key,
// or the same generation with another entry.
var ErrStaleGeneration = errors.New("stale generation")

// ErrDamaged: an entry or count in the file does not decode.
var ErrDamaged = errors.New("damaged index entry")

// ErrForeignCursor: a Page cursor from another index file (the index was
// rebuilt since the page was served, which renumbers volumes): a pass
// continued with it would skip or repeat entries, so it must start again.
var ErrForeignCursor = errors.New("cursor of another index file")

// fileIDLen is the length of the file's id, the first bytes of a cursor.
const fileIDLen = 8

// Key names the shard of one stripe of one volume in one placement group.
type Key struct {
	Group  uint32
	Volume string // the ECVolume's UID
	Stripe uint64
	Shard  uint8
}

func (k Key) String() string {
	return fmt.Sprintf("group %d volume %s stripe %d shard %d", k.Group, k.Volume, k.Stripe, k.Shard)
}

// Entry is what this server holds of a stripe's shard.
type Entry struct {
	Generation uint64
	Offset     uint64
	Length     uint64
	Checksum   uint64
	Epoch      uint64 // writer epoch of the volume's Lease that wrote it
}

// Record is a keyed entry.
type Record struct {
	Key
	Entry
}

// Index is one pool's stripe index.
type Index struct {
	db   *bolt.DB
	path string
	id   []byte // the file's id (bucketMeta), set by Open
}

// Open opens (creating if needed) the index file at path. A second process on
// the same file is refused after timeout.
//
// The freelist is rebuilt on open (bbolt's walk of every reachable page)
// instead of written on every commit; that walk runs in a goroutine of
// bbolt's own, where a damaged page is an unrecoverable panic, so a file
// not known to be sound is first read whole by OpenReadOnly (no walk there)
// under recover, as the shard server does.
func Open(path string, timeout time.Duration) (x *Index, err error) {
	if timeout <= 0 {
		timeout = time.Second
	}
	defer func() {
		if p := recover(); p != nil {
			x, err = nil, fmt.Errorf("open stripe index %s: the file is damaged: %v", path, p)
		}
	}()
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout: timeout,
		// One page write less per transaction.
		NoFreelistSync: true,
		FreelistType:   bolt.FreelistMapType,
	})
	if err != nil {
		return nil, fmt.Errorf("open stripe index %s: %w", path, err)
	}
	// Group commit: up to 1,000 concurrent Puts in one fsync, waiting at
	// most 2 ms for company.
	db.MaxBatchSize = 1000
	db.MaxBatchDelay = 2 * time.Millisecond
	// Grow the file 1 MiB at a time past its first MiB instead of bbolt's
	// doubling up to 16 MiB chunks: the file stays within 1 MiB of its pages.
	db.AllocSize = 1 << 20
	var id []byte
	if err := db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketVolumes, bucketEntries, bucketCounts, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		if v := meta.Get(keyFileID); len(v) == fileIDLen {
			id = append([]byte(nil), v...)
			return nil
		}
		id = make([]byte, fileIDLen)
		if _, err := rand.Read(id); err != nil {
			return err
		}
		return meta.Put(keyFileID, id)
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("init stripe index %s: %w", path, err)
	}
	return &Index{db: db, path: path, id: id}, nil
}

// OpenReadOnly opens an existing index for reading only (a shared lock, no
// freelist walk, no bucket created): to check a file before Open trusts it.
// Every read of a damaged file may panic; the caller recovers.
func OpenReadOnly(path string, timeout time.Duration) (x *Index, err error) {
	if timeout <= 0 {
		timeout = time.Second
	}
	defer func() {
		if p := recover(); p != nil {
			x, err = nil, fmt.Errorf("open stripe index %s read-only: the file is damaged: %v", path, p)
		}
	}()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: timeout, ReadOnly: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		return nil, fmt.Errorf("open stripe index %s read-only: %w", path, err)
	}
	return &Index{db: db, path: path}, nil
}

// Verify reads every key and value of every bucket (a damaged page
// panics inside the read, and is returned as an error naming it).
func (x *Index) Verify() (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("stripe index %s is damaged: %v", x.path, p)
		}
	}()
	return x.db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			return b.ForEach(func(k, v []byte) error { return nil })
		})
	})
}

// Close closes the file.
func (x *Index) Close() error { return x.db.Close() }

// SizeBytes is the index file's size on disk.
func (x *Index) SizeBytes() (int64, error) {
	fi, err := os.Stat(x.path)
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

func groupKey(g uint32) []byte { return binary.BigEndian.AppendUint32(nil, g) }

func checkKey(k Key) error {
	if k.Volume == "" || len(k.Volume) > MaxVolumeUIDLen {
		return fmt.Errorf("stripe index: %s: volume UID of %d bytes, want 1 to %d", k, len(k.Volume), MaxVolumeUIDLen)
	}
	return nil
}

// entryKeyLen: volume number (4 B), stripe (8 B), shard (1 B).
const entryKeyLen = 13

// encode: group, generation, offset, length, epoch as uvarints, then the
// checksum (8 B, fixed: it is uniformly distributed).
func encode(g uint32, e Entry) []byte {
	b := make([]byte, 0, 5*binary.MaxVarintLen64+8)
	b = binary.AppendUvarint(b, uint64(g))
	b = binary.AppendUvarint(b, e.Generation)
	b = binary.AppendUvarint(b, e.Offset)
	b = binary.AppendUvarint(b, e.Length)
	b = binary.AppendUvarint(b, e.Epoch)
	return binary.BigEndian.AppendUint64(b, e.Checksum)
}

// valueGroup is the group of an encoded entry (its first uvarint).
func valueGroup(v []byte) (uint32, bool) {
	g, n := binary.Uvarint(v)
	if n <= 0 || g > 1<<32-1 {
		return 0, false
	}
	return uint32(g), true
}

func decode(k Key, b []byte) (Entry, error) {
	bad := func(what string) (Entry, error) {
		return Entry{}, fmt.Errorf("%w: %s: %s (%d bytes)", ErrDamaged, k, what, len(b))
	}
	if len(b) < 5+8 {
		return bad("shorter than the smallest entry")
	}
	var e Entry
	p := b
	var g uint64
	for _, f := range []*uint64{&g, &e.Generation, &e.Offset, &e.Length, &e.Epoch} {
		v, n := binary.Uvarint(p)
		if n <= 0 {
			return bad("a field does not decode")
		}
		*f, p = v, p[n:]
	}
	if len(p) != 8 {
		return bad("the checksum is not 8 bytes")
	}
	e.Checksum = binary.BigEndian.Uint64(p)
	if g != uint64(k.Group) {
		return Entry{}, fmt.Errorf("%w: %s: recorded in group %d", ErrDamaged, k, g)
	}
	return e, nil
}

// volumeNumber returns the volume's number, assigning the next one if create.
func volumeNumber(tx *bolt.Tx, uid string, create bool) ([]byte, error) {
	vb := tx.Bucket(bucketVolumes)
	if n := vb.Get([]byte(uid)); n != nil {
		if len(n) != 4 {
			return nil, fmt.Errorf("%w: volume %s has a number of %d bytes", ErrDamaged, uid, len(n))
		}
		return n, nil
	}
	if !create {
		return nil, nil
	}
	seq, err := vb.NextSequence()
	if err != nil {
		return nil, err
	}
	if seq > 1<<32-1 {
		return nil, fmt.Errorf("stripe index: more than 2^32 volumes")
	}
	n := binary.BigEndian.AppendUint32(nil, uint32(seq))
	return n, vb.Put([]byte(uid), n)
}

func entryKey(vol []byte, stripe uint64, shard uint8) []byte {
	b := binary.BigEndian.AppendUint64(append(make([]byte, 0, entryKeyLen), vol...), stripe)
	return append(b, shard)
}

// Put records recs in one durable transaction (concurrent Puts share it).
// A record whose generation is older than the one held, or equal with a
// different entry, fails the whole Put with ErrStaleGeneration; the same
// entry again is a no-op (a retried write).
func (x *Index) Put(recs []Record) error {
	for _, r := range recs {
		if err := checkKey(r.Key); err != nil {
			return err
		}
	}
	return x.db.Batch(func(tx *bolt.Tx) error {
		entries, counts := tx.Bucket(bucketEntries), tx.Bucket(bucketCounts)
		entries.FillPercent = 0.95 // a writer's stripe ids arrive in order: pack pages
		added := map[uint32]int64{}
		for _, r := range recs {
			vol, err := volumeNumber(tx, r.Volume, true)
			if err != nil {
				return err
			}
			ek := entryKey(vol, r.Stripe, r.Shard)
			if old := entries.Get(ek); old != nil {
				og, ok := valueGroup(old)
				if !ok {
					return fmt.Errorf("%w: %s: the group does not decode", ErrDamaged, r.Key)
				}
				held, err := decode(Key{og, r.Volume, r.Stripe, r.Shard}, old)
				if err != nil {
					return err
				}
				switch {
				case og == r.Group && held == r.Entry:
					continue
				case r.Generation <= held.Generation:
					return fmt.Errorf("%w: %s: generation %d refused, generation %d is held", ErrStaleGeneration, r.Key, r.Generation, held.Generation)
				}
				if og != r.Group { // a newer generation moved groups
					added[og]--
					added[r.Group]++
				}
			} else {
				added[r.Group]++
			}
			if err := entries.Put(ek, encode(r.Group, r.Entry)); err != nil {
				return err
			}
		}
		return addCounts(counts, added)
	})
}

func addCounts(counts *bolt.Bucket, delta map[uint32]int64) error {
	for g, d := range delta {
		if d == 0 {
			continue
		}
		k := groupKey(g)
		var n uint64
		if v := counts.Get(k); v != nil {
			if len(v) != 8 {
				return fmt.Errorf("%w: count of group %d is %d bytes", ErrDamaged, g, len(v))
			}
			n = binary.BigEndian.Uint64(v)
		}
		if d < 0 && uint64(-d) > n {
			return fmt.Errorf("%w: count of group %d would go below zero (%d%+d)", ErrDamaged, g, n, d)
		}
		if err := counts.Put(k, binary.BigEndian.AppendUint64(nil, uint64(int64(n)+d))); err != nil {
			return err
		}
	}
	return nil
}

// Get returns the entry of k, if held (in k's group).
func (x *Index) Get(k Key) (e Entry, ok bool, err error) {
	if err := checkKey(k); err != nil {
		return Entry{}, false, err
	}
	err = x.db.View(func(tx *bolt.Tx) error {
		vol, err := volumeNumber(tx, k.Volume, false)
		if vol == nil || err != nil {
			return err
		}
		v := tx.Bucket(bucketEntries).Get(entryKey(vol, k.Stripe, k.Shard))
		if v == nil {
			return nil
		}
		e, err = decode(k, v)
		ok = err == nil
		return err
	})
	return e, ok, err
}

// Delete removes, durably and in one transaction, the entry of every record
// whose entry the index holds exactly (same group, generation, offset, …).
// A record whose key holds another entry (a newer generation, say) or none
// is skipped: freeing an old copy never drops the record of a newer one.
func (x *Index) Delete(recs []Record) error {
	for _, r := range recs {
		if err := checkKey(r.Key); err != nil {
			return err
		}
	}
	return x.db.Batch(func(tx *bolt.Tx) error {
		entries, counts := tx.Bucket(bucketEntries), tx.Bucket(bucketCounts)
		removed := map[uint32]int64{}
		for _, r := range recs {
			vol, err := volumeNumber(tx, r.Volume, false)
			if err != nil {
				return err
			}
			if vol == nil {
				continue
			}
			ek := entryKey(vol, r.Stripe, r.Shard)
			old := entries.Get(ek)
			if old == nil {
				continue
			}
			if og, ok := valueGroup(old); !ok || og != r.Group {
				continue // another group's entry (a newer generation moved it)
			}
			held, err := decode(r.Key, old)
			if err != nil {
				return err // damaged: the count would lie
			}
			if held != r.Entry {
				continue
			}
			if err := entries.Delete(ek); err != nil {
				return err
			}
			removed[r.Group]--
		}
		return addCounts(counts, removed)
	})
}

// Count is the number of entries of group g, exact, without a scan.
func (x *Index) Count(g uint32) (uint64, error) {
	var n uint64
	err := x.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketCounts).Get(groupKey(g))
		if v == nil {
			return nil
		}
		if len(v) != 8 {
			return fmt.Errorf("%w: count of group %d is %d bytes", ErrDamaged, g, len(v))
		}
		n = binary.BigEndian.Uint64(v)
		return nil
	})
	return n, err
}

// Counts returns every group's count (groups without entries are absent).
func (x *Index) Counts() (map[uint32]uint64, error) {
	out := map[uint32]uint64{}
	err := x.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketCounts).ForEach(func(k, v []byte) error {
			if len(k) != 4 || len(v) != 8 {
				return fmt.Errorf("%w: a count of %d bytes under a key of %d bytes", ErrDamaged, len(v), len(k))
			}
			if n := binary.BigEndian.Uint64(v); n > 0 {
				out[binary.BigEndian.Uint32(k)] = n
			}
			return nil
		})
	})
	return out, err
}

func volumeUIDs(tx *bolt.Tx) (map[uint32]string, error) {
	uids := map[uint32]string{}
	err := tx.Bucket(bucketVolumes).ForEach(func(uid, n []byte) error {
		if len(n) != 4 {
			return fmt.Errorf("%w: volume %s has a number of %d bytes", ErrDamaged, uid, len(n))
		}
		uids[binary.BigEndian.Uint32(n)] = string(uid)
		return nil
	})
	return uids, err
}

// visit decodes the entry under ek if it belongs to group g (all groups when
// all); ok is false for another group's entry.
func visit(uids map[uint32]string, ek, v []byte, g uint32, all bool) (r Record, ok bool, err error) {
	if len(ek) != entryKeyLen {
		return Record{}, false, fmt.Errorf("%w: an entry key of %d bytes", ErrDamaged, len(ek))
	}
	uid, known := uids[binary.BigEndian.Uint32(ek)]
	if !known {
		return Record{}, false, fmt.Errorf("%w: an entry of volume number %d, which has no UID", ErrDamaged, binary.BigEndian.Uint32(ek))
	}
	stripe, shard := binary.BigEndian.Uint64(ek[4:]), ek[12]
	eg, gok := valueGroup(v)
	if !gok {
		return Record{}, false, fmt.Errorf("%w: volume %s stripe %d shard %d: the group does not decode", ErrDamaged, uid, stripe, shard)
	}
	if !all && eg != g {
		return Record{}, false, nil
	}
	k := Key{Group: eg, Volume: uid, Stripe: stripe, Shard: shard}
	e, err := decode(k, v)
	if err != nil {
		return Record{}, false, err
	}
	return Record{Key: k, Entry: e}, true, nil
}

// Scan calls fn for every entry of group g, by volume number, stripe id and
// shard, in one read transaction (a consistent snapshot; writers are not
// blocked). It reads every entry of the server once (a rebuild or scrub pass
// lists all the groups it needs in one Scan each). An entry that does not
// decode stops the scan with ErrDamaged naming it.
func (x *Index) Scan(g uint32, fn func(Record) error) error {
	return x.scan(g, false, fn)
}

// ForEach calls fn for every entry of every group, in key order, in one read
// transaction.
func (x *Index) ForEach(fn func(Record) error) error {
	return x.scan(0, true, fn)
}

func (x *Index) scan(g uint32, all bool, fn func(Record) error) error {
	return x.db.View(func(tx *bolt.Tx) error {
		uids, err := volumeUIDs(tx)
		if err != nil {
			return err
		}
		return tx.Bucket(bucketEntries).ForEach(func(ek, v []byte) error {
			r, ok, err := visit(uids, ek, v, g, all)
			if err != nil || !ok {
				return err
			}
			return fn(r)
		})
	})
}

// Cursor is where a Page stopped: the file's id and the key of the last
// entry it examined (opaque to callers; nil starts at the beginning).
type Cursor []byte

// CursorLen is the length of a cursor that Page returns.
const CursorLen = fileIDLen + entryKeyLen

// Page returns up to limit entries of group g after cursor, in Scan's
// order, examining at most budget entries of the server (every group's
// entries are interleaved in the file, so a page of a sparse group would
// otherwise read the whole file). next is nil when the scan reached the end,
// else where to continue; a page may hold fewer than limit entries (even
// none) and still have a next.
func (x *Index) Page(g uint32, after Cursor, limit, budget int) (recs []Record, next Cursor, err error) {
	if limit < 1 || budget < limit {
		return nil, nil, fmt.Errorf("stripe index: page limit %d and budget %d: want 1 <= limit <= budget", limit, budget)
	}
	if after != nil && len(after) != CursorLen {
		return nil, nil, fmt.Errorf("stripe index: a cursor of %d bytes, want %d", len(after), CursorLen)
	}
	if after != nil {
		if x.id == nil || !bytes.Equal(after[:fileIDLen], x.id) {
			return nil, nil, fmt.Errorf("stripe index %s: %w: start the pass again", x.path, ErrForeignCursor)
		}
		after = after[fileIDLen:]
	}
	err = x.db.View(func(tx *bolt.Tx) error {
		uids, err := volumeUIDs(tx)
		if err != nil {
			return err
		}
		c := tx.Bucket(bucketEntries).Cursor()
		var ek, v []byte
		if after == nil {
			ek, v = c.First()
		} else {
			ek, v = c.Seek(after)
			if ek != nil && string(ek) == string(after) {
				ek, v = c.Next()
			}
		}
		var last []byte
		for examined := 0; ek != nil; ek, v = c.Next() {
			if examined == budget || len(recs) == limit {
				next = Cursor(append(append([]byte(nil), x.id...), last...)) // entries remain past last
				return nil
			}
			examined++
			last = append(last[:0], ek...)
			r, ok, err := visit(uids, ek, v, g, false)
			if err != nil {
				return err
			}
			if ok {
				recs = append(recs, r)
			}
		}
		return nil
	})
	return recs, next, err
}
