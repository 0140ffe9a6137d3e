package rebuild

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/ecstate"
	"github.com/billyronks/couchestor/pkg/erasure"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/pkg/shardserver"
)

// AnnotationIntent on an ECStripe records a rebuild in progress (JSON Intent).
const AnnotationIntent = storagev1.ECStripeAnnotationRebuildIntent

// Intent is the persisted rebuild of some shards of a stripe.
type Intent struct {
	Shards         []int     `json:"shards"`
	FromGeneration int64     `json:"fromGeneration"`
	Started        time.Time `json:"started"`
}

var (
	rebuilds = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "couchestor_ec_rebuilds_total",
		Help: "Stripe rebuilds by event: started, completed, failed.",
	}, []string{"event"})
	rebuiltBytes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "couchestor_ec_rebuilt_bytes_total",
		Help: "Shard bytes written by rebuilds.",
	})
	rebuildsActive = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "couchestor_ec_rebuilds_active",
		Help: "Rebuilds in flight.",
	})
)

func init() { metrics.Registry.MustRegister(rebuilds, rebuiltBytes, rebuildsActive) }

// EventRecorder is client-go's events.EventRecorder.
type EventRecorder interface {
	Eventf(regarding, related k8sruntime.Object, eventtype, reason, action, note string, args ...interface{})
}

// ShardClient is what the engine needs of *shardserver.Client.
type ShardClient interface {
	Get(ctx context.Context, addr string, offset int64, x shardserver.Expect) (*shardserver.ShardHeader, []byte, error)
	Put(ctx context.Context, addr string, h *shardserver.ShardHeader, payload []byte) (shardserver.Location, error)
	Free(ctx context.Context, addr string, offset int64, x shardserver.Expect) error
	List(ctx context.Context, addr, volume string) ([]shardserver.StoredShard, error)
	Space(ctx context.Context, addr string) (shardserver.Space, error)
}

// Engine runs rebuilds, at most Concurrency at a time, reading and writing
// at most BandwidthBytesPerSecond in total.
type Engine struct {
	// Client must read fresh (not a cache): the ECStripe resourceVersion is
	// the copy-on-write precondition.
	Client client.Client
	// Shards returns the shard-server client (it may be built lazily from a Secret).
	Shards func(ctx context.Context) (ShardClient, error)
	// Servers lists live shard servers (registry.Lookup).
	Servers interface {
		Servers(ctx context.Context) ([]registry.Entry, error)
	}
	// PoolUp says whether a pool may receive or serve shards (the pool
	// monitor's verdict is Up).
	PoolUp func(ctx context.Context, pool string) bool
	Events EventRecorder
	// Done hears of each finished rebuild: verified findings for the shards
	// written (empty on failure).
	Done func(stripe string, findings map[int]ecstate.Finding)
	// Concurrency bounds rebuilds in flight (default 2).
	Concurrency int
	// BandwidthBytesPerSecond bounds shard bytes read plus written (0: unbounded).
	BandwidthBytesPerSecond int64
	Now                     func() time.Time

	once    sync.Once
	mu      sync.Mutex
	base    context.Context
	jobs    map[string]*job
	limiter *rate.Limiter
}

// errNothingToResume: a resumed rebuild found its intent gone (finished or
// dropped since the caller's copy was read).
var errNothingToResume = errors.New("rebuild intent already gone")

type job struct {
	shards []int
	// resume: started from a persisted intent seen on the caller's copy of
	// the stripe (an informer cache may be behind). If the fresh copy has no
	// intent, that rebuild already finished or was dropped: do nothing,
	// rather than rebuild the same shards again at the next generation.
	resume bool
	// progress in percent: reading is the first half, writing the second.
	progress int32
}

func (e *Engine) init() {
	e.once.Do(func() {
		e.jobs = map[string]*job{}
		if e.Concurrency <= 0 {
			e.Concurrency = 2
		}
		if e.Now == nil {
			e.Now = time.Now
		}
		if e.BandwidthBytesPerSecond > 0 {
			e.limiter = rate.NewLimiter(rate.Limit(e.BandwidthBytesPerSecond), burst(e.BandwidthBytesPerSecond))
		}
	})
}

