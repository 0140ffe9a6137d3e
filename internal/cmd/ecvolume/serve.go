// Package ecvolume is `couchestor ec-volume serve`: it exports one ECVolume
// over NBD (pkg/nbd) through its journal, cache and erasure-coded stripes
// (pkg/ecvolume over pkg/stripe). main.go dispatches to Command by name.
//
// Decisions written down:
//   - The journal's replicationFactor replicas live on shard servers of
//     distinct nodes, chosen once and recorded on the ECVolume (journal.go);
//     a write is acknowledged when a majority of them made it durable.
//     --journal-dir keeps them in local directories instead (development
//     only: a write then survives a process crash, not the loss of the node).
//   - Size, stripe size and journalConfig come from the ECVolume and its
//     ErasureCodingPolicy, read once at start (defaults applied as the
//     schema states them); a policy change needs a restart.
//   - Destage failures (API server or webhooks unavailable, too few shard
//     servers) are logged and retried; writes back-pressure on the full
//     journal meanwhile and are never dropped. They show on
//     --metrics-bind-address (couchestor_ecvolume_destage_failing, read by
//     the data-plane chart's CoucheStorECVolumeDestageFailing alert) and as
//     the ECVolume's Destaging condition (observe.go).
//   - One writer per volume (issue 17 item 1, pkg/fence): nothing is opened
//     before the export holds the volume's writer Lease; NBD requests and
//     journal mutations check it (fence.go), shards and ECStripes carry its
//     writer epoch, and losing it ends the process with an error.
//   - Deleting the ECVolume ends its export (issue 17 item 9): the Lease
//     holder reads the volume at every renewal and stops with
//     fence.ErrVolumeDeleted; I/O is refused from then on (NBD requests get
//     EIO, the destager and journal write nothing), the Lease is released
//     once all of it ended, and the process exits non-zero naming the
//     volume. The finalizer deletes stripes and journals only after that.
package ecvolume

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/internal/scheme"
	"github.com/billyronks/couchestor/pkg/ecvolume"
	"github.com/billyronks/couchestor/pkg/fence"
	"github.com/billyronks/couchestor/pkg/journal"
	"github.com/billyronks/couchestor/pkg/nbd"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/pkg/shardserver"
	"github.com/billyronks/couchestor/pkg/stripe"
)

