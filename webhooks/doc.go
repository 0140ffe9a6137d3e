// Package webhooks holds thin admission adapters (defaulting and validating)
// over the pure rule functions of apis/storage/v1, for StoragePolicy,
// ErasureCodingPolicy and ECStripe, and the certificate plumbing that lets the
// API server call them. It owns no rule: every verdict comes from
// apis/storage/v1, which the controllers call too.
//
// What runs where:
//   - Mutating webhooks fill every schema default (minHealthyShards :=
//     dataShards included; ECStripe shardLocations are put in shardIndex order)
//     and already refuse object-local rule breaks, so users read the Go
//     message (field, value, rule) rather than the CRD's CEL message, which
//     the API server would evaluate first otherwise.
//   - Validating webhooks judge again, add the cross-object rules (ecPolicyRef
//     and policyRef exist; stripeId unique and no LBA overlap within a volume,
//     on create and update; an ErasureCodingPolicy with stripes keeps
//     dataShards, parityShards, stripeSizeBytes and algorithm; a referenced
//     ErasureCodingPolicy cannot be deleted) and return the soft problems as
//     warnings. failurePolicy Fail, sideEffects None, 5 s timeouts.
//
// Cross-object checks at scale read the manager's cache, never the API server
// in bulk: field indexes spec.volumeRef and spec.policyRef (ECStripe) and
// spec.ecPolicyRef (StoragePolicy), and pkg/stripeindex's StripeIndex (the
// one the controllers use too), an interval treap per volume fed by the
// ECStripe informer's events, so the overlap and stripeId
// checks cost O(log n) in the stripes of that volume (p99 10–13 µs at 100,000
// stripes, 128 B of index per stripe; BenchmarkStripeIndex). Until the index
// has synced, ECStripe admission and ErasureCodingPolicy update/delete answer
// 503 rather than judge against a partial view. A NotFound from the cache is
// confirmed against the API server, so a policy applied a moment before the
// object naming it is found.
//
// Races: admission sees the cache, not etcd. Two ECStripes created at the same
// moment for the same volume can both pass (each is checked before the other
// reaches the informer). The index keeps both (it never drops a duplicate),
// so the ECStripe controller (controllers/ecstripe_controller.go,
// reportCollisions) finds such overlaps and duplicate stripeIds after the
// fact from the same index (stripeindex.StripeIndex.Overlapping / StripeWithID with the
// stripe's own name as self) and reports them with an Event and a metric;
// neither stripe is deleted. The same window exists for a policy
// deleted while a stripe naming it is being admitted.
//
// Certificates, one mode per deployment (--webhook-cert-mode):
//   - self-signed: open-policy-agent/cert-controller rotates a CA and serving
//     certificate in the Secret couchestor-webhook-server-cert, injects the CA
//     into both webhook configurations, and the webhook server starts only
//     once the certificate exists; the readiness check fails until then.
//     With --webhook-local-url (make run-local) the configurations are
//     installed pointing at that URL and the certificate is copied from the
//     Secret into --webhook-cert-dir, since no kubelet mounts it.
//   - cert-manager: config/certmanager issues the certificate and injects the
//     CA; the operator only serves.
//   - olm: OLM mounts the certificate at /tmp/k8s-webhook-server/serving-certs
//     and injects the CA; the operator rotates nothing.
//
// With the shard-server registry configured, an ErasureCodingPolicy whose
// k+m exceeds the registered shard servers (or their distinct nodes) is
// admitted with a warning. Deleting an ECStripe is refused while its ECVolume
// exists and is not being deleted (the ECVolume's finalizer deletes stripes).
package webhooks