// Start is a manager Runnable: rebuilds run under its context and stop with it.
func (e *Engine) Start(ctx context.Context) error {
	e.init()
	e.mu.Lock()
	e.base = ctx
	e.mu.Unlock()
	<-ctx.Done()
	return nil
}

// NeedLeaderElection: only the leader rebuilds.
func (e *Engine) NeedLeaderElection() bool { return true }

// Intent returns the shards a persisted intent on s names.
func (e *Engine) Intent(s *storagev1.ECStripe) ([]int, bool) {
	in, ok := intentOf(s)
	if !ok {
		return nil, false
	}
	return in.Shards, true
}

func intentOf(s *storagev1.ECStripe) (Intent, bool) {
	raw, ok := s.Annotations[AnnotationIntent]
	if !ok {
		return Intent{}, false
	}
	var in Intent
	if err := json.Unmarshal([]byte(raw), &in); err != nil || len(in.Shards) == 0 {
		return Intent{}, false
	}
	return in, true
}

// Progress reports a rebuild in flight.
func (e *Engine) Progress(stripe string) ([]int, int32, bool) {
	e.init()
	e.mu.Lock()
	defer e.mu.Unlock()
	j := e.jobs[stripe]
	if j == nil {
		return nil, 0, false
	}
	return append([]int(nil), j.shards...), j.progress, true
}

// StartRebuild begins (or resumes) rebuilding shards of s and returns at
// once; false when Concurrency rebuilds are already in flight.
func (e *Engine) StartRebuild(s *storagev1.ECStripe, shards []int) bool {
	e.init()
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.jobs[s.Name]; ok {
		return true
	}
	if len(e.jobs) >= e.Concurrency || e.base == nil {
		return false
	}
	in, resume := intentOf(s)
	if resume {
		shards = in.Shards // resume what was promised
	}
	j := &job{shards: append([]int(nil), shards...), resume: resume}
	sort.Ints(j.shards)
	e.jobs[s.Name] = j
	rebuildsActive.Inc()
	name, base := s.Name, e.base
	go func() {
		findings, err := e.run(base, name, j)
		e.mu.Lock()
		delete(e.jobs, name)
		e.mu.Unlock()
		rebuildsActive.Dec()
		switch {
		case errors.Is(err, errNothingToResume):
		case err != nil:
			rebuilds.WithLabelValues("failed").Inc()
			log.FromContext(base).Error(err, "rebuild failed", "stripe", name, "shards", j.shards)
		default:
			rebuilds.WithLabelValues("completed").Inc()
		}
		if e.Done != nil {
			e.Done(name, findings)
		}
	}()
	return true
}

func (e *Engine) setProgress(j *job, p int32) {
	e.mu.Lock()
	j.progress = p
	e.mu.Unlock()
}

func (e *Engine) wait(ctx context.Context, n int) error {
	if e.limiter == nil {
		return nil
	}
	for n > 0 {
		c := min(n, e.limiter.Burst())
		if err := e.limiter.WaitN(ctx, c); err != nil {
			return err
		}
		n -= c
	}
	return nil
}

func (e *Engine) event(s *storagev1.ECStripe, typ, reason, note string, args ...any) {
	if e.Events != nil {
		e.Events.Eventf(s, nil, typ, reason, "Rebuild", note, args...)
	}
}

