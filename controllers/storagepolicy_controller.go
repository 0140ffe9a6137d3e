package controllers

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/conversion"
	"github.com/billyronks/couchestor/pkg/iops"
	"github.com/billyronks/couchestor/pkg/migration"
	"github.com/billyronks/couchestor/pkg/tiering"
)

// +kubebuilder:rbac:groups=storage.billyronks.io,resources=storagepolicies,verbs=get;list;watch
// +kubebuilder:rbac:groups=storage.billyronks.io,resources=storagepolicies/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=storage.billyronks.io,resources=erasurecodingpolicies,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=persistentvolumes,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=persistentvolumeclaims,verbs=get;list;watch
// +kubebuilder:rbac:groups=openebs.io,resources=mayastorvolumes,verbs=get;list;watch
// +kubebuilder:rbac:groups=openebs.io,resources=diskpools,verbs=get;list;watch
// The migration engine (pkg/migration) persists intent on PVs and scales MayastorVolumes.
// +kubebuilder:rbac:groups="",resources=persistentvolumes,verbs=update;patch
// +kubebuilder:rbac:groups=openebs.io,resources=mayastorvolumes,verbs=update;patch

// IOPSMeter measures the IOPS of a policy's volumes (iops.Meter in production).
type IOPSMeter interface {
	Measure(ctx context.Context, window time.Duration, vols []iops.Volume) iops.Report
}

// MigrationStarter receives the Move decisions of an evaluation that is not a
// dry run: the migration engine (migration.PolicyStarter over pkg/migration's
// Engine, wired in main.go). It must return at once (migrations run off the
// reconcile path). Nil: decisions are reported in status, Events and metrics,
// and nothing moves.
type MigrationStarter interface {
	StartMigrations(ctx context.Context, policy *storagev1.StoragePolicy, moves []tiering.Decision)
}

// MigrationResults is the migration engine's side of status: results not yet
// folded into a policy's status, the policy's active migrations, and the
// acknowledgement that removes folded results from the PVs. Results stay on
// the PVs until acknowledged, so a crash between the status write and the
// acknowledgement folds them again, and FoldResults counts each once.
type MigrationResults interface {
	PendingResults(policy string) []migration.Result
	ActiveCount(policy string) int32
	Acknowledge(ctx context.Context, results []migration.Result) error
}

// TieringOptions are the operator flags of the StoragePolicy controller.
type TieringOptions struct {
	PrometheusURL    string
	BearerTokenFile  string
	CAFile           string
	QueryTimeout     time.Duration
	ScrapeInterval   time.Duration
	ReadMetric       string
	WriteMetric      string
	VolumeLabel      string
	QueryTemplate    string
	CoverageTemplate string
	MaxGap           time.Duration
	MetricsCacheTTL  time.Duration
	// ECReadMetric, ECWriteMetric and ECVolumeLabel are the op counters of
	// erasure-coded volumes' exports (heat-up).
	ECReadMetric  string
	ECWriteMetric string
	ECVolumeLabel string
	// HysteresisPercent is the default demotion margin of every policy (see
	// pkg/tiering, Hysteresis); a policy's annotation overrides it.
	HysteresisPercent  float64
	EvaluationInterval time.Duration
	DryRun             bool
}

