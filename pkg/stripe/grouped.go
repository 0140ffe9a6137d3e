package stripe

// The PlacementGroups layout (spec.stripeLayout: PlacementGroups; the
// package doc says what it decides). Stripe id of a volume lives in group
// placement.GroupOf(volume UID, id, groupCount) of its policy; shard i on the
// group's slot-i member. No ECStripe is read or written here.

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/apis/storage/v1/geometry"
	storagev1alpha1 "github.com/billyronks/couchestor/apis/storage/v1alpha1"
	"github.com/billyronks/couchestor/pkg/erasure"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/pkg/shardserver"
)

// ErrInDoubt: the members that answered do not rule out that a generation
// newer than the newest one a quorum holds was acknowledged (too many members
// did not answer, or hold a newer generation only partly). The stripe is not
// served, neither as its older generation nor as zeros, until more answer.
var ErrInDoubt = errors.New("stripe generation in doubt")

// heldAt is a shard a member holds.
type heldAt struct {
	addr  string
	slot  int
	shard shardserver.HeldShard
}

// placed is a stripe of a PlacementGroups volume as resolved from its
// group's members.
type placed struct {
	gen     int64 // 0: the stripe was never written (a quorum says absent)
	maxSeen int64 // the newest generation any member holds (orphans too)
	count   uint32
	group   uint32
	members []groupMember
	// es is the resolved version as an ECStripe-shaped record for the
	// decoder (never written to the API server); nil when gen is 0.
	es *storagev1.ECStripe
	// held are the shards of other generations the members hold: freed
	// once a newer generation is durable at quorum.
	held []heldAt
}

// slotAnswer is what the member of one slot answered about a stripe: its
// shards of that slot (known), or why it did not answer.
type slotAnswer struct {
	known  bool
	err    error
	addr   string
	shards []shardserver.HeldShard
	// backfilling: the member replaced a lost pool and is not backfilled
	// yet; its "I hold nothing" is not a positive absence.
	backfilling bool
}

// stripeVersion is one written version of a stripe: its generation and
// stripe checksum (two writers of one generation differ in the latter).
type stripeVersion struct {
	gen int64
	sum string
}

// quorumDecision is what decideQuorum found.
type quorumDecision struct {
	// cur is the newest version k members hold (gen 0: none does).
	cur     stripeVersion
	holders []int                 // the slots holding cur
	first   shardserver.HeldShard // one shard of cur (its stripe metadata)
	// possible counts the slots that could hold an acknowledged version
	// newer than cur: unknown, a backfilling member's nothing, or holding
	// a newer generation (or cur's generation with another checksum).
	possible int
	maxSeen  int64 // the newest generation any slot holds
	errs     []error
}

// decideQuorum decides a stripe's current version from its members'
// answers (by slot); valid says whether a shard matches the volume's
// geometry. The caller refuses the decision (ErrInDoubt) when possible
// reaches the acknowledgement quorum.
func decideQuorum(answers []slotAnswer, k int, valid func(slot int, sh shardserver.HeldShard) bool) quorumDecision {
	var d quorumDecision
	holders := map[stripeVersion][]int{}
	first := map[stripeVersion]shardserver.HeldShard{}
	for slot, a := range answers {
		for _, sh := range a.shards {
			d.maxSeen = max(d.maxSeen, sh.Generation)
			if !valid(slot, sh) {
				continue
			}
			ver := stripeVersion{sh.Generation, sh.StripeChecksum}
			holders[ver] = append(holders[ver], slot)
			if _, ok := first[ver]; !ok {
				first[ver] = sh
			}
		}
	}
	vers := make([]stripeVersion, 0, len(holders))
	for ver := range holders {
		vers = append(vers, ver)
	}
	sort.Slice(vers, func(i, j int) bool {
		if vers[i].gen != vers[j].gen {
			return vers[i].gen > vers[j].gen
		}
		if len(holders[vers[i]]) != len(holders[vers[j]]) {
			return len(holders[vers[i]]) > len(holders[vers[j]])
		}
		return vers[i].sum < vers[j].sum
	})
	for _, ver := range vers {
		if len(holders[ver]) >= k {
			d.cur, d.holders, d.first = ver, holders[ver], first[ver]
			break
		}
	}
	for slot, a := range answers {
		if !a.known {
			d.possible++
			d.errs = append(d.errs, fmt.Errorf("slot %d: %w", slot, a.err))
			continue
		}
		if a.backfilling && len(a.shards) == 0 {
			d.possible++
			continue
		}
		for _, sh := range a.shards {
			if sh.Generation > d.cur.gen || (sh.Generation == d.cur.gen && sh.StripeChecksum != d.cur.sum) {
				d.possible++
				break
			}
		}
	}
	return d
}

