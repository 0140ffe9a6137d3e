package volumejournal

// Placement of an ECVolume's journal replicas on shard servers (issue 11).
//
// Decisions written down:
//   - Replicas go to replicationFactor shard servers on distinct nodes, so
//     losing a node loses at most one replica. The choice is deterministic:
//     rendezvous hashing of (volume, pool) spreads volumes over servers and
//     gives the same answer for the same registry; ties go to the most free
//     space, then the pool name. Servers that do not answer are not chosen.
//   - The choice is recorded on the ECVolume (annotation
//     storage.billyronks.io/journal-pools, pools in replica order) with an
//     optimistic-lock patch BEFORE any replica is used, so a restarted export
//     (or a second one racing it) opens the same replicas. The recorded list
//     wins over the policy afterwards: a replicationFactor different from
//     the recorded count is refused, because changing the membership of a
//     quorum journal needs the catch-up step below, not a silent switch.
//   - A recorded pool whose shard server is not registered counts as a failed
//     replica (the journal needs only a majority) and is reported.
//   - A permanently lost replica is replaced only when that is safe: every
//     other recorded replica answers, the journal is opened once on the old
//     set (which catches every surviving replica up to the newest log), and
//     only then is the new set recorded; the fresh replica is caught up by
//     journal.Open like any lagging one. Replacing earlier could let a later
//     majority of the new set miss an acknowledged write that only the lost
//     replica and one survivor held. A pool missing for a shard-server
//     restart is replaced too (the rule cannot tell "restarting" from
//     "lost"); its old replica is then unused, and the retired pools are
//     recorded (storage.billyronks.io/journal-pools-retired) so the
//     ECVolume's deletion can remove their directories.

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/zeebo/xxh3"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/journal"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/pkg/shardserver"
)

const (
	// AnnotationJournalPools lists, comma-separated in replica order, the
	// pools whose shard servers hold the ECVolume's journal replicas.
	AnnotationJournalPools = storagev1.ECVolumeAnnotationJournalPools
	// AnnotationJournalPoolsRetired lists pools that held a replica before it
	// was replaced; their replica directories are garbage once the volume goes.
	AnnotationJournalPoolsRetired = storagev1.ECVolumeAnnotationJournalPoolsRetired
)

// Placement chooses, records and replaces the journal replicas of ECVolumes
// on shard servers (see the file's decisions).
type Placement struct {
	// Kube reads and patches ECVolumes (directly, not through a cache: the
	// record is an optimistic-lock patch).
	Kube client.Client
	// Registry finds the live shard servers; Shards reaches them.
	Registry *registry.Lookup
	Shards   *shardserver.Client
	// Logf hears choices, replacements and unavailable replicas (default: silent).
	Logf func(format string, args ...any)
}

func (p *Placement) logf(format string, args ...any) {
	if p.Logf != nil {
		p.Logf(format, args...)
	}
}