// BindFlags registers the flags on fs.
func (o *TieringOptions) BindFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.PrometheusURL, "prometheus-url", "http://prometheus-operated.monitoring.svc:9090", "Prometheus HTTP API that scrapes Mayastor's io-engine exporter (volume IOPS).")
	fs.StringVar(&o.BearerTokenFile, "prometheus-bearer-token-file", "", "File holding a bearer token for Prometheus, re-read on every query. Empty: no Authorization header.")
	fs.StringVar(&o.CAFile, "prometheus-ca-file", "", "PEM CA bundle for an https --prometheus-url. Empty: the system roots.")
	fs.DurationVar(&o.QueryTimeout, "prometheus-timeout", 30*time.Second, "Timeout of one IOPS query.")
	fs.DurationVar(&o.ScrapeInterval, "prometheus-scrape-interval", 30*time.Second, "Prometheus's scrape interval for the exporter. Must match Prometheus: it sets the coverage rule (samples expected per window) and the warning for sampling windows shorter than four intervals.")
	fs.StringVar(&o.ReadMetric, "iops-read-metric", iops.DefaultReadMetric, "Cumulative read-operations counter of a volume.")
	fs.StringVar(&o.WriteMetric, "iops-write-metric", iops.DefaultWriteMetric, "Cumulative write-operations counter of a volume.")
	fs.StringVar(&o.VolumeLabel, "iops-volume-label", iops.DefaultVolumeLabel, "Label of the counters that holds the PersistentVolume name.")
	fs.StringVar(&o.QueryTemplate, "iops-query-template", iops.DefaultQueryTemplate, "PromQL (Go text/template) giving IOPS per volume over the window. Fields: .Window (e.g. 5400s), .ReadMetric, .WriteMetric, .VolumeLabel.")
	fs.StringVar(&o.CoverageTemplate, "iops-coverage-template", iops.DefaultCoverageTemplate, "Instant-vector selector (Go text/template, same fields) whose sample timestamps measure a volume's coverage of the window. \"-\" disables the coverage rule.")
	fs.DurationVar(&o.MaxGap, "iops-max-gap", 0, "Longest gap between samples inside the window for a published volume's IOPS to count (its samples must also reach within 1.5 scrape intervals of both ends of the window); longer and they are unknown (never moved). 0: max(3 x scrape interval, scrape interval + 5s).")
	fs.StringVar(&o.ECReadMetric, "ec-iops-read-metric", iops.ECVolumeReadMetric, "Cumulative read-operations counter of an erasure-coded volume's export (`ec-volume serve --metrics-bind-address`), which Prometheus must scrape: heat-up measures erasure-coded volumes by it.")
	fs.StringVar(&o.ECWriteMetric, "ec-iops-write-metric", iops.ECVolumeWriteMetric, "Cumulative write-operations counter of an erasure-coded volume's export.")
	fs.StringVar(&o.ECVolumeLabel, "ec-iops-volume-label", iops.ECVolumeLabel, "Label of the export's counters that holds the ECVolume's name (its PV's CSI volume handle).")
	fs.Float64Var(&o.HysteresisPercent, "tiering-hysteresis-percent", tiering.DefaultHysteresisPercent, "Default demotion margin in percent: a volume leaves a tier downwards only when its IOPS are below the watermark by this margin. A StoragePolicy's annotation "+tiering.AnnotationHysteresis+" overrides it.")
	fs.DurationVar(&o.MetricsCacheTTL, "metrics-cache-ttl", iops.DefaultCacheTTL, "How long a volume's measured IOPS are reused before Prometheus is asked again. 0 disables the cache.")
	fs.DurationVar(&o.EvaluationInterval, "evaluation-interval", time.Minute, "How often each StoragePolicy is evaluated (also on changes of PVs, PVCs, MayastorVolumes and DiskPools).")
	fs.BoolVar(&o.DryRun, "dry-run", false, "Treat every StoragePolicy as dryRun: record what would move in migrationHistory, move nothing.")
}

// NewIOPSMeter builds the production meter from the options.
func (o *TieringOptions) NewIOPSMeter() (*iops.Meter, error) {
	src, err := iops.NewPrometheusSource(iops.PrometheusConfig{
		Address: o.PrometheusURL, BearerTokenFile: o.BearerTokenFile, CAFile: o.CAFile, Timeout: o.QueryTimeout,
		ReadMetric: o.ReadMetric, WriteMetric: o.WriteMetric, VolumeLabel: o.VolumeLabel,
		QueryTemplate: o.QueryTemplate, CoverageTemplate: o.CoverageTemplate, ScrapeInterval: o.ScrapeInterval,
	})
	if err != nil {
		return nil, fmt.Errorf("--prometheus-*/--iops-* flags: %w", err)
	}
	if o.MaxGap < 0 {
		return nil, fmt.Errorf("--iops-max-gap=%v: must not be negative", o.MaxGap)
	}
	if _, err := tiering.ParseHysteresis(strconv.FormatFloat(o.HysteresisPercent, 'f', -1, 64)); err != nil {
		return nil, fmt.Errorf("--tiering-hysteresis-percent=%v: %w", o.HysteresisPercent, err)
	}
	if o.ScrapeInterval <= 0 {
		return nil, fmt.Errorf("--prometheus-scrape-interval=%v: must be positive", o.ScrapeInterval)
	}
	return &iops.Meter{Querier: src, Cache: iops.NewMetricsCache(o.MetricsCacheTTL, nil), ScrapeInterval: o.ScrapeInterval, MaxGap: o.MaxGap}, nil
}

