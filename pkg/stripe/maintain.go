package stripe

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/erasure"
	"github.com/billyronks/couchestor/pkg/shardserver"
)

// ErrLayoutNotCovered: the operation does not cover volumes of
// spec.stripeLayout PlacementGroups yet (their stripes have no ECStripe).
var ErrLayoutNotCovered = errors.New("not built for volumes of spec.stripeLayout PlacementGroups: their stripes have no ECStripe objects, and nothing here reads their groups' members yet")

type poolOffset struct {
	pool   string
	offset int64
}

// GCReport says what CollectOrphans did.
type GCReport struct {
	Freed      int   // orphaned shards freed
	FreedBytes int64 // their extents' bytes
	Young      int   // unreferenced shards younger than the grace period, kept
	Rebuilding int   // unreferenced shards of stripes with a rebuild intent, kept
}

// CollectOrphans frees shards of volume on the live shard servers that no
// ECStripe references and that were written more than grace ago: the new
// shards of a writer that died before its ECStripe update, and the old
// shards of one that died before freeing them. grace must exceed the longest
// write (shards are written before their ECStripe records them).
func (s *Store) CollectOrphans(ctx context.Context, volume string, grace time.Duration) (GCReport, error) {
	var rep GCReport
	vol := &storagev1.ECVolume{}
	uid := ""
	if err := s.Client.Get(ctx, client.ObjectKey{Name: volume}, vol); err == nil {
		uid = string(vol.UID)
		if vol.Spec.Layout() == storagev1.LayoutPlacementGroups {
			// No ECStripe references its shards: everything would look
			// orphaned. Orphans of this layout are not collected yet.
			return rep, fmt.Errorf("collect orphans of %s: %w", volume, ErrLayoutNotCovered)
		}
	} else if !apierrors.IsNotFound(err) {
		return rep, fmt.Errorf("collect orphans of %s: %w", volume, err)
	}
	servers, err := s.Registry.Servers(ctx)
	if err != nil {
		return rep, err
	}
	// List the shards before the stripes: a shard written after the list is
	// not seen, and one referenced by a stripe created after is young.
	type found struct {
		addr, pool string
		shards     []shardserver.StoredShard
	}
	var lists []found
	for _, srv := range servers {
		sh, err := s.Shards.List(ctx, srv.Address, volume)
		if err != nil {
			return rep, fmt.Errorf("collect orphans of %s: %w", volume, err)
		}
		lists = append(lists, found{srv.Address, srv.Pool, sh})
	}
	// Only the references are kept, page by page: not the stripes.
	referenced := map[poolOffset]bool{}
	rebuilding := map[int64]bool{}
	if err := s.EachStripe(ctx, volume, func(es *storagev1.ECStripe) error {
		if _, ok := es.Annotations[storagev1.ECStripeAnnotationRebuildIntent]; ok {
			// A rebuild in progress (or waiting to be resumed by the next
			// leader) wrote shards it has not recorded yet: they are not
			// orphans, however long the rebuild has been running.
			rebuilding[es.Spec.StripeID] = true
		}
		for _, l := range es.Spec.ShardLocations {
			referenced[poolOffset{strings.Clone(l.PoolName), l.Offset}] = true
		}
		return nil
	}); err != nil {
		return rep, err
	}
	cutoff := s.now().Add(-grace)
	var errs []error
	for _, f := range lists {
		for _, sh := range f.shards {
			h := sh.Header
			if h == nil || h.Volume != volume || (referenced[poolOffset{f.pool, sh.Offset}] && h.VolumeUID == uid) {
				continue
			}
			if rebuilding[h.StripeID] && h.VolumeUID == uid {
				rep.Rebuilding++
				continue
			}
			if time.Unix(0, h.WrittenUnixNano).After(cutoff) {
				rep.Young++
				continue
			}
			err := s.Shards.Free(ctx, f.addr, sh.Offset, shardserver.Expect{Volume: h.Volume, StripeID: h.StripeID, ShardIndex: h.ShardIndex, Generation: h.Generation})
			if err != nil && !errors.Is(err, shardserver.ErrNotFound) {
				errs = append(errs, err)
				continue
			}
			rep.Freed++
			rep.FreedBytes += sh.ExtentBytes
		}
	}
	return rep, errors.Join(errs...)
}

