package stripe

import (
	"context"
	"errors"
	"fmt"
	"sync"

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
	first, last := off/v.StripeSize, (off+int64(len(p))-1)/v.StripeSize
	stripes, err := s.stripesFor(ctx, v.Name(), first, last)
	if err != nil {
		return rep, err
	}
	servers, err := s.Registry.ByPool(ctx)
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
				data, drep, err := s.readStripe(ctx, v, es, servers)
				if err != nil {
					errs[id-first] = fmt.Errorf("volume %s stripe %d: %w", v.Name(), id, err)
					continue
				}
				copy(dst, data[lo-stripeOff:hi-stripeOff])
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
func (s *Store) readStripe(ctx context.Context, v *Volume, es *storagev1.ECStripe, servers map[string]registry.Entry) ([]byte, erasure.DecodeReport, error) {
	var err error
	if servers == nil {
		if servers, err = s.Registry.ByPool(ctx); err != nil {
			return nil, erasure.DecodeReport{}, err
		}
	}
	for attempt := 0; attempt < 3; attempt++ {
		data, rep, err := s.decodeStripe(ctx, v, es, servers)
		if err == nil || !errors.Is(err, erasure.ErrNotDecodable) {
			return data, rep, err
		}
		// Too few shards: if the stripe moved to a new version meanwhile
		// (its old shards freed by a copy-on-write update), read that one.
		cur, gerr := s.getStripe(ctx, es.Spec.VolumeRef, es.Spec.StripeID)
		if gerr != nil || cur.ResourceVersion == es.ResourceVersion {
			return nil, rep, err
		}
		es = cur
	}
	return nil, erasure.DecodeReport{}, fmt.Errorf("stripe %d kept changing while being read", es.Spec.StripeID)
}

func (s *Store) decodeStripe(ctx context.Context, v *Volume, es *storagev1.ECStripe, servers map[string]registry.Entry) ([]byte, erasure.DecodeReport, error) {
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
			if !ok {
				continue
			}
			wg.Add(1)
			go func(i int, l storagev1.ShardLocation) {
				defer wg.Done()
				_, b, err := s.Shards.Get(ctx, srv.Address, l.Offset, shardserver.Expect{Volume: es.Spec.VolumeRef, StripeID: es.Spec.StripeID, ShardIndex: int(l.ShardIndex), Generation: es.Spec.Generation})
				if err != nil {
					return
				}
				set.Shards[l.ShardIndex] = b
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
	data, rep, err := v.Codec.Decode(set, nil)
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
