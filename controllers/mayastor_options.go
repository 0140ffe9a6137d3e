package controllers

import (
	"flag"
	"fmt"
	"time"

	"github.com/go-logr/logr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/billyronks/couchestor/pkg/mayastorrest"
	"github.com/billyronks/couchestor/pkg/migration"
)

// Mayastor backends.
const (
	// BackendREST is Mayastor 2.x: volumes behind the control plane's REST API.
	BackendREST = "rest"
	// BackendCRD is the data-model schema's MayastorVolume kind.
	BackendCRD = "crd"
)

// MayastorOptions are the flags that say how the operator reaches Mayastor.
type MayastorOptions struct {
	Backend   string
	APIURL    string
	TokenFile string
	CAFile    string
	Timeout   time.Duration
	PageSize  int
	Lever     string
	// LockDuration is how long the placement lock of a crashed holder blocks others.
	LockDuration time.Duration
	// KindPoll is how often a Mayastor kind that is not served is looked for.
	KindPoll time.Duration
}

// BindFlags registers the flags on fs.
func (o *MayastorOptions) BindFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.Backend, "mayastor-backend", BackendREST, "How volumes are read and moved: \"rest\" (Mayastor 2.x's control-plane REST API; volumes are not Kubernetes objects) or \"crd\" (the data-model schema's MayastorVolume kind, openebs.io/v1alpha1).")
	fs.StringVar(&o.APIURL, "mayastor-api-url", "http://mayastor-api-rest.mayastor.svc:8081", "Mayastor's REST API (the <release>-api-rest Service, port 8081 plain HTTP), with --mayastor-backend=rest.")
	fs.StringVar(&o.TokenFile, "mayastor-api-token-file", "", "File holding a bearer token for the REST API, re-read on every request. Empty: no Authorization header (the chart runs the API with --no-auth).")
	fs.StringVar(&o.CAFile, "mayastor-api-ca-file", "", "PEM CA bundle for an https --mayastor-api-url. Empty: the system roots.")
	fs.DurationVar(&o.Timeout, "mayastor-api-timeout", mayastorrest.DefaultTimeout, "Timeout of one REST request.")
	fs.IntVar(&o.PageSize, "mayastor-api-page-size", mayastorrest.DefaultPageSize, "max_entries of one page of GET /v0/volumes.")
	fs.StringVar(&o.Lever, "mayastor-placement-lever", "", "How a new replica is steered to its tier: \"cordon\" (pool cordon, OpenEBS 4.4+), \"label\" (withhold a pool label the volume's topology requires, v2.7.1+), or empty: probe for cordon once, else label.")
	fs.DurationVar(&o.KindPoll, "mayastor-kind-poll-interval", DefaultOptionalPoll, "How often the operator looks for Mayastor kinds the API server does not serve yet (DiskPool; MayastorVolume with --mayastor-backend=crd); once served they are watched. A missing kind is never a reason to exit.")
	fs.DurationVar(&o.LockDuration, "mayastor-placement-lock-duration", 60*time.Second, "How long the cluster-wide placement lock of an operator that died holding it blocks the next one.")
}

// Backend builds the configured backend and the optional watches that
// trigger evaluations. lockNamespace and identity name the placement lock's
// Lease and this holder.
func (o *MayastorOptions) Build(c client.Client, mayastorNS, lockNamespace, identity string, log logr.Logger) (migration.VolumeBackend, []OptionalWatch, error) {
	pools := OptionalWatch{Group: "openebs.io", Kind: "DiskPool", Versions: []string{"v1beta3", "v1beta2"}, Namespace: mayastorNS}
	switch o.Backend {
	case BackendCRD:
		msv := OptionalWatch{Group: "openebs.io", Kind: "MayastorVolume", Versions: []string{"v1alpha1"}, Namespace: mayastorNS}
		return &migration.MayastorVolumeBackend{Client: c, Namespace: mayastorNS}, []OptionalWatch{msv, pools}, nil
	case BackendREST:
		if o.PageSize < 1 {
			return nil, nil, fmt.Errorf("--mayastor-api-page-size=%d: must be at least 1", o.PageSize)
		}
		if o.Timeout <= 0 {
			return nil, nil, fmt.Errorf("--mayastor-api-timeout=%v: must be positive", o.Timeout)
		}
		switch o.Lever {
		case "", migration.LeverCordon, migration.LeverLabel:
		default:
			return nil, nil, fmt.Errorf("--mayastor-placement-lever=%q: must be %q, %q or empty", o.Lever, migration.LeverCordon, migration.LeverLabel)
		}
		if o.LockDuration < time.Second {
			return nil, nil, fmt.Errorf("--mayastor-placement-lock-duration=%v: must be at least 1s", o.LockDuration)
		}
		api, err := mayastorrest.New(mayastorrest.Config{URL: o.APIURL, TokenFile: o.TokenFile, CAFile: o.CAFile, Timeout: o.Timeout, PageSize: o.PageSize})
		if err != nil {
			return nil, nil, fmt.Errorf("--mayastor-api-*: %w", err)
		}
		lock := &migration.PlacementLock{Client: c, Namespace: lockNamespace, Name: "couchestor-mayastor-placement", Identity: identity, Duration: o.LockDuration}
		return &migration.RESTBackend{API: api, Lock: lock, Lever: o.Lever, URL: o.APIURL, Log: log}, []OptionalWatch{pools}, nil
	default:
		return nil, nil, fmt.Errorf("--mayastor-backend=%q: must be %q or %q", o.Backend, BackendREST, BackendCRD)
	}
}
