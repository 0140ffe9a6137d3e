package stripe

import (
	"context"
	"errors"
	"fmt"
	"sync"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/apis/storage/v1/geometry"
	"github.com/billyronks/couchestor/pkg/erasure"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/pkg/shardserver"
)

// ReadReport says what a read found.
type ReadReport struct {
	Stripes  int // stripes read (unwritten stripes read as zeros and are not counted)
	Degraded int // stripes that needed reconstruction
	Missing  int // shards that could not be fetched
	Corrupt  int // shards that failed their recorded checksum
}

// ReadAt reads len(p) bytes at byte offset off of volume v into p. off and
// len(p) must be multiples of 512 and inside the volume.
func (s *Store) ReadAt(ctx context.Context, v *Volume, p []byte, off int64) (ReadReport, error) {
	var rep ReadReport
	if off%geometry.LBASize != 0 || len(p)%geometry.LBASize != 0 {
		return rep, fmt.Errorf("read volume %s: offset %d and length %d must be multiples of %d", v.Name(), off, len(p), geometry.LBASize)
	}
	if off < 0 || off+int64(len(p)) > v.Object.Spec.SizeBytes {
		return rep, fmt.Errorf("read volume %s: range [%d, %d) lies outside spec.sizeBytes %d", v.Name(), off, off+int64(len(p)), v.Object.Spec.SizeBytes)
	}
	if len(p) == 0 {
		return rep, nil
	}
	if v.Layout == storagev1.LayoutPlacementGroups {
		return s.readGrouped(ctx, v, p, off)
	}
	first, last := off/v.StripeSize, (off+int64(len(p))-1)/v.StripeSize
	stripes, err := s.stripesFor(ctx, v.Name(), first, last)
	if err != nil {
		return rep, err
	}
	servers, err := s.serversByPool(ctx)
	if err != nil {
		return rep, err
	}
	var mu sync.Mutex
	ids := make(chan int64)
	errs := make([]error, last-first+1)
	var wg sync.WaitGroup
	for w := 0; w < min(s.parallel(), int(last-first+1)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range ids {
				stripeOff := id * v.StripeSize
				lo, hi := max(off, stripeOff), min(off+int64(len(p)), stripeOff+v.StripeSize)
				dst := p[lo-off : hi-off]
				es := stripes[id]
				if es == nil {
					clear(dst)
					continue
				}
				// A read inside one data shard needs that shard only.
				if s.readWithinShard(ctx, v, es, servers, dst, lo-stripeOff) {
					mu.Lock()
					rep.Stripes++
					mu.Unlock()
					continue
				}
				// A read of the whole stripe decodes straight into p.
				var into []byte
				if lo == stripeOff && hi-lo == (es.Spec.LbaRange.EndLba-es.Spec.LbaRange.StartLba)*geometry.LBASize {
					into = dst
				}
				data, drep, err := s.readStripe(ctx, v, es, servers, into)
				if err != nil {
					errs[id-first] = fmt.Errorf("volume %s stripe %d: %w", v.Name(), id, err)
					continue
				}
				if into == nil {
					copy(dst, data[lo-stripeOff:hi-stripeOff])
				}
				if len(drep.Missing)+len(drep.Corrupt) > 0 && (s.Known != nil || s.viewsOn()) {
					// Remembered state may be stale (a rebuild moved shards,
					// a server moved): look again so later reads are whole.
					// In the background: this read is served, and the API
					// server must not hold up reads (issue 17 item 4).
					s.dropViews()
					if s.Known != nil {
						s.relearn(v.Name(), id)
					}
				}
				mu.Lock()
				rep.Stripes++
				rep.Missing += len(drep.Missing)
				rep.Corrupt += len(drep.Corrupt)
				if len(drep.Missing)+len(drep.Corrupt) > 0 {
					rep.Degraded++
				}
				mu.Unlock()
			}
		}()
	}
	for id := first; id <= last; id++ {
		ids <- id
	}
	close(ids)
	wg.Wait()
	return rep, errors.Join(errs...)
}