// run performs one rebuild. Findings name the shards written and verified,
// plus corrupt shards met on the way (so they are rebuilt next).
func (e *Engine) run(ctx context.Context, name string, j *job) (map[int]ecstate.Finding, error) {
	findings := map[int]ecstate.Finding{}
	var s storagev1.ECStripe
	if err := e.Client.Get(ctx, client.ObjectKey{Name: name}, &s); err != nil {
		return findings, fmt.Errorf("get ECStripe %s: %w", name, err)
	}
	// 1. Persist the intent before writing anything.
	in, ok := intentOf(&s)
	if !ok && j.resume {
		log.FromContext(ctx).Info("rebuild intent already gone: nothing to resume", "stripe", name, "shards", j.shards)
		return findings, errNothingToResume
	}
	for attempt := 0; !ok; attempt++ {
		in = Intent{Shards: j.shards, FromGeneration: s.Spec.Generation, Started: e.Now().UTC()}
		raw, _ := json.Marshal(in)
		if s.Annotations == nil {
			s.Annotations = map[string]string{}
		}
		s.Annotations[AnnotationIntent] = string(raw)
		err := e.Client.Update(ctx, &s)
		if err == nil {
			break
		}
		// Status writes move the resourceVersion too: re-read and retry.
		if !apierrors.IsConflict(err) || attempt >= 5 {
			return findings, fmt.Errorf("record rebuild intent on ECStripe %s: %w", name, err)
		}
		if err := e.Client.Get(ctx, client.ObjectKey{Name: name}, &s); err != nil {
			return findings, fmt.Errorf("get ECStripe %s: %w", name, err)
		}
		in, ok = intentOf(&s)
	}
	if !ok {
		rebuilds.WithLabelValues("started").Inc()
		e.event(&s, corev1.EventTypeNormal, "RebuildStarted", "rebuilding shards %v of generation %d", in.Shards, in.FromGeneration)
	}
	if s.Spec.Generation != in.FromGeneration {
		// A writer replaced the stripe's shards meanwhile: the intent is moot.
		return findings, e.dropIntent(ctx, name, "the stripe was rewritten (generation %d, intent for %d)", s.Spec.Generation, in.FromGeneration)
	}
	err := e.rebuild(ctx, &s, in, j, findings)
	if err != nil && ctx.Err() == nil {
		// Keep the intent only when interrupted (operator stopping): then
		// the next leader resumes. A rebuild that cannot succeed now is
		// dropped; the controller starts a new one when it can.
		if derr := e.dropIntent(ctx, name, "%v", err); derr != nil {
			err = errors.Join(err, derr)
		}
		e.event(&s, corev1.EventTypeWarning, "RebuildFailed", "rebuild of shards %v failed: %v", in.Shards, err)
	}
	return findings, err
}

func (e *Engine) dropIntent(ctx context.Context, name, why string, args ...any) error {
	for attempt := 0; attempt < 5; attempt++ {
		var s storagev1.ECStripe
		if err := e.Client.Get(ctx, client.ObjectKey{Name: name}, &s); err != nil {
			return client.IgnoreNotFound(err)
		}
		if _, ok := s.Annotations[AnnotationIntent]; !ok {
			return nil
		}
		delete(s.Annotations, AnnotationIntent)
		err := e.Client.Update(ctx, &s)
		if err == nil {
			log.FromContext(ctx).Info("rebuild intent dropped", "stripe", name, "why", fmt.Sprintf(why, args...))
			return nil
		}
		if !apierrors.IsConflict(err) {
			return fmt.Errorf("drop rebuild intent of ECStripe %s: %w", name, err)
		}
	}
	return fmt.Errorf("drop rebuild intent of ECStripe %s: conflicts persisted", name)
}

