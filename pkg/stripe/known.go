package stripe

import (
	"context"
	"fmt"
	"sync"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/registry"
)

// Known remembers the ECStripes of the volumes one process writes, so the
// I/O path of an export does not GET an ECStripe before every stripe read
// and write. It is an optimisation with a fallback, never the authority:
//
//   - It learns every ECStripe this process creates or updates (the object
//     as the API server returned it) and every one it reads from the API
//     server; Prime loads a volume's stripes with one paginated List. After
//     a Prime that fit, a stripe the volume does not have is known to be
//     absent (only this process writes the volume's stripes: its journal's
//     epoch fences an older export).
//   - A stale entry cannot return wrong data: shard servers check the
//     expected volume, stripe, index and generation of every shard, and every
//     shard is verified against its recorded checksum. A stale entry makes a
//     read degraded or not decodable; the reader then GETs the ECStripe
//     again (and learns it), as it does without Known. A copy-on-write
//     update from a stale entry fails its resourceVersion precondition and
//     is retried from a fresh GET.
//   - A write whose outcome is unknown (an error after the request was sent)
//     makes that stripe unknown again: the next access GETs it.
//
// Memory is bounded by MaxStripes entries (each is the ECStripe object, about
// 2-3 KiB): past it, arbitrary entries are dropped and the volume is no
// longer known to be complete. It is safe for concurrent use.
type Known struct {
	// MaxStripes bounds the entries (0 means 65536).
	MaxStripes int

	mu         sync.Mutex
	n          int
	volumes    map[string]*knownVolume
	relearning map[string]struct{} // stripes being reread in the background
	// placed are the resolved stripes of PlacementGroups volumes (by
	// volume UID and stripe name), bounded by MaxStripes too (cleared
	// whole when full: they are resolved again from the members).
	placed map[string]*placed
}

func (k *Known) getPlaced(key string) *placed {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.placed[key]
}

func (k *Known) learnPlaced(key string, p *placed) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.placed == nil || len(k.placed) >= k.max() {
		k.placed = map[string]*placed{}
	}
	k.placed[key] = p
}

func (k *Known) forgetPlaced(key string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.placed, key)
}

type knownVolume struct {
	stripes  map[int64]*storagev1.ECStripe
	complete bool               // every stripe of the volume is in stripes
	dropped  bool               // entries were dropped to respect MaxStripes
	unknown  map[int64]struct{} // stripes whose state is in doubt
}

func (k *Known) max() int {
	if k.MaxStripes > 0 {
		return k.MaxStripes
	}
	return 65536
}

func (k *Known) volume(name string) *knownVolume {
	if k.volumes == nil {
		k.volumes = map[string]*knownVolume{}
	}
	kv := k.volumes[name]
	if kv == nil {
		kv = &knownVolume{stripes: map[int64]*storagev1.ECStripe{}, unknown: map[int64]struct{}{}}
		k.volumes[name] = kv
	}
	return kv
}

// get returns the stripe and whether its state is known (nil and true: the
// stripe does not exist).
func (k *Known) get(volume string, id int64) (*storagev1.ECStripe, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	kv := k.volumes[volume]
	if kv == nil {
		return nil, false
	}
	if es, ok := kv.stripes[id]; ok {
		return es, true
	}
	if _, doubt := kv.unknown[id]; doubt {
		return nil, false
	}
	return nil, kv.complete
}

// learn records es (as the API server returned it). The caller must not
// modify es afterwards.
func (k *Known) learn(es *storagev1.ECStripe) {
	k.mu.Lock()
	defer k.mu.Unlock()
	kv := k.volume(es.Spec.VolumeRef)
	if _, ok := kv.stripes[es.Spec.StripeID]; !ok {
		k.n++
	}
	kv.stripes[es.Spec.StripeID] = es
	delete(kv.unknown, es.Spec.StripeID)
	k.shrinkLocked()
}

