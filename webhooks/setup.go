package webhooks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/open-policy-agent/cert-controller/pkg/rotator"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	dataplanev1alpha1 "github.com/billyronks/couchestor/apis/dataplane/v1alpha1"
	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/pkg/stripeindex"
)

// The self-signed rotator injects the CA into our two webhook configurations
// only (resourceNames); its informer lists and watches them unfiltered, which
// RBAC cannot narrow by name, so list/watch stay cluster-wide and read-only.
//
// +kubebuilder:rbac:groups=admissionregistration.k8s.io,resources=mutatingwebhookconfigurations,resourceNames=couchestor-mutating-webhook-configuration,verbs=get;update;patch
// +kubebuilder:rbac:groups=admissionregistration.k8s.io,resources=validatingwebhookconfigurations,resourceNames=couchestor-validating-webhook-configuration,verbs=get;update;patch
// +kubebuilder:rbac:groups=admissionregistration.k8s.io,resources=mutatingwebhookconfigurations;validatingwebhookconfigurations,verbs=list;watch
// +kubebuilder:rbac:groups="",namespace=couchestor-system,resources=secrets,verbs=get;list;watch;create;update;patch

// CertMode says who provides the webhook server's certificate. A deployment
// uses exactly one.
type CertMode string

const (
	// CertModeSelfSigned: the leader rotates the CA and serving certificate
	// (open-policy-agent/cert-controller), stores them in a Secret and
	// injects the CA into the webhook configurations; every replica copies
	// the certificate from the Secret into its cert dir (which must be
	// writable) and is not ready until it is there and its CA injected.
	CertModeSelfSigned CertMode = "self-signed"
	// CertModeCertManager: cert-manager issues the certificate into the Secret
	// mounted at CertDir and its CA injector fills the caBundle
	// (config/certmanager). The operator rotates nothing.
	CertModeCertManager CertMode = "cert-manager"
	// CertModeOLM: OLM mounts the certificate at CertDir and injects the
	// caBundle. The operator rotates nothing.
	CertModeOLM CertMode = "olm"
)

// CertModes lists the valid modes, for flag help.
var CertModes = []CertMode{CertModeSelfSigned, CertModeCertManager, CertModeOLM}

// Defaults of Options, matching config/webhook and config/default.
const (
	DefaultSecretName                  = "couchestor-webhook-server-cert"
	DefaultServiceName                 = "couchestor-webhook-service"
	DefaultNamespace                   = "couchestor-system"
	DefaultMutatingConfigurationName   = "couchestor-mutating-webhook-configuration"
	DefaultValidatingConfigurationName = "couchestor-validating-webhook-configuration"
)

// Options configure Setup.
type Options struct {
	// CertMode is one of CertModes.
	CertMode CertMode
	// CertDir is where the webhook server reads tls.crt and tls.key; it must be
	// the manager's webhook server's CertDir.
	CertDir string
	// Namespace of the operator: holds the certificate Secret and the Service
	// the API server calls (self-signed mode). Default DefaultNamespace.
	Namespace string
	// SecretName holds the self-signed CA and serving certificate. Default DefaultSecretName.
	SecretName string
	// ServiceName fronts the webhook server; the serving certificate names
	// <service>.<namespace>.svc. Default DefaultServiceName.
	ServiceName string
	// MutatingConfigurationName and ValidatingConfigurationName are the webhook
	// configurations to inject the CA into (self-signed mode).
	MutatingConfigurationName, ValidatingConfigurationName string
	// LocalURL, when set, runs the webhooks outside a cluster (make run-local,
	// tests): Setup installs both webhook configurations pointing at this URL
	// (e.g. https://localhost:9443) and the serving certificate names its
	// host. Only with CertModeSelfSigned. (In that mode every replica copies
	// the certificate from the Secret into CertDir, in a pod or not.)
	LocalURL string
	// ShardRegistryNamespace holds the shard-server Leases; an
	// ErasureCodingPolicy wider than the registered shard servers gets an
	// admission warning. It also holds the volumes' writer Leases (pkg/fence),
	// which the ECStripe webhook reads to fence stale exports. Default
	// registry.DefaultNamespace.
	ShardRegistryNamespace string
	// DataPlanePolicy is what a DataPlane may ask for (namespaces, images,
	// host directories, tolerations). Default: dataplanev1alpha1.DefaultPolicy
	// over Namespace and ShardRegistryNamespace.
	DataPlanePolicy *dataplanev1alpha1.Policy

	// rotatorName names the certificate rotator's controller (tests run
	// several managers in one process; controller names are process-wide).
	rotatorName string
}

