// Command couchestor is the CoucheStor operator: one controller-runtime manager
// that runs the Go reconcilers, the admission webhooks, metrics, health probes
// and leader election. Every setting is a flag; `couchestor --help` lists them.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap/zapcore"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client/config"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/controllers"
	datacmd "github.com/billyronks/couchestor/internal/cmd"
	csicmd "github.com/billyronks/couchestor/internal/cmd/csi"
	ecvolumecmd "github.com/billyronks/couchestor/internal/cmd/ecvolume"
	volumecopycmd "github.com/billyronks/couchestor/internal/cmd/volumecopy"
	"github.com/billyronks/couchestor/internal/helmhybrid"
	"github.com/billyronks/couchestor/internal/scheme"
	"github.com/billyronks/couchestor/pkg/conversion"
	"github.com/billyronks/couchestor/pkg/migration"
	"github.com/billyronks/couchestor/webhooks"
)

// options are the operator's flags.
type options struct {
	metricsAddr       string
	metricsSecure     bool
	probeAddr         string
	pprofAddr         string
	leaderElect       bool
	leaderElectionID  string
	leaderElectionNS  string
	leaseDuration     time.Duration
	renewDeadline     time.Duration
	retryPeriod       time.Duration
	mayastorNamespace string
	webhookPort       int
	webhookCertDir    string
	webhooksEnabled   bool
	webhookCertMode   string
	webhookNamespace  string
	webhookLocalURL   string
	gracefulShutdown  time.Duration
	zapOpts           zap.Options
	tiering           controllers.TieringOptions
	mayastor          controllers.MayastorOptions
	migrations        migrationOptions
	erasure           controllers.ErasureCodingOptions
	dataPlane         helmhybrid.PolicyFlags
	conversion        conversion.Options
}

// migrationOptions are the migration engine's flags (tiering part 2).
type migrationOptions struct {
	globalMax    int
	poolHeadroom float64
	preservation bool
}

// subcommands run instead of the operator when named as the first argument,
// e.g. `couchestor shard-server --help`.
var subcommands = map[string]func(ctx context.Context, args []string) error{
	"shard-server":      datacmd.ShardServer,
	"shard-server-init": datacmd.ShardServerInit,
	"ec":                datacmd.EC,
	"ec-volume":         ecvolumecmd.Command,
	"csi":               csicmd.Command,
	"volume-copy":       volumecopycmd.Command,
}