// learnAbsent records that stripe id of volume does not exist (a GET
// answered NotFound).
func (k *Known) learnAbsent(volume string, id int64) {
	k.mu.Lock()
	defer k.mu.Unlock()
	kv := k.volumes[volume]
	if kv == nil {
		return
	}
	if _, ok := kv.stripes[id]; ok {
		delete(kv.stripes, id)
		k.n--
	}
	if kv.complete {
		delete(kv.unknown, id)
	}
}

// forget makes stripe id of volume unknown: the next access asks the API
// server.
func (k *Known) forget(volume string, id int64) {
	k.mu.Lock()
	defer k.mu.Unlock()
	kv := k.volumes[volume]
	if kv == nil {
		return
	}
	if _, ok := kv.stripes[id]; ok {
		delete(kv.stripes, id)
		k.n--
	}
	kv.unknown[id] = struct{}{}
}

// Forget drops everything known about volume.
func (k *Known) Forget(volume string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if kv := k.volumes[volume]; kv != nil {
		k.n -= len(kv.stripes)
		delete(k.volumes, volume)
	}
}

func (k *Known) shrinkLocked() {
	for k.n > k.max() {
		for _, kv := range k.volumes {
			for id := range kv.stripes {
				delete(kv.stripes, id)
				kv.complete, kv.dropped = false, true
				k.n--
				break
			}
			if k.n <= k.max() {
				return
			}
		}
	}
}