// Command is `couchestor ec-volume serve ...`.
func Command(ctx context.Context, args []string) error {
	if len(args) == 0 || args[0] != "serve" {
		return errors.New("usage: couchestor ec-volume serve --volume NAME --listen ADDR --cache-dir DIR [--journal-dir DIR] [flags]")
	}
	fs := flag.NewFlagSet("ec-volume serve", flag.ContinueOnError)
	volume := fs.String("volume", "", "ECVolume to export. Required.")
	listen := fs.String("listen", "127.0.0.1:10809", "Address of the NBD listener (10809 is NBD's port).")
	journalDir := fs.String("journal-dir", "", "Development only: keep the journal replicas in local directories under DIR (one subdirectory each) instead of on shard servers; a write then survives a process crash, not the loss of this node.")
	cacheDir := fs.String("cache-dir", "", "Directory of the L2 (local disk) read cache. Required.")
	cacheMem := fs.Int64("cache-memory-bytes", 256<<20, "L1 (RAM) read cache capacity.")
	cacheDisk := fs.Int64("cache-disk-bytes", 4<<30, "L2 (local disk) read cache capacity.")
	kubeconfig := fs.String("kubeconfig", "", "Kubeconfig (default $KUBECONFIG, else in-cluster).")
	registryNS := fs.String("registry-namespace", registry.DefaultNamespace, "Namespace of the shard-server Leases and of the volume's writer Lease (pkg/fence).")
	mayastorNS := fs.String("mayastor-namespace", "mayastor", "Namespace of the DiskPools.")
	secret := fs.String("shard-secret", "", "namespace/name of the Secret with the shard servers' ca.crt and token (or --ca-file and --token-file).")
	caFile := fs.String("ca-file", "", "CA bundle of the shard servers (PEM).")
	tokenFile := fs.String("token-file", "", "Bearer token file of the shard servers.")
	knownStripes := fs.Int("known-stripes", 65536, "How many ECStripe objects the export keeps in memory (about 3 KiB each) so reads and writes need not GET them; past it, misses are read from the API server.")
	cacheBlockBytes := fs.Int64("cache-block-bytes", 0, "Unit of the read cache. 0 picks one data shard (stripeSizeBytes/k) when the stripe splits evenly, else the stripe: a miss then fetches one shard, so random small reads move a k-th of a stripe. The stripe size suits purely sequential readers (a tenth or so faster there). Must be a multiple of 512 dividing stripeSizeBytes.")
	destageParallel := fs.Int("destage-parallel", 8, "How many stripes the destager writes at once. A stripe write waits mostly on shard servers and two API requests (create or update, then status), so several in flight keep both busy.")
	nbdConns := fs.Int("nbd-max-connections", nbd.DefaultMaxConns, "Connections the NBD listener serves at once; the next one is refused during negotiation with a message naming this limit.")
	nbdBuffers := fs.Int64("nbd-buffer-bytes", nbd.DefaultMaxBufferedBytes, "READ and WRITE payload bytes all NBD connections together may hold in memory (at least 32 MiB, the maximum payload); a request waits for room before its buffer is allocated.")
	nbdIdle := fs.Duration("nbd-idle-timeout", 0, "Close an NBD connection that sends no request for this long; 0 (the default) never does: the kernel's NBD client sends nothing while its device is idle, and closing its connection fails the device.")
	nbdIO := fs.Duration("nbd-io-timeout", time.Minute, "Once a request's first byte arrived, the rest of it (and a WRITE's payload) must follow within this, and each reply must be taken by the client within it; else the connection is closed.")
	nbdDrain := fs.Duration("nbd-drain-timeout", 20*time.Second, "On shutdown (SIGTERM, or the volume's Lease lost or its ECVolume deleted), requests in flight may finish for this long; then they fail (a write waiting for room in a full journal gets EIO, never an acknowledgement) so the export exits.")
	leaseDuration := fs.Duration("lease-duration", 15*time.Second, "Duration of the volume's writer Lease (whole seconds, at least 1s). The export serves only while it holds the Lease, stops serving Duration/5 before it would expire unrenewed, and a second export waits until it was left unrenewed for the full duration (or released by a clean stop).")
	metricsAddr := fs.String("metrics-bind-address", "0", "Address of the export's /metrics and /healthz (e.g. :9810); \"0\" disables them. Scrape it: the CoucheStorECVolumeDestageFailing alert reads it.")
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if *knownStripes < 1 {
		return fmt.Errorf("--known-stripes %d must be at least 1", *knownStripes)
	}
	if *nbdDrain <= 0 {
		return fmt.Errorf("--nbd-drain-timeout %v must be positive", *nbdDrain)
	}
	if *nbdConns < 1 || *nbdBuffers < nbd.DefaultMaxPayload || *nbdIdle < 0 || *nbdIO <= 0 {
		return fmt.Errorf("--nbd-max-connections %d must be at least 1, --nbd-buffer-bytes %d at least %d, --nbd-idle-timeout %v not negative and --nbd-io-timeout %v positive",
			*nbdConns, *nbdBuffers, nbd.DefaultMaxPayload, *nbdIdle, *nbdIO)
	}
	if *destageParallel < 1 {
		return fmt.Errorf("--destage-parallel %d must be at least 1", *destageParallel)
	}
	for _, f := range []struct{ name, value string }{{"--volume", *volume}, {"--cache-dir", *cacheDir}} {
		if f.value == "" {
			return fmt.Errorf("%s is required", f.name)
		}
	}

	kc, err := kubeClient(*kubeconfig)
	if err != nil {
		return err
	}
	var cc shardserver.ClientConfig
	switch {
	case *secret != "":
		ns, name, ok := strings.Cut(*secret, "/")
		if !ok {
			return fmt.Errorf("--shard-secret %q must be namespace/name", *secret)
		}
		if cc, err = registry.ClientConfigFromSecret(ctx, kc, ns, name); err != nil {
			return err
		}
	case *caFile != "":
		if cc.CAPEM, err = os.ReadFile(*caFile); err != nil {
			return fmt.Errorf("--ca-file: %w", err)
		}
		tok, err := os.ReadFile(*tokenFile)
		if err != nil || strings.TrimSpace(string(tok)) == "" {
			return fmt.Errorf("--token-file %q must name a non-empty file: %v", *tokenFile, err)
		}
		cc.Token = strings.TrimSpace(string(tok))
	default:
		return errors.New("either --shard-secret or --ca-file with --token-file is required")
	}
	sc, err := shardserver.NewClient(cc)
	if err != nil {
		return err
	}
	// The export is its volume's only stripe writer (it holds the volume's
	// writer Lease, below, and its epoch fences an older export), so it remembers the volume's ECStripes and
	// looks shard servers up at most every serverViewTTL instead of asking
	// the API server before every stripe read and write (stripe.Known).
	st := &stripe.Store{Client: kc, Shards: sc, Registry: &registry.Lookup{Client: kc, Namespace: *registryNS}, MayastorNamespace: *mayastorNS,
		Known: &stripe.Known{MaxStripes: *knownStripes}, Views: &stripe.ServerViews{TTL: serverViewTTL}}
	vol, err := st.OpenVolume(ctx, *volume)
	if err != nil {
		return err
	}
	// One writer per volume (issue 17 item 1): nothing below runs until this
	// export holds the volume's Lease, and everything it writes carries the
	// Lease's writer epoch.
	if *leaseDuration < time.Second {
		return fmt.Errorf("--lease-duration %s must be at least 1s", *leaseDuration)
	}
	host, _ := os.Hostname()
	holder := &fence.Holder{Client: kc, Namespace: *registryNS, Volume: vol.Object, Duration: *leaseDuration,
		Identity: fmt.Sprintf("%s/%d/%s", host, os.Getpid(), strconv.FormatInt(time.Now().UnixNano(), 36)),
		Logf: func(format string, args ...any) {
			log.Printf("ec-volume %s: "+format, append([]any{*volume}, args...)...)
		}}
	if err := holder.Acquire(ctx); err != nil {
		return err
	}
	log.Printf("ec-volume %s: holds Lease %s/%s with writer epoch %d", *volume, *registryNS, fence.LeaseName(*volume), holder.Epoch())
	st.WriterEpoch, st.Fence = holder.Epoch(), holder.Check
	serveCtx, stopServing := context.WithCancel(ctx)
	defer stopServing()
	leaseDone := make(chan error, 1)
	go func() {
		err := holder.Run(serveCtx)
		if err != nil {
			log.Printf("ec-volume %s: stops serving: %v", *volume, err)
		}
		leaseDone <- err
		stopServing()
	}()
	var leaseStopped sync.Once
	stopLease := func() { leaseStopped.Do(func() { stopServing(); <-leaseDone }) }
	defer stopLease()
	block := cacheBlock(vol)
	if b := *cacheBlockBytes; b != 0 {
		if b < 0 || b%lba != 0 || vol.StripeSize%b != 0 {
			return fmt.Errorf("--cache-block-bytes %d must be a positive multiple of %d that divides the policy's stripeSizeBytes %d", b, lba, vol.StripeSize)
		}
		block = b
	}
	if err := st.Prime(ctx, *volume); err != nil {
		return err
	}
	pol := &storagev1.ErasureCodingPolicy{}
	if err := kc.Get(ctx, client.ObjectKey{Name: vol.Policy}, pol); err != nil {
		return fmt.Errorf("ECVolume %s: get ErasureCodingPolicy %s: %w", *volume, vol.Policy, err)
	}
	storagev1.DefaultErasureCodingPolicySpec(&pol.Spec)
	jc := pol.Spec.JournalConfig
	if jc == nil {
		jc = &storagev1.JournalConfig{}
	}
	jsize, replicas, threshold, interval := int64(10<<30), 3, 80, 30*time.Second
	if jc.JournalSizeBytes != nil {
		jsize = *jc.JournalSizeBytes
	}
	if jc.ReplicationFactor != nil {
		replicas = int(*jc.ReplicationFactor)
	}
	if jc.DestageThresholdPercent != nil {
		threshold = int(*jc.DestageThresholdPercent)
	}
	if jc.DestageInterval != "" {
		if interval, err = storagev1.ParseDuration(jc.DestageInterval); err != nil {
			return fmt.Errorf("ErasureCodingPolicy %s spec.journalConfig.destageInterval %q: %w", pol.Name, jc.DestageInterval, err)
		}
	}
	var stores []journal.Store
	if *journalDir != "" {
		for i := 0; i < replicas; i++ {
			s, err := journal.OpenFileStore(filepath.Join(*journalDir, *volume, fmt.Sprintf("replica-%d", i)))
			if err != nil {
				for _, o := range stores {
					_ = o.Close()
				}
				return err
			}
			stores = append(stores, s)
		}
	} else if stores, err = openJournalStores(ctx, kc, st.Registry, sc, vol.Object, replicas); err != nil {
		return err
	}
	for i := range stores {
		stores[i] = fencedStore{Store: stores[i], check: holder.Check}
	}
	obs := newObserver(*volume, kc)
	v, err := ecvolume.Open(ctx, ecvolume.Options{
		Name: *volume, VolumeUID: string(vol.Object.UID), SizeBytes: vol.Object.Spec.SizeBytes, StripeSizeBytes: vol.StripeSize,
		JournalStores: stores, Journal: journal.Options{SizeBytes: jsize, Logf: func(f string, a ...any) {
			log.Printf("ec-volume %s: "+f, append([]any{*volume}, a...)...)
		}},
		DestageThresholdPercent: threshold, DestageInterval: interval, DestageParallel: *destageParallel,
		Stripes: observedSink{StripeAdapter: &StripeAdapter{Store: st, Volume: vol}, o: obs},
		Cache: &ecvolume.CacheOptions{BlockBytes: block, ConcurrentMisses: true, MemoryBytes: *cacheMem,
			DiskDir: filepath.Join(*cacheDir, *volume), DiskBytes: *cacheDisk},
		OnDestageSuccess: obs.destagePassed,
		OnDestageError: func(err error) {
			obs.destageError(err)
			log.Printf("ec-volume %s: destage failed (writes back-pressure until it succeeds): %v", *volume, err)
		},
	})
	if err != nil {
		return err
	}
	defer func() {
		// A clean stop hands the Lease on at once; only after the destager
		// and the journal stopped, so nothing of ours is still writing.
		closeErr := v.Close()
		stopLease()
		// After ErrVolumeDeleted too: the finalizer then deletes the
		// volume's data at once instead of waiting for the Lease to expire.
		if lerr := holder.Check(); closeErr == nil && (lerr == nil || errors.Is(lerr, fence.ErrVolumeDeleted)) {
			if err := holder.Release(context.WithoutCancel(ctx)); err != nil {
				log.Printf("ec-volume %s: %v (the next export waits for the Lease to expire)", *volume, err)
			}
		}
	}()
	obs.watchJournal(v.Journal())
	if err := obs.serveMetrics(ctx, *metricsAddr); err != nil {
		return err
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", *listen, err)
	}
	condCtx, stopConds := context.WithCancel(context.WithoutCancel(ctx))
	condsDone := make(chan struct{})
	go func() { defer close(condsDone); obs.runConditions(condCtx, l.Addr().String()) }()
	defer func() { stopConds(); <-condsDone }()
	log.Printf("ec-volume %s: serving %d bytes (policy %s, stripe %d bytes, journal %d replicas × %d bytes) over NBD on %s",
		*volume, vol.Object.Spec.SizeBytes, pol.Name, vol.StripeSize, replicas, jsize, l.Addr())
	srv := &nbd.Server{Exports: []nbd.Export{{Name: *volume, Description: "ECVolume " + *volume, Backend: fencedBackend{Backend: v, check: holder.Check}}}, Logf: log.Printf,
		MaxConns: *nbdConns, MaxBufferedBytes: *nbdBuffers, IdleTimeout: *nbdIdle, IOTimeout: *nbdIO, DrainTimeout: *nbdDrain}
	if err := srv.Serve(serveCtx, l); err != nil {
		return err
	}
	if err := holder.Check(); err != nil && ctx.Err() == nil {
		return fmt.Errorf("ec-volume %s: %w", *volume, err)
	}
	return nil
}