// DeleteReport says what DeleteVolumeData did.
type DeleteReport struct {
	Stripes    int   // ECStripe objects deleted
	Shards     int   // shards freed
	FreedBytes int64 // bytes freed
	// UnreachablePools hold shards of the volume but have no live shard
	// server: their space is freed by CollectOrphans once they return.
	UnreachablePools []string
}

// DeleteVolumeData frees every shard of volume on the live shard servers and
// deletes its ECStripe objects: what the ECVolume finalizer does. Writers
// refuse a volume being deleted, so nothing references the freed shards.
func (s *Store) DeleteVolumeData(ctx context.Context, volume string) (DeleteReport, error) {
	var rep DeleteReport
	stripes, err := s.ListStripes(ctx, volume)
	if err != nil {
		return rep, err
	}
	servers, err := s.Registry.ByPool(ctx)
	if err != nil {
		return rep, err
	}
	unreachable := map[string]bool{}
	for _, es := range stripes {
		for _, l := range es.Spec.ShardLocations {
			if _, ok := servers[l.PoolName]; !ok && l.PoolName != "" {
				unreachable[l.PoolName] = true
			}
		}
	}
	for p := range unreachable {
		rep.UnreachablePools = append(rep.UnreachablePools, p)
	}
	sort.Strings(rep.UnreachablePools)
	for _, srv := range servers {
		list, err := s.Shards.List(ctx, srv.Address, volume)
		if err != nil {
			return rep, fmt.Errorf("delete data of volume %s: %w", volume, err)
		}
		for _, sh := range list {
			h := sh.Header
			if h == nil || h.Volume != volume {
				continue
			}
			err := s.Shards.Free(ctx, srv.Address, sh.Offset, shardserver.Expect{Volume: h.Volume, StripeID: h.StripeID, ShardIndex: h.ShardIndex, Generation: h.Generation})
			if err != nil && !errors.Is(err, shardserver.ErrNotFound) {
				return rep, fmt.Errorf("delete data of volume %s: %w", volume, err)
			}
			rep.Shards++
			rep.FreedBytes += sh.ExtentBytes
		}
	}
	for _, es := range stripes {
		if err := s.Client.Delete(ctx, es); err != nil && !apierrors.IsNotFound(err) {
			return rep, fmt.Errorf("delete ECStripe %s: %w", es.Name, err)
		}
		rep.Stripes++
	}
	return rep, nil
}

// RecoverReport says what Recover did.
type RecoverReport struct {
	Existing int     // stripes that still had their ECStripe
	Restored []int64 // stripe ids whose ECStripe was rebuilt
	Degraded []int64 // of those, restored with shards missing
	Lost     []int64 // stripe ids with shards found but too few to decode
	Skipped  []string
}

// candidate is one version of a stripe seen in shard headers.
type candidate struct {
	gen    int64
	header *shardserver.ShardHeader
	shards map[int]foundShard
}

type foundShard struct {
	pool, node string
	offset     int64
	gen        int64
}

