package webhooks

import (
	"context"
	"errors"
	"fmt"
	"sort"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/pkg/stripeindex"
)

// The webhook configurations come from these markers (make manifests →
// config/webhook/manifests.yaml); localConfigurations mirrors them for
// running outside a cluster, and a test keeps the two equal.
//
// +kubebuilder:rbac:groups=storage.billyronks.io,resources=ecvolumes,verbs=get;list;watch
// +kubebuilder:webhook:path=/mutate-storage-billyronks-io-v1-storagepolicy,mutating=true,failurePolicy=fail,sideEffects=None,groups=storage.billyronks.io,resources=storagepolicies,verbs=create;update,versions=v1,name=mstoragepolicy.storage.billyronks.io,admissionReviewVersions=v1,timeoutSeconds=5
// +kubebuilder:webhook:path=/validate-storage-billyronks-io-v1-storagepolicy,mutating=false,failurePolicy=fail,sideEffects=None,groups=storage.billyronks.io,resources=storagepolicies,verbs=create;update,versions=v1,name=vstoragepolicy.storage.billyronks.io,admissionReviewVersions=v1,timeoutSeconds=5
// +kubebuilder:webhook:path=/mutate-storage-billyronks-io-v1-erasurecodingpolicy,mutating=true,failurePolicy=fail,sideEffects=None,groups=storage.billyronks.io,resources=erasurecodingpolicies,verbs=create;update,versions=v1,name=merasurecodingpolicy.storage.billyronks.io,admissionReviewVersions=v1,timeoutSeconds=5
// +kubebuilder:webhook:path=/validate-storage-billyronks-io-v1-erasurecodingpolicy,mutating=false,failurePolicy=fail,sideEffects=None,groups=storage.billyronks.io,resources=erasurecodingpolicies,verbs=create;update;delete,versions=v1,name=verasurecodingpolicy.storage.billyronks.io,admissionReviewVersions=v1,timeoutSeconds=5
// +kubebuilder:webhook:path=/mutate-storage-billyronks-io-v1-ecstripe,mutating=true,failurePolicy=fail,sideEffects=None,groups=storage.billyronks.io,resources=ecstripes,verbs=create;update,versions=v1,name=mecstripe.storage.billyronks.io,admissionReviewVersions=v1,timeoutSeconds=5
// +kubebuilder:webhook:path=/validate-storage-billyronks-io-v1-ecstripe,mutating=false,failurePolicy=fail,sideEffects=None,groups=storage.billyronks.io,resources=ecstripes,verbs=create;update;delete,versions=v1,name=vecstripe.storage.billyronks.io,admissionReviewVersions=v1,timeoutSeconds=5

// +kubebuilder:rbac:groups=storage.billyronks.io,resources=storagepolicies;erasurecodingpolicies;ecstripes,verbs=get;list;watch

// refuseEarly: the API server runs mutating admission, then the CRD's schema
// and CEL rules, then validating admission. The defaulters of StoragePolicy
// and ErasureCodingPolicy therefore also judge the object-local rules, so a
// user meets the Go message (field, value and rule, e.g. "spec.warmWatermarkIOPS:
// Invalid value: 2000: must be greater than spec.lowWatermarkIOPS (3000)")
// instead of CEL's terser one; CEL stays as the backstop where the webhooks
// are not installed, and the validators judge everything again (with the
// cross-object rules and warnings).

// MaxReferrersNamed bounds the names a refusal lists; the count is always exact.
const MaxReferrersNamed = 5

var (
	gkStoragePolicy       = schema.GroupKind{Group: storagev1.GroupVersion.Group, Kind: "StoragePolicy"}
	gkErasureCodingPolicy = schema.GroupKind{Group: storagev1.GroupVersion.Group, Kind: "ErasureCodingPolicy"}
	gkECStripe            = schema.GroupKind{Group: storagev1.GroupVersion.Group, Kind: "ECStripe"}
	specPath              = field.NewPath("spec")
)

func invalid(gk schema.GroupKind, name string, errs field.ErrorList) error {
	if len(errs) == 0 {
		return nil
	}
	return apierrors.NewInvalid(gk, name, errs)
}

// readers is how the validators see other objects: the manager's cache, and
// the API server itself for a NotFound the cache may not have caught up with
// (a policy applied a moment before the object that names it).
type readers struct {
	cache client.Reader
	live  client.Reader
}

