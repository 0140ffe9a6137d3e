// Package registry is how shard servers are found: each shard server keeps a
// coordination.k8s.io Lease per pool (name "shard-server-<pool>") that names
// its pool, node and address and is renewed periodically; writers, readers and
// the operator find shard servers only through Lookup, which returns the
// servers whose Lease is still live. It also loads the shard clients' TLS CA
// and token from a Secret.
package registry

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/billyronks/couchestor/pkg/shardserver"
)

// Labels and annotations of a shard-server Lease.
const (
	LabelShardServer  = "storage.billyronks.io/shard-server"
	AnnotationPool    = "storage.billyronks.io/pool"
	AnnotationNode    = "storage.billyronks.io/node"
	AnnotationAddress = "storage.billyronks.io/address"
	leaseNamePrefix   = "shard-server-"
	DefaultNamespace  = "couchestor-system"
	// DefaultShardSecret is the shard client Secret (ca.crt, token) that
	// the data-plane chart writes for a DataPlane named couchestor
	// (<name>-shard-token), the install chart's default csi.dataPlane: the
	// operator's --shard-client-secret and couchestor csi's --shard-secret
	// default to it in DefaultNamespace, so every install (chart, kustomize,
	// OLM) reads the Secret that DataPlane writes.
	DefaultShardSecret = "couchestor-shard-token"
	SecretKeyCA        = "ca.crt"
	SecretKeyToken     = "token"
)

// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get

// Entry is one registered shard server.
type Entry struct {
	Pool    string
	Node    string
	Address string // host:port of its HTTPS endpoint
	Holder  string
	Renewed time.Time
	Expires time.Time
}

// LeaseName is the Lease of pool.
func LeaseName(pool string) string { return leaseNamePrefix + pool }

// Registrar keeps one shard server's Lease.
type Registrar struct {
	Client    client.Client
	Namespace string
	Pool      string
	Node      string
	Address   string
	// LeaseDuration is how long the Lease is valid without renewal (default 15s);
	// it is renewed every LeaseDuration/3.
	LeaseDuration time.Duration
	Now           func() time.Time
}

func (r *Registrar) defaults() {
	if r.LeaseDuration <= 0 {
		r.LeaseDuration = 15 * time.Second
	}
	if r.Now == nil {
		r.Now = time.Now
	}
	if r.Namespace == "" {
		r.Namespace = DefaultNamespace
	}
}

func (r *Registrar) holder() string { return r.Node + "/" + r.Address }

// Register creates or takes over the pool's Lease. It refuses to take a live
// Lease held by another server of the same pool (two servers on one pool
// would hand out the same ranges).
func (r *Registrar) Register(ctx context.Context) error {
	r.defaults()
	if r.Pool == "" || r.Node == "" || r.Address == "" {
		return errors.New("register shard server: pool, node and address must not be empty")
	}
	now := metav1.NewMicroTime(r.Now())
	lease := &coordinationv1.Lease{}
	key := client.ObjectKey{Namespace: r.Namespace, Name: LeaseName(r.Pool)}
	err := r.Client.Get(ctx, key, lease)
	if apierrors.IsNotFound(err) {
		lease = &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: r.Namespace, Name: key.Name}}
		r.fill(lease, now, true)
		if err := r.Client.Create(ctx, lease); err != nil {
			return fmt.Errorf("register shard server of pool %s: create Lease %s: %w", r.Pool, key, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("register shard server of pool %s: get Lease %s: %w", r.Pool, key, err)
	}
	if e := entryOf(lease); e.Holder != r.holder() && e.Expires.After(r.Now()) {
		return fmt.Errorf("register shard server of pool %s: Lease %s is held by %q until %s; one pool has one shard server", r.Pool, key, e.Holder, e.Expires.Format(time.RFC3339))
	}
	r.fill(lease, now, true)
	if err := r.Client.Update(ctx, lease); err != nil {
		return fmt.Errorf("register shard server of pool %s: take over Lease %s: %w", r.Pool, key, err)
	}
	return nil
}

func (r *Registrar) fill(l *coordinationv1.Lease, now metav1.MicroTime, acquire bool) {
	if l.Labels == nil {
		l.Labels = map[string]string{}
	}
	if l.Annotations == nil {
		l.Annotations = map[string]string{}
	}
	l.Labels[LabelShardServer] = "true"
	l.Annotations[AnnotationPool] = r.Pool
	l.Annotations[AnnotationNode] = r.Node
	l.Annotations[AnnotationAddress] = r.Address
	l.Spec.HolderIdentity = ptr.To(r.holder())
	l.Spec.LeaseDurationSeconds = ptr.To(int32((r.LeaseDuration + time.Second - 1) / time.Second))
	l.Spec.RenewTime = &now
	if acquire {
		l.Spec.AcquireTime = &now
	}
}

