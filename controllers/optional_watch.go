package controllers

import (
	"context"
	"fmt"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/source"
)

// OptionalWatch is a watch on a kind that a cluster may not serve: Mayastor's
// DiskPool (openebs.io v1beta3 or v1beta2) and the schema's MayastorVolume
// (which Mayastor 2.x does not have). A kind that is not served is reported
// (log, metric couchestor_optional_kind_served, and the StoragePolicy's
// MayastorAvailable condition when the backend needs it) and watched as soon
// as it appears; it is never a reason to fail or exit. Only object metadata
// is watched: the watch only triggers evaluations, and reads go through the
// backend.
type OptionalWatch struct {
	Group string
	Kind  string
	// Versions in order of preference; the first one served is watched.
	Versions  []string
	Namespace string
}

func (w OptionalWatch) String() string { return w.Kind + "." + w.Group }

var optionalKindServed = prometheus.NewGaugeVec(prometheus.GaugeOpts{
	Name: "couchestor_optional_kind_served",
	Help: "1 when the API server serves an optional kind (Mayastor's DiskPool, MayastorVolume) and the operator watches it; 0 while it does not.",
}, []string{"controller", "kind", "version"})

func init() { metrics.Registry.MustRegister(optionalKindServed) }

// DefaultOptionalPoll is how often a kind that is not served is looked for.
const DefaultOptionalPoll = 30 * time.Second

// optionalWatcher waits for the kinds and adds their watches to c.
type optionalWatcher struct {
	name    string
	c       controller.Controller
	mgr     manager.Manager
	disc    discovery.DiscoveryInterface
	watches []OptionalWatch
	h       handler.EventHandler
	poll    time.Duration
	log     logr.Logger
}

// addOptionalWatches registers a runnable that watches each kind once served.
func addOptionalWatches(mgr manager.Manager, name string, c controller.Controller, ws []OptionalWatch, h handler.EventHandler, poll time.Duration) error {
	if len(ws) == 0 {
		return nil
	}
	disc, err := discovery.NewDiscoveryClientForConfig(mgr.GetConfig())
	if err != nil {
		return fmt.Errorf("%s controller: discovery client: %w", name, err)
	}
	if poll <= 0 {
		poll = DefaultOptionalPoll
	}
	return mgr.Add(&optionalWatcher{name: name, c: c, mgr: mgr, disc: disc, watches: ws, h: h, poll: poll,
		log: ctrl.Log.WithName(name).WithName("optional-kinds")})
}

// NeedLeaderElection: the watches belong to a controller that runs on every
// replica's manager, but the controller itself starts only on the leader;
// adding the watch before it starts is fine either way.
func (o *optionalWatcher) NeedLeaderElection() bool { return true }

func (o *optionalWatcher) Start(ctx context.Context) error {
	pending := append([]OptionalWatch(nil), o.watches...)
	reported := map[string]bool{}
	for len(pending) > 0 {
		var still []OptionalWatch
		for _, w := range pending {
			v, err := servedVersion(o.disc, w)
			switch {
			case err != nil:
				o.log.Error(err, "discover whether the kind is served; retrying", "kind", w.String())
				still = append(still, w)
			case v == "":
				for _, ver := range w.Versions {
					optionalKindServed.WithLabelValues(o.name, w.String(), ver).Set(0)
				}
				if !reported[w.String()] {
					reported[w.String()] = true
					o.log.Info("optional kind not served by the API server; it is watched when it appears", "kind", w.String(), "versions", w.Versions, "poll", o.poll)
				}
				still = append(still, w)
			default:
				if err := o.watch(ctx, w, v); err != nil {
					o.log.Error(err, "watch the optional kind; retrying", "kind", w.String(), "version", v)
					still = append(still, w)
					continue
				}
				optionalKindServed.WithLabelValues(o.name, w.String(), v).Set(1)
				o.log.Info("watching optional kind", "kind", w.String(), "version", v)
			}
		}
		pending = still
		if len(pending) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(o.poll):
		}
	}
	<-ctx.Done()
	return nil
}

func (o *optionalWatcher) watch(ctx context.Context, w OptionalWatch, version string) error {
	obj := &metav1.PartialObjectMetadata{}
	obj.SetGroupVersionKind(schema.GroupVersionKind{Group: w.Group, Version: version, Kind: w.Kind})
	preds := []predicate.Predicate{}
	if w.Namespace != "" {
		ns := w.Namespace
		preds = append(preds, predicate.NewPredicateFuncs(func(o client.Object) bool { return o.GetNamespace() == ns }))
	}
	return o.c.Watch(source.Kind(o.mgr.GetCache(), client.Object(obj), o.h, preds...))
}

// servedVersion is the first of w.Versions whose group version lists w.Kind,
// "" when none does.
func servedVersion(d discovery.DiscoveryInterface, w OptionalWatch) (string, error) {
	for _, v := range w.Versions {
		list, err := d.ServerResourcesForGroupVersion(schema.GroupVersion{Group: w.Group, Version: v}.String())
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return "", err
		}
		for _, r := range list.APIResources {
			if r.Kind == w.Kind {
				return v, nil
			}
		}
	}
	return "", nil
}