func (r readers) getPolicy(ctx context.Context, name string) (*storagev1.ErasureCodingPolicy, error) {
	p := &storagev1.ErasureCodingPolicy{}
	err := r.cache.Get(ctx, types.NamespacedName{Name: name}, p)
	if apierrors.IsNotFound(err) && r.live != nil {
		err = r.live.Get(ctx, types.NamespacedName{Name: name}, p)
	}
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read ErasureCodingPolicy %s: %w", name, err)
	}
	return p, nil
}

// StoragePolicyWebhook defaults and validates StoragePolicies.
type StoragePolicyWebhook struct{ r readers }

var (
	_ admission.Defaulter[*storagev1.StoragePolicy] = &StoragePolicyWebhook{}
	_ admission.Validator[*storagev1.StoragePolicy] = &StoragePolicyWebhook{}
)

// Default fills every schema default, then judges the object-local rules
// (see refuseEarly).
func (w *StoragePolicyWebhook) Default(_ context.Context, p *storagev1.StoragePolicy) error {
	storagev1.DefaultStoragePolicy(p)
	errs, _ := storagev1.ValidateStoragePolicySpec(&p.Spec, specPath)
	return invalid(gkStoragePolicy, p.Name, errs)
}

// ValidateCreate applies schema 6.1, warns about soft problems and overlap
// with other policies.
func (w *StoragePolicyWebhook) ValidateCreate(ctx context.Context, p *storagev1.StoragePolicy) (admission.Warnings, error) {
	return w.validate(ctx, p)
}

// ValidateUpdate applies the same rules as create.
func (w *StoragePolicyWebhook) ValidateUpdate(ctx context.Context, _, p *storagev1.StoragePolicy) (admission.Warnings, error) {
	return w.validate(ctx, p)
}

// ValidateDelete allows every deletion.
func (w *StoragePolicyWebhook) ValidateDelete(context.Context, *storagev1.StoragePolicy) (admission.Warnings, error) {
	return nil, nil
}

func (w *StoragePolicyWebhook) validate(ctx context.Context, p *storagev1.StoragePolicy) (admission.Warnings, error) {
	errs, warns := storagev1.ValidateStoragePolicySpec(&p.Spec, specPath)
	if ref := p.Spec.ECPolicyRef; ref != "" {
		pol, err := w.r.getPolicy(ctx, ref)
		if err != nil {
			return warns, apierrors.NewInternalError(err)
		}
		errs = append(errs, storagev1.ValidateECPolicyRef(&p.Spec, pol != nil, specPath)...)
	}
	var others storagev1.StoragePolicyList
	if err := w.r.cache.List(ctx, &others); err != nil {
		return warns, apierrors.NewInternalError(fmt.Errorf("list StoragePolicies: %w", err))
	}
	warns = append(warns, storagev1.StoragePolicyOverlapWarnings(p.Name, &p.Spec, others.Items, specPath)...)
	return warns, invalid(gkStoragePolicy, p.Name, errs)
}

// ErasureCodingPolicyWebhook defaults and validates ErasureCodingPolicies,
// and refuses to delete one that is still referenced.
type ErasureCodingPolicyWebhook struct {
	r       readers
	stripes *stripeindex.StripeIndex
	// servers lists the registered shard servers (nil: no capacity warning).
	servers interface {
		Servers(ctx context.Context) ([]registry.Entry, error)
	}
}

// capacityWarnings warns (never refuses: shard servers may be installed
// after the policy) when the registered shard servers cannot hold a stripe
// of the policy on distinct pools, or not on distinct nodes.
func (w *ErasureCodingPolicyWebhook) capacityWarnings(ctx context.Context, spec *storagev1.ErasureCodingPolicySpec) admission.Warnings {
	if w.servers == nil || spec.DataShards == nil || spec.ParityShards == nil {
		return nil
	}
	width := int(*spec.DataShards + *spec.ParityShards)
	list, err := w.servers.Servers(ctx)
	if err != nil {
		return admission.Warnings{fmt.Sprintf("could not count the registered shard servers (%v): a stripe under this policy needs %d of them on distinct nodes", err, width)}
	}
	pools, nodes := map[string]bool{}, map[string]bool{}
	for _, e := range list {
		pools[e.Pool], nodes[e.Node] = true, true
	}
	switch {
	case len(pools) < width:
		return admission.Warnings{fmt.Sprintf("spec.dataShards + spec.parityShards = %d, but only %d shard servers (%d nodes) are registered: stripes under this policy cannot be written until at least %d run, one per pool, on distinct nodes", width, len(pools), len(nodes), width)}
	case len(nodes) < width:
		return admission.Warnings{fmt.Sprintf("spec.dataShards + spec.parityShards = %d, but the registered shard servers span only %d nodes: shards of a stripe will share nodes, so losing one node can cost more than one shard", width, len(nodes))}
	}
	return nil
}