func (o *Options) applyDefaults() {
	def := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	def(&o.Namespace, DefaultNamespace)
	def(&o.ShardRegistryNamespace, registry.DefaultNamespace)
	def(&o.SecretName, DefaultSecretName)
	def(&o.ServiceName, DefaultServiceName)
	def(&o.MutatingConfigurationName, DefaultMutatingConfigurationName)
	def(&o.ValidatingConfigurationName, DefaultValidatingConfigurationName)
	if o.DataPlanePolicy == nil {
		p := dataplanev1alpha1.DefaultPolicy(o.Namespace)
		if o.ShardRegistryNamespace != o.Namespace {
			p.Namespaces = append(p.Namespaces, o.ShardRegistryNamespace)
		}
		o.DataPlanePolicy = &p
	}
}

// Setup registers the field indexes and the ECStripe interval index on the
// manager's cache, and the defaulting and validating webhooks of
// StoragePolicy, ErasureCodingPolicy and ECStripe on its webhook server, with
// certificates from opts.CertMode. The returned checker is for /readyz: it
// fails until the certificate is in place, the webhook server answers TLS and
// the ECStripe index has synced.
func Setup(ctx context.Context, mgr ctrl.Manager, opts Options) (healthz.Checker, error) {
	opts.applyDefaults()
	switch opts.CertMode {
	case CertModeSelfSigned, CertModeCertManager, CertModeOLM:
	default:
		return nil, fmt.Errorf("webhook cert mode %q: must be one of %v", opts.CertMode, CertModes)
	}
	if opts.LocalURL != "" && opts.CertMode != CertModeSelfSigned {
		return nil, fmt.Errorf("webhook local URL %q needs cert mode %s (got %s)", opts.LocalURL, CertModeSelfSigned, opts.CertMode)
	}
	if opts.CertDir == "" {
		return nil, errors.New("webhook cert dir must not be empty")
	}

	if err := stripeindex.RegisterFieldIndexes(ctx, mgr.GetFieldIndexer()); err != nil {
		return nil, err
	}
	// The same index as the controllers' (one per informer).
	stripes, err := stripeindex.For(ctx, mgr.GetCache())
	if err != nil {
		return nil, err
	}
	r := readers{cache: mgr.GetClient(), live: mgr.GetAPIReader()}

	var registered atomic.Bool
	register := func() error {
		if err := ctrl.NewWebhookManagedBy(mgr, &storagev1.StoragePolicy{}).
			WithDefaulter(&StoragePolicyWebhook{r: r}).WithValidator(&StoragePolicyWebhook{r: r}).Complete(); err != nil {
			return fmt.Errorf("register StoragePolicy webhooks: %w", err)
		}
		ecp := &ErasureCodingPolicyWebhook{r: r, stripes: stripes, servers: &registry.Lookup{Client: r.live, Namespace: opts.ShardRegistryNamespace}}
		if err := ctrl.NewWebhookManagedBy(mgr, &storagev1.ErasureCodingPolicy{}).
			WithDefaulter(ecp).WithValidator(ecp).Complete(); err != nil {
			return fmt.Errorf("register ErasureCodingPolicy webhooks: %w", err)
		}
		ecs := &ECStripeWebhook{r: r, stripes: stripes, leaseNamespace: opts.ShardRegistryNamespace}
		if err := ctrl.NewWebhookManagedBy(mgr, &storagev1.ECStripe{}).
			WithDefaulter(ecs).WithValidator(ecs).Complete(); err != nil {
			return fmt.Errorf("register ECStripe webhooks: %w", err)
		}
		if err := ctrl.NewWebhookManagedBy(mgr, &dataplanev1alpha1.DataPlane{}).
			WithValidator(&DataPlaneWebhook{Policy: *opts.DataPlanePolicy}).Complete(); err != nil {
			return fmt.Errorf("register DataPlane webhook: %w", err)
		}
		registered.Store(true)
		return nil
	}

	certsReady := make(chan struct{})
	if opts.CertMode == CertModeSelfSigned {
		if err := setupSelfSigned(ctx, mgr, opts, certsReady); err != nil {
			return nil, err
		}
		// The webhook server reads its certificate when it starts, so it is
		// registered (and thereby started) only once the rotator has written it.
		if err := mgr.Add(nonLeaderRunnable(func(ctx context.Context) error {
			select {
			case <-certsReady:
			case <-ctx.Done():
				return nil
			}
			if err := register(); err != nil {
				return err
			}
			<-ctx.Done()
			return nil
		})); err != nil {
			return nil, fmt.Errorf("add webhook registration: %w", err)
		}
	} else {
		close(certsReady) // mounted by cert-manager or OLM; the server fails loudly if absent
		if err := register(); err != nil {
			return nil, err
		}
	}

	return func(req *http.Request) error {
		select {
		case <-certsReady:
		default:
			return fmt.Errorf("webhook certificate not ready (mode %s)", opts.CertMode)
		}
		if !registered.Load() {
			return errors.New("webhooks not registered yet")
		}
		if err := mgr.GetWebhookServer().StartedChecker()(req); err != nil {
			return err
		}
		if !stripes.Synced() {
			return errors.New("ECStripe index has not synced")
		}
		return nil
	}, nil
}

