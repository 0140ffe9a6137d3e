// Package stripe writes and reads the bytes of ECVolumes as erasure-coded
// stripes. It owns the mapping of a volume byte range onto stripes (the block
// geometry pinned in apis/storage/v1/geometry: stripe i holds LBAs
// [i*span, (i+1)*span), only the last one shorter), the placement of each
// stripe's k+m shards on registered shard servers, the ECStripe objects that
// record them, copy-on-write updates, degraded reads, orphan collection and
// recovery of ECStripe objects from shard headers.
//
// Decisions written down:
//   - A stripe's stripeId is its index in the volume; its ECStripe is named
//     "<volume>-<stripeId>" and labelled with the volume.
//   - Unwritten stripes read as zeros (volumes are sparse). A partial write of
//     a stripe reads the old stripe (or zeros) and writes a full new version.
//   - Writing: shards go to distinct nodes among live shard servers whose
//     DiskPool is Online and that have room; with fewer nodes than k+m, to
//     distinct pools with a Warning Event; with fewer pools, an error. A
//     stripe exists once at least minHealthyShards shards are durable; then
//     its ECStripe is created (state Healthy, or Degraded with the missing
//     shards marked Missing). The status is written right after the create:
//     an ECStripe without a state is a stripe still being written (Writing).
//   - Updates are copy-on-write: new shards (generation+1) at new offsets,
//     then the ECStripe spec is updated with its resourceVersion as the
//     precondition, then the old shards are freed. A writer that dies in
//     between leaves the ECStripe pointing at the old, intact shards; the new
//     shards are orphans that CollectOrphans frees after a grace period
//     (longer than any write may take).
//   - Reads verify every shard against the checksum recorded in the ECStripe
//     and reconstruct around missing or corrupt shards; when too few survive
//     and the ECStripe changed meanwhile (a concurrent update freed old
//     shards), the read is retried against the new version.
//
// The above is the ECStripes layout, every volume's default. A volume created
// with spec.stripeLayout PlacementGroups (fixed at creation by a CEL rule;
// existing volumes never change to it) is written and read without any
// ECStripe (grouped.go, groups.go; README, "At scale", points 1-3):
//   - Placement. Stripe id is in group placement.GroupOf(volume UID, id,
//     groupCount) of the volume's policy, groupCount and members read from
//     the policy's ECPlacementGroup objects (cached by Groups, checked
//     against the policy: width k+m, one groupCount, every slot placed);
//     shard i goes to the group's slot-i member and nowhere else (no retry
//     on another pool: a failed slot leaves the stripe one shard short), with
//     the group count (placementGroups) and the writer epoch in its header.
//   - The record is the shards. A version (generation, stripe checksum) is
//     acknowledged once max(k, minHealthyShards) of its shards are durable
//     (each server commits its index entry before it answers). The current
//     version of a stripe is the newest one held by at least k members, found
//     by asking every member what it holds of the stripe
//     (shardserver.Client.StripeShards, answered from the store's shard
//     headers: every generation it holds, not just the newest), decided by
//     decideQuorum. It is served only if fewer than k slots could hold a
//     newer acknowledged version (unanswered, a Backfilling member's
//     nothing, holding a newer generation or the same one with another
//     checksum): the other n-k+1 form a read quorum that meets every write
//     quorum. Otherwise the stripe is ErrInDoubt: never served as an older
//     generation, never as zeros. Zeros are served only when at least
//     n-k+1 members answered that they hold nothing of the stripe: unknown
//     is never zero.
//   - Copy-on-write stays: a write resolves the stripe, encodes a new version
//     of generation max(current, newest seen anywhere)+1 (a dead writer's
//     partial generation is stepped past), writes it at new offsets and,
//     only once it is acknowledged, frees every older shard the members
//     reported (the superseded version and orphans of dead writers). A
//     writer killed before that leaves both; the next write frees them. A
//     StaleError (a generation the resolution did not see) re-resolves and
//     steps past it.
//   - Memory. An export (Known set) remembers each stripe's resolution and
//     the shards it wrote, so reads do not ask the members every time; a
//     read that finds shards missing forgets it, one that cannot decode
//     resolves again once. Known's bound (MaxStripes) holds for them too.
//   - Fencing. Before its first read or write of the volume a Store with a
//     WriterEpoch raises the volume's fence to that epoch on every member of
//     every group of the policy (PUT /v1/fences, which waits for the writes
//     in flight of an older epoch), and fails unless every group has fewer
//     than k members it did not reach: an older writer still running then
//     reaches fewer than k members of any group and cannot make a version
//     current (its shards there are refused as ErrFenced). A member that saw
//     a newer epoch makes the raise fail: this writer is the older one.
//   - Not on this layout yet: the ECStripe view (no ECStripe is created for
//     these volumes, and ECVolume status counts none of their stripes),
//     orphan collection (CollectOrphans refuses them with
//     ErrLayoutNotCovered: everything would look orphaned), rebuild and
//     scrub by group, backfill of a replaced member, migration of existing
//     volumes, and re-fencing a member that joins a group after the raise.
package stripe

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sort"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mayastorv1beta2 "github.com/billyronks/couchestor/apis/mayastor/v1beta2"
	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/apis/storage/v1/geometry"
	"github.com/billyronks/couchestor/pkg/diskpool"
	"github.com/billyronks/couchestor/pkg/erasure"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/pkg/shardserver"
)