// OpenStores returns the replicationFactor journal replicas of vol on
// shard servers, choosing and recording them on first use (see the file's
// decisions). vol is updated in place when the annotation is written.
func (pl *Placement) OpenStores(ctx context.Context, vol *storagev1.ECVolume, replicationFactor int) ([]journal.Store, error) {
	kube, lookup, sc := pl.Kube, pl.Registry, pl.Shards
	if replicationFactor < 1 {
		return nil, fmt.Errorf("ErasureCodingPolicy %s spec.journalConfig.replicationFactor %d must be at least 1", vol.Spec.PolicyRef, replicationFactor)
	}
	servers, err := lookup.Servers(ctx)
	if err != nil {
		return nil, fmt.Errorf("ECVolume %s: find shard servers for the journal: %w", vol.Name, err)
	}
	byPool := make(map[string]registry.Entry, len(servers))
	for _, e := range servers {
		byPool[e.Pool] = e
	}
	pools, recorded, err := recordedJournalPools(vol)
	if err != nil {
		return nil, err
	}
	if !recorded {
		chosen, err := chooseJournalPools(ctx, sc, servers, vol, replicationFactor)
		if err != nil {
			return nil, err
		}
		if pools, err = recordJournalPools(ctx, kube, vol, chosen, ""); err != nil {
			return nil, err
		}
		pl.logf("ec-volume %s: journal replicas placed on pools %s (recorded in %s)", vol.Name, strings.Join(pools, ","), AnnotationJournalPools)
	}
	if len(pools) != replicationFactor {
		return nil, fmt.Errorf("ECVolume %s records %d journal replicas (%s=%q) but ErasureCodingPolicy %s spec.journalConfig.replicationFactor is %d: changing the replica count of an existing journal is not supported; destage and recreate the volume, or restore the policy's value",
			vol.Name, len(pools), AnnotationJournalPools, vol.Annotations[AnnotationJournalPools], vol.Spec.PolicyRef, replicationFactor)
	}
	var missing []string
	for _, p := range pools {
		if _, ok := byPool[p]; !ok {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		pl.logf("ec-volume %s: journal replicas on pools %s are unavailable: no live shard-server Lease (counted as failed replicas)", vol.Name, strings.Join(missing, ","))
		if replaced, err := pl.replaceLostReplicas(ctx, kube, sc, servers, byPool, vol, pools, missing); err != nil {
			pl.logf("ec-volume %s: journal replicas not replaced (running on the remaining majority if there is one): %v", vol.Name, err)
		} else {
			pools, missing = replaced, nil
		}
	}
	quorum := len(pools)/2 + 1
	if avail := len(pools) - len(missing); avail < quorum {
		return nil, fmt.Errorf("%w: ECVolume %s: journal replicas on pools %s: only %d of %d have a registered shard server (%s unregistered), a write quorum needs %d",
			journal.ErrNoQuorum, vol.Name, strings.Join(pools, ","), avail, len(pools), strings.Join(missing, ","), quorum)
	}
	return journalStoresOn(sc, byPool, vol.Name, pools), nil
}

func journalStoresOn(sc *shardserver.Client, byPool map[string]registry.Entry, volume string, pools []string) []journal.Store {
	stores := make([]journal.Store, len(pools))
	for i, p := range pools {
		if e, ok := byPool[p]; ok {
			stores[i] = sc.JournalStore(e.Address, volume)
		} else {
			stores[i] = unavailableStore{pool: p}
		}
	}
	return stores
}

// recordedJournalPools parses the annotation; recorded is false when absent.
func recordedJournalPools(vol *storagev1.ECVolume) (pools []string, recorded bool, err error) {
	v, ok := vol.Annotations[AnnotationJournalPools]
	if !ok {
		return nil, false, nil
	}
	seen := map[string]bool{}
	for _, p := range strings.Split(v, ",") {
		p = strings.TrimSpace(p)
		if p == "" || seen[p] {
			return nil, false, fmt.Errorf("ECVolume %s annotation %s=%q must list distinct, non-empty pool names separated by commas", vol.Name, AnnotationJournalPools, v)
		}
		seen[p] = true
		pools = append(pools, p)
	}
	return pools, true, nil
}

type journalCandidate struct {
	registry.Entry
	free  int64
	score uint64
}

// chooseJournalPools picks n reachable shard servers on distinct nodes for
// a new journal, or fails naming journalConfig.replicationFactor.
func chooseJournalPools(ctx context.Context, sc *shardserver.Client, servers []registry.Entry, vol *storagev1.ECVolume, n int) ([]string, error) {
	best, unreachable := rankJournalNodes(ctx, sc, servers, vol, nil)
	if len(best) < n {
		return nil, fmt.Errorf("ErasureCodingPolicy %s spec.journalConfig.replicationFactor is %d: the journal of ECVolume %s needs one replica per node on %d distinct nodes, but registered, reachable shard servers run on only %d distinct nodes (%d servers registered, unreachable: %v)",
			vol.Spec.PolicyRef, n, vol.Name, n, len(best), len(servers), unreachable)
	}
	pools := make([]string, n)
	for i := range pools {
		pools[i] = best[i].Pool
	}
	return pools, nil
}

// rankJournalNodes returns, best first, one candidate per node among the
// reachable servers not in exclude: per node its best pool, then the best
// nodes, where best is the highest rendezvous score of (volume, pool), then
// the most free bytes, then the lowest pool name. It also returns the pools
// that did not answer.
func rankJournalNodes(ctx context.Context, sc *shardserver.Client, servers []registry.Entry, vol *storagev1.ECVolume, exclude map[string]bool) (best []journalCandidate, unreachable []string) {
	var (
		mu    sync.Mutex
		wg    sync.WaitGroup
		cands []journalCandidate
	)
	for _, e := range servers {
		if exclude[e.Pool] {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			sp, err := sc.Space(sctx, e.Address)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				unreachable = append(unreachable, e.Pool)
				return
			}
			cands = append(cands, journalCandidate{Entry: e, free: sp.FreeBytes, score: xxh3.HashString(vol.Name + "/" + e.Pool)})
		}()
	}
	wg.Wait()
	better := func(a, b journalCandidate) bool {
		if a.score != b.score {
			return a.score > b.score
		}
		if a.free != b.free {
			return a.free > b.free
		}
		return a.Pool < b.Pool
	}
	bestOfNode := map[string]journalCandidate{}
	for _, c := range cands {
		if cur, ok := bestOfNode[c.Node]; !ok || better(c, cur) {
			bestOfNode[c.Node] = c
		}
	}
	for _, c := range bestOfNode {
		best = append(best, c)
	}
	sort.Slice(best, func(i, j int) bool { return better(best[i], best[j]) })
	sort.Strings(unreachable)
	return best, unreachable
}