func setupSelfSigned(ctx context.Context, mgr ctrl.Manager, opts Options, ready chan struct{}) error {
	dnsName := fmt.Sprintf("%s.%s.svc", opts.ServiceName, opts.Namespace)
	extra := []string{opts.ServiceName, opts.ServiceName + "." + opts.Namespace, dnsName + ".cluster.local"}
	// The manager's client only reads from the cache once started; these
	// setup-time writes go straight to the API server.
	direct, err := client.New(mgr.GetConfig(), client.Options{Scheme: mgr.GetScheme(), Mapper: mgr.GetRESTMapper()})
	if err != nil {
		return fmt.Errorf("create setup client: %w", err)
	}
	if opts.LocalURL != "" {
		u, err := url.Parse(opts.LocalURL)
		if err != nil || u.Scheme != "https" || u.Hostname() == "" {
			return fmt.Errorf("webhook local URL %q: must be https://host[:port]", opts.LocalURL)
		}
		dnsName, extra = u.Hostname(), nil
		// Outside a cluster nothing else creates the operator's namespace.
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: opts.Namespace}}
		if err := direct.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create namespace %s: %w", opts.Namespace, err)
		}
		if err := installLocalConfigurations(ctx, direct, opts, strings.TrimSuffix(opts.LocalURL, "/")); err != nil {
			return err
		}
	}
	// cert-controller needs the Secret to exist; creating it here spares every
	// install method from shipping an empty one.
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: opts.SecretName, Namespace: opts.Namespace,
		Labels: map[string]string{"app.kubernetes.io/name": "couchestor", "app.kubernetes.io/component": "webhook"}}}
	if err := direct.Create(ctx, secret); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create webhook certificate Secret %s/%s: %w", opts.Namespace, opts.SecretName, err)
	}
	key := types.NamespacedName{Namespace: opts.Namespace, Name: opts.SecretName}
	if err := rotator.AddRotator(mgr, &rotator.CertRotator{
		SecretKey:      key,
		CertDir:        opts.CertDir,
		CAName:         "couchestor-webhook-ca",
		CAOrganization: "couchestor",
		DNSName:        dnsName,
		ExtraDNSNames:  extra,
		// Readiness is awaitCertificate's (every replica), not the rotator's.
		IsReady: make(chan struct{}),
		Webhooks: []rotator.WebhookInfo{
			{Name: opts.MutatingConfigurationName, Type: rotator.Mutating},
			{Name: opts.ValidatingConfigurationName, Type: rotator.Validating},
		},
		// Only the leader creates, rotates and injects the certificate; every
		// replica serves admission with the certificate the Secret holds.
		RequireLeaderElection: true,
		EnableReadinessCheck:  true,
		ControllerName:        opts.rotatorName,
	}); err != nil {
		return fmt.Errorf("add webhook certificate rotator: %w", err)
	}
	// Every replica copies the Secret's certificate into CertDir (nothing
	// mounts it in this mode) and is ready once it is there and the leader
	// has injected its CA into both webhook configurations.
	if err := mgr.Add(nonLeaderRunnable(func(ctx context.Context) error {
		return copySecretToDir(ctx, mgr.GetAPIReader(), key, opts.CertDir)
	})); err != nil {
		return fmt.Errorf("add certificate copier: %w", err)
	}
	if err := mgr.Add(nonLeaderRunnable(func(ctx context.Context) error {
		return awaitCertificate(ctx, mgr.GetAPIReader(), opts, key, ready)
	})); err != nil {
		return fmt.Errorf("add certificate readiness: %w", err)
	}
	return nil
}