// LabelVolume labels every ECStripe with its volume (a hash for names longer
// than a label value may be). Stripes are selected by spec.volumeRef
// (storagev1.ECStripeVolumeRefField), never by this label alone.
const LabelVolume = storagev1.ECStripeVolumeLabel

// EventRecorder is client-go's events.EventRecorder (what a manager's
// GetEventRecorder returns).
type EventRecorder interface {
	Eventf(regarding, related k8sruntime.Object, eventtype, reason, action, note string, args ...interface{})
}

// Store writes and reads ECVolumes. Its fields are set once; it is safe for
// concurrent use.
type Store struct {
	// Client talks to the API server directly (not through a cache): the
	// ECStripe resourceVersion is the copy-on-write precondition.
	Client client.Client
	// Shards reaches the shard servers; Registry finds them.
	Shards   *shardserver.Client
	Registry *registry.Lookup
	// MayastorNamespace holds the DiskPool objects (default "mayastor").
	MayastorNamespace string
	// Events, when set, receives Warning Events about placement.
	Events EventRecorder
	// Parallel is how many stripes are in flight at once (default 2*GOMAXPROCS).
	Parallel int
	// Now is the clock (default time.Now).
	Now func() time.Time
	// ListPageSize is how many ECStripes a page of EachStripe asks for
	// (default 500).
	ListPageSize int
	// Known, when set, remembers ECStripes between calls (see Known): set it
	// in a process that is the only writer of its volumes (an export).
	Known *Known
	// Views, when set, reuses the live shard servers, their DiskPools' state
	// and free space for Views.TTL (see ServerViews) instead of looking them
	// up for every read and write.
	Views *ServerViews
	// WriterEpoch, when set, is the export's writer epoch (its volume
	// Lease's, pkg/fence). It goes into every shard header and onto every
	// ECStripe written (annotation fence.AnnotationEpoch), where shard
	// servers and the ECStripe webhook refuse it once a newer export holds
	// the volume.
	WriterEpoch uint64
	// Fence, when set, is asked before a stripe's shards are written and
	// again before its ECStripe is created or updated; an error stops the
	// write (the export no longer holds its Lease).
	Fence func() error
	// Groups, when set, caches the ECPlacementGroups of PlacementGroups
	// volumes (see Groups); without it they are read for every stripe.
	Groups *Groups
	// AfterShardsDurable, when set, runs after a stripe version's shards are
	// durable and before its ECStripe is created or updated. It is a
	// fault-injection seam: tests block here and kill the writer.
	AfterShardsDurable func(volume string, stripeID, generation int64)
}

