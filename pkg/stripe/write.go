package stripe

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/apis/storage/v1/geometry"
	"github.com/billyronks/couchestor/pkg/erasure"
	"github.com/billyronks/couchestor/pkg/fence"
	"github.com/billyronks/couchestor/pkg/shardserver"
)

// headerReserve is room reserved per shard for its on-disk header block.
const headerReserve = 8192

// maxStripeAttempts bounds retries of one stripe after losing a race.
const maxStripeAttempts = 4

// WriteAt writes p at byte offset off of volume v. off and len(p) must be
// multiples of 512 (the LBA size) and the range must lie inside the volume.
// Stripes are written in parallel; on error some stripes may have been
// written (each stripe is all-or-nothing).
func (s *Store) WriteAt(ctx context.Context, v *Volume, p []byte, off int64) error {
	if off%geometry.LBASize != 0 || len(p)%geometry.LBASize != 0 {
		return fmt.Errorf("write volume %s: offset %d and length %d must be multiples of %d", v.Name(), off, len(p), geometry.LBASize)
	}
	if off < 0 || off+int64(len(p)) > v.Object.Spec.SizeBytes {
		return fmt.Errorf("write volume %s: range [%d, %d) lies outside spec.sizeBytes %d", v.Name(), off, off+int64(len(p)), v.Object.Spec.SizeBytes)
	}
	if v.Object.DeletionTimestamp != nil {
		return fmt.Errorf("write volume %s: the volume is being deleted", v.Name())
	}
	if len(p) == 0 {
		return nil
	}
	if v.Layout == storagev1.LayoutPlacementGroups {
		return s.writeGrouped(ctx, v, p, off)
	}
	first, last := off/v.StripeSize, (off+int64(len(p))-1)/v.StripeSize
	existing, err := s.stripesFor(ctx, v.Name(), first, last)
	if err != nil {
		return err
	}
	pl, err := s.cachedCandidates(ctx)
	if err != nil {
		return err
	}
	var warned atomic.Bool
	ids := make(chan int64)
	errs := make([]error, last-first+1)
	var wg sync.WaitGroup
	for w := 0; w < min(s.parallel(), int(last-first+1)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range ids {
				errs[id-first] = s.writeStripe(ctx, v, pl, id, existing[id], p, off, &warned)
				if errs[id-first] != nil && s.Known != nil {
					// The ECStripe may or may not have changed: ask next time.
					s.Known.forget(v.Name(), id)
				}
			}
		}()
	}
	for id := first; id <= last; id++ {
		ids <- id
	}
	close(ids)
	wg.Wait()
	return errors.Join(errs...)
}

// shardWrite is the outcome of writing one shard.
type shardWrite struct {
	target *target
	loc    shardserver.Location
	err    error
}