func parseFlags(args []string) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("couchestor", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `couchestor — storage tiering and erasure coding for OpenEBS Mayastor.

Usage: couchestor [flags]

Runs the operator: reconcilers for StoragePolicy, ErasureCodingPolicy and
ECStripe, the admission webhooks, /metrics, /healthz and /readyz.

Flags:
`)
		fs.PrintDefaults()
	}
	fs.StringVar(&o.metricsAddr, "metrics-bind-address", ":8080", "Address of the Prometheus /metrics endpoint (plain HTTP; the install chart decides secure serving). \"0\" disables it.")
	fs.BoolVar(&o.metricsSecure, "metrics-secure", false, "Serve /metrics over HTTPS, allowing only callers that Kubernetes authenticates and authorizes (TokenReview + SubjectAccessReview for GET /metrics). The install chart turns it on.")
	fs.StringVar(&o.pprofAddr, "pprof-bind-address", "", "Address of Go's /debug/pprof endpoints (heap, CPU, goroutines), off when empty. Unauthenticated: bind it to loopback (127.0.0.1:6060) and reach it with kubectl port-forward.")
	fs.StringVar(&o.probeAddr, "health-probe-bind-address", ":8081", "Address of /healthz and /readyz. /readyz fails until the informer caches have synced (and the webhook certificate is ready where webhooks run).")
	fs.BoolVar(&o.leaderElect, "leader-elect", true, "Elect a leader with a coordination.k8s.io Lease so only one replica acts at a time.")
	fs.StringVar(&o.leaderElectionID, "leader-election-id", "couchestor.storage.billyronks.io", "Name of the leader-election Lease.")
	fs.StringVar(&o.leaderElectionNS, "leader-election-namespace", "", "Namespace of the leader-election Lease (default: the pod's namespace, or the kubeconfig's).")
	fs.DurationVar(&o.leaseDuration, "leader-elect-lease-duration", 15*time.Second, "How long a non-leader waits before it may take over an unrenewed lease.")
	fs.DurationVar(&o.renewDeadline, "leader-elect-renew-deadline", 10*time.Second, "How long the leader keeps trying to renew before it gives up leadership (and exits).")
	fs.DurationVar(&o.retryPeriod, "leader-elect-retry-period", 2*time.Second, "How often leader-election clients retry.")
	fs.StringVar(&o.mayastorNamespace, "mayastor-namespace", "mayastor", "Namespace of Mayastor's DiskPool objects (and of MayastorVolume objects with --mayastor-backend=crd).")
	fs.BoolVar(&o.webhooksEnabled, "enable-webhooks", true, "Serve the admission webhooks.")
	fs.IntVar(&o.webhookPort, "webhook-port", 9443, "Port of the admission webhook server (TLS).")
	fs.StringVar(&o.webhookCertDir, "webhook-cert-dir", "/tmp/k8s-webhook-server/serving-certs", "Directory holding tls.crt and tls.key for the webhook server (OLM mounts them here).")
	fs.StringVar(&o.webhookCertMode, "webhook-cert-mode", string(webhooks.CertModeSelfSigned), "Who provides the webhook certificate: self-signed (rotated in-process, Secret + caBundle injection, /readyz waits for it), cert-manager (config/certmanager) or olm (mounted by OLM at --webhook-cert-dir). One mode per deployment.")
	fs.StringVar(&o.webhookNamespace, "webhook-namespace", envOr("POD_NAMESPACE", webhooks.DefaultNamespace), "Namespace of the webhook Service and of the self-signed certificate Secret (default: $POD_NAMESPACE, else couchestor-system).")
	fs.StringVar(&o.webhookLocalURL, "webhook-local-url", "", "Serve the webhooks from outside the cluster (make run-local): install the webhook configurations pointing at this https URL, e.g. https://localhost:9443, and write the self-signed certificate into --webhook-cert-dir. Needs --webhook-cert-mode=self-signed.")
	fs.DurationVar(&o.gracefulShutdown, "graceful-shutdown-timeout", 30*time.Second, "How long runnables get to stop after SIGTERM.")
	o.tiering.BindFlags(fs)
	o.mayastor.BindFlags(fs)
	fs.IntVar(&o.migrations.globalMax, "max-concurrent-migrations", 0, "Cap on migrations running at once across all StoragePolicies (each policy also has spec.maxConcurrentMigrations). 0: no global cap.")
	fs.Float64Var(&o.migrations.poolHeadroom, "pool-headroom", migration.DefaultPoolHeadroom, "Highest used fraction (0-1] a target DiskPool may reach after receiving a replica.")
	fs.BoolVar(&o.migrations.preservation, "preservation-mode", false, "Never remove a volume's old replicas: a migration only adds replicas on the new tier.")
	o.erasure.BindFlags(fs)
	o.conversion.BindFlags(fs)
	o.dataPlane.BindFlags(fs)
	o.zapOpts.BindFlags(fs)
	config.RegisterFlags(fs) // --kubeconfig; in-cluster config when absent
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if o.mayastorNamespace == "" {
		return nil, errors.New("--mayastor-namespace: must not be empty")
	}
	if err := checkPprofAddress(o.pprofAddr); err != nil {
		return nil, err
	}
	return o, nil
}

// checkPprofAddress refuses a pprof address that is not loopback: its
// endpoints are unauthenticated, and a heap profile holds whatever the
// process holds (Secrets it read included).
func checkPprofAddress(addr string) error {
	if addr == "" || addr == "0" {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--pprof-bind-address=%q: %v", addr, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("--pprof-bind-address=%q: must be a loopback address (127.0.0.1:PORT or [::1]:PORT): the pprof endpoints are unauthenticated and a heap profile holds the Secrets the operator read; reach it with kubectl port-forward", addr)
	}
	return nil
}