// NewECIOPSMeter builds the meter of erasure-coded volumes (heat-up): the
// same Prometheus, window rules and coverage rule as NewIOPSMeter, over the
// exports' op counters, with a cache of its own.
func (o *TieringOptions) NewECIOPSMeter() (*iops.Meter, error) {
	src, err := iops.NewPrometheusSource(iops.PrometheusConfig{
		Address: o.PrometheusURL, BearerTokenFile: o.BearerTokenFile, CAFile: o.CAFile, Timeout: o.QueryTimeout,
		ReadMetric: o.ECReadMetric, WriteMetric: o.ECWriteMetric, VolumeLabel: o.ECVolumeLabel, ScrapeInterval: o.ScrapeInterval,
	})
	if err != nil {
		return nil, fmt.Errorf("--prometheus-*/--ec-iops-* flags: %w", err)
	}
	if o.MaxGap < 0 {
		return nil, fmt.Errorf("--iops-max-gap=%v: must not be negative", o.MaxGap)
	}
	if o.ScrapeInterval <= 0 {
		return nil, fmt.Errorf("--prometheus-scrape-interval=%v: must be positive", o.ScrapeInterval)
	}
	return &iops.Meter{Querier: src, Cache: iops.NewMetricsCache(o.MetricsCacheTTL, nil), ScrapeInterval: o.ScrapeInterval, MaxGap: o.MaxGap}, nil
}

// StoragePolicyReconciler evaluates StoragePolicies: it finds the volumes each
// one owns, measures their IOPS, decides (pkg/tiering) and reports the
// decisions in status, Events and metrics. It moves nothing itself: Move
// decisions go to the MigrationStarter, or only into history in dry run.
type StoragePolicyReconciler struct {
	Client client.Client
	// APIReader reads the policy fresh from the API server when a status patch conflicts.
	APIReader client.Reader
	Recorder  events.EventRecorder
	Meter     IOPSMeter
	// Engine starts the migrations (main.go wires migration.PolicyStarter);
	// nil: nothing moves (see MigrationStarter).
	Engine MigrationStarter
	// Migrations supplies finished migrations to fold into status (the
	// migration engine); nil: status counters are left as stored.
	Migrations MigrationResults
	// MigrationEvents re-evaluates a policy when one of its migrations ends.
	MigrationEvents <-chan event.GenericEvent
	// Backend reads Mayastor's volumes and pools (REST or MayastorVolume).
	Backend migration.VolumeBackend
	// Optional are the watches of kinds that may not exist (Mayastor's
	// CRDs); nil: none.
	Optional []OptionalWatch
	// OptionalPoll is how often a missing optional kind is looked for; 0: DefaultOptionalPoll.
	OptionalPoll       time.Duration
	MayastorNamespace  string
	EvaluationInterval time.Duration
	ScrapeInterval     time.Duration
	// GlobalDryRun is --dry-run.
	GlobalDryRun bool
	// HysteresisPercent is --tiering-hysteresis-percent; nil means
	// tiering.DefaultHysteresisPercent. A policy's annotation overrides it.
	HysteresisPercent *float64
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Converter converts cold volumes to erasure coding (pkg/conversion);
	// nil: conversions are reported, never started.
	Converter ConversionStarter
	// ECMeter measures erasure-coded volumes through their exports' op
	// counters (heat-up); nil: their IOPS are unknown and none converts back.
	ECMeter IOPSMeter
	// ConversionRetain is how long a converted volume's source is kept
	// (--ec-conversion-retain).
	ConversionRetain time.Duration
	// SkipNameValidation lets tests run several managers in one process.
	SkipNameValidation bool

	mu     sync.Mutex
	memory map[string]*policyMemory
}