// cacheBlock is the read cache's unit: one data shard when the stripe splits
// evenly into k of them (a miss then fetches that one shard, with no decode:
// a random 4 KiB read moves stripe/k bytes, not the stripe), else the stripe.
func cacheBlock(v *stripe.Volume) int64 {
	ss := int64(v.Codec.ShardSize())
	if ss*int64(v.K) == v.StripeSize && ss%lba == 0 {
		return ss
	}
	return v.StripeSize
}

// serverViewTTL is how long the export reuses the list of live shard servers,
// their DiskPools' state and free space (stripe.ServerViews): a server that
// died meanwhile costs a retried shard write or a degraded read, never data.
const serverViewTTL = 2 * time.Second

// StripeAdapter is the erasure-coded stripe path of one volume as
// ecvolume.StripeStore: reads any byte range (rounded out to LBAs), and
// destages a stripe as one read-merge-write, i.e. one new copy-on-write
// generation per destaged stripe.
type StripeAdapter struct {
	Store  *stripe.Store
	Volume *stripe.Volume
}

const lba = journal.LBASize

// ReadAt implements ecvolume.StripeStore.
func (a *StripeAdapter) ReadAt(ctx context.Context, p []byte, off int64) error {
	start, end := off-off%lba, off+int64(len(p))
	if r := end % lba; r != 0 {
		end += lba - r
	}
	buf := p
	if start != off || end != off+int64(len(p)) {
		buf = make([]byte, end-start)
	}
	if _, err := a.Store.ReadAt(ctx, a.Volume, buf, start); err != nil {
		return err
	}
	if len(buf) != len(p) {
		copy(p, buf[off-start:])
	}
	return nil
}

