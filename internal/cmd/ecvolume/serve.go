// Package ecvolume is `couchestor ec-volume serve`: it exports one ECVolume
// over NBD (pkg/nbd) through its journal, cache and erasure-coded stripes
// (pkg/ecvolume over pkg/stripe). main.go dispatches to Command by name.
//
// Decisions written down:
//   - The journal's replicationFactor replicas live on shard servers of
//     distinct nodes, chosen once and recorded on the ECVolume
//     (pkg/volumejournal);
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
	"sync"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/internal/clients"
	"github.com/billyronks/couchestor/pkg/ecvolume"
	"github.com/billyronks/couchestor/pkg/fence"
	"github.com/billyronks/couchestor/pkg/journal"
	"github.com/billyronks/couchestor/pkg/nbd"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/pkg/shardserver"
	"github.com/billyronks/couchestor/pkg/stripe"
	"github.com/billyronks/couchestor/pkg/volumejournal"
)

// Command is `couchestor ec-volume serve ...`.
func Command(ctx context.Context, args []string) error {
	if len(args) == 0 || args[0] != "serve" {
		return errors.New("usage: couchestor ec-volume serve --volume NAME --listen ADDR --cache-dir DIR [--journal-dir DIR] [flags]")
	}
	f, err := parseServeFlags(args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	return serve(ctx, f)
}

// serveFlags are the flags of `ec-volume serve`.
type serveFlags struct {
	volume, listen, journalDir, cacheDir                 string
	cacheMem, cacheDisk, cacheBlockBytes                 int64
	kube                                                 clients.Kube
	registryNS, mayastorNS                               string
	secret, caFile, tokenFile                            string
	knownStripes, destageParallel                        int
	nbdConns                                             int
	nbdBuffers                                           int64
	nbdIdle, nbdIO, nbdDrain, leaseDuration, credsReload time.Duration
	metricsAddr                                          string
}

func parseServeFlags(args []string) (*serveFlags, error) {
	f := &serveFlags{}
	fs := flag.NewFlagSet("ec-volume serve", flag.ContinueOnError)
	fs.StringVar(&f.volume, "volume", "", "ECVolume to export. Required.")
	fs.StringVar(&f.listen, "listen", "127.0.0.1:10809", "Address of the NBD listener (10809 is NBD's port).")
	fs.StringVar(&f.journalDir, "journal-dir", "", "Development only: keep the journal replicas in local directories under DIR (one subdirectory each) instead of on shard servers; a write then survives a process crash, not the loss of this node.")
	fs.StringVar(&f.cacheDir, "cache-dir", "", "Directory of the L2 (local disk) read cache. Required.")
	fs.Int64Var(&f.cacheMem, "cache-memory-bytes", 256<<20, "L1 (RAM) read cache capacity.")
	fs.Int64Var(&f.cacheDisk, "cache-disk-bytes", 4<<30, "L2 (local disk) read cache capacity.")
	fs.StringVar(&f.kube.Kubeconfig, "kubeconfig", "", "Kubeconfig (default $KUBECONFIG, else in-cluster).")
	fs.DurationVar(&f.kube.RequestTimeout, "kube-request-timeout", clients.DefaultRequestTimeout, "Longest an API-server request may take before it fails (and is retried where the export retries). Reads of known stripes never wait on the API server.")
	fs.StringVar(&f.registryNS, "registry-namespace", registry.DefaultNamespace, "Namespace of the shard-server Leases and of the volume's writer Lease (pkg/fence).")
	fs.StringVar(&f.mayastorNS, "mayastor-namespace", "mayastor", "Namespace of the DiskPools.")
	fs.StringVar(&f.secret, "shard-secret", "", "namespace/name of the Secret with the shard servers' ca.crt and token (or --ca-file and --token-file).")
	fs.StringVar(&f.caFile, "ca-file", "", "CA bundle of the shard servers (PEM).")
	fs.StringVar(&f.tokenFile, "token-file", "", "Bearer token file of the shard servers.")
	fs.IntVar(&f.knownStripes, "known-stripes", 65536, "How many ECStripe objects the export keeps in memory so reads and writes need not GET them; past it, misses are read from the API server.")
	fs.Int64Var(&f.cacheBlockBytes, "cache-block-bytes", 0, "Unit of the read cache. 0 picks one data shard (stripeSizeBytes/k) when the stripe splits evenly, else the stripe: a miss then fetches one shard, so random small reads move a k-th of a stripe. The stripe size suits purely sequential readers (a tenth or so faster there). Must be a multiple of 512 dividing stripeSizeBytes.")
	fs.IntVar(&f.destageParallel, "destage-parallel", 8, "How many stripes the destager writes at once. A stripe write waits mostly on shard servers and two API requests (create or update, then status), so several in flight keep both busy.")
	fs.IntVar(&f.nbdConns, "nbd-max-connections", nbd.DefaultMaxConns, "Connections the NBD listener serves at once; the next one is refused during negotiation with a message naming this limit.")
	fs.Int64Var(&f.nbdBuffers, "nbd-buffer-bytes", nbd.DefaultMaxBufferedBytes, "READ and WRITE payload bytes all NBD connections together may hold in memory (at least 32 MiB, the maximum payload); a request waits for room before its buffer is allocated.")
	fs.DurationVar(&f.nbdIdle, "nbd-idle-timeout", 0, "Close an NBD connection that sends no request for this long; 0 (the default) never does: the kernel's NBD client sends nothing while its device is idle, and closing its connection fails the device.")
	fs.DurationVar(&f.nbdIO, "nbd-io-timeout", time.Minute, "Once a request's first byte arrived, the rest of it (and a WRITE's payload) must follow within this, and each reply must be taken by the client within it; else the connection is closed.")
	fs.DurationVar(&f.nbdDrain, "nbd-drain-timeout", 20*time.Second, "On shutdown (SIGTERM, or the volume's Lease lost or its ECVolume deleted), requests in flight may finish for this long; then they fail (a write waiting for room in a full journal gets EIO, never an acknowledgement) so the export exits.")
	fs.DurationVar(&f.credsReload, "shard-credentials-reload-interval", 30*time.Second, "How often the shard servers' CA bundle and token are re-read from --shard-secret or --ca-file/--token-file, so that a rotation is picked up without a restart.")
	fs.DurationVar(&f.leaseDuration, "lease-duration", 15*time.Second, "Duration of the volume's writer Lease (whole seconds, at least 1s). The export serves only while it holds the Lease, stops serving Duration/5 before it would expire unrenewed, and a second export waits until it was left unrenewed for the full duration (or released by a clean stop).")
	fs.StringVar(&f.metricsAddr, "metrics-bind-address", "0", "Address of the export's /metrics and /healthz (e.g. :9810); \"0\" disables them. Scrape it: the CoucheStorECVolumeDestageFailing alert reads it.")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	return f, f.validate()
}

func (f *serveFlags) validate() error {
	if f.knownStripes < 1 {
		return fmt.Errorf("--known-stripes %d must be at least 1", f.knownStripes)
	}
	if f.nbdDrain <= 0 {
		return fmt.Errorf("--nbd-drain-timeout %v must be positive", f.nbdDrain)
	}
	if f.nbdConns < 1 || f.nbdBuffers < nbd.DefaultMaxPayload || f.nbdIdle < 0 || f.nbdIO <= 0 {
		return fmt.Errorf("--nbd-max-connections %d must be at least 1, --nbd-buffer-bytes %d at least %d, --nbd-idle-timeout %v not negative and --nbd-io-timeout %v positive",
			f.nbdConns, f.nbdBuffers, nbd.DefaultMaxPayload, f.nbdIdle, f.nbdIO)
	}
	if f.destageParallel < 1 {
		return fmt.Errorf("--destage-parallel %d must be at least 1", f.destageParallel)
	}
	if f.kube.RequestTimeout <= 0 {
		return fmt.Errorf("--kube-request-timeout %v must be positive", f.kube.RequestTimeout)
	}
	if f.credsReload <= 0 {
		return fmt.Errorf("--shard-credentials-reload-interval %v must be positive", f.credsReload)
	}
	// One writer per volume (issue 17 item 1): see acquireLease.
	if f.leaseDuration < time.Second {
		return fmt.Errorf("--lease-duration %s must be at least 1s", f.leaseDuration)
	}
	for _, r := range []struct{ name, value string }{{"--volume", f.volume}, {"--cache-dir", f.cacheDir}} {
		if r.value == "" {
			return fmt.Errorf("%s is required", r.name)
		}
	}
	return nil
}

func (f *serveFlags) logf(format string, args ...any) {
	log.Printf("ec-volume %s: "+format, append([]any{f.volume}, args...)...)
}

// openStore connects to the API server and the shard servers.
func (f *serveFlags) openStore(ctx context.Context) (*stripe.Store, error) {
	// Reads and destages GET and update ECStripes on the I/O path: client-go's
	// default of 5 requests/s would throttle a volume to a few stripes a second.
	k := f.kube
	k.QPS, k.Burst = 200, 400
	kc, err := k.Client()
	if err != nil {
		return nil, err
	}
	cc, err := clients.ShardClientConfig(ctx, kc, f.secret, f.caFile, f.tokenFile)
	if err != nil {
		return nil, err
	}
	sc, err := shardserver.NewClient(cc)
	if err != nil {
		return nil, err
	}
	// A rotated CA bundle or token is picked up without a restart.
	go (&shardserver.ClientReloader{Client: sc, Interval: f.credsReload,
		Load: func(ctx context.Context) (shardserver.ClientConfig, error) {
			return clients.ShardClientConfig(ctx, kc, f.secret, f.caFile, f.tokenFile)
		},
		OnChange: func() { f.logf("new shard-client credentials in use") },
		OnError:  func(err error) { f.logf("%v", err) }}).Run(ctx)
	// The export is its volume's only stripe writer (it holds the volume's
	// writer Lease, below, and its epoch fences an older export), so it remembers the volume's ECStripes and
	// looks shard servers up at most every serverViewTTL instead of asking
	// the API server before every stripe read and write (stripe.Known).
	return &stripe.Store{Client: kc, Shards: sc, Registry: &registry.Lookup{Client: kc, Namespace: f.registryNS}, MayastorNamespace: f.mayastorNS,
		Known: &stripe.Known{MaxStripes: f.knownStripes}, Groups: &stripe.Groups{TTL: serverViewTTL}, Views: &stripe.ServerViews{TTL: serverViewTTL, OnRefreshError: func(view string, err error) {
			f.logf("refresh of the %s view failed (the last one keeps serving): %v", view, err)
		}}}, nil
}

// lease is the volume's writer Lease while the export holds it.
type lease struct {
	holder *fence.Holder
	// ctx ends when the Lease is lost or stop is called.
	ctx  context.Context
	stop func() // stops renewing; waits for the renewer
}

// acquireLease waits until the export holds the volume's writer Lease and
// keeps renewing it: nothing is opened before (issue 17 item 1), and
// everything written carries the Lease's writer epoch.
func (f *serveFlags) acquireLease(ctx context.Context, st *stripe.Store, vol *stripe.Volume) (*lease, error) {
	host, _ := os.Hostname()
	holder := &fence.Holder{Client: st.Client, Namespace: f.registryNS, Volume: vol.Object, Duration: f.leaseDuration,
		Identity: fmt.Sprintf("%s/%d/%s", host, os.Getpid(), strconv.FormatInt(time.Now().UnixNano(), 36)),
		Logf:     f.logf}
	if err := holder.Acquire(ctx); err != nil {
		return nil, err
	}
	f.logf("holds Lease %s/%s with writer epoch %d", f.registryNS, fence.LeaseName(f.volume), holder.Epoch())
	st.WriterEpoch, st.Fence = holder.Epoch(), holder.Check
	// Serving ends with ctx (SIGTERM) or the Lease; renewing goes on until
	// stop, i.e. through the drain and the close of the journal after
	// SIGTERM, so that a shutdown longer than the Lease still ends with a
	// valid Lease to release (before, renewals stopped at SIGTERM and a
	// slow shutdown left the next export waiting out the whole Lease).
	serveCtx, stopServing := context.WithCancel(ctx)
	renewCtx, stopRenewing := context.WithCancel(context.WithoutCancel(ctx))
	leaseDone := make(chan error, 1)
	go func() {
		err := holder.Run(renewCtx)
		if err != nil {
			f.logf("stops serving: %v", err)
		}
		leaseDone <- err
		stopServing()
	}()
	var once sync.Once
	return &lease{holder: holder, ctx: serveCtx, stop: func() { once.Do(func() { stopServing(); stopRenewing(); <-leaseDone }) }}, nil
}

// journalStores opens the journal replicas: on shard servers (placed and
// recorded by volumejournal.Placement), or under --journal-dir. Every
// mutation checks the writer Lease.
func (f *serveFlags) journalStores(ctx context.Context, st *stripe.Store, vol *stripe.Volume, replicas int, check func() error) ([]journal.Store, error) {
	var stores []journal.Store
	if f.journalDir != "" {
		for i := 0; i < replicas; i++ {
			s, err := journal.OpenFileStore(filepath.Join(f.journalDir, f.volume, fmt.Sprintf("replica-%d", i)))
			if err != nil {
				for _, o := range stores {
					_ = o.Close()
				}
				return nil, err
			}
			stores = append(stores, s)
		}
	} else {
		pl := &volumejournal.Placement{Kube: st.Client, Registry: st.Registry, Shards: st.Shards, Logf: log.Printf}
		var err error
		if stores, err = pl.OpenStores(ctx, vol.Object, replicas); err != nil {
			return nil, err
		}
	}
	for i := range stores {
		stores[i] = fencedStore{Store: stores[i], check: check}
	}
	return stores, nil
}

// openVolume opens the journal, caches and stripe path of the volume.
func (f *serveFlags) openVolume(ctx context.Context, st *stripe.Store, vol *stripe.Volume, js volumejournal.Settings, check func() error, obs *observer) (*ecvolume.VolumeBackend, error) {
	block := cacheBlock(vol)
	if b := f.cacheBlockBytes; b != 0 {
		if b < 0 || b%lba != 0 || vol.StripeSize%b != 0 {
			return nil, fmt.Errorf("--cache-block-bytes %d must be a positive multiple of %d that divides the policy's stripeSizeBytes %d", b, lba, vol.StripeSize)
		}
		block = b
	}
	stores, err := f.journalStores(ctx, st, vol, js.ReplicationFactor, check)
	if err != nil {
		return nil, err
	}
	return ecvolume.Open(ctx, ecvolume.Options{
		Name: f.volume, VolumeUID: string(vol.Object.UID), SizeBytes: vol.Object.Spec.SizeBytes, StripeSizeBytes: vol.StripeSize,
		JournalStores: stores, Journal: journal.Options{SizeBytes: js.SizeBytes, Logf: f.logf},
		DestageThresholdPercent: js.DestageThresholdPercent, DestageInterval: js.DestageInterval, DestageParallel: f.destageParallel,
		Stripes: observedSink{StripeAdapter: &StripeAdapter{Store: st, Volume: vol}, o: obs},
		Cache: &ecvolume.CacheOptions{BlockBytes: block, ConcurrentMisses: true, MemoryBytes: f.cacheMem,
			DiskDir: filepath.Join(f.cacheDir, f.volume), DiskBytes: f.cacheDisk},
		OnDestageSuccess: obs.destagePassed,
		OnDestageError: func(err error) {
			obs.destageError(err)
			f.logf("destage failed (writes back-pressure until it succeeds): %v", err)
		},
	})
}

// serve exports the volume until ctx ends or the writer Lease is lost.
func serve(ctx context.Context, f *serveFlags) error {
	st, err := f.openStore(ctx)
	if err != nil {
		return err
	}
	vol, err := st.OpenVolume(ctx, f.volume)
	if err != nil {
		return err
	}
	ls, err := f.acquireLease(ctx, st, vol)
	if err != nil {
		return err
	}
	defer ls.stop()
	if vol.Layout == storagev1.LayoutPlacementGroups {
		// Before anything is read: an older export still running then
		// reaches fewer than k members of any group.
		if err := st.FenceGroups(ctx, vol); err != nil {
			return err
		}
	} else if err := st.Prime(ctx, f.volume); err != nil {
		return err
	}
	pol := &storagev1.ErasureCodingPolicy{}
	if err := st.Client.Get(ctx, client.ObjectKey{Name: vol.Policy}, pol); err != nil {
		return fmt.Errorf("ECVolume %s: get ErasureCodingPolicy %s: %w", f.volume, vol.Policy, err)
	}
	js, err := volumejournal.SettingsOf(pol)
	if err != nil {
		return err
	}
	obs := newObserver(f.volume, st.Client)
	v, err := f.openVolume(ctx, st, vol, js, ls.holder.Check, obs)
	if err != nil {
		return err
	}
	defer func() {
		// A clean stop hands the Lease on at once; only after the destager
		// and the journal stopped, so nothing of ours is still writing.
		closeErr := v.Close()
		ls.stop()
		// After ErrVolumeDeleted too: the finalizer then deletes the
		// volume's data at once instead of waiting for the Lease to expire.
		if lerr := ls.holder.Check(); closeErr == nil && (lerr == nil || errors.Is(lerr, fence.ErrVolumeDeleted)) {
			if err := ls.holder.Release(context.WithoutCancel(ctx)); err != nil {
				f.logf("%v (the next export waits for the Lease to expire)", err)
			}
		}
	}()
	obs.watchJournal(v.Journal())
	if err := obs.serveMetrics(ctx, f.metricsAddr); err != nil {
		return err
	}
	l, err := net.Listen("tcp", f.listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", f.listen, err)
	}
	condCtx, stopConds := context.WithCancel(context.WithoutCancel(ctx))
	condsDone := make(chan struct{})
	go func() { defer close(condsDone); obs.runConditions(condCtx, l.Addr().String()) }()
	defer func() { stopConds(); <-condsDone }()
	f.logf("serving %d bytes (policy %s, stripe %d bytes, journal %d replicas × %d bytes) over NBD on %s",
		vol.Object.Spec.SizeBytes, pol.Name, vol.StripeSize, js.ReplicationFactor, js.SizeBytes, l.Addr())
	srv := &nbd.Server{Exports: []nbd.Export{{Name: f.volume, Description: "ECVolume " + f.volume, Backend: fencedBackend{Backend: v, check: ls.holder.Check},
		Answered: obs.io.Answered}}, Logf: log.Printf,
		MaxConns: f.nbdConns, MaxBufferedBytes: f.nbdBuffers, IdleTimeout: f.nbdIdle, IOTimeout: f.nbdIO, DrainTimeout: f.nbdDrain}
	if err := srv.Serve(ls.ctx, l); err != nil {
		return err
	}
	if err := ls.holder.Check(); err != nil && ctx.Err() == nil {
		return fmt.Errorf("ec-volume %s: %w", f.volume, err)
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

// serverViewTTL is how long the export uses the list of live shard servers,
// their DiskPools' state and free space (stripe.ServerViews) before it
// refreshes them in the background: a server that died meanwhile costs a
// retried shard write or a degraded read, never data, and a refresh that
// fails (the API server down) leaves the last view serving.
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