// recordJournalPools writes pools to the annotation with an optimistic-lock
// patch. When another writer recorded a choice first, that choice wins and
// is returned. retired, when set, is appended to the retired-pools annotation.
func recordJournalPools(ctx context.Context, kube client.Client, vol *storagev1.ECVolume, pools []string, retired string) ([]string, error) {
	want := strings.Join(pools, ",")
	prev := vol.Annotations[AnnotationJournalPools]
	for attempt := 0; attempt < 5; attempt++ {
		if cur, ok := vol.Annotations[AnnotationJournalPools]; ok && cur != prev {
			got, _, err := recordedJournalPools(vol)
			return got, err // someone else recorded (or replaced) first: theirs wins
		}
		orig := vol.DeepCopy()
		upd := vol.DeepCopy()
		if upd.Annotations == nil {
			upd.Annotations = map[string]string{}
		}
		upd.Annotations[AnnotationJournalPools] = want
		if retired != "" {
			r := upd.Annotations[AnnotationJournalPoolsRetired]
			if r != "" {
				r += ","
			}
			upd.Annotations[AnnotationJournalPoolsRetired] = r + retired
		}
		err := kube.Patch(ctx, upd, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{}))
		if err == nil {
			*vol = *upd
			return pools, nil
		}
		if !apierrors.IsConflict(err) {
			return nil, fmt.Errorf("ECVolume %s: record journal replicas in annotation %s: %w", vol.Name, AnnotationJournalPools, err)
		}
		fresh := &storagev1.ECVolume{}
		if err := kube.Get(ctx, client.ObjectKeyFromObject(vol), fresh); err != nil {
			return nil, fmt.Errorf("ECVolume %s: re-read after a conflicting update: %w", vol.Name, err)
		}
		*vol = *fresh
	}
	return nil, fmt.Errorf("ECVolume %s: record journal replicas in annotation %s: still conflicting after 5 attempts", vol.Name, AnnotationJournalPools)
}