// readStripe returns the data bytes of one ECStripe version, reconstructing
// around missing or corrupt shards. servers may be nil (looked up here).
// into, when not nil, has room for the stripe's data bytes and receives them.
func (s *Store) readStripe(ctx context.Context, v *Volume, es *storagev1.ECStripe, servers map[string]registry.Entry, into []byte) ([]byte, erasure.DecodeReport, error) {
	var err error
	if servers == nil {
		if servers, err = s.serversByPool(ctx); err != nil {
			return nil, erasure.DecodeReport{}, err
		}
	}
	for attempt := 0; attempt < 3; attempt++ {
		data, rep, err := s.decodeStripe(ctx, v, es, servers, into)
		if err == nil || !errors.Is(err, erasure.ErrNotDecodable) {
			return data, rep, err
		}
		// Too few shards: if the stripe moved to a new version meanwhile
		// (its old shards freed by a copy-on-write update), read that one.
		cur, gerr := s.rereadStripe(ctx, es.Spec.VolumeRef, es.Spec.StripeID)
		// With cached server views, a server may have moved: look again once.
		fresh := false
		if s.viewsOn() && attempt == 0 {
			if m, ok := s.refreshServersNow(ctx); ok {
				servers, fresh = m, true
			}
		}
		if gerr != nil || (cur.ResourceVersion == es.ResourceVersion && !fresh) {
			return nil, rep, err
		}
		es = cur
	}
	return nil, erasure.DecodeReport{}, fmt.Errorf("stripe %d kept changing while being read", es.Spec.StripeID)
}