// quorum is how many durable shards acknowledge a stripe version.
func (v *Volume) quorum() int { return max(v.MinHealthy, v.K) }

// resolvePlaced asks every member of stripe id's group which shards of the
// stripe it holds and decides its current generation: the newest one (with
// one stripe checksum) whose shard of its slot at least k members hold, as
// long as the members that answered rule out anything newer having been
// acknowledged (a version is acknowledged once quorum() >= k members hold
// it, so fewer than k slots may be unknown or hold something newer: the
// other n-k+1 are a read quorum meeting every write quorum); otherwise
// ErrInDoubt. Zero holders with that rule satisfied is "absent".
func (s *Store) resolvePlaced(ctx context.Context, v *Volume, id int64, fresh bool) (*placed, error) {
	count, gid, members, _, err := s.groupOf(ctx, v, id, fresh)
	if err != nil {
		return nil, err
	}
	servers, err := s.serversByPool(ctx)
	if err != nil {
		return nil, err
	}
	n := v.K + v.M
	start, end := v.stripeRange(id)
	ss := int64(v.Codec.ShardSize())
	answers := make([]slotAnswer, n)
	var wg sync.WaitGroup
	for slot, m := range members {
		srv, ok := servers[m.Pool]
		if !ok {
			answers[slot].err = fmt.Errorf("pool %s has no registered shard server", m.Pool)
			continue
		}
		wg.Add(1)
		go func(slot int, addr string) {
			defer wg.Done()
			lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			h, err := s.Shards.StripeShards(lctx, addr, v.Name(), string(v.Object.UID), id)
			a := slotAnswer{addr: addr, err: err, known: err == nil}
			for _, sh := range h.Shards {
				if sh.ShardIndex == slot {
					a.shards = append(a.shards, sh)
				}
			}
			answers[slot] = a
		}(slot, srv.Address)
	}
	wg.Wait()
	valid := func(slot int, sh shardserver.HeldShard) bool {
		return sh.DataShards == v.K && sh.ParityShards == v.M && sh.StartLBA == start && sh.EndLBA == end && sh.SizeBytes == ss &&
			len(sh.ShardChecksums) == n && sh.ShardChecksums[slot] == sh.Checksum && sh.StripeChecksum != "" && sh.Generation > 0
	}
	for slot := range answers {
		answers[slot].backfilling = members[slot].State == storagev1alpha1.MemberBackfilling
	}
	d := decideQuorum(answers, v.K, valid)
	cur, possible, holders, errs := d.cur, d.possible, d.holders, d.errs
	p := &placed{count: count, group: gid, members: members, maxSeen: d.maxSeen}
	// Any acknowledged version is durable on quorum() >= k members: fewer
	// than k slots that could hold a newer one rule it out (k rather than
	// quorum(): a version acknowledged under a smaller minHealthyShards).
	if possible >= v.K {
		what := fmt.Sprintf("generation %d is held by %d members", cur.gen, len(holders))
		if cur.gen == 0 {
			what = "no generation is held by k members"
		}
		return nil, fmt.Errorf("%w: volume %s stripe %d (group %d): %s; %d of %d members did not answer or hold a newer generation partly, and a write acknowledged on %d of them cannot be ruled out: %w",
			ErrInDoubt, v.Name(), id, gid, what, possible, n, v.K, errors.Join(errs...))
	}
	p.gen = cur.gen
	for slot, a := range answers {
		for _, sh := range a.shards {
			if sh.Generation != cur.gen || sh.StripeChecksum != cur.sum || !valid(slot, sh) {
				p.held = append(p.held, heldAt{addr: a.addr, slot: slot, shard: sh})
			}
		}
	}
	if cur.gen == 0 {
		return p, nil
	}
	ref := d.first
	es := &storagev1.ECStripe{Spec: storagev1.ECStripeSpec{VolumeRef: v.Name(), StripeID: id, PolicyRef: v.Policy,
		LbaRange: storagev1.LbaRange{StartLba: start, EndLba: end}, Checksum: cur.sum, Generation: cur.gen,
		ShardLocations: make([]storagev1.ShardLocation, n)}}
	es.Name = StripeName(v.Name(), id)
	for i := 0; i < n; i++ {
		es.Spec.ShardLocations[i] = storagev1.ShardLocation{ShardIndex: int32(i), IsDataShard: i < v.K, SizeBytes: ss, Checksum: ref.ShardChecksums[i]}
	}
	for _, slot := range holders {
		for _, sh := range answers[slot].shards {
			if sh.Generation == cur.gen && sh.StripeChecksum == cur.sum {
				es.Spec.ShardLocations[slot].PoolName, es.Spec.ShardLocations[slot].Offset = members[slot].Pool, sh.Offset
			}
		}
	}
	p.es = es
	return p, nil
}