// Prime loads every ECStripe of volume with a paginated List. When they all
// fit, stripes not listed are known to be absent afterwards.
func (s *Store) Prime(ctx context.Context, volume string) error {
	k := s.Known
	if k == nil {
		return nil
	}
	k.Forget(volume)
	k.mu.Lock()
	k.volume(volume)
	k.mu.Unlock()
	var cont string
	for {
		var list storagev1.ECStripeList
		opts := []client.ListOption{client.MatchingFields{storagev1.ECStripeVolumeRefField: volume}, client.Limit(500)}
		if cont != "" {
			opts = append(opts, client.Continue(cont))
		}
		if err := s.Client.List(ctx, &list, opts...); err != nil {
			k.Forget(volume)
			return fmt.Errorf("list ECStripes of volume %s: %w", volume, err)
		}
		for i := range list.Items {
			if list.Items[i].Spec.VolumeRef == volume {
				k.learn(&list.Items[i])
			}
		}
		if cont = list.Continue; cont == "" {
			break
		}
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	kv := k.volume(volume)
	// Complete only if nothing was dropped to respect MaxStripes; stripes
	// written while the List ran were learned by their writers.
	kv.complete = !kv.dropped
	return nil
}

// ---- views of the shard servers ----

// ServerViews caches what placement and reads look up about shard servers
// (Leases, DiskPools, free space), so an export does not List Leases and
// DiskPools and probe every server before each stripe, and so that the API
// server is off the I/O path (issue 17 item 4):
//
//   - A view older than TTL is still served; the first use after TTL starts
//     one refresh in the background, and the view is replaced when that
//     succeeds. A refresh that fails (the API server down or paused) leaves
//     the last view serving and is tried again on a later use after TTL.
//     Only the very first lookup of each view waits for the API server.
//   - A stale view cannot return wrong data: a server that died or moved is
//     still a candidate, so its shard write fails and is retried on another
//     pool, and a read from it fails and is decoded around (shards are
//     checked against the recorded volume, stripe, index, generation and
//     checksum). Free space is reserved in the cached placement by every
//     write that uses it.
//   - A read that finds shards missing marks the views stale (refreshed in
//     the background); a read that cannot decode refreshes them at once
//     (RefreshNow), as it cannot be served otherwise.
//
// It is safe for concurrent use.
type ServerViews struct {
	// TTL is how long a view is used before it is refreshed; 0 disables the
	// cache (every lookup asks the API server).
	TTL time.Duration
	// OnRefreshError, when set, hears every failed refresh (the last view
	// keeps serving).
	OnRefreshError func(view string, err error)

	place view[*placer]
	pools view[map[string]registry.Entry]
}

// view is one cached lookup, refreshed in the background.
type view[T any] struct {
	mu         sync.Mutex
	val        T
	have       bool
	at         time.Time
	refreshing bool
	// first serialises the first (blocking) lookup.
	first sync.Mutex
}

// get returns the view, fetching it when there is none yet, and starting
// one background refresh when it is older than ttl.
func (v *view[T]) get(ctx context.Context, now func() time.Time, ttl time.Duration, fetch func(context.Context) (T, error), onErr func(error)) (T, error) {
	v.mu.Lock()
	if v.have {
		val := v.val
		if now().Sub(v.at) >= ttl && !v.refreshing {
			v.refreshing = true
			go v.refresh(now, fetch, onErr)
		}
		v.mu.Unlock()
		return val, nil
	}
	v.mu.Unlock()
	// No view yet: this lookup must wait for one (one at a time).
	v.first.Lock()
	defer v.first.Unlock()
	v.mu.Lock()
	if v.have {
		val := v.val
		v.mu.Unlock()
		return val, nil
	}
	v.mu.Unlock()
	return v.fetchNow(ctx, now, fetch)
}

func (v *view[T]) fetchNow(ctx context.Context, now func() time.Time, fetch func(context.Context) (T, error)) (T, error) {
	val, err := fetch(ctx)
	if err != nil {
		var zero T
		return zero, err
	}
	v.mu.Lock()
	v.val, v.have, v.at = val, true, now()
	v.mu.Unlock()
	return val, nil
}

// refresh runs detached from any request: its API requests are bounded by
// the client's own timeout (internal/clients), and while it runs no other
// refresh of this view starts.
func (v *view[T]) refresh(now func() time.Time, fetch func(context.Context) (T, error), onErr func(error)) {
	_, err := v.fetchNow(context.Background(), now, fetch)
	v.mu.Lock()
	v.refreshing = false
	if err != nil {
		// Try again on the next use after another TTL, not in a tight loop.
		v.at = now()
	}
	v.mu.Unlock()
	if err != nil && onErr != nil {
		onErr(err)
	}
}

// stale makes the next use refresh the view (in the background).
func (v *view[T]) stale() {
	v.mu.Lock()
	v.at = time.Time{}
	v.mu.Unlock()
}

func (s *Store) viewsOn() bool { return s.Views != nil && s.Views.TTL > 0 }

func (w *ServerViews) onErr(name string) func(error) {
	if w.OnRefreshError == nil {
		return nil
	}
	return func(err error) { w.OnRefreshError(name, err) }
}

// cachedCandidates is candidates, from Views when set.
func (s *Store) cachedCandidates(ctx context.Context) (*placer, error) {
	if !s.viewsOn() {
		return s.candidates(ctx)
	}
	return s.Views.place.get(ctx, s.now, s.Views.TTL, s.candidates, s.Views.onErr("placement"))
}

// serversByPool is Registry.ByPool, from Views when set.
func (s *Store) serversByPool(ctx context.Context) (map[string]registry.Entry, error) {
	if !s.viewsOn() {
		return s.Registry.ByPool(ctx)
	}
	return s.Views.pools.get(ctx, s.now, s.Views.TTL, s.Registry.ByPool, s.Views.onErr("shard servers"))
}

// dropViews marks the cached server views stale (after a read found shards
// missing: a server may have moved or died); they are refreshed in the
// background while the old ones keep serving.
func (s *Store) dropViews() {
	if s.Views == nil {
		return
	}
	s.Views.pools.stale()
	s.Views.place.stale()
}

// refreshServersNow looks the shard servers up again and waits for it (a
// read that cannot decode with the cached view); on failure the cached view
// stays and ok is false.
func (s *Store) refreshServersNow(ctx context.Context) (map[string]registry.Entry, bool) {
	if !s.viewsOn() {
		return nil, false
	}
	m, err := s.Views.pools.fetchNow(ctx, s.now, s.Registry.ByPool)
	return m, err == nil
}