func (s *Store) decodeStripe(ctx context.Context, v *Volume, es *storagev1.ECStripe, servers map[string]registry.Entry, into []byte) ([]byte, erasure.DecodeReport, error) {
	n := v.K + v.M
	if len(es.Spec.ShardLocations) != n {
		return nil, erasure.DecodeReport{}, fmt.Errorf("ECStripe %s has %d shardLocations, policy %s needs %d", es.Name, len(es.Spec.ShardLocations), v.Policy, n)
	}
	set := &erasure.ShardSet{
		Shards:         make([][]byte, n),
		ShardChecksums: make([]string, n),
		StripeChecksum: es.Spec.Checksum,
		DataLength:     (es.Spec.LbaRange.EndLba - es.Spec.LbaRange.StartLba) * geometry.LBASize,
	}
	good := make([]bool, n)
	tried := make([]bool, n)
	// A full-size stripe read into p: each data shard is fetched straight
	// into its place in p, so the usual case (every data shard good) needs
	// no decode and no copy.
	ss := v.Codec.ShardSize()
	inPlace := into != nil && set.DataLength == int64(v.K)*int64(ss) && len(into) == int(set.DataLength)
	pooled := make([]bool, n)
	for _, l := range es.Spec.ShardLocations {
		if int(l.ShardIndex) >= n || l.ShardIndex < 0 {
			return nil, erasure.DecodeReport{}, fmt.Errorf("ECStripe %s: shardIndex %d out of range [0, %d)", es.Name, l.ShardIndex, n)
		}
		set.ShardChecksums[l.ShardIndex] = l.Checksum
	}
	fetch := func(idx []int) {
		var wg sync.WaitGroup
		for _, i := range idx {
			l := es.Spec.ShardLocations[i]
			tried[l.ShardIndex] = true
			srv, ok := servers[l.PoolName]
			if !ok || l.SizeBytes != int64(ss) {
				// A size other than the policy's shard size (an edited
				// ECStripe) is never trusted to size a buffer: the shard
				// counts as missing and is decoded around.
				continue
			}
			wg.Add(1)
			go func(i int, l storagev1.ShardLocation) {
				defer wg.Done()
				idx := int(l.ShardIndex)
				here := inPlace && idx < v.K
				var buf []byte
				if here {
					buf = into[idx*ss : (idx+1)*ss : (idx+1)*ss]
				} else {
					buf = getShardBuffer(int(l.SizeBytes))
				}
				_, b, err := s.Shards.GetInto(ctx, srv.Address, l.Offset, shardserver.Expect{Volume: es.Spec.VolumeRef, StripeID: es.Spec.StripeID, ShardIndex: idx, Generation: es.Spec.Generation}, buf)
				if err != nil {
					return
				}
				// A buffer inside into is never recycled.
				pooled[idx] = !here || len(b) == 0 || &b[0] != &buf[0]
				set.Shards[idx] = b
				good[l.ShardIndex] = erasure.ShardChecksum(b) == l.Checksum
			}(i, l)
		}
		wg.Wait()
	}
	// Shard locations are indexed by position; map shard index to position.
	pos := make([]int, n)
	for p, l := range es.Spec.ShardLocations {
		pos[l.ShardIndex] = p
	}
	dataIdx := make([]int, 0, v.K)
	for i := 0; i < v.K; i++ {
		dataIdx = append(dataIdx, pos[i])
	}
	fetch(dataIdx)
	allGood := true
	for i := 0; i < v.K; i++ {
		allGood = allGood && good[i]
	}
	if !allGood {
		parIdx := make([]int, 0, v.M)
		for i := v.K; i < n; i++ {
			parIdx = append(parIdx, pos[i])
		}
		fetch(parIdx)
	}
	if inPlace && allGood && set.StripeChecksum != "" {
		// Every data shard is in place and matched its recorded checksum;
		// what is left of Decode's checks is that the recorded checksums
		// agree with the stripe's.
		if sum, err := erasure.StripeChecksum(set.DataLength, set.ShardChecksums); err == nil && sum == set.StripeChecksum {
			for i := v.K; i < n; i++ {
				if set.Shards[i] != nil && pooled[i] {
					putShardBuffer(set.Shards[i])
				}
			}
			return into, erasure.DecodeReport{}, nil
		}
	}
	data, rep, err := v.Codec.Decode(set, into)
	// Decode copied the data bytes out (into p, or a new slice; a shard
	// fetched in place is copied onto itself): pooled shard buffers can
	// serve the next read.
	for i, b := range set.Shards {
		if b != nil && pooled[i] {
			putShardBuffer(b)
		}
		set.Shards[i] = nil
	}
	// Parity shards not fetched because the data shards were good are not missing.
	missing := rep.Missing[:0]
	for _, i := range rep.Missing {
		if tried[i] {
			missing = append(missing, i)
		}
	}
	rep.Missing = missing
	return data, rep, err
}

// shardBuffers recycles shard payload buffers between stripe reads: a cold
// sequential read otherwise allocates (and zeroes) k shard buffers per
// stripe and keeps the garbage collector busy.
var shardBuffers sync.Pool

func getShardBuffer(n int) []byte {
	if bp, _ := shardBuffers.Get().(*[]byte); bp != nil && cap(*bp) >= n {
		return (*bp)[:n]
	}
	return make([]byte, n)
}

func putShardBuffer(b []byte) {
	if cap(b) == 0 {
		return
	}
	shardBuffers.Put(&b)
}