func main() {
	// --- subcommands (couchestor <name> ...) ---
	if len(os.Args) > 1 {
		if sub, ok := subcommands[os.Args[1]]; ok {
			if err := sub(ctrl.SetupSignalHandler(), os.Args[2:]); err != nil {
				fmt.Fprintf(os.Stderr, "couchestor %s: %v\n", os.Args[1], err)
				os.Exit(1)
			}
			return
		}
	}
	o, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if err := run(ctrl.SetupSignalHandler(), o); err != nil {
		fmt.Fprintf(os.Stderr, "couchestor: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o *options) error {
	o.zapOpts.TimeEncoder = zapcore.RFC3339NanoTimeEncoder
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&o.zapOpts)))
	log := ctrl.Log.WithName("setup")

	cfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("load kubeconfig: %w", err)
	}
	// The operator's own namespaces: where it runs, where the shard servers
	// register, and every data-plane namespace. Namespaced kinds it keeps
	// there are cached (listed, watched) there only: its RBAC is a Role per
	// namespace, not a cluster-wide grant (internal/helmhybrid).
	dataPlanePolicy, err := o.dataPlane.Policy(o.webhookNamespace, o.erasure.RegistryNamespace)
	if err != nil {
		return err
	}
	ownNamespaces := append([]string{}, dataPlanePolicy.Namespaces...)
	shardSecretNamespace, _, _ := strings.Cut(o.erasure.ShardSecret, "/")
	for _, ns := range []string{o.webhookNamespace, o.erasure.RegistryNamespace, o.leaderElectionNS, shardSecretNamespace} {
		if ns != "" && !slices.Contains(ownNamespaces, ns) {
			ownNamespaces = append(ownNamespaces, ns)
		}
	}
	mgrOpts := ctrl.Options{
		Scheme: scheme.New(),
		// Managed fields are dead weight in the informers (100,000 ECStripes).
		Cache: cache.Options{DefaultTransform: cache.TransformStripManagedFields(),
			ByObject: helmhybrid.NamespacedCache(ownNamespaces, servedBy(cfg))},
		Metrics:                       metricsOptions(o),
		HealthProbeBindAddress:        o.probeAddr,
		PprofBindAddress:              o.pprofAddr,
		LeaderElection:                o.leaderElect,
		LeaderElectionID:              o.leaderElectionID,
		LeaderElectionNamespace:       o.leaderElectionNS,
		LeaderElectionReleaseOnCancel: true,
		LeaseDuration:                 &o.leaseDuration,
		RenewDeadline:                 &o.renewDeadline,
		RetryPeriod:                   &o.retryPeriod,
		GracefulShutdownTimeout:       &o.gracefulShutdown,
	}
	if o.webhooksEnabled {
		mgrOpts.WebhookServer = webhook.NewServer(webhook.Options{Port: o.webhookPort, CertDir: o.webhookCertDir})
	}
	mgr, err := ctrl.NewManager(cfg, mgrOpts)
	if err != nil {
		return fmt.Errorf("create manager: %w", err)
	}

	// --- controllers (each reconciler registers itself here) ---
	// Helm-managed kinds: watches.yaml and the charts it names, embedded (assets.go).
	if err := helmhybrid.Setup(mgr, assets, helmhybrid.Options{Policy: &dataPlanePolicy}); err != nil {
		return fmt.Errorf("set up Helm reconcilers: %w", err)
	}
	meter, err := o.tiering.NewIOPSMeter()
	if err != nil {
		return err
	}
	ecMeter, err := o.tiering.NewECIOPSMeter()
	if err != nil {
		return err
	}
	// Tiering part 2: the migration engine runs on the leader only; on start
	// it resumes or rolls back every migration persisted on the PVs.
	if o.migrations.globalMax < 0 {
		return fmt.Errorf("--max-concurrent-migrations=%d: must be >= 0", o.migrations.globalMax)
	}
	if o.migrations.poolHeadroom <= 0 || o.migrations.poolHeadroom > 1 {
		return fmt.Errorf("--pool-headroom=%v: must be in (0, 1]", o.migrations.poolHeadroom)
	}
	identity, err := os.Hostname()
	if err != nil {
		return fmt.Errorf("hostname (the placement lock's holder identity): %w", err)
	}
	backend, optional, err := o.mayastor.Build(mgr.GetClient(), o.mayastorNamespace, o.webhookNamespace, identity, ctrl.Log.WithName("mayastor"))
	if err != nil {
		return err
	}
	migrationEvents := make(chan event.GenericEvent, 256)
	engine, err := migration.NewEngine(migration.Options{
		Client:              mgr.GetClient(),
		Backend:             backend,
		Recorder:            mgr.GetEventRecorderFor("couchestor-migration"), //nolint:staticcheck // the engine takes a record.EventRecorder
		GlobalMaxConcurrent: o.migrations.globalMax,
		PoolHeadroom:        o.migrations.poolHeadroom,
		PreservationMode:    o.migrations.preservation,
		Notify: func(policy string) {
			select { // the periodic evaluation catches up if the queue is full
			case migrationEvents <- event.GenericEvent{Object: &storagev1.StoragePolicy{ObjectMeta: metav1.ObjectMeta{Name: policy}}}:
			default:
			}
		},
		Log: ctrl.Log.WithName("migration"),
	})
	if err != nil {
		return fmt.Errorf("create migration engine: %w", err)
	}
	if err := mgr.Add(engine); err != nil {
		return fmt.Errorf("add migration engine: %w", err)
	}
	if err := o.conversion.Validate(); err != nil {
		return err
	}
	// Conversions to erasure coding share the engine's limits and history;
	// they need the copy Job's image.
	var converter controllers.ConversionStarter
	if o.conversion.Enabled && o.conversion.Image != "" {
		conv := &conversion.Converter{Client: mgr.GetClient(), Reader: mgr.GetAPIReader(), Engine: engine,
			Recorder: mgr.GetEventRecorder("couchestor-conversion"), Copier: o.conversion.Copier(), Namespace: o.webhookNamespace}
		if err := conv.SetupWithManager(mgr, false); err != nil {
			return fmt.Errorf("set up conversions: %w", err)
		}
		converter = conv
	} else if o.conversion.Enabled {
		ctrl.Log.Info("conversions to erasure coding are off: no copy image (--ec-conversion-image or $COUCHESTOR_IMAGE)")
	}
	if err := (&controllers.StoragePolicyReconciler{
		Converter:          converter,
		ConversionRetain:   o.conversion.Retain,
		Engine:             &migration.PolicyStarter{Engine: engine},
		Migrations:         engine,
		MigrationEvents:    migrationEvents,
		Client:             mgr.GetClient(),
		APIReader:          mgr.GetAPIReader(),
		Recorder:           mgr.GetEventRecorder("couchestor-storagepolicy"),
		Meter:              meter,
		ECMeter:            ecMeter,
		Backend:            backend,
		Optional:           optional,
		OptionalPoll:       o.mayastor.KindPoll,
		MayastorNamespace:  o.mayastorNamespace,
		EvaluationInterval: o.tiering.EvaluationInterval,
		ScrapeInterval:     o.tiering.ScrapeInterval,
		GlobalDryRun:       o.tiering.DryRun,
		HysteresisPercent:  &o.tiering.HysteresisPercent,
	}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up StoragePolicy controller: %w", err)
	}
	shardSecretNS, shardSecretName, ok := strings.Cut(o.erasure.ShardSecret, "/")
	if !ok || shardSecretNS == "" || shardSecretName == "" {
		return fmt.Errorf("--shard-client-secret %q must be namespace/name", o.erasure.ShardSecret)
	}
	if err := (&controllers.ECVolumeReconciler{
		Client:            mgr.GetClient(),
		Recorder:          mgr.GetEventRecorder("couchestor-ecvolume"),
		MayastorNamespace: o.mayastorNamespace,
		// The same shard servers as the ECStripe controllers: a non-default
		// registry namespace or client Secret must reach the finalizer too.
		RegistryNamespace: o.erasure.RegistryNamespace,
		ShardSecret:       types.NamespacedName{Namespace: shardSecretNS, Name: shardSecretName},
		CredentialsReload: o.erasure.ShardCredentialsReload,
	}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up ECVolume controller: %w", err)
	}
	// ErasureCodingPolicy and ECStripe controllers, pool monitor, rebuilds, scrubbing.
	if err := controllers.SetupErasureCoding(mgr, o.erasure, o.mayastorNamespace); err != nil {
		return err
	}

	// --- webhooks ---
	if o.webhooksEnabled {
		webhooksReady, err := webhooks.Setup(ctx, mgr, webhooks.Options{
			CertMode:  webhooks.CertMode(o.webhookCertMode),
			CertDir:   o.webhookCertDir,
			Namespace: o.webhookNamespace,
			LocalURL:  o.webhookLocalURL,
			// ErasureCodingPolicies wider than the registered shard servers warn.
			ShardRegistryNamespace: o.erasure.RegistryNamespace,
			DataPlanePolicy:        &dataPlanePolicy,
		})
		if err != nil {
			return fmt.Errorf("set up webhooks: %w", err)
		}
		// Not ready until the certificate is in place and the webhooks answer.
		if err := mgr.AddReadyzCheck("webhooks", webhooksReady); err != nil {
			return fmt.Errorf("add webhooks readyz check: %w", err)
		}
	}

	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return fmt.Errorf("add healthz check: %w", err)
	}
	// Readiness reflects the informer caches, not a constant OK.
	if err := mgr.AddReadyzCheck("informers", cacheSynced(mgr)); err != nil {
		return fmt.Errorf("add readyz check: %w", err)
	}

	log.Info("starting manager", "leaderElection", o.leaderElect, "dataPlaneNamespaces", dataPlanePolicy.Namespaces, "mayastorNamespace", o.mayastorNamespace, "mayastorBackend", backend.Describe())
	if err := mgr.Start(ctx); err != nil {
		return fmt.Errorf("run manager: %w", err)
	}
	log.Info("stopped cleanly")
	return nil
}