var (
	_ admission.Defaulter[*storagev1.ErasureCodingPolicy] = &ErasureCodingPolicyWebhook{}
	_ admission.Validator[*storagev1.ErasureCodingPolicy] = &ErasureCodingPolicyWebhook{}
)

// Default fills every default, minHealthyShards := dataShards included, then
// judges the object-local rules (see refuseEarly).
func (w *ErasureCodingPolicyWebhook) Default(_ context.Context, p *storagev1.ErasureCodingPolicy) error {
	storagev1.DefaultErasureCodingPolicy(p)
	errs, _ := storagev1.ValidateErasureCodingPolicySpec(&p.Spec, specPath)
	return invalid(gkErasureCodingPolicy, p.Name, errs)
}

// ValidateCreate applies schema 6.2 and the LRC layout.
func (w *ErasureCodingPolicyWebhook) ValidateCreate(ctx context.Context, p *storagev1.ErasureCodingPolicy) (admission.Warnings, error) {
	errs, warns := storagev1.ValidateErasureCodingPolicySpec(&p.Spec, specPath)
	if len(errs) == 0 {
		warns = append(warns, w.capacityWarnings(ctx, &p.Spec)...)
	}
	return warns, invalid(gkErasureCodingPolicy, p.Name, errs)
}

// ValidateUpdate also refuses changing how existing stripes were encoded.
func (w *ErasureCodingPolicyWebhook) ValidateUpdate(ctx context.Context, old, p *storagev1.ErasureCodingPolicy) (admission.Warnings, error) {
	errs, warns := storagev1.ValidateErasureCodingPolicySpec(&p.Spec, specPath)
	if len(errs) == 0 {
		warns = append(warns, w.capacityWarnings(ctx, &p.Spec)...)
	}
	if !w.stripes.Synced() {
		return warns, errIndexNotSynced
	}
	errs = append(errs, storagev1.ValidateErasureCodingPolicyUpdate(&old.Spec, &p.Spec, w.stripes.StripesOfPolicy(p.Name), specPath)...)
	return warns, invalid(gkErasureCodingPolicy, p.Name, errs)
}

// ValidateDelete refuses while StoragePolicies or ECStripes reference the policy.
func (w *ErasureCodingPolicyWebhook) ValidateDelete(ctx context.Context, p *storagev1.ErasureCodingPolicy) (admission.Warnings, error) {
	if !w.stripes.Synced() {
		return nil, errIndexNotSynced
	}
	var ref storagev1.Referrers
	var sps storagev1.StoragePolicyList
	if err := w.r.cache.List(ctx, &sps, client.MatchingFields{stripeindex.IndexStoragePolicyByECPolicyRef: p.Name}); err != nil {
		return nil, apierrors.NewInternalError(fmt.Errorf("list StoragePolicies by %s: %w", stripeindex.IndexStoragePolicyByECPolicyRef, err))
	}
	for _, sp := range sps.Items {
		ref.StoragePolicies = append(ref.StoragePolicies, sp.Name)
	}
	sort.Strings(ref.StoragePolicies)
	ref.TotalStoragePolicies = len(ref.StoragePolicies)
	if len(ref.StoragePolicies) > MaxReferrersNamed {
		ref.StoragePolicies = ref.StoragePolicies[:MaxReferrersNamed]
	}
	if ref.TotalECStripes = w.stripes.StripesOfPolicy(p.Name); ref.TotalECStripes > 0 {
		var ss storagev1.ECStripeList
		if err := w.r.cache.List(ctx, &ss, client.MatchingFields{stripeindex.IndexECStripeByPolicyRef: p.Name},
			client.Limit(MaxReferrersNamed), client.UnsafeDisableDeepCopy); err != nil {
			return nil, apierrors.NewInternalError(fmt.Errorf("list ECStripes by %s: %w", stripeindex.IndexECStripeByPolicyRef, err))
		}
		for _, s := range ss.Items {
			ref.ECStripes = append(ref.ECStripes, s.Name)
		}
	}
	if msg := storagev1.ErasureCodingPolicyDeleteRefusal(p.Name, ref); msg != "" {
		return nil, apierrors.NewForbidden(schema.GroupResource{Group: gkErasureCodingPolicy.Group, Resource: "erasurecodingpolicies"}, p.Name, errors.New(msg))
	}
	return nil, nil
}