// readWithinShard serves a read of dst at byte at of the stripe from the one
// data shard that holds it, when it does: the shard is fetched whole and
// verified against its recorded checksum (and the recorded checksums against
// the stripe's), so a 4 KiB read moves one shard instead of k. It reports
// false, having written nothing that counts, when the range spans shards or
// the shard is missing or corrupt: the caller then reads the stripe the
// usual way (degraded if need be).
func (s *Store) readWithinShard(ctx context.Context, v *Volume, es *storagev1.ECStripe, servers map[string]registry.Entry, dst []byte, at int64) bool {
	n, ss := v.K+v.M, int64(v.Codec.ShardSize())
	idx := at / ss
	if len(dst) == 0 || (at+int64(len(dst))-1)/ss != idx || idx >= int64(v.K) || len(es.Spec.ShardLocations) != n {
		return false
	}
	sums := make([]string, n)
	var loc *storagev1.ShardLocation
	for i := range es.Spec.ShardLocations {
		l := &es.Spec.ShardLocations[i]
		if l.ShardIndex < 0 || int(l.ShardIndex) >= n {
			return false
		}
		sums[l.ShardIndex] = l.Checksum
		if int64(l.ShardIndex) == idx {
			loc = l
		}
	}
	if loc == nil || loc.SizeBytes != ss {
		return false // the whole-stripe path decodes around a wrong size
	}
	dataLen := (es.Spec.LbaRange.EndLba - es.Spec.LbaRange.StartLba) * geometry.LBASize
	if es.Spec.Checksum != "" {
		if sum, err := erasure.StripeChecksum(dataLen, sums); err != nil || sum != es.Spec.Checksum {
			return false
		}
	}
	srv, ok := servers[loc.PoolName]
	if !ok {
		return false
	}
	rel := at - idx*ss
	// A read of exactly the shard (a cache block) lands in dst directly; a
	// failed attempt leaves garbage there, which the caller's fallback
	// overwrites.
	direct := rel == 0 && int64(len(dst)) == ss && loc.SizeBytes == ss
	var buf []byte
	if direct {
		buf = dst[:ss:ss]
	} else {
		buf = getShardBuffer(int(loc.SizeBytes))
	}
	_, b, err := s.Shards.GetInto(ctx, srv.Address, loc.Offset, shardserver.Expect{Volume: es.Spec.VolumeRef, StripeID: es.Spec.StripeID, ShardIndex: int(idx), Generation: es.Spec.Generation}, buf)
	if err != nil {
		if !direct {
			putShardBuffer(buf)
		}
		return false
	}
	inDst := direct && len(b) > 0 && &b[0] == &dst[0]
	if !inDst {
		defer putShardBuffer(b)
	}
	if int64(len(b)) != ss || erasure.ShardChecksum(b) != loc.Checksum || rel+int64(len(dst)) > int64(len(b)) {
		return false
	}
	if !inDst {
		copy(dst, b[rel:])
	}
	return true
}

// rereadStripe is getStripe for readers: a failed request (the API server
// unreachable) leaves what Known knows as it was, since a stale entry cannot
// return wrong data and forgetting it would send every later read of the
// stripe to the unreachable API server.
func (s *Store) rereadStripe(ctx context.Context, volume string, id int64) (*storagev1.ECStripe, error) {
	es := &storagev1.ECStripe{}
	err := s.Client.Get(ctx, client.ObjectKey{Name: StripeName(volume, id)}, es)
	switch {
	case err == nil:
		if s.Known != nil {
			s.Known.learn(es)
		}
		return es, nil
	case apierrors.IsNotFound(err) && s.Known != nil:
		s.Known.learnAbsent(volume, id)
	}
	return nil, fmt.Errorf("get ECStripe %s: %w", StripeName(volume, id), err)
}

// relearn rereads stripe id of volume in the background (at most one
// request per stripe at a time), for a read that was served degraded from
// what Known remembered.
func (s *Store) relearn(volume string, id int64) {
	k := s.Known
	key := StripeName(volume, id)
	k.mu.Lock()
	if _, busy := k.relearning[key]; busy {
		k.mu.Unlock()
		return
	}
	if k.relearning == nil {
		k.relearning = map[string]struct{}{}
	}
	k.relearning[key] = struct{}{}
	k.mu.Unlock()
	go func() {
		// Bounded by the client's request timeout (internal/clients).
		_, _ = s.rereadStripe(context.Background(), volume, id)
		k.mu.Lock()
		delete(k.relearning, key)
		k.mu.Unlock()
	}()
}