// replaceLostReplicas replaces the missing pools with fresh replicas on
// other nodes, safely (see the file's decisions): it needs every recorded
// replica but the missing ones to answer, opens the journal once on the old
// set so all of them hold every acknowledged write, and records the new set.
func (pl *Placement) replaceLostReplicas(ctx context.Context, kube client.Client, sc *shardserver.Client, servers []registry.Entry, byPool map[string]registry.Entry, vol *storagev1.ECVolume, pools, missing []string) ([]string, error) {
	usedNodes := map[string]bool{}
	exclude := map[string]bool{}
	for _, p := range pools {
		exclude[p] = true
		if e, ok := byPool[p]; ok {
			usedNodes[e.Node] = true
		}
	}
	var free []registry.Entry
	for _, e := range servers {
		if !usedNodes[e.Node] {
			free = append(free, e)
		}
	}
	best, unreachable := rankJournalNodes(ctx, sc, free, vol, exclude)
	if len(best) < len(missing) {
		return nil, fmt.Errorf("replacing %d replicas needs reachable shard servers on as many nodes that hold no replica of this journal; found %d (unreachable: %v)", len(missing), len(best), unreachable)
	}
	repl := make([]string, len(missing))
	for i := range repl {
		repl[i] = best[i].Pool
	}
	// Open on the old set: all survivors must answer and be caught up.
	j, err := journal.Open(ctx, journalStoresOn(sc, byPool, vol.Name, pools), journal.Options{SizeBytes: 1 << 62})
	if err != nil {
		return nil, fmt.Errorf("open the journal on the recorded replicas to catch the survivors up: %w", err)
	}
	healthy := j.HealthyStores()
	if err := j.Close(); err != nil {
		return nil, err
	}
	isMissing := map[string]bool{}
	for _, p := range missing {
		isMissing[p] = true
	}
	for i, p := range pools {
		if !healthy[i] && !isMissing[p] {
			return nil, fmt.Errorf("replica on pool %s did not answer: replacing now could lose acknowledged writes", p)
		}
	}
	next := append([]string(nil), pools...)
	k := 0
	for i, p := range next {
		if isMissing[p] {
			next[i] = repl[k]
			k++
		}
	}
	got, err := recordJournalPools(ctx, kube, vol, next, strings.Join(missing, ","))
	if err != nil {
		return nil, err
	}
	if strings.Join(got, ",") != strings.Join(next, ",") {
		return nil, errors.New("another export changed the journal replicas at the same time; restart to use its choice")
	}
	pl.logf("ec-volume %s: journal replicas on pools %s replaced by %s (caught up on open)", vol.Name, strings.Join(missing, ","), strings.Join(repl, ","))
	return next, nil
}

// unavailableStore stands for a recorded replica whose shard server is not
// registered: every call fails, so the journal counts it as failed.
type unavailableStore struct{ pool string }

func (u unavailableStore) err() error {
	return fmt.Errorf("journal replica on pool %s: no registered shard server (no live Lease)", u.pool)
}

func (u unavailableStore) Info(context.Context) (journal.StoreInfo, error) {
	return journal.StoreInfo{}, u.err()
}

func (u unavailableStore) Scan(context.Context, uint64, func(journal.Record) error) error {
	return u.err()
}

func (u unavailableStore) Read(context.Context, uint64) (journal.Record, error) {
	return journal.Record{}, u.err()
}

func (u unavailableStore) Append(context.Context, []journal.Record) error { return u.err() }
func (u unavailableStore) TruncateAfter(context.Context, uint64) error    { return u.err() }
func (u unavailableStore) Trim(context.Context, uint64) error             { return u.err() }
func (u unavailableStore) Reset(context.Context, uint64) error            { return u.err() }
func (u unavailableStore) SetEpoch(context.Context, uint64) error         { return u.err() }
func (u unavailableStore) Close() error                                   { return nil }
