package controllers

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/billyronks/couchestor/pkg/ecstate"
	"github.com/billyronks/couchestor/pkg/placement"
	"github.com/billyronks/couchestor/pkg/rebuild"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/pkg/scrub"
	"github.com/billyronks/couchestor/pkg/shardserver"
	"github.com/billyronks/couchestor/pkg/stripeindex"
)

// +kubebuilder:rbac:groups="",namespace=couchestor-system,resources=secrets,verbs=get

// ErasureCodingOptions are the operator flags of the ErasureCodingPolicy and
// ECStripe controllers, the rebuild engine and the scrubber.
type ErasureCodingOptions struct {
	DownOutDelay           time.Duration
	PoolProbeInterval      time.Duration
	RebuildConcurrency     int
	RebuildBandwidth       int64
	ScrubBandwidth         int64
	ScrubTick              time.Duration
	ScrubStripesPerTick    int
	PolicyValidationPeriod time.Duration
	RegistryNamespace      string
	ShardSecret            string
	StripeReconcileWorkers int
	ShardClientTimeout     time.Duration
	// ShardCredentialsReload is how often the Secret is re-read after the
	// client exists, so a rotation needs no operator restart.
	ShardCredentialsReload  time.Duration
	DisableShardServerProbe bool
	// PlacementGroups is the number of placement groups a policy gets when
	// it has none yet.
	PlacementGroups int
}

// BindFlags registers the flags on fs.
func (o *ErasureCodingOptions) BindFlags(fs *flag.FlagSet) {
	fs.DurationVar(&o.DownOutDelay, "ec-down-out-delay", 10*time.Minute, "How long a pool (DiskPool not Online/Degraded, shard server unregistered or not answering) may be down before its shards count as Missing and are rebuilt. Restarts and rolling upgrades shorter than this cost no rebuild.")
	fs.DurationVar(&o.PoolProbeInterval, "ec-pool-probe-interval", 5*time.Second, "How often every pool holding shards is re-checked (DiskPool, registry Lease, shard-server probe).")
	fs.IntVar(&o.RebuildConcurrency, "ec-rebuild-concurrency", 2, "Stripe rebuilds in flight at once.")
	fs.Int64Var(&o.RebuildBandwidth, "ec-rebuild-bandwidth-bytes", 100<<20, "Shard bytes per second all rebuilds together may read plus write. 0: unbounded.")
	fs.Int64Var(&o.ScrubBandwidth, "ec-scrub-bandwidth-bytes", 20<<20, "Shard bytes per second scrubbing may read. 0: unbounded.")
	fs.DurationVar(&o.ScrubTick, "ec-scrub-tick", 10*time.Second, "How often the scrubber looks for stripes due (policies' scrubInterval decides when a stripe is due).")
	fs.IntVar(&o.ScrubStripesPerTick, "ec-scrub-stripes-per-tick", 100, "Most stripes scrubbed per tick.")
	fs.DurationVar(&o.PolicyValidationPeriod, "ec-policy-validation-interval", 30*time.Second, "How often each ErasureCodingPolicy is re-validated against the shard-server registry.")
	fs.StringVar(&o.RegistryNamespace, "shard-registry-namespace", registry.DefaultNamespace, "Namespace of the shard-server Leases.")
	fs.StringVar(&o.ShardSecret, "shard-client-secret", registry.DefaultNamespace+"/"+registry.DefaultShardSecret, "namespace/name of the Secret with the shard servers' ca.crt and token (read when first needed).")
	fs.IntVar(&o.StripeReconcileWorkers, "ec-stripe-workers", 2, "Concurrent ECStripe reconciles.")
	fs.IntVar(&o.PlacementGroups, "ec-placement-groups", 128, "Placement groups (ECPlacementGroup objects) an ErasureCodingPolicy gets when it has none yet; fixed for the policy afterwards (a stripe's group is a hash onto this count).")
	fs.DurationVar(&o.ShardClientTimeout, "shard-client-timeout", 30*time.Second, "Timeout of one shard-server request attempt.")
	fs.DurationVar(&o.ShardCredentialsReload, "shard-credentials-reload-interval", 30*time.Second, "How often the shard-client Secret is re-read (in the background, when the client is next used) so that a rotated CA bundle or token is picked up without a restart.")
	fs.BoolVar(&o.DisableShardServerProbe, "ec-disable-shard-probe", false, "Judge pools by DiskPool state and registry Lease only, without probing shard servers.")
}

// lazyShardClient builds the shard-server client from the Secret on first use
// (the Secret may appear after the operator starts) and retries until it
// works; later uses re-read the Secret in the background every reload
// interval (shardserver.ClientReloader), so a rotation needs no restart.
type lazyShardClient struct {
	reader    client.Reader
	ns, name  string
	timeout   time.Duration
	reload    time.Duration
	mu        sync.Mutex
	c         *shardserver.Client
	reloader  *shardserver.ClientReloader
	lastError error
}

func (l *lazyShardClient) get(ctx context.Context) (*shardserver.Client, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.c != nil {
		l.reloader.Poke(ctx, l.timeout)
		return l.c, nil
	}
	cc, err := registry.ClientConfigFromSecret(ctx, l.reader, l.ns, l.name)
	if err != nil {
		return nil, err
	}
	cc.Timeout = l.timeout
	cc.Retries = 1
	c, err := shardserver.NewClient(cc)
	if err != nil {
		return nil, err
	}
	l.c, l.reloader = c, newSecretReloader(c, l.reader, l.ns, l.name, l.reload)
	return c, nil
}