// writeStripe writes one new version of stripe id holding the bytes of p
// (which starts at volume offset off) that fall into it.
func (s *Store) writeStripe(ctx context.Context, v *Volume, pl *placer, id int64, old *storagev1.ECStripe, p []byte, off int64, warned *atomic.Bool) error {
	start, end := v.stripeRange(id)
	dataLen := (end - start) * geometry.LBASize
	stripeOff := start * geometry.LBASize
	lo, hi := max(off, stripeOff), min(off+int64(len(p)), stripeOff+dataLen)
	covered := lo == stripeOff && hi == stripeOff+dataLen
	var minGen int64
	for attempt := 0; attempt < maxStripeAttempts; attempt++ {
		if err := s.fence(); err != nil {
			return fmt.Errorf("stripe %d: %w", id, err)
		}
		st := v.Codec.NewStripe()
		buf := st.DataBuffer()[:dataLen]
		if old != nil && !covered {
			data, _, err := s.readStripe(ctx, v, old, nil, nil)
			if err != nil {
				return fmt.Errorf("stripe %d: read the current version for a partial write: %w", id, err)
			}
			copy(buf, data)
		}
		copy(buf[lo-stripeOff:hi-stripeOff], p[lo-off:hi-off])
		if err := v.Codec.Encode(st, dataLen); err != nil {
			return fmt.Errorf("stripe %d: encode: %w", id, err)
		}
		gen := int64(1)
		if old != nil {
			gen = old.Spec.Generation + 1
		}
		gen = max(gen, minGen)

		writes, err := s.putShards(ctx, v, pl, id, gen, st, start, end, warned)
		var stale *shardserver.StaleError
		if errors.As(err, &stale) {
			// A dead writer's orphan (or a racing writer) holds this
			// generation: step past it, if the server said which one it
			// holds. A guess could be a generation the server holds too,
			// or one below it: the write fails instead, and is tried
			// again from the ECStripe by its caller.
			s.freeWritten(ctx, v, id, gen, writes)
			held, ok := stale.Held()
			if !ok {
				return fmt.Errorf("stripe %d: generation %d refused and the generation held could not be learnt, so no generation is known to be past it: %w", id, gen, err)
			}
			minGen = held + 1
			continue
		}
		if err != nil {
			s.freeWritten(ctx, v, id, gen, writes)
			return fmt.Errorf("stripe %d: %w", id, err)
		}
		if s.AfterShardsDurable != nil {
			s.AfterShardsDurable(v.Name(), id, gen)
		}
		spec := storagev1.ECStripeSpec{
			VolumeRef:      v.Name(),
			StripeID:       id,
			PolicyRef:      v.Policy,
			ShardLocations: make([]storagev1.ShardLocation, len(writes)),
			LbaRange:       storagev1.LbaRange{StartLba: start, EndLba: end},
			Checksum:       st.Checksum,
			Generation:     gen,
		}
		for i, w := range writes {
			loc := storagev1.ShardLocation{ShardIndex: int32(i), IsDataShard: i < v.K, PoolName: w.target.Pool, NodeName: w.target.Node,
				SizeBytes: int64(v.Codec.ShardSize()), Checksum: st.ShardChecksums[i]}
			if w.err == nil {
				loc.Offset = w.loc.Offset
			}
			spec.ShardLocations[i] = loc
		}
		if err := s.fence(); err != nil {
			s.freeWritten(ctx, v, id, gen, writes)
			return fmt.Errorf("stripe %d: %w", id, err)
		}
		var obj *storagev1.ECStripe
		if old == nil {
			obj = &storagev1.ECStripe{ObjectMeta: metav1.ObjectMeta{Name: StripeName(v.Name(), id), Labels: map[string]string{LabelVolume: VolumeLabelValue(v.Name())}}, Spec: spec}
			if s.WriterEpoch != 0 {
				fence.SetEpoch(obj, s.WriterEpoch)
			}
			if err := s.Client.Create(ctx, obj); err != nil {
				s.freeWritten(ctx, v, id, gen, writes)
				if apierrors.IsAlreadyExists(err) {
					if old, err = s.getStripe(ctx, v.Name(), id); err != nil {
						return err
					}
					continue
				}
				return fmt.Errorf("stripe %d: create ECStripe %s: %w", id, StripeName(v.Name(), id), err)
			}
		} else {
			// The stripe is Writing until the new version's status is
			// written: its recorded health describes the old shards, and the
			// ECStripe controller leaves a Writing stripe to its writer (for
			// ecstate.DefaultWritingGrace, then adopts it). The status update
			// carries old's resourceVersion: nobody changed the stripe since
			// it was read.
			obj = old.DeepCopy()
			if obj.Status.State != storagev1.StripeWriting {
				t := metav1.NewTime(s.now())
				obj.Status.State, obj.Status.LastModifiedTime = storagev1.StripeWriting, &t
				if err := s.Client.Status().Update(ctx, obj); err != nil {
					s.freeWritten(ctx, v, id, gen, writes)
					if apierrors.IsConflict(err) {
						if old, err = s.getStripe(ctx, v.Name(), id); err != nil {
							return err
						}
						continue
					}
					return fmt.Errorf("stripe %d: mark ECStripe %s Writing: %w", id, obj.Name, err)
				}
			}
			obj.Spec = spec
			if s.WriterEpoch != 0 {
				fence.SetEpoch(obj, s.WriterEpoch)
			}
			// Update carries the resourceVersion read (or just written): the
			// precondition that nobody changed the stripe since.
			if err := s.Client.Update(ctx, obj); err != nil {
				s.freeWritten(ctx, v, id, gen, writes)
				if apierrors.IsConflict(err) {
					if old, err = s.getStripe(ctx, v.Name(), id); err != nil {
						return err
					}
					continue
				}
				return fmt.Errorf("stripe %d: update ECStripe %s to generation %d: %w", id, obj.Name, gen, err)
			}
		}
		if s.Known != nil {
			s.Known.learn(obj.DeepCopy())
		}
		obj.Status = stripeStatus(v, writes, s.now())
		if err := s.writeStatus(ctx, obj); err != nil {
			// The stripe exists and its shards are durable; it stays
			// Writing (or without status) and the ECStripe controller adopts
			// it after its grace. Report, do not undo.
			return fmt.Errorf("stripe %d: write ECStripe %s status: %w", id, obj.Name, err)
		}
		if s.Known != nil {
			s.Known.learn(obj)
		}
		if old != nil {
			s.freeStripeShards(ctx, old)
		}
		return nil
	}
	return fmt.Errorf("stripe %d: gave up after %d attempts lost races with other writers", id, maxStripeAttempts)
}