// Renew extends the Lease once.
func (r *Registrar) Renew(ctx context.Context) error {
	r.defaults()
	lease := &coordinationv1.Lease{}
	key := client.ObjectKey{Namespace: r.Namespace, Name: LeaseName(r.Pool)}
	if err := r.Client.Get(ctx, key, lease); err != nil {
		if apierrors.IsNotFound(err) {
			return r.Register(ctx)
		}
		return fmt.Errorf("renew Lease %s: %w", key, err)
	}
	if h := ptr.Deref(lease.Spec.HolderIdentity, ""); h != r.holder() {
		return fmt.Errorf("renew Lease %s: now held by %q, not %q", key, h, r.holder())
	}
	r.fill(lease, metav1.NewMicroTime(r.Now()), false)
	if err := r.Client.Update(ctx, lease); err != nil {
		return fmt.Errorf("renew Lease %s: %w", key, err)
	}
	return nil
}

// Run registers, renews every LeaseDuration/3 until ctx ends, then deletes
// the Lease so writers stop choosing this server at once. A failed renewal is
// retried at the next tick; onErr (may be nil) hears about it.
func (r *Registrar) Run(ctx context.Context, onErr func(error)) error {
	if err := r.Register(ctx); err != nil {
		return err
	}
	t := time.NewTicker(r.LeaseDuration / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			return r.Release(dctx)
		case <-t.C:
			if err := r.Renew(ctx); err != nil && onErr != nil && ctx.Err() == nil {
				onErr(err)
			}
		}
	}
}

// Release deletes the Lease if this server still holds it.
func (r *Registrar) Release(ctx context.Context) error {
	r.defaults()
	lease := &coordinationv1.Lease{}
	key := client.ObjectKey{Namespace: r.Namespace, Name: LeaseName(r.Pool)}
	if err := r.Client.Get(ctx, key, lease); err != nil {
		return client.IgnoreNotFound(err)
	}
	if ptr.Deref(lease.Spec.HolderIdentity, "") != r.holder() {
		return nil
	}
	if err := r.Client.Delete(ctx, lease, client.Preconditions{ResourceVersion: &lease.ResourceVersion}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("release Lease %s: %w", key, err)
	}
	return nil
}

func entryOf(l *coordinationv1.Lease) Entry {
	e := Entry{
		Pool:    l.Annotations[AnnotationPool],
		Node:    l.Annotations[AnnotationNode],
		Address: l.Annotations[AnnotationAddress],
		Holder:  ptr.Deref(l.Spec.HolderIdentity, ""),
	}
	if l.Spec.RenewTime != nil {
		e.Renewed = l.Spec.RenewTime.Time
		e.Expires = e.Renewed.Add(time.Duration(ptr.Deref(l.Spec.LeaseDurationSeconds, 0)) * time.Second)
	}
	return e
}

// Lookup finds live shard servers.
type Lookup struct {
	Client    client.Reader
	Namespace string
	Now       func() time.Time
}

// Servers returns the shard servers whose Lease is live, sorted by pool.
func (l *Lookup) Servers(ctx context.Context) ([]Entry, error) {
	ns := l.Namespace
	if ns == "" {
		ns = DefaultNamespace
	}
	now := time.Now
	if l.Now != nil {
		now = l.Now
	}
	var list coordinationv1.LeaseList
	if err := l.Client.List(ctx, &list, client.InNamespace(ns), client.MatchingLabels{LabelShardServer: "true"}); err != nil {
		return nil, fmt.Errorf("list shard-server Leases in %s: %w", ns, err)
	}
	t := now()
	var out []Entry
	for i := range list.Items {
		e := entryOf(&list.Items[i])
		if e.Pool == "" || e.Address == "" || !e.Expires.After(t) {
			continue
		}
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Pool < out[j].Pool })
	return out, nil
}

// ByPool returns the live shard servers keyed by pool.
func (l *Lookup) ByPool(ctx context.Context) (map[string]Entry, error) {
	list, err := l.Servers(ctx)
	if err != nil {
		return nil, err
	}
	m := make(map[string]Entry, len(list))
	for _, e := range list {
		m[e.Pool] = e
	}
	return m, nil
}

// ClientConfigFromSecret reads the shard servers' CA (key "ca.crt") and bearer
// token (key "token") from a Secret.
func ClientConfigFromSecret(ctx context.Context, c client.Reader, namespace, name string) (shardserver.ClientConfig, error) {
	var s corev1.Secret
	if err := c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, &s); err != nil {
		return shardserver.ClientConfig{}, fmt.Errorf("read shard-server Secret %s/%s: %w", namespace, name, err)
	}
	ca, tok := s.Data[SecretKeyCA], s.Data[SecretKeyToken]
	if len(ca) == 0 || len(tok) == 0 {
		return shardserver.ClientConfig{}, fmt.Errorf("shard-server Secret %s/%s must hold non-empty %q and %q", namespace, name, SecretKeyCA, SecretKeyToken)
	}
	return shardserver.ClientConfig{CAPEM: ca, Token: string(tok)}, nil
}