// ECStripeWebhook defaults and validates ECStripes.
type ECStripeWebhook struct {
	r       readers
	stripes *stripeindex.StripeIndex
	// leaseNamespace holds the volumes' writer Leases (checkWriterEpoch).
	leaseNamespace string
}

var (
	_ admission.Defaulter[*storagev1.ECStripe] = &ECStripeWebhook{}
	_ admission.Validator[*storagev1.ECStripe] = &ECStripeWebhook{}
)

// Default orders shardLocations by shardIndex.
func (w *ECStripeWebhook) Default(_ context.Context, s *storagev1.ECStripe) error {
	storagev1.DefaultECStripe(s)
	return nil
}

// ValidateCreate applies schema 6.3 against the policy and the volume's other stripes.
func (w *ECStripeWebhook) ValidateCreate(ctx context.Context, s *storagev1.ECStripe) (admission.Warnings, error) {
	if err := w.checkWriterEpoch(ctx, nil, s); err != nil {
		return nil, err
	}
	return w.validate(ctx, s)
}

// ValidateUpdate refuses changes to the stripe's identity (spec.volumeRef,
// stripeId, policyRef, lbaRange.startLba and the volume label;
// storagev1.ValidateECStripeUpdate), then applies the create rules; the
// stripe never collides with itself.
func (w *ECStripeWebhook) ValidateUpdate(ctx context.Context, old, s *storagev1.ECStripe) (admission.Warnings, error) {
	if errs := storagev1.ValidateECStripeUpdate(old, s); len(errs) > 0 {
		return nil, invalid(gkECStripe, s.Name, errs)
	}
	if err := w.checkWriterEpoch(ctx, old, s); err != nil {
		return nil, err
	}
	return w.validate(ctx, s)
}

// ValidateDelete guards the stripe's data. An ECStripe goes only with its ECVolume (schema 7.3): while the ECVolume it
// belongs to exists and is not being deleted, deleting the stripe is refused,
// so `kubectl delete ecs --all` cannot wipe data. The ECVolume's finalizer
// deletes the stripes once the volume has a deletionTimestamp. A stripe whose
// volume does not exist (metadata left behind) may be deleted.
func (w *ECStripeWebhook) ValidateDelete(ctx context.Context, s *storagev1.ECStripe) (admission.Warnings, error) {
	vol := &storagev1.ECVolume{}
	err := w.r.cache.Get(ctx, types.NamespacedName{Name: s.Spec.VolumeRef}, vol)
	if apierrors.IsNotFound(err) && w.r.live != nil {
		err = w.r.live.Get(ctx, types.NamespacedName{Name: s.Spec.VolumeRef}, vol)
	}
	switch {
	case apierrors.IsNotFound(err):
		return nil, nil
	case err != nil:
		return nil, apierrors.NewServiceUnavailable(fmt.Sprintf("cannot check ECVolume %s of ECStripe %s: %v", s.Spec.VolumeRef, s.Name, err))
	case vol.DeletionTimestamp != nil:
		return nil, nil
	}
	return nil, apierrors.NewForbidden(storagev1.GroupVersion.WithResource("ecstripes").GroupResource(), s.Name,
		fmt.Errorf("it holds data of ECVolume %s (spec.volumeRef); stripes are deleted only with their volume: kubectl delete ecvolume %s", vol.Name, vol.Name))
}

func (w *ECStripeWebhook) validate(ctx context.Context, s *storagev1.ECStripe) (admission.Warnings, error) {
	var pol *storagev1.ErasureCodingPolicySpec
	if s.Spec.PolicyRef != "" {
		p, err := w.r.getPolicy(ctx, s.Spec.PolicyRef)
		if err != nil {
			return nil, apierrors.NewInternalError(err)
		}
		if p != nil {
			pol = &p.Spec
		}
	}
	errs, warns := storagev1.ValidateECStripeSpec(&s.Spec, pol, specPath)
	if !w.stripes.Synced() {
		return warns, errIndexNotSynced
	}
	errs = append(errs, storagev1.ValidateECStripeNeighbours(s.Name, &s.Spec, w.stripes, specPath)...)
	return warns, invalid(gkECStripe, s.Name, errs)
}

// errIndexNotSynced refuses (failurePolicy Fail) rather than judge against a
// partial index; clients retry on 503.
var errIndexNotSynced = apierrors.NewServiceUnavailable("the ECStripe index of the CoucheStor webhook has not synced yet; retry in a few seconds")