func (s *Store) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

func (s *Store) parallel() int {
	if s.Parallel > 0 {
		return s.Parallel
	}
	return 2 * runtime.GOMAXPROCS(0)
}

func (s *Store) mayastorNS() string {
	if s.MayastorNamespace != "" {
		return s.MayastorNamespace
	}
	return "mayastor"
}

// Volume is an ECVolume resolved with its policy.
type Volume struct {
	Object     *storagev1.ECVolume
	Policy     string
	Algorithm  erasure.Algorithm
	K, M       int
	MinHealthy int
	StripeSize int64
	Codec      *erasure.StripeCodec
	// Layout is the volume's spec.stripeLayout (with its default).
	Layout storagev1.StripeLayout
}

// Name of the volume.
func (v *Volume) Name() string { return v.Object.Name }

// Stripes is the number of stripes the volume spans.
func (v *Volume) Stripes() int64 {
	span := v.StripeSize
	return (v.Object.Spec.SizeBytes + span - 1) / span
}

// OpenVolume reads the ECVolume and its ErasureCodingPolicy.
func (s *Store) OpenVolume(ctx context.Context, name string) (*Volume, error) {
	vol := &storagev1.ECVolume{}
	if err := s.Client.Get(ctx, client.ObjectKey{Name: name}, vol); err != nil {
		return nil, fmt.Errorf("get ECVolume %s: %w", name, err)
	}
	return s.resolve(ctx, vol)
}

func (s *Store) resolve(ctx context.Context, vol *storagev1.ECVolume) (*Volume, error) {
	pol := &storagev1.ErasureCodingPolicy{}
	if err := s.Client.Get(ctx, client.ObjectKey{Name: vol.Spec.PolicyRef}, pol); err != nil {
		return nil, fmt.Errorf("ECVolume %s: get ErasureCodingPolicy %q (spec.policyRef): %w", vol.Name, vol.Spec.PolicyRef, err)
	}
	v := &Volume{Object: vol, Policy: pol.Name, Layout: vol.Spec.Layout()}
	sp := pol.Spec
	// Schema defaults, in case the object was stored without them.
	v.K, v.M, v.StripeSize = 4, 2, 1048576
	v.Algorithm = erasure.ReedSolomon
	if sp.DataShards != nil {
		v.K = int(*sp.DataShards)
	}
	if sp.ParityShards != nil {
		v.M = int(*sp.ParityShards)
	}
	if sp.StripeSizeBytes != nil {
		v.StripeSize = *sp.StripeSizeBytes
	}
	if sp.Algorithm != "" {
		v.Algorithm = erasure.Algorithm(sp.Algorithm)
	}
	v.MinHealthy = v.K
	if sp.MinHealthyShards != nil {
		v.MinHealthy = int(*sp.MinHealthyShards)
	}
	c, err := erasure.NewStripeCodec(v.Algorithm, v.K, v.M, v.StripeSize)
	if err != nil {
		return nil, fmt.Errorf("ErasureCodingPolicy %s: %w", pol.Name, err)
	}
	v.Codec = c
	return v, nil
}

// StripeName is the ECStripe of stripe id of volume.
func StripeName(volume string, id int64) string { return volume + "-" + strconv.FormatInt(id, 10) }

// VolumeLabelValue is the LabelVolume value of a volume.
func VolumeLabelValue(volume string) string { return storagev1.ECStripeVolumeLabelValue(volume) }

// stripeRange is the LBA range and data length of stripe i of v.
func (v *Volume) stripeRange(i int64) (start, end int64) {
	start, end, _ = geometry.StripeRange(i, v.StripeSize, v.Object.Spec.SizeBytes)
	return start, end
}

