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

	mu      sync.Mutex
	n       int
	volumes map[string]*knownVolume
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

// ---- short-lived views of the shard servers ----

// ServerViews caches what placement and reads look up about shard servers
// (Leases, DiskPools, free space) for TTL, so an export does not List Leases
// and DiskPools and probe every server before each stripe. Within the TTL a
// server that died is still a candidate: its shard write fails and is
// retried on another pool, as it would be without the cache; free space is
// reserved in the cached placement by every write that uses it. A read that
// finds shards missing drops the views. It is safe for concurrent use.
type ServerViews struct {
	// TTL is how long a view is reused; 0 disables the cache.
	TTL time.Duration

	// Two locks: a placement refresh probes every server (seconds when one
	// hangs) and must not hold up reads, which need only the Lease view.
	placeMu sync.Mutex
	placer  *placer
	placeAt time.Time
	poolsMu sync.Mutex
	byPool  map[string]registry.Entry
	poolsAt time.Time
}

func (s *Store) viewsOn() bool { return s.Views != nil && s.Views.TTL > 0 }

// cachedCandidates is candidates, reused for Views.TTL.
func (s *Store) cachedCandidates(ctx context.Context) (*placer, error) {
	if !s.viewsOn() {
		return s.candidates(ctx)
	}
	w := s.Views
	w.placeMu.Lock()
	defer w.placeMu.Unlock()
	if w.placer != nil && s.now().Sub(w.placeAt) < w.TTL {
		return w.placer, nil
	}
	pl, err := s.candidates(ctx)
	if err != nil {
		return nil, err
	}
	w.placer, w.placeAt = pl, s.now()
	return pl, nil
}

// serversByPool is Registry.ByPool, reused for Views.TTL.
func (s *Store) serversByPool(ctx context.Context) (map[string]registry.Entry, error) {
	if !s.viewsOn() {
		return s.Registry.ByPool(ctx)
	}
	w := s.Views
	w.poolsMu.Lock()
	defer w.poolsMu.Unlock()
	if w.byPool != nil && s.now().Sub(w.poolsAt) < w.TTL {
		return w.byPool, nil
	}
	m, err := s.Registry.ByPool(ctx)
	if err != nil {
		return nil, err
	}
	w.byPool, w.poolsAt = m, s.now()
	return m, nil
}

// dropViews forgets the cached server views (after a read found shards
// missing: a server may have moved or died).
func (s *Store) dropViews() {
	if s.Views == nil {
		return
	}
	s.Views.poolsMu.Lock()
	s.Views.byPool = nil
	s.Views.poolsMu.Unlock()
	// A placement refresh in progress (it may take seconds) yields a fresh
	// placement anyway: do not wait for it.
	if s.Views.placeMu.TryLock() {
		s.Views.placer = nil
		s.Views.placeMu.Unlock()
	}
}