// metricsOptions serves /metrics plainly, or with --metrics-secure over TLS
// behind Kubernetes authentication and authorization.
func metricsOptions(o *options) metricsserver.Options {
	m := metricsserver.Options{BindAddress: o.metricsAddr}
	if o.metricsSecure {
		m.SecureServing = true
		m.FilterProvider = filters.WithAuthenticationAndAuthorization
	}
	return m
}

// cacheSynced is ready once the manager's informer caches have synced.
func cacheSynced(mgr ctrl.Manager) healthz.Checker {
	return func(req *http.Request) error {
		ctx, cancel := context.WithTimeout(req.Context(), time.Second)
		defer cancel()
		if !mgr.GetCache().WaitForCacheSync(ctx) {
			return errors.New("informer caches have not synced")
		}
		return nil
	}
}

// envOr is the environment variable's value, or def when it is unset or empty.
func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// servedBy asks the API server's discovery whether it serves a kind; an
// unreadable discovery answers "not served" (the kind's informer is then
// not scoped, which only matters for optional kinds).
func servedBy(cfg *rest.Config) func(groupVersion, kind string) bool {
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil
	}
	return func(groupVersion, kind string) bool {
		rl, err := dc.ServerResourcesForGroupVersion(groupVersion)
		if err != nil {
			return false
		}
		for _, r := range rl.APIResources {
			if r.Kind == kind {
				return true
			}
		}
		return false
	}
}