func (e *Engine) rebuild(ctx context.Context, s *storagev1.ECStripe, in Intent, j *job, findings map[int]ecstate.Finding) error {
	var pol storagev1.ErasureCodingPolicy
	if err := e.Client.Get(ctx, client.ObjectKey{Name: s.Spec.PolicyRef}, &pol); err != nil {
		return fmt.Errorf("get ErasureCodingPolicy %s: %w", s.Spec.PolicyRef, err)
	}
	spec := pol.Spec.DeepCopy()
	storagev1.DefaultErasureCodingPolicySpec(spec)
	codec, err := erasure.NewStripeCodec(erasure.Algorithm(spec.Algorithm), int(*spec.DataShards), int(*spec.ParityShards), *spec.StripeSizeBytes)
	if err != nil {
		return fmt.Errorf("codec of ErasureCodingPolicy %s: %w", pol.Name, err)
	}
	n := codec.Codec().TotalShards()
	if len(s.Spec.ShardLocations) != n {
		return fmt.Errorf("ECStripe %s has %d shardLocations, its policy needs %d", s.Name, len(s.Spec.ShardLocations), n)
	}
	sc, err := e.Shards(ctx)
	if err != nil {
		return fmt.Errorf("shard-server client: %w", err)
	}
	servers, err := e.Servers.Servers(ctx)
	if err != nil {
		return err
	}
	byPool := map[string]registry.Entry{}
	for _, x := range servers {
		byPool[x.Pool] = x
	}
	want := make([]bool, n)
	for _, i := range in.Shards {
		if i < 0 || i >= n {
			return fmt.Errorf("rebuild intent names shard %d, the stripe has %d", i, n)
		}
		want[i] = true
	}
	locs := make([]storagev1.ShardLocation, n)
	for _, l := range s.Spec.ShardLocations {
		locs[l.ShardIndex] = l
	}

	// 2. Read the surviving shards.
	set := &erasure.ShardSet{Shards: make([][]byte, n), ShardChecksums: make([]string, n), StripeChecksum: s.Spec.Checksum,
		DataLength: (s.Spec.LbaRange.EndLba - s.Spec.LbaRange.StartLba) * 512}
	var tmpl *shardserver.ShardHeader
	for i, l := range locs {
		set.ShardChecksums[i] = l.Checksum
		if want[i] {
			continue
		}
		srv, ok := byPool[l.PoolName]
		if !ok || (e.PoolUp != nil && !e.PoolUp(ctx, l.PoolName)) {
			continue
		}
		h, payload, err := sc.Get(ctx, srv.Address, l.Offset, shardserver.Expect{Volume: s.Spec.VolumeRef, StripeID: s.Spec.StripeID, ShardIndex: i, Generation: s.Spec.Generation})
		if err != nil {
			if errors.Is(err, shardserver.ErrNotFound) {
				findings[i] = ecstate.Finding{Kind: ecstate.FindingNotFound, At: e.Now(), Detail: err.Error()}
			}
			continue
		}
		if err := e.wait(ctx, len(payload)); err != nil {
			return err
		}
		set.Shards[i] = payload
		if tmpl == nil {
			tmpl = h
		}
		e.setProgress(j, int32(50*(i+1)/n))
	}
	if tmpl == nil {
		return errors.New("no surviving shard could be read")
	}
	rep, err := codec.Reconstruct(set, want)
	for _, i := range rep.Corrupt {
		if !want[i] {
			findings[i] = ecstate.Finding{Kind: ecstate.FindingCorrupt, At: e.Now(), Detail: "read during rebuild: checksum mismatch"}
		}
	}
	if err != nil {
		return fmt.Errorf("reconstruct shards %v: %w", in.Shards, err)
	}

	// 3. Choose targets and write generation+1 shards there.
	keptPools, keptNodes := map[int]string{}, map[int]string{}
	for i, l := range locs {
		if !want[i] {
			keptPools[i], keptNodes[i] = l.PoolName, l.NodeName
		}
	}
	var cands []Candidate
	for _, x := range servers {
		if e.PoolUp != nil && !e.PoolUp(ctx, x.Pool) {
			continue
		}
		free := int64(-1)
		if sp, err := sc.Space(ctx, x.Address); err == nil {
			free = sp.FreeBytes
		} else {
			continue // a server that does not answer is no target
		}
		cands = append(cands, Candidate{Pool: x.Pool, Node: x.Node, Address: x.Address, FreeBytes: free})
	}
	plan, err := PlanTargets(in.Shards, keptPools, keptNodes, cands, int64(codec.ShardSize())+64<<10)
	if err != nil {
		return err
	}
	newGen := s.Spec.Generation + 1
	newLocs := map[int]storagev1.ShardLocation{}
	for pi, p := range plan {
		if p.SharedNode {
			e.event(s, corev1.EventTypeWarning, "RebuildSharesNode", "shard %d rebuilt on pool %s of node %s, which already holds a shard of the stripe: no pool on an unused node is available", p.Shard, p.Pool, p.Node)
		}
		h := *tmpl
		h.ShardIndex = p.Shard
		h.Generation = newGen
		h.SizeBytes = int64(len(set.Shards[p.Shard]))
		h.Checksum = locs[p.Shard].Checksum
		h.WrittenUnixNano = e.Now().UnixNano()
		// A rebuild is no export's write: it carries no writer epoch (the
		// ECStripe's generation precondition guards it). The template's
		// epoch is that of the export that wrote the stripe; every later
		// export of the volume raised the servers' fence above it, so a
		// copied epoch had every rebuild refused (HTTP 412) once the
		// volume was exported again (tests/cluster CSIPodsWriteAndReadBack).
		h.WriterEpoch = 0
		if err := e.wait(ctx, len(set.Shards[p.Shard])); err != nil {
			return err
		}
		loc, err := sc.Put(ctx, p.Address, &h, set.Shards[p.Shard])
		if err != nil {
			return fmt.Errorf("write shard %d to pool %s: %w", p.Shard, p.Pool, err)
		}
		rebuiltBytes.Add(float64(len(set.Shards[p.Shard])))
		nl := locs[p.Shard]
		nl.PoolName, nl.NodeName, nl.Offset, nl.SizeBytes = p.Pool, p.Node, loc.Offset, h.SizeBytes
		newLocs[p.Shard] = nl
		e.setProgress(j, int32(50+50*(pi+1)/len(plan)-1))
	}

	// 4. Record copy-on-write: resourceVersion precondition, generation+1.
	old := map[int]storagev1.ShardLocation{}
	for attempt := 0; ; attempt++ {
		var cur storagev1.ECStripe
		if err := e.Client.Get(ctx, client.ObjectKey{Name: s.Name}, &cur); err != nil {
			return fmt.Errorf("re-read ECStripe %s: %w", s.Name, err)
		}
		if cur.Spec.Generation != in.FromGeneration {
			return fmt.Errorf("ECStripe %s was rewritten meanwhile (generation %d): rebuilt shards are orphans for collection", s.Name, cur.Spec.Generation)
		}
		for k := range cur.Spec.ShardLocations {
			l := &cur.Spec.ShardLocations[k]
			if nl, ok := newLocs[int(l.ShardIndex)]; ok {
				old[int(l.ShardIndex)] = *l
				*l = nl
			}
		}
		cur.Spec.Generation = newGen
		delete(cur.Annotations, AnnotationIntent)
		err := e.Client.Update(ctx, &cur) // carries cur.ResourceVersion: the precondition
		if err == nil {
			s = &cur
			break
		}
		if !apierrors.IsConflict(err) || attempt >= 5 {
			return fmt.Errorf("record rebuilt shards in ECStripe %s: %w", s.Name, err)
		}
	}
	now := e.Now()
	for i := range newLocs {
		findings[i] = ecstate.Finding{Kind: ecstate.FindingVerified, At: now, Detail: ecstate.DetailRebuilt}
	}
	e.setProgress(j, 100)
	e.event(s, corev1.EventTypeNormal, "RebuildCompleted", "rebuilt shards %v at generation %d", in.Shards, newGen)

	// 5. Free the replaced shards where their server is reachable; the rest
	// are orphans that the ECVolume's orphan collection frees when they return.
	for i, l := range old {
		srv, ok := byPool[l.PoolName]
		if !ok {
			continue
		}
		stored, err := sc.List(ctx, srv.Address, s.Spec.VolumeRef)
		if err != nil {
			continue
		}
		for _, st := range stored {
			if st.Offset == l.Offset && st.Header != nil && st.Header.StripeID == s.Spec.StripeID && st.Header.ShardIndex == i && st.Header.Generation < newGen {
				_ = sc.Free(ctx, srv.Address, l.Offset, shardserver.Expect{Volume: s.Spec.VolumeRef, StripeID: s.Spec.StripeID, ShardIndex: i, Generation: st.Header.Generation})
			}
		}
	}
	return nil
}

// burst is one second's worth of bytes, within [64 KiB, 64 MiB]: big enough
// that a shard passes in a few waits, small enough that the bound holds.
func burst(bytesPerSecond int64) int {
	return int(min(max(bytesPerSecond, 64<<10), 64<<20))
}