// writeStatus writes the status of the stripe version just written. A
// conflict means someone else (the ECStripe controller, a scrub) wrote the
// status since our spec write: the data is ours and durable either way, so
// the status is written again on the fresh object as long as its spec is
// still the version we wrote. Failing the write instead would fail the
// whole destage pass and rewrite every stripe of it.
func (s *Store) writeStatus(ctx context.Context, obj *storagev1.ECStripe) error {
	err := s.Client.Status().Update(ctx, obj)
	for attempt := 0; apierrors.IsConflict(err) && attempt < maxStripeAttempts; attempt++ {
		cur := &storagev1.ECStripe{}
		if gerr := s.Client.Get(ctx, client.ObjectKeyFromObject(obj), cur); gerr != nil {
			return fmt.Errorf("%w (re-reading it: %v)", err, gerr)
		}
		if cur.Spec.Generation != obj.Spec.Generation || cur.Generation != obj.Generation {
			return fmt.Errorf("%w (its spec changed since: generation %d, ours %d)", err, cur.Spec.Generation, obj.Spec.Generation)
		}
		cur.Status = obj.Status
		if err = s.Client.Status().Update(ctx, cur); err == nil {
			*obj = *cur
		}
	}
	return err
}

func (s *Store) getStripe(ctx context.Context, volume string, id int64) (*storagev1.ECStripe, error) {
	es := &storagev1.ECStripe{}
	if err := s.Client.Get(ctx, client.ObjectKey{Name: StripeName(volume, id)}, es); err != nil {
		if s.Known != nil {
			if apierrors.IsNotFound(err) {
				s.Known.learnAbsent(volume, id)
			} else {
				s.Known.forget(volume, id)
			}
		}
		return nil, fmt.Errorf("get ECStripe %s: %w", StripeName(volume, id), err)
	}
	if s.Known != nil {
		s.Known.learn(es)
	}
	return es, nil
}