// WriteStripe implements journal.StripeSink.
func (a *StripeAdapter) WriteStripe(ctx context.Context, idx int64, extents []journal.Extent) error {
	start := idx * a.Volume.StripeSize
	end := min(start+a.Volume.StripeSize, a.Volume.Object.Spec.SizeBytes)
	buf := make([]byte, end-start)
	// A stripe the extents cover whole needs no read of its old bytes (the
	// common case of sequential writes): that read costs an ECStripe GET,
	// k shard GETs and a decode.
	if !covers(extents, start, end) {
		if _, err := a.Store.ReadAt(ctx, a.Volume, buf, start); err != nil {
			return fmt.Errorf("read stripe %d before merging: %w", idx, err)
		}
	}
	for _, e := range extents {
		o := int64(e.LBA)*lba - start
		if o < 0 || o+int64(len(e.Data)) > int64(len(buf)) {
			return fmt.Errorf("extent at LBA %d (+%d bytes) outside stripe %d", e.LBA, len(e.Data), idx)
		}
		copy(buf[o:], e.Data)
	}
	return a.Store.WriteAt(ctx, a.Volume, buf, start)
}

// covers reports whether the extents together cover the byte range
// [start, end) of the volume.
func covers(extents []journal.Extent, start, end int64) bool {
	type span struct{ a, b int64 }
	spans := make([]span, 0, len(extents))
	for _, e := range extents {
		a := int64(e.LBA) * lba
		spans = append(spans, span{a, a + int64(len(e.Data))})
	}
	slices.SortFunc(spans, func(x, y span) int { return cmp.Compare(x.a, y.a) })
	at := start
	for _, s := range spans {
		if s.a > at {
			break
		}
		at = max(at, s.b)
	}
	return at >= end
}

func kubeClient(kubeconfig string) (client.Client, error) {
	if kubeconfig == "" {
		kubeconfig = os.Getenv("KUBECONFIG")
	}
	var cfg *rest.Config
	var err error
	if kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig: %w", err)
	}
	// Reads and destages GET and update ECStripes on the I/O path: client-go's
	// default of 5 requests/s would throttle a volume to a few stripes a second.
	cfg.QPS, cfg.Burst = 200, 400
	c, err := client.New(cfg, client.Options{Scheme: scheme.New()})
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return c, nil
}