// Recover rebuilds the missing ECStripe objects of volume v from the shard
// headers on the live shard servers: for each stripe id without an ECStripe,
// the newest version (by generation) whose shards are decodable wins.
// Versions are told apart by their stripe checksum, so shards of a version
// that was never committed (a dead writer's) are never mixed with another's.
func (s *Store) Recover(ctx context.Context, v *Volume) (RecoverReport, error) {
	var rep RecoverReport
	servers, err := s.Registry.Servers(ctx)
	if err != nil {
		return rep, err
	}
	byStripe := map[int64]map[string]*candidate{}
	for _, srv := range servers {
		list, err := s.Shards.List(ctx, srv.Address, v.Name())
		if err != nil {
			return rep, fmt.Errorf("recover volume %s: %w", v.Name(), err)
		}
		for _, sh := range list {
			h := sh.Header
			if h == nil || h.Volume != v.Name() || h.VolumeUID != string(v.Object.UID) {
				continue
			}
			if byStripe[h.StripeID] == nil {
				byStripe[h.StripeID] = map[string]*candidate{}
			}
			c := byStripe[h.StripeID][h.StripeChecksum]
			if c == nil {
				c = &candidate{shards: map[int]foundShard{}}
				byStripe[h.StripeID][h.StripeChecksum] = c
			}
			if prev, ok := c.shards[h.ShardIndex]; !ok || h.Generation > prev.gen {
				c.shards[h.ShardIndex] = foundShard{pool: srv.Pool, node: srv.Node, offset: sh.Offset, gen: h.Generation}
			}
			if h.Generation >= c.gen {
				c.gen, c.header = h.Generation, h
			}
		}
	}
	existing, err := s.ListStripes(ctx, v.Name())
	if err != nil {
		return rep, err
	}
	ids := make([]int64, 0, len(byStripe))
	for id := range byStripe {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	for _, id := range ids {
		if existing[id] != nil {
			rep.Existing++
			continue
		}
		best, lost := pickCandidate(byStripe[id], v)
		if best == nil {
			rep.Lost = append(rep.Lost, id)
			continue
		}
		h := best.header
		if h.DataShards != v.K || h.ParityShards != v.M || h.StripeSizeBytes != v.StripeSize || erasure.Algorithm(h.Algorithm) != v.Algorithm {
			rep.Skipped = append(rep.Skipped, fmt.Sprintf("stripe %d: written as %s %d+%d/%d, the policy is now %s %d+%d/%d", id, h.Algorithm, h.DataShards, h.ParityShards, h.StripeSizeBytes, v.Algorithm, v.K, v.M, v.StripeSize))
			continue
		}
		spec := storagev1.ECStripeSpec{VolumeRef: v.Name(), StripeID: id, PolicyRef: h.PolicyRef,
			LbaRange: storagev1.LbaRange{StartLba: h.StartLBA, EndLba: h.EndLBA}, Checksum: h.StripeChecksum, Generation: best.gen}
		now := metav1.NewTime(s.now())
		status := storagev1.ECStripeStatus{LastModifiedTime: &now}
		for i := 0; i < v.K+v.M; i++ {
			loc := storagev1.ShardLocation{ShardIndex: int32(i), IsDataShard: i < v.K, SizeBytes: h.SizeBytes, Checksum: h.ShardChecksums[i]}
			health := storagev1.ShardHealth{ShardIndex: int32(i)}
			if f, ok := best.shards[i]; ok {
				loc.PoolName, loc.NodeName, loc.Offset = f.pool, f.node, f.offset
				health.State = storagev1.ShardHealthy
				status.HealthyShards++
				if i < v.K {
					status.HealthyDataShards++
				} else {
					status.HealthyParityShards++
				}
			} else {
				health.State, health.Error = storagev1.ShardMissing, "not found on any live shard server during recovery"
			}
			spec.ShardLocations = append(spec.ShardLocations, loc)
			status.ShardHealth = append(status.ShardHealth, health)
		}
		status.State = storagev1.StripeHealthy
		if len(lost) > 0 {
			status.State = storagev1.StripeDegraded
			rep.Degraded = append(rep.Degraded, id)
		}
		obj := &storagev1.ECStripe{ObjectMeta: metav1.ObjectMeta{Name: StripeName(v.Name(), id), Labels: map[string]string{LabelVolume: VolumeLabelValue(v.Name())}}, Spec: spec}
		if err := s.Client.Create(ctx, obj); err != nil {
			if apierrors.IsAlreadyExists(err) {
				rep.Existing++
				continue
			}
			return rep, fmt.Errorf("recover ECStripe %s: %w", obj.Name, err)
		}
		obj.Status = status
		if err := s.Client.Status().Update(ctx, obj); err != nil {
			return rep, fmt.Errorf("recover ECStripe %s status: %w", obj.Name, err)
		}
		rep.Restored = append(rep.Restored, id)
	}
	return rep, nil
}

// pickCandidate returns the newest decodable version and its lost shards.
func pickCandidate(cands map[string]*candidate, v *Volume) (*candidate, []int) {
	var list []*candidate
	for _, c := range cands {
		list = append(list, c)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].gen > list[j].gen })
	for _, c := range list {
		var lost []int
		for i := 0; i < v.K+v.M; i++ {
			if _, ok := c.shards[i]; !ok {
				lost = append(lost, i)
			}
		}
		if len(c.header.ShardChecksums) == v.K+v.M && v.Codec.Codec().Decodable(lost) {
			return c, lost
		}
	}
	return nil, nil
}