// ListStripes returns every ECStripe of a volume, keyed by stripeId.
func (s *Store) ListStripes(ctx context.Context, volume string) (map[int64]*storagev1.ECStripe, error) {
	var list storagev1.ECStripeList
	if err := s.Client.List(ctx, &list, client.MatchingFields{storagev1.ECStripeVolumeRefField: volume}); err != nil {
		return nil, fmt.Errorf("list ECStripes of volume %s: %w", volume, err)
	}
	out := make(map[int64]*storagev1.ECStripe, len(list.Items))
	for i := range list.Items {
		if list.Items[i].Spec.VolumeRef == volume {
			out[list.Items[i].Spec.StripeID] = &list.Items[i]
		}
	}
	return out, nil
}

// listPage is how many ECStripes one List page of EachStripe holds: the
// response body and its decoded objects are held one page at a time, not
// for the whole volume (a 10,000-stripe volume's single List held 42 MB of
// response body in the operator, go tool pprof on make bench-scale).
const listPage = 500

// EachStripe calls fn for every ECStripe of volume, read from the API server
// page by page (one consistent snapshot; a snapshot that expires mid-way,
// 410 Gone, is started again from the first page, at most three times, and
// fn must tolerate seeing a stripe again then). fn must not keep the stripe.
func (s *Store) EachStripe(ctx context.Context, volume string, fn func(*storagev1.ECStripe) error) error {
	for attempt := 0; ; attempt++ {
		err := s.eachStripe(ctx, volume, fn)
		if err == nil || !apierrors.IsResourceExpired(err) || attempt == 2 {
			return err
		}
	}
}

func (s *Store) eachStripe(ctx context.Context, volume string, fn func(*storagev1.ECStripe) error) error {
	cont := ""
	for {
		var list storagev1.ECStripeList
		page := int64(listPage)
		if s.ListPageSize > 0 {
			page = int64(s.ListPageSize)
		}
		if err := s.Client.List(ctx, &list, client.MatchingFields{storagev1.ECStripeVolumeRefField: volume},
			client.Limit(page), client.Continue(cont)); err != nil {
			return fmt.Errorf("list ECStripes of volume %s: %w", volume, err)
		}
		for i := range list.Items {
			if list.Items[i].Spec.VolumeRef == volume {
				if err := fn(&list.Items[i]); err != nil {
					return err
				}
			}
		}
		if cont = list.Continue; cont == "" {
			return nil
		}
	}
}

// stripesFor returns the ECStripes of ids: from Known when it knows them,
// else by Get for a few, one List otherwise.
func (s *Store) stripesFor(ctx context.Context, volume string, first, last int64) (map[int64]*storagev1.ECStripe, error) {
	out := map[int64]*storagev1.ECStripe{}
	var ask []int64
	for id := first; id <= last; id++ {
		if s.Known != nil {
			if es, ok := s.Known.get(volume, id); ok {
				if es != nil {
					out[id] = es
				}
				continue
			}
		}
		ask = append(ask, id)
	}
	if len(ask) > 4 {
		all, err := s.ListStripes(ctx, volume)
		if err != nil {
			return nil, err
		}
		for _, id := range ask {
			if es := all[id]; es != nil {
				out[id] = es
				if s.Known != nil {
					s.Known.learn(es)
				}
			} else if s.Known != nil {
				s.Known.learnAbsent(volume, id)
			}
		}
		return out, nil
	}
	for _, id := range ask {
		es := &storagev1.ECStripe{}
		err := s.Client.Get(ctx, client.ObjectKey{Name: StripeName(volume, id)}, es)
		if apierrors.IsNotFound(err) {
			if s.Known != nil {
				s.Known.learnAbsent(volume, id)
			}
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("get ECStripe %s: %w", StripeName(volume, id), err)
		}
		out[id] = es
		if s.Known != nil {
			s.Known.learn(es)
		}
	}
	return out, nil
}

// ---- placement ----

// target is a shard server that can take shards.
type target struct {
	registry.Entry
	free int64
}