// newSecretReloader re-reads the shard-client Secret into c.
func newSecretReloader(c *shardserver.Client, reader client.Reader, ns, name string, every time.Duration) *shardserver.ClientReloader {
	logger := ctrl.Log.WithName("shard-client")
	return &shardserver.ClientReloader{Client: c, Interval: every,
		Load: func(ctx context.Context) (shardserver.ClientConfig, error) {
			return registry.ClientConfigFromSecret(ctx, reader, ns, name)
		},
		OnChange: func() { logger.Info("new shard-client credentials in use", "secret", ns+"/"+name) },
		OnError:  func(err error) { logger.Error(err, "shard-client credentials", "secret", ns+"/"+name) }}
}

// Probe implements ShardServerProber with the /v1/space call.
func (l *lazyShardClient) Probe(ctx context.Context, addr string) error {
	c, err := l.get(ctx)
	if err != nil {
		return err
	}
	_, err = c.Space(ctx, addr)
	return err
}

// SetupErasureCoding registers the ErasureCodingPolicy and ECStripe
// controllers, the pool monitor, the rebuild engine and the scrubber.
func SetupErasureCoding(mgr ctrl.Manager, o ErasureCodingOptions, mayastorNamespace string) error {
	ns, name, ok := strings.Cut(o.ShardSecret, "/")
	if !ok || ns == "" || name == "" {
		return fmt.Errorf("--shard-client-secret=%q: must be namespace/name", o.ShardSecret)
	}
	if o.DownOutDelay < 0 {
		return fmt.Errorf("--ec-down-out-delay=%v: must not be negative", o.DownOutDelay)
	}
	if o.RebuildConcurrency < 1 {
		return fmt.Errorf("--ec-rebuild-concurrency=%d: must be at least 1", o.RebuildConcurrency)
	}
	if o.RebuildBandwidth < 0 || o.ScrubBandwidth < 0 {
		return errors.New("--ec-rebuild-bandwidth-bytes and --ec-scrub-bandwidth-bytes must not be negative")
	}
	if o.ShardCredentialsReload <= 0 {
		return fmt.Errorf("--shard-credentials-reload-interval=%v: must be positive", o.ShardCredentialsReload)
	}
	shards := &lazyShardClient{reader: mgr.GetAPIReader(), ns: ns, name: name, timeout: o.ShardClientTimeout, reload: o.ShardCredentialsReload}
	lookup := &registry.Lookup{Client: mgr.GetClient(), Namespace: o.RegistryNamespace}

	if err := (&ErasureCodingPolicyReconciler{
		Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("couchestor-ecpolicy"),
		Servers: lookup, ValidationInterval: o.PolicyValidationPeriod,
	}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up ErasureCodingPolicy controller: %w", err)
	}

	monitor := &PoolMonitor{
		Client: mgr.GetClient(), MayastorNamespace: mayastorNamespace, Servers: lookup,
		Tracker: ecstate.NewDownOutTracker(o.DownOutDelay, nil), Interval: o.PoolProbeInterval,
	}
	if !o.DisableShardServerProbe {
		monitor.Prober = shards
	}
	var scrubLimiter *rate.Limiter
	if o.ScrubBandwidth > 0 {
		scrubLimiter = rate.NewLimiter(rate.Limit(o.ScrubBandwidth), int(min(max(o.ScrubBandwidth, 64<<10), 64<<20)))
	}
	verifier := &scrub.Verifier{
		Shards:  func(ctx context.Context) (scrub.ShardReader, error) { return shards.get(ctx) },
		Servers: lookup,
	}
	stripes := &ECStripeReconciler{
		Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("couchestor-ecstripe"),
		Pools: monitor, Verifier: verifier, MaxConcurrentReconciles: o.StripeReconcileWorkers,
	}
	// The rebuild reads fresh: the resourceVersion it updates with is the
	// copy-on-write precondition.
	direct, err := client.New(mgr.GetConfig(), client.Options{Scheme: mgr.GetScheme(), Mapper: mgr.GetRESTMapper()})
	if err != nil {
		return fmt.Errorf("direct API client for rebuilds: %w", err)
	}
	engine := &rebuild.Engine{
		Client:  direct,
		Shards:  func(ctx context.Context) (rebuild.ShardClient, error) { return shards.get(ctx) },
		Servers: lookup,
		PoolUp: func(ctx context.Context, pool string) bool {
			return monitor.Verdict(ctx, pool).State == ecstate.PoolUp
		},
		Events: mgr.GetEventRecorder("couchestor-rebuild"), Done: stripes.Report,
		Concurrency: o.RebuildConcurrency, BandwidthBytesPerSecond: o.RebuildBandwidth,
	}
	stripes.Rebuilder = engine
	if err := mgr.Add(engine); err != nil {
		return err
	}
	if err := stripes.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up ECStripe controller: %w", err)
	}
	if o.PlacementGroups < 1 || o.PlacementGroups > placement.MaxGroups {
		return fmt.Errorf("--ec-placement-groups=%d: must be within [1, %d]", o.PlacementGroups, placement.MaxGroups)
	}
	if err := (&PlacementGroupReconciler{
		Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("couchestor-placement"),
		MayastorNamespace: mayastorNamespace, Servers: lookup, Pools: monitor,
		GroupCount: int32(o.PlacementGroups), Resync: o.PolicyValidationPeriod,
	}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up ECPlacementGroup controller: %w", err)
	}
	verifier.Limiter = scrubLimiter
	return mgr.Add(&scrub.Scrubber{
		Client: mgr.GetClient(), Verifier: verifier, Sink: stripes.Report,
		Tick: o.ScrubTick, StripesPerTick: o.ScrubStripesPerTick, PolicyIndex: stripeindex.IndexECStripeByPolicyRef,
	})
}