// placedFor is the stripe's resolution, from Known when this process
// resolved or wrote it before (and fresh is not set).
func (s *Store) placedFor(ctx context.Context, v *Volume, id int64, fresh bool) (*placed, error) {
	key := string(v.Object.UID) + "/" + StripeName(v.Name(), id)
	if s.Known != nil && !fresh {
		if p := s.Known.getPlaced(key); p != nil {
			return p, nil
		}
	}
	p, err := s.resolvePlaced(ctx, v, id, fresh)
	if err != nil {
		if s.Known != nil {
			s.Known.forgetPlaced(key)
		}
		return nil, err
	}
	if s.Known != nil {
		s.Known.learnPlaced(key, p)
	}
	return p, nil
}

func (s *Store) forgetPlaced(v *Volume, id int64) {
	if s.Known != nil {
		s.Known.forgetPlaced(string(v.Object.UID) + "/" + StripeName(v.Name(), id))
	}
}

// FenceGroups raises the writer fence of a PlacementGroups volume on its
// groups' members (see fenceGroups; nothing for other layouts or without a
// WriterEpoch). An export calls it once it holds the volume's Lease, before
// it serves; reads and writes call it too before their first I/O.
func (s *Store) FenceGroups(ctx context.Context, v *Volume) error {
	if v.Layout != storagev1.LayoutPlacementGroups {
		return nil
	}
	return s.fenceGroups(ctx, v)
}