// stripeStatus is the status of a freshly written stripe version.
func stripeStatus(v *Volume, writes []shardWrite, now time.Time) storagev1.ECStripeStatus {
	t := metav1.NewTime(now)
	st := storagev1.ECStripeStatus{LastModifiedTime: &t}
	for i, w := range writes {
		h := storagev1.ShardHealth{ShardIndex: int32(i)}
		if w.err == nil {
			h.State, h.LastVerified = storagev1.ShardHealthy, &t
			st.HealthyShards++
			if i < v.K {
				st.HealthyDataShards++
			} else {
				st.HealthyParityShards++
			}
		} else {
			h.State, h.Error = storagev1.ShardMissing, truncate(w.err.Error(), 256)
		}
		st.ShardHealth = append(st.ShardHealth, h)
	}
	st.State = storagev1.StripeHealthy
	if int(st.HealthyShards) < v.K+v.M {
		st.State = storagev1.StripeDegraded
	}
	return st
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// putShards places and writes the k+m shards of a stripe version in parallel.
// A shard whose pool fails is retried once on another pool. It fails when
// fewer than minHealthyShards are durable, or with a *StaleError.
func (s *Store) putShards(ctx context.Context, v *Volume, pl *placer, id, gen int64, st *erasure.Stripe, start, end int64, warned *atomic.Bool) ([]shardWrite, error) {
	n := v.K + v.M
	need := int64(v.Codec.ShardSize()) + headerReserve
	chosen, shared, err := pl.place(n, need, id, nil)
	if err != nil {
		return nil, err
	}
	if shared && warned.CompareAndSwap(false, true) {
		s.warn(v.Object, "ShardsShareNodes", "PlaceShards", "fewer nodes with usable shard servers than the %d shards of a stripe: shards of stripe %d and later are placed on distinct pools, some on the same node; losing one node may lose more than one shard", n, id)
	}
	writes := make([]shardWrite, n)
	hdr := func(i int) *shardserver.ShardHeader {
		return &shardserver.ShardHeader{
			Volume: v.Name(), VolumeUID: string(v.Object.UID), PolicyRef: v.Policy, StripeID: id, ShardIndex: i, Generation: gen,
			Algorithm: string(v.Algorithm), DataShards: v.K, ParityShards: v.M, StripeSizeBytes: v.StripeSize,
			StartLBA: start, EndLBA: end, SizeBytes: int64(v.Codec.ShardSize()), Checksum: st.ShardChecksums[i],
			ShardChecksums: st.ShardChecksums, StripeChecksum: st.Checksum, WrittenUnixNano: s.now().UnixNano(),
			WriterEpoch: s.WriterEpoch,
		}
	}
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			t := chosen[i]
			loc, err := s.Shards.Put(ctx, t.Address, hdr(i), st.Shards[i])
			writes[i] = shardWrite{target: t, loc: loc, err: err}
		}(i)
	}
	wg.Wait()
	used := map[string]bool{}
	for _, c := range chosen {
		used[c.Pool] = true
	}
	// A stale shard fails the version: the writer steps past the newest
	// generation held, so the error returned is the one naming it, or one
	// whose held generation is unknown (the writer must not guess past it).
	var staleErr error
	var newest int64 = -1
	for i := range writes {
		var stale *shardserver.StaleError
		if !errors.As(writes[i].err, &stale) {
			continue
		}
		held, known := stale.Held()
		if !known {
			return writes, writes[i].err
		}
		if held > newest {
			staleErr, newest = writes[i].err, held
		}
	}
	if staleErr != nil {
		return writes, staleErr
	}
	ok := 0
	for i := range writes {
		if errors.Is(writes[i].err, shardserver.ErrFenced) {
			// A newer export holds the volume: no other pool may take it.
			return writes, writes[i].err
		}
		if writes[i].err == nil {
			ok++
			continue
		}
		pl.unreserve(writes[i].target, need)
		// Try one other pool for the failed shard.
		alt, _, err := pl.place(1, need, id+int64(i), used)
		if err != nil {
			continue
		}
		loc, err := s.Shards.Put(ctx, alt[0].Address, hdr(i), st.Shards[i])
		if err != nil {
			pl.unreserve(alt[0], need)
			writes[i].err = fmt.Errorf("%v; retry on pool %s: %w", writes[i].err, alt[0].Pool, err)
			continue
		}
		used[alt[0].Pool] = true
		writes[i] = shardWrite{target: alt[0], loc: loc}
		ok++
	}
	if ok < v.MinHealthy {
		var errs []error
		for _, w := range writes {
			if w.err != nil {
				errs = append(errs, w.err)
			}
		}
		return writes, fmt.Errorf("only %d of %d shards are durable, spec.minHealthyShards is %d: %w", ok, n, v.MinHealthy, errors.Join(errs...))
	}
	return writes, nil
}

func (s *Store) fence() error {
	if s.Fence == nil {
		return nil
	}
	return s.Fence()
}

// freeWritten frees the shards of an abandoned stripe version (best effort:
// what fails here is an orphan CollectOrphans reclaims).
func (s *Store) freeWritten(ctx context.Context, v *Volume, id, gen int64, writes []shardWrite) {
	for i, w := range writes {
		if w.err != nil || w.target == nil || w.loc.Existing {
			continue
		}
		_ = s.Shards.Free(ctx, w.target.Address, w.loc.Offset, shardserver.Expect{Volume: v.Name(), StripeID: id, ShardIndex: i, Generation: gen})
	}
}

// freeStripeShards frees the shards an ECStripe version recorded (best
// effort, after a newer version replaced it).
func (s *Store) freeStripeShards(ctx context.Context, es *storagev1.ECStripe) {
	servers, err := s.serversByPool(ctx)
	if err != nil {
		return
	}
	for _, l := range es.Spec.ShardLocations {
		srv, ok := servers[l.PoolName]
		if !ok {
			continue
		}
		_ = s.Shards.Free(ctx, srv.Address, l.Offset, shardserver.Expect{Volume: es.Spec.VolumeRef, StripeID: es.Spec.StripeID, ShardIndex: int(l.ShardIndex), Generation: es.Spec.Generation})
	}
}