// placer chooses pools for the shards of stripes within one write.
type placer struct {
	mu      sync.Mutex
	targets []*target // sorted by pool
	nodes   []string  // distinct nodes, sorted
}

// candidates are the live shard servers whose DiskPool is Online, with the
// room each reports.
func (s *Store) candidates(ctx context.Context) (*placer, error) {
	servers, err := s.Registry.Servers(ctx)
	if err != nil {
		return nil, err
	}
	pools, err := (&diskpool.Reader{Client: s.Client, Namespace: s.mayastorNS()}).List(ctx)
	if err != nil {
		return nil, err
	}
	online := map[string]bool{}
	for _, p := range pools {
		online[p.Name] = p.PoolStatus == mayastorv1beta2.PoolOnline && !p.Deleting
	}
	pl := &placer{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, e := range servers {
		if !online[e.Pool] {
			continue
		}
		wg.Add(1)
		go func(e registry.Entry) {
			defer wg.Done()
			sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			sp, err := s.Shards.Space(sctx, e.Address)
			if err != nil {
				return // unreachable: not a candidate
			}
			mu.Lock()
			pl.targets = append(pl.targets, &target{Entry: e, free: sp.FreeBytes})
			mu.Unlock()
		}(e)
	}
	wg.Wait()
	sort.Slice(pl.targets, func(i, j int) bool { return pl.targets[i].Pool < pl.targets[j].Pool })
	seen := map[string]bool{}
	for _, t := range pl.targets {
		if !seen[t.Node] {
			seen[t.Node] = true
			pl.nodes = append(pl.nodes, t.Node)
		}
	}
	sort.Strings(pl.nodes)
	return pl, nil
}

// ErrNotEnoughPools is returned when fewer usable pools than k+m exist.
var ErrNotEnoughPools = errors.New("not enough shard pools")

// place picks n pools with room for need bytes each: distinct nodes when
// there are enough, else distinct pools spread over the nodes (sharedNodes
// true). Placement rotates with the stripe id so load spreads. The chosen
// pools' free space is reserved. exclude names pools not to use.
func (pl *placer) place(n int, need int64, rot int64, exclude map[string]bool) (chosen []*target, sharedNodes bool, err error) {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	byNode := map[string][]*target{}
	var usable int
	for _, t := range pl.targets {
		if t.free >= need && !exclude[t.Pool] {
			byNode[t.Node] = append(byNode[t.Node], t)
			usable++
		}
	}
	if usable < n {
		return nil, false, fmt.Errorf("%w: a stripe needs %d shards on distinct pools, but only %d registered shard servers have an Online DiskPool and %d bytes free", ErrNotEnoughPools, n, usable, need)
	}
	var nodes []string
	for _, nd := range pl.nodes {
		if len(byNode[nd]) > 0 {
			nodes = append(nodes, nd)
		}
	}
	for _, nd := range nodes { // most free first within a node
		ts := byNode[nd]
		sort.SliceStable(ts, func(i, j int) bool { return ts[i].free > ts[j].free })
	}
	start := int(rot % int64(len(nodes)))
	// Round-robin over the nodes: with enough nodes each gets one shard.
	for round := 0; len(chosen) < n; round++ {
		for i := 0; i < len(nodes) && len(chosen) < n; i++ {
			ts := byNode[nodes[(start+i)%len(nodes)]]
			if round < len(ts) {
				chosen = append(chosen, ts[round])
			}
		}
	}
	for _, t := range chosen {
		t.free -= need
	}
	return chosen, len(nodes) < n, nil
}

// unreserve gives reserved room back to a target whose write failed.
func (pl *placer) unreserve(t *target, need int64) {
	pl.mu.Lock()
	t.free += need
	pl.mu.Unlock()
}

// ---- events ----

func (s *Store) warn(vol *storagev1.ECVolume, reason, action, format string, args ...any) {
	if s.Events != nil {
		s.Events.Eventf(vol, nil, corev1.EventTypeWarning, reason, action, format, args...)
	}
}