// awaitCertificate closes ready once CertDir holds the Secret's serving
// certificate and every webhook of both configurations trusts the Secret's
// CA, i.e. once the API server can call this replica's webhook server.
func awaitCertificate(ctx context.Context, r client.Reader, opts Options, key types.NamespacedName, ready chan struct{}) error {
	log := ctrl.Log.WithName("webhook-cert-readiness")
	last := ""
	for {
		why, err := certificateInPlace(ctx, r, opts, key)
		if err != nil {
			log.Error(err, "check the webhook certificate")
		} else if why != "" && why != last {
			log.Info("webhook certificate not ready", "reason", why)
			last = why
		} else if why == "" {
			log.Info("webhook certificate in place and trusted", "certDir", opts.CertDir)
			close(ready)
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// certificateInPlace says why the webhook certificate is not usable yet
// ("" when it is).
func certificateInPlace(ctx context.Context, r client.Reader, opts Options, key types.NamespacedName) (string, error) {
	var s corev1.Secret
	if err := r.Get(ctx, key, &s); err != nil {
		return "", fmt.Errorf("read Secret %s: %w", key, err)
	}
	ca, crt := s.Data["ca.crt"], s.Data["tls.crt"]
	if len(ca) == 0 || len(crt) == 0 {
		return "the leader has not created the certificate yet", nil
	}
	onDisk, err := os.ReadFile(filepath.Join(opts.CertDir, "tls.crt"))
	if err != nil || !bytes.Equal(onDisk, crt) {
		return "the certificate is not in the cert dir yet", nil
	}
	var mwc admissionregistrationv1.MutatingWebhookConfiguration
	if err := r.Get(ctx, types.NamespacedName{Name: opts.MutatingConfigurationName}, &mwc); err != nil {
		return "", fmt.Errorf("read MutatingWebhookConfiguration %s: %w", opts.MutatingConfigurationName, err)
	}
	var vwc admissionregistrationv1.ValidatingWebhookConfiguration
	if err := r.Get(ctx, types.NamespacedName{Name: opts.ValidatingConfigurationName}, &vwc); err != nil {
		return "", fmt.Errorf("read ValidatingWebhookConfiguration %s: %w", opts.ValidatingConfigurationName, err)
	}
	var bundles [][]byte
	for _, w := range mwc.Webhooks {
		bundles = append(bundles, w.ClientConfig.CABundle)
	}
	for _, w := range vwc.Webhooks {
		bundles = append(bundles, w.ClientConfig.CABundle)
	}
	for _, b := range bundles {
		if !bytes.Contains(b, bytes.TrimSpace(ca)) {
			return "the CA is not injected into the webhook configurations yet", nil
		}
	}
	return "", nil
}

// copySecretToDir plays the kubelet's part outside a pod: it keeps tls.crt
// and tls.key in dir equal to the Secret's, polling (once a second until the
// first certificate, then every 10 s for rotations).
func copySecretToDir(ctx context.Context, r client.Reader, key types.NamespacedName, dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create webhook cert dir: %w", err)
	}
	log := ctrl.Log.WithName("webhook-cert-copier")
	written := false
	for {
		var s corev1.Secret
		if err := r.Get(ctx, key, &s); err != nil {
			log.Error(err, "read webhook certificate Secret", "secret", key)
		} else if crt, k := s.Data["tls.crt"], s.Data["tls.key"]; len(crt) > 0 && len(k) > 0 {
			for name, data := range map[string][]byte{"tls.key": k, "tls.crt": crt} {
				if err := writeIfChanged(filepath.Join(dir, name), data); err != nil {
					return fmt.Errorf("write webhook certificate: %w", err)
				}
			}
			written = true
		}
		wait := time.Second
		if written {
			wait = 10 * time.Second
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

func writeIfChanged(path string, data []byte) error {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return nil
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// nonLeaderRunnable runs on every replica, leader or not: admission is served by all.
type nonLeaderRunnable func(context.Context) error

func (f nonLeaderRunnable) Start(ctx context.Context) error { return f(ctx) }
func (f nonLeaderRunnable) NeedLeaderElection() bool        { return false }

var _ manager.LeaderElectionRunnable = nonLeaderRunnable(nil)

// webhookDefinition is one webhook of the markers in handlers.go.
type webhookDefinition struct {
	name, path, resource string
	mutating             bool
	ops                  []admissionregistrationv1.OperationType
}

var (
	createUpdate       = []admissionregistrationv1.OperationType{admissionregistrationv1.Create, admissionregistrationv1.Update}
	createUpdateDelete = []admissionregistrationv1.OperationType{admissionregistrationv1.Create, admissionregistrationv1.Update, admissionregistrationv1.Delete}
	// webhookDefinitions mirrors the +kubebuilder:webhook markers (TestLocalConfigurationsMatchManifests).
	webhookDefinitions = []webhookDefinition{
		{"mstoragepolicy.storage.billyronks.io", "/mutate-storage-billyronks-io-v1-storagepolicy", "storagepolicies", true, createUpdate},
		{"vstoragepolicy.storage.billyronks.io", "/validate-storage-billyronks-io-v1-storagepolicy", "storagepolicies", false, createUpdate},
		{"merasurecodingpolicy.storage.billyronks.io", "/mutate-storage-billyronks-io-v1-erasurecodingpolicy", "erasurecodingpolicies", true, createUpdate},
		{"verasurecodingpolicy.storage.billyronks.io", "/validate-storage-billyronks-io-v1-erasurecodingpolicy", "erasurecodingpolicies", false, createUpdateDelete},
		{"mecstripe.storage.billyronks.io", "/mutate-storage-billyronks-io-v1-ecstripe", "ecstripes", true, createUpdate},
		{"vecstripe.storage.billyronks.io", "/validate-storage-billyronks-io-v1-ecstripe", "ecstripes", false, createUpdateDelete},
		{"vdataplane.storage.billyronks.io", "/validate-storage-billyronks-io-v1alpha1-dataplane", "dataplanes", false, createUpdate},
	}
)

// localConfigurations builds the two webhook configurations with URL client
// configs under baseURL and no caBundle (the rotator injects it).
func localConfigurations(opts Options, baseURL string) (*admissionregistrationv1.MutatingWebhookConfiguration, *admissionregistrationv1.ValidatingWebhookConfiguration) {
	mut := &admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: opts.MutatingConfigurationName}}
	val := &admissionregistrationv1.ValidatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: opts.ValidatingConfigurationName}}
	fail := admissionregistrationv1.Fail
	none := admissionregistrationv1.SideEffectClassNone
	timeout := int32(5)
	for _, d := range webhookDefinitions {
		u := baseURL + d.path
		cc := admissionregistrationv1.WebhookClientConfig{URL: &u}
		version := storagev1.GroupVersion.Version
		if d.resource == "dataplanes" {
			version = dataplanev1alpha1.GroupVersion.Version
		}
		rules := []admissionregistrationv1.RuleWithOperations{{
			Operations: d.ops,
			Rule: admissionregistrationv1.Rule{APIGroups: []string{storagev1.GroupVersion.Group},
				APIVersions: []string{version}, Resources: []string{d.resource}},
		}}
		if d.mutating {
			mut.Webhooks = append(mut.Webhooks, admissionregistrationv1.MutatingWebhook{Name: d.name, ClientConfig: cc, Rules: rules,
				FailurePolicy: &fail, SideEffects: &none, TimeoutSeconds: &timeout, AdmissionReviewVersions: []string{"v1"}})
		} else {
			val.Webhooks = append(val.Webhooks, admissionregistrationv1.ValidatingWebhook{Name: d.name, ClientConfig: cc, Rules: rules,
				FailurePolicy: &fail, SideEffects: &none, TimeoutSeconds: &timeout, AdmissionReviewVersions: []string{"v1"}})
		}
	}
	return mut, val
}

// installLocalConfigurations creates or replaces the webhook configurations
// for a webhook server outside the cluster. A caBundle already injected is
// kept, so a restart does not reopen a window without trust.
func installLocalConfigurations(ctx context.Context, c client.Client, opts Options, baseURL string) error {
	mut, val := localConfigurations(opts, baseURL)
	var oldMut admissionregistrationv1.MutatingWebhookConfiguration
	switch err := c.Get(ctx, types.NamespacedName{Name: mut.Name}, &oldMut); {
	case apierrors.IsNotFound(err):
		if err := c.Create(ctx, mut); err != nil {
			return fmt.Errorf("create MutatingWebhookConfiguration %s: %w", mut.Name, err)
		}
	case err != nil:
		return fmt.Errorf("read MutatingWebhookConfiguration %s: %w", mut.Name, err)
	default:
		for i := range mut.Webhooks {
			if len(oldMut.Webhooks) > 0 {
				mut.Webhooks[i].ClientConfig.CABundle = oldMut.Webhooks[0].ClientConfig.CABundle
			}
		}
		oldMut.Webhooks = mut.Webhooks
		if err := c.Update(ctx, &oldMut); err != nil {
			return fmt.Errorf("update MutatingWebhookConfiguration %s: %w", mut.Name, err)
		}
	}
	var oldVal admissionregistrationv1.ValidatingWebhookConfiguration
	switch err := c.Get(ctx, types.NamespacedName{Name: val.Name}, &oldVal); {
	case apierrors.IsNotFound(err):
		if err := c.Create(ctx, val); err != nil {
			return fmt.Errorf("create ValidatingWebhookConfiguration %s: %w", val.Name, err)
		}
	case err != nil:
		return fmt.Errorf("read ValidatingWebhookConfiguration %s: %w", val.Name, err)
	default:
		for i := range val.Webhooks {
			if len(oldVal.Webhooks) > 0 {
				val.Webhooks[i].ClientConfig.CABundle = oldVal.Webhooks[0].ClientConfig.CABundle
			}
		}
		oldVal.Webhooks = val.Webhooks
		if err := c.Update(ctx, &oldVal); err != nil {
			return fmt.Errorf("update ValidatingWebhookConfiguration %s: %w", val.Name, err)
		}
	}
	return nil
}