// policyMemory is what the controller remembers between evaluations of one
// policy, only to avoid repeating itself (Events, dry-run entries). Losing it
// (a restart) costs at most one repeated Event per volume; dry-run entries are
// also remembered in the history itself.
type policyMemory struct {
	uid       types.UID
	decisions map[string]string    // volume -> decision key of the last evaluation
	dryRun    map[string]time.Time // volume -> last dry-run entry recorded
	summary   string               // last summary Event key
	heat      map[string]string    // erasure-coded PV -> last heat-up verdict key
	conv      map[string]string    // replicated PV -> last conversion wait verdict key
	// hotSeen: erasure-coded PV -> the measurement that last found it hot
	// while a pod used it (conversion.Recall: its export stops with the
	// pod). Kept by the leader only; after a failover a volume waits for
	// its next use to be found hot again.
	hotSeen map[string]*conversion.HeatSeen
}

func (r *StoragePolicyReconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

func (r *StoragePolicyReconciler) memoryFor(p *storagev1.StoragePolicy) *policyMemory {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.memory == nil {
		r.memory = map[string]*policyMemory{}
	}
	m := r.memory[p.Name]
	if m == nil || m.uid != p.UID {
		m = &policyMemory{uid: p.UID, decisions: map[string]string{}, dryRun: map[string]time.Time{}, heat: map[string]string{}, conv: map[string]string{}, hotSeen: map[string]*conversion.HeatSeen{}}
		r.memory[p.Name] = m
	}
	return m
}

func (r *StoragePolicyReconciler) forget(name string) {
	r.mu.Lock()
	delete(r.memory, name)
	r.mu.Unlock()
	forgetPolicyMetrics(name)
}

// Reconcile evaluates one policy and requeues itself after the evaluation interval.
func (r *StoragePolicyReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	start := time.Now()
	var pol storagev1.StoragePolicy
	if err := r.Client.Get(ctx, req.NamespacedName, &pol); err != nil {
		if apierrors.IsNotFound(err) {
			r.forget(req.Name)
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, fmt.Errorf("get StoragePolicy %s: %w", req.Name, err)
	}
	ev, result, err := r.evaluate(ctx, &pol)
	if err != nil {
		policyEvaluations.WithLabelValues(pol.Name, "error").Inc()
		return ctrl.Result{}, err
	}
	if err := r.writeStatus(ctx, &pol, ev); err != nil {
		policyEvaluations.WithLabelValues(pol.Name, "error").Inc()
		return ctrl.Result{}, err
	}
	r.afterWrite(ctx, &pol, ev)
	policyEvaluations.WithLabelValues(pol.Name, result).Inc()
	policyEvaluationDuration.WithLabelValues(pol.Name).Observe(time.Since(start).Seconds())
	if result == "disabled" || result == "invalid" {
		return ctrl.Result{}, nil // a spec change wakes the policy up
	}
	return ctrl.Result{RequeueAfter: r.EvaluationInterval}, nil
}

// outcome is one evaluation, ready to be written into status.
type outcome struct {
	now           time.Time
	phase         storagev1.StoragePolicyPhase
	invalid       string // the spec's errors, when invalid
	spec          *storagev1.StoragePolicySpec
	dryRun        bool
	window        time.Duration
	cooldown      time.Duration
	eval          tiering.Evaluation
	report        iops.Report
	volumes       int
	conflicts     map[string]int // older owner policy -> volumes it takes from this one
	ambiguous     []string       // pools matching several tier selectors
	backend       string         // the backend's Describe
	backendErr    error          // the backend could not be read: nothing evaluated
	ecPolicyOK    bool
	ecMissing     bool
	ecPolicyReady bool
	ecPhase       storagev1.ErasureCodingPolicyPhase
	// pvs and claims are the observed PV and bound PVC of each volume.
	pvs    map[string]*corev1.PersistentVolume
	claims map[string]*corev1.PersistentVolumeClaim
	// conversions are the verdicts on cold volumes (ecPolicyRef set);
	// converted counts erasure-coded PVs made by conversions, converting
	// those with a conversion in progress or retained.
	conversions []conversionVerdict
	converted   int
	converting  int
	// ecVols are the erasure-coded volumes the policy owns, ecReport their
	// IOPS, heatUps the verdicts on them; heatingUp counts those with a
	// conversion back in progress.
	ecVols         []ecVolume
	ecReport       iops.Report
	heatUps        []heatVerdict
	heatingUp      int
	engine         bool
	converter      bool
	scrapeInterval time.Duration
	// dryRunEntries are appended to history by writeStatus; set there.
	recorded []storagev1.MigrationHistoryEntry
}

func (r *StoragePolicyReconciler) evaluate(ctx context.Context, pol *storagev1.StoragePolicy) (*outcome, string, error) {
	spec := pol.Spec.DeepCopy()
	storagev1.DefaultStoragePolicySpec(spec)
	o := &outcome{now: r.now(), spec: spec, engine: r.Engine != nil, converter: r.Converter != nil, scrapeInterval: r.ScrapeInterval}
	if !*spec.Enabled {
		o.phase = storagev1.StoragePolicyDisabled
		return o, "disabled", nil
	}
	if errs, _ := storagev1.ValidateStoragePolicySpec(spec, field.NewPath("spec")); len(errs) > 0 {
		o.phase, o.invalid = storagev1.StoragePolicyError, errs.ToAggregate().Error()
		return o, "invalid", nil
	}
	// Validation passed, so these parse.
	o.window, _ = storagev1.ParseDuration(spec.SamplingWindow)
	o.cooldown, _ = storagev1.ParseDuration(spec.CooldownPeriod)
	o.dryRun = r.GlobalDryRun || *spec.DryRun
	selectors, err := tiering.CompileSelectors(spec.HotPoolSelector, spec.WarmPoolSelector, spec.ColdPoolSelector)
	if err != nil {
		o.phase, o.invalid = storagev1.StoragePolicyError, err.Error()
		return o, "invalid", nil
	}
	hysteresis := float64(tiering.DefaultHysteresisPercent) / 100
	if r.HysteresisPercent != nil {
		hysteresis = *r.HysteresisPercent / 100
	}
	if raw, ok := pol.Annotations[tiering.AnnotationHysteresis]; ok {
		if hysteresis, err = tiering.ParseHysteresis(raw); err != nil {
			o.phase, o.invalid = storagev1.StoragePolicyError, fmt.Sprintf("metadata.annotations[%s]: %v", tiering.AnnotationHysteresis, err)
			return o, "invalid", nil
		}
	}
	policy := tiering.Policy{
		Watermarks: tiering.Watermarks{High: float64(*spec.HighWatermarkIOPS), Warm: float64(*spec.WarmWatermarkIOPS), Low: float64(*spec.LowWatermarkIOPS)},
		Selectors:  selectors, Cooldown: o.cooldown, Hysteresis: hysteresis,
		ECEnabled: spec.ECPolicyRef != "", ECMinVolumeSizeBytes: *spec.ECMinVolumeSizeBytes,
	}
	if spec.ECPolicyRef != "" {
		var ecp storagev1.ErasureCodingPolicy
		switch err := r.Client.Get(ctx, client.ObjectKey{Name: spec.ECPolicyRef}, &ecp); {
		case apierrors.IsNotFound(err):
			o.ecMissing = true
		case err != nil:
			return nil, "", fmt.Errorf("get ErasureCodingPolicy %s: %w", spec.ECPolicyRef, err)
		default:
			o.ecPolicyOK = true
			o.ecPhase = ecp.Status.Phase
			o.ecPolicyReady = ecp.Status.Phase == storagev1.ECPolicyReady || ecp.Status.Phase == storagev1.ECPolicyActive
		}
	}

	o.backend = r.Backend.Describe()
	vols, poolTiers, err := r.observe(ctx, pol, spec, selectors, o)
	var berr *backendError
	switch {
	case errors.As(err, &berr):
		o.backendErr = berr.err
		o.phase = pol.Status.Phase
		if o.phase != storagev1.StoragePolicyActive {
			o.phase = storagev1.StoragePolicyPending
		}
		return o, "backend_unavailable", nil
	case err != nil:
		return nil, "", err
	}
	ivols := make([]iops.Volume, len(vols))
	for i, v := range vols {
		ivols[i] = iops.Volume{Name: v.Name, Published: v.Published}
	}
	o.report = r.Meter.Measure(ctx, o.window, ivols)
	o.eval = tiering.Evaluate(policy, vols, o.report.Measurements, poolTiers, o.now)
	o.volumes = len(vols)
	if err := r.judgeHeatUps(ctx, o, heatRules(policy, o.cooldown), r.memoryFor(pol)); err != nil {
		return nil, "", err
	}
	if o.ecPolicyOK && o.report.Err == nil {
		if err := r.judgeConversions(ctx, o, vols); err != nil {
			return nil, "", err
		}
	}
	result := "ok"
	switch {
	case o.report.Err != nil:
		result = "metrics_unavailable"
		o.phase = pol.Status.Phase
		if o.phase != storagev1.StoragePolicyActive {
			o.phase = storagev1.StoragePolicyPending
		}
	default:
		o.phase = storagev1.StoragePolicyActive
	}
	return o, result, nil
}

// observe lists what the policy looks at and returns the volumes it owns and
// the tier of every pool.
func (r *StoragePolicyReconciler) observe(ctx context.Context, pol *storagev1.StoragePolicy, spec *storagev1.StoragePolicySpec,
	selectors tiering.TierSelectors, o *outcome) ([]tiering.Volume, map[string]tiering.Tier, error) {
	pools, err := r.Backend.ListPools(ctx)
	if err != nil {
		return nil, nil, &backendError{err}
	}
	poolTiers := make(map[string]tiering.Tier, len(pools))
	for _, p := range pools {
		t, amb := selectors.PoolTier(p.Labels)
		if amb {
			o.ambiguous = append(o.ambiguous, p.Name)
		}
		poolTiers[p.Name] = t
	}
	bvols, err := r.Backend.ListVolumes(ctx)
	if err != nil {
		return nil, nil, &backendError{err}
	}
	byHandle := make(map[string]*migration.Volume, len(bvols))
	for i := range bvols {
		byHandle[bvols[i].ID] = &bvols[i]
	}

	var policies storagev1.StoragePolicyList
	if err := r.Client.List(ctx, &policies); err != nil {
		return nil, nil, fmt.Errorf("list StoragePolicies: %w", err)
	}
	self, refs := tiering.PolicyRef{}, make([]tiering.PolicyRef, 0, len(policies.Items))
	for i := range policies.Items {
		p := &policies.Items[i]
		ps := p.Spec.DeepCopy()
		storagev1.DefaultStoragePolicySpec(ps)
		sel, err := tiering.VolumeSelector(ps.VolumeSelector)
		if err != nil {
			continue // an invalid policy owns nothing
		}
		ref := tiering.PolicyRef{Name: p.Name, Created: p.CreationTimestamp.Time, StorageClass: ps.StorageClassName, VolumeSelector: sel}
		if p.Name == pol.Name {
			self = ref
		}
		if *ps.Enabled || p.Name == pol.Name {
			refs = append(refs, ref)
		}
	}
	if self.Name == "" { // not in the cache yet: use what we were given
		sel, err := tiering.VolumeSelector(spec.VolumeSelector)
		if err != nil {
			return nil, nil, err
		}
		self = tiering.PolicyRef{Name: pol.Name, Created: pol.CreationTimestamp.Time, StorageClass: spec.StorageClassName, VolumeSelector: sel}
		refs = append(refs, self)
	}

	var pvs corev1.PersistentVolumeList
	if err := r.Client.List(ctx, &pvs); err != nil {
		return nil, nil, fmt.Errorf("list PersistentVolumes: %w", err)
	}
	var pvcs corev1.PersistentVolumeClaimList
	if err := r.Client.List(ctx, &pvcs); err != nil {
		return nil, nil, fmt.Errorf("list PersistentVolumeClaims: %w", err)
	}
	claims := make(map[types.NamespacedName]*corev1.PersistentVolumeClaim, len(pvcs.Items))
	for i := range pvcs.Items {
		claims[types.NamespacedName{Namespace: pvcs.Items[i].Namespace, Name: pvcs.Items[i].Name}] = &pvcs.Items[i]
	}

	vols := make([]tiering.Volume, 0, len(pvs.Items))
	o.conflicts = map[string]int{}
	o.pvs, o.claims = map[string]*corev1.PersistentVolume{}, map[string]*corev1.PersistentVolumeClaim{}
	for i := range pvs.Items {
		pv := &pvs.Items[i]
		ref := tiering.VolumeRef{StorageClass: pv.Spec.StorageClassName}
		handle := ""
		if pv.Spec.CSI != nil {
			ref.CSIDriver, handle = pv.Spec.CSI.Driver, pv.Spec.CSI.VolumeHandle
		}
		var pvc *corev1.PersistentVolumeClaim
		if cr := pv.Spec.ClaimRef; cr != nil {
			// A claimRef with a UID names one PVC incarnation; a recreated PVC of the same name is another.
			if c, ok := claims[types.NamespacedName{Namespace: cr.Namespace, Name: cr.Name}]; ok && (cr.UID == "" || cr.UID == c.UID) {
				pvc, ref.HasPVC, ref.PVCLabels = c, true, c.Labels
			}
		}
		if isErasureCodedPV(pv) {
			ecRef := ecVolumeRef(pv, pvc)
			switch owner := tiering.Owner(refs, ecRef); {
			case !self.Selects(ecRef):
			case owner != pol.Name:
				o.conflicts[owner]++
			default:
				o.ecVols = append(o.ecVols, ecVolume{pv: pv, claim: pvc})
			}
			continue
		}
		if !self.Selects(ref) {
			continue
		}
		if owner := tiering.Owner(refs, ref); owner != pol.Name {
			o.conflicts[owner]++
			continue
		}
		v := tiering.Volume{Name: pv.Name, PVAnnotations: pv.Annotations}
		if q, ok := pv.Spec.Capacity[corev1.ResourceStorage]; ok {
			v.SizeBytes = q.Value()
		}
		o.pvs[pv.Name] = pv
		if pvc != nil {
			v.PVCAnnotations = pvc.Annotations
			o.claims[pv.Name] = pvc
		}
		if bv := byHandle[handle]; bv != nil && handle != "" {
			v.MayastorVolume = true
			v.Published = bv.Published
			v.Unmovable = bv.Unmovable
			if bv.Size > 0 {
				v.SizeBytes = bv.Size
			}
			v.ReplicaPools = make([]string, 0, len(bv.Replicas))
			for _, rep := range bv.Replicas {
				v.ReplicaPools = append(v.ReplicaPools, rep.Pool)
			}
		}
		vols = append(vols, v)
	}
	sort.Strings(o.ambiguous)
	return vols, poolTiers, nil
}

// backendError is a failure to read the tiering backend: reported in status,
// never a reconcile error (which would retry without saying why).
type backendError struct{ err error }

func (e *backendError) Error() string { return e.err.Error() }
func (e *backendError) Unwrap() error { return e.err }

// SetupWithManager registers the controller: StoragePolicies, and every PV,
// PVC, MayastorVolume and DiskPool change re-evaluates the policies (the IOPS
// cache keeps such bursts from reaching Prometheus).
func (r *StoragePolicyReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.EvaluationInterval <= 0 {
		return fmt.Errorf("StoragePolicy controller: evaluation interval %v must be positive", r.EvaluationInterval)
	}
	if r.Meter == nil {
		return fmt.Errorf("StoragePolicy controller: no IOPS meter")
	}
	if r.Backend == nil {
		return fmt.Errorf("StoragePolicy controller: no Mayastor backend")
	}
	allPolicies := handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, _ client.Object) []reconcile.Request {
		var list storagev1.StoragePolicyList
		if err := mgr.GetClient().List(ctx, &list); err != nil {
			log.FromContext(ctx).Error(err, "list StoragePolicies to re-evaluate")
			return nil
		}
		reqs := make([]reconcile.Request, len(list.Items))
		for i := range list.Items {
			reqs[i] = reconcile.Request{NamespacedName: types.NamespacedName{Name: list.Items[i].Name}}
		}
		return reqs
	})
	b := ctrl.NewControllerManagedBy(mgr).
		Named("storagepolicy").
		// Status writes do not change the generation: no self-triggered loop.
		For(&storagev1.StoragePolicy{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&corev1.PersistentVolume{}, allPolicies).
		Watches(&corev1.PersistentVolumeClaim{}, allPolicies, builder.WithPredicates(predicate.Or(predicate.LabelChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		WithOptions(controller.Options{SkipNameValidation: ptr.To(r.SkipNameValidation)})
	if r.MigrationEvents != nil {
		b = b.WatchesRawSource(source.Channel(r.MigrationEvents, &handler.EnqueueRequestForObject{}))
	}
	c, err := b.Build(r)
	if err != nil {
		return err
	}
	// Mayastor's kinds only trigger evaluations (reads go through the
	// backend), and may not exist: watched once served, never awaited.
	return addOptionalWatches(mgr, "storagepolicy", c, r.Optional, allPolicies, r.OptionalPoll)
}