// fenceGroups raises the volume's writer fence to WriterEpoch on every
// member of every group of its policy before this Store first reads or
// writes the volume, and fails unless in every group fewer than k members
// missed it: an older writer still running then reaches at most k-1 members
// of any group and can make no version current (resolvePlaced needs k
// holders). A member that has seen a newer epoch makes it fail with
// shardserver.ErrFenced: this writer is the older one.
func (s *Store) fenceGroups(ctx context.Context, v *Volume) error {
	if s.WriterEpoch == 0 {
		return nil
	}
	key := string(v.Object.UID) + "/" + v.Name()
	if s.Groups != nil {
		s.Groups.mu.Lock()
		done := s.Groups.fenced[key] == s.WriterEpoch
		s.Groups.mu.Unlock()
		if done {
			return nil
		}
	}
	pg, err := s.policyGroups(ctx, v, true)
	if err != nil {
		return err
	}
	servers, err := s.serversByPool(ctx)
	if err != nil {
		return err
	}
	pools := map[string]bool{}
	for _, g := range pg.groups {
		for _, m := range g.Status.Members {
			pools[m.Pool] = false
		}
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	var fenced error
	for pool := range pools {
		srv, ok := servers[pool]
		if !ok {
			continue
		}
		wg.Add(1)
		go func(pool, addr string) {
			defer wg.Done()
			fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			err := s.Shards.RaiseFence(fctx, addr, v.Name(), string(v.Object.UID), s.WriterEpoch)
			mu.Lock()
			defer mu.Unlock()
			if errors.Is(err, shardserver.ErrFenced) {
				fenced = err
			}
			pools[pool] = err == nil
		}(pool, srv.Address)
	}
	wg.Wait()
	if fenced != nil {
		return fmt.Errorf("volume %s: %w", v.Name(), fenced)
	}
	for gid := uint32(0); gid < pg.count; gid++ {
		g := pg.groups[gid]
		if g == nil {
			return fmt.Errorf("volume %s: placement group %d of %d of policy %s has no ECPlacementGroup object", v.Name(), gid, pg.count, v.Policy)
		}
		missed := 0
		for _, m := range g.Status.Members {
			if !pools[m.Pool] {
				missed++
			}
		}
		if missed >= v.K {
			return fmt.Errorf("volume %s: the writer fence (epoch %d) reached %d of the %d members of ECPlacementGroup %s; %d (k) or more unfenced members would let an older writer make its stripes current: not serving until more members answer",
				v.Name(), s.WriterEpoch, len(g.Status.Members)-missed, len(g.Status.Members), g.Name, v.K)
		}
	}
	if s.Groups != nil {
		s.Groups.mu.Lock()
		if s.Groups.fenced == nil {
			s.Groups.fenced = map[string]uint64{}
		}
		s.Groups.fenced[key] = s.WriterEpoch
		s.Groups.mu.Unlock()
	}
	return nil
}

// writeGrouped is WriteAt of a PlacementGroups volume.
func (s *Store) writeGrouped(ctx context.Context, v *Volume, p []byte, off int64) error {
	if err := s.fenceGroups(ctx, v); err != nil {
		return err
	}
	first, last := off/v.StripeSize, (off+int64(len(p))-1)/v.StripeSize
	ids := make(chan int64)
	errs := make([]error, last-first+1)
	var wg sync.WaitGroup
	for w := 0; w < min(s.parallel(), int(last-first+1)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range ids {
				if errs[id-first] = s.writePlaced(ctx, v, id, p, off); errs[id-first] != nil {
					s.forgetPlaced(v, id)
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

// writePlaced writes one new generation of stripe id: shard i to the slot-i
// member of its group, at new offsets (copy-on-write), acknowledged once
// quorum() shards are durable; then the superseded generations are freed.
func (s *Store) writePlaced(ctx context.Context, v *Volume, id int64, p []byte, off int64) error {
	start, end := v.stripeRange(id)
	dataLen := (end - start) * geometry.LBASize
	stripeOff := start * geometry.LBASize
	lo, hi := max(off, stripeOff), min(off+int64(len(p)), stripeOff+dataLen)
	covered := lo == stripeOff && hi == stripeOff+dataLen
	n := v.K + v.M
	var minGen int64
	fresh := false
	for attempt := 0; attempt < maxStripeAttempts; attempt++ {
		if err := s.fence(); err != nil {
			return fmt.Errorf("stripe %d: %w", id, err)
		}
		cur, err := s.placedFor(ctx, v, id, fresh)
		if err != nil {
			return fmt.Errorf("stripe %d: %w", id, err)
		}
		servers, err := s.serversByPool(ctx)
		if err != nil {
			return err
		}
		st := v.Codec.NewStripe()
		buf := st.DataBuffer()[:dataLen]
		if cur.gen > 0 && !covered {
			data, _, err := s.decodeStripe(ctx, v, cur.es, servers, nil)
			if err != nil {
				if !fresh {
					fresh = true
					continue
				}
				return fmt.Errorf("stripe %d: read generation %d for a partial write: %w", id, cur.gen, err)
			}
			copy(buf, data)
		}
		copy(buf[lo-stripeOff:hi-stripeOff], p[lo-off:hi-off])
		if err := v.Codec.Encode(st, dataLen); err != nil {
			return fmt.Errorf("stripe %d: encode: %w", id, err)
		}
		gen := max(max(cur.gen, cur.maxSeen)+1, minGen)
		type put struct {
			addr string
			loc  shardserver.Location
			err  error
		}
		puts := make([]put, n)
		var wg sync.WaitGroup
		for i := 0; i < n; i++ {
			srv, ok := servers[cur.members[i].Pool]
			if !ok {
				puts[i].err = fmt.Errorf("slot %d: pool %s has no registered shard server", i, cur.members[i].Pool)
				continue
			}
			h := &shardserver.ShardHeader{
				Volume: v.Name(), VolumeUID: string(v.Object.UID), PolicyRef: v.Policy, StripeID: id, ShardIndex: i, Generation: gen,
				Algorithm: string(v.Algorithm), DataShards: v.K, ParityShards: v.M, StripeSizeBytes: v.StripeSize,
				StartLBA: start, EndLBA: end, SizeBytes: int64(v.Codec.ShardSize()), Checksum: st.ShardChecksums[i],
				ShardChecksums: st.ShardChecksums, StripeChecksum: st.Checksum, WrittenUnixNano: s.now().UnixNano(),
				WriterEpoch: s.WriterEpoch, PlacementGroups: cur.count,
			}
			wg.Add(1)
			go func(i int, addr string) {
				defer wg.Done()
				loc, err := s.Shards.Put(ctx, addr, h, st.Shards[i])
				puts[i] = put{addr: addr, loc: loc, err: err}
			}(i, srv.Address)
		}
		wg.Wait()
		free := func() {
			for i, w := range puts {
				if w.err == nil && !w.loc.Existing {
					_ = s.Shards.Free(ctx, w.addr, w.loc.Offset, shardserver.Expect{Volume: v.Name(), StripeID: id, ShardIndex: i, Generation: gen})
				}
			}
		}
		ok := 0
		// staleSeen: some member refused the generation as stale; newest
		// is the newest generation such a member said it holds (-1 when
		// none said: the fresh lookup below then learns it, never a guess).
		staleSeen, newest := false, int64(-1)
		var errs []error
		for _, w := range puts {
			var stale *shardserver.StaleError
			switch {
			case w.err == nil:
				ok++
			case errors.As(w.err, &stale):
				staleSeen = true
				if held, known := stale.Held(); known && held > newest {
					newest = held
				}
				errs = append(errs, w.err)
			default:
				errs = append(errs, w.err)
			}
		}
		for _, w := range puts {
			if errors.Is(w.err, shardserver.ErrFenced) {
				free()
				return fmt.Errorf("stripe %d: %w", id, w.err)
			}
		}
		if staleSeen {
			// A generation this resolution did not see (a racing or dead
			// writer's): step past it and look again (the lookup lists
			// every generation the members hold, also when a member could
			// not say which one it holds).
			free()
			minGen, fresh = max(minGen, newest+1), true
			continue
		}
		if ok < v.quorum() {
			free()
			return fmt.Errorf("stripe %d: only %d of %d shards are durable on the members of placement group %d, %d needed (max of k and spec.minHealthyShards): %w", id, ok, n, cur.group, v.quorum(), errors.Join(errs...))
		}
		if s.AfterShardsDurable != nil {
			s.AfterShardsDurable(v.Name(), id, gen)
		}
		np := &placed{gen: gen, maxSeen: gen, count: cur.count, group: cur.group, members: cur.members}
		es := &storagev1.ECStripe{Spec: storagev1.ECStripeSpec{VolumeRef: v.Name(), StripeID: id, PolicyRef: v.Policy,
			LbaRange: storagev1.LbaRange{StartLba: start, EndLba: end}, Checksum: st.Checksum, Generation: gen,
			ShardLocations: make([]storagev1.ShardLocation, n)}}
		es.Name = StripeName(v.Name(), id)
		for i, w := range puts {
			l := storagev1.ShardLocation{ShardIndex: int32(i), IsDataShard: i < v.K, SizeBytes: int64(v.Codec.ShardSize()), Checksum: st.ShardChecksums[i]}
			if w.err == nil {
				l.PoolName, l.Offset = cur.members[i].Pool, w.loc.Offset
			}
			es.Spec.ShardLocations[i] = l
		}
		np.es = es
		if s.Known != nil {
			s.Known.learnPlaced(string(v.Object.UID)+"/"+StripeName(v.Name(), id), np)
		}
		// The new generation is durable at quorum: the superseded ones
		// (and a dead writer's orphans below it) go. Best effort: what is
		// left is freed by the next write of the stripe.
		if cur.es != nil {
			for i, l := range cur.es.Spec.ShardLocations {
				if srv, ok := servers[l.PoolName]; ok && l.PoolName != "" {
					_ = s.Shards.Free(ctx, srv.Address, l.Offset, shardserver.Expect{Volume: v.Name(), StripeID: id, ShardIndex: i, Generation: cur.gen})
				}
			}
		}
		for _, h := range cur.held {
			if h.shard.Generation < gen {
				_ = s.Shards.Free(ctx, h.addr, h.shard.Offset, shardserver.Expect{Volume: v.Name(), StripeID: id, ShardIndex: h.slot, Generation: h.shard.Generation})
			}
		}
		return nil
	}
	return fmt.Errorf("stripe %d: gave up after %d attempts lost races with other writers", id, maxStripeAttempts)
}

// readGrouped is ReadAt of a PlacementGroups volume.
func (s *Store) readGrouped(ctx context.Context, v *Volume, p []byte, off int64) (ReadReport, error) {
	var rep ReadReport
	if err := s.fenceGroups(ctx, v); err != nil {
		return rep, err
	}
	first, last := off/v.StripeSize, (off+int64(len(p))-1)/v.StripeSize
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
				drep, read, err := s.readPlaced(ctx, v, id, dst, lo-stripeOff)
				if err != nil {
					errs[id-first] = fmt.Errorf("volume %s stripe %d: %w", v.Name(), id, err)
					continue
				}
				if !read {
					continue
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

// readPlaced reads dst at byte at of stripe id. read is false for a stripe
// a quorum says was never written (dst is zeroed).
func (s *Store) readPlaced(ctx context.Context, v *Volume, id int64, dst []byte, at int64) (erasure.DecodeReport, bool, error) {
	for attempt := 0; ; attempt++ {
		cur, err := s.placedFor(ctx, v, id, attempt > 0)
		if err != nil {
			return erasure.DecodeReport{}, false, err
		}
		if cur.gen == 0 {
			clear(dst)
			return erasure.DecodeReport{}, false, nil
		}
		var servers map[string]registry.Entry
		if servers, err = s.serversByPool(ctx); err != nil {
			return erasure.DecodeReport{}, false, err
		}
		if s.readWithinShard(ctx, v, cur.es, servers, dst, at) {
			return erasure.DecodeReport{}, true, nil
		}
		var into []byte
		dataLen := (cur.es.Spec.LbaRange.EndLba - cur.es.Spec.LbaRange.StartLba) * geometry.LBASize
		if at == 0 && int64(len(dst)) == dataLen {
			into = dst
		}
		data, drep, err := s.decodeStripe(ctx, v, cur.es, servers, into)
		if errors.Is(err, erasure.ErrNotDecodable) && attempt == 0 {
			// What this process remembered may be stale (a member moved, a
			// shard was lost): ask the members again, once.
			s.dropViews()
			continue
		}
		if err != nil {
			return drep, false, err
		}
		if into == nil {
			copy(dst, data[at:at+int64(len(dst))])
		}
		if len(drep.Missing)+len(drep.Corrupt) > 0 {
			s.forgetPlaced(v, id) // resolve again next time
		}
		return drep, true, nil
	}
}
