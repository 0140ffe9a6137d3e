// Package helmhybrid makes the operator a Helm-plus-Go hybrid: it reads the
// watches file (helm-operator-plugins format), loads each watched kind's chart
// from a file system (the binary's embedded assets, or the repository in
// tests), and registers one helm-operator-plugins reconciler per kind in the
// same controller-runtime manager as the Go reconcilers.
//
// Every watched kind must have a typed value translator here (Translators):
// the chart's values come from a Go type with a real schema, never from a
// spec passed through unchecked. A watched kind without one is an error.
//
// The package owns nothing in the charts themselves; it must not render or
// apply objects on its own — the Helm reconciler does that.
package helmhybrid

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strings"
	"time"

	"github.com/operator-framework/helm-operator-plugins/pkg/reconciler"
	"github.com/operator-framework/helm-operator-plugins/pkg/values"
	"github.com/operator-framework/helm-operator-plugins/pkg/watches"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/yaml"

	dataplanev1alpha1 "github.com/billyronks/couchestor/apis/dataplane/v1alpha1"
)

// WatchesFile is the watches file's path inside the assets file system.
const WatchesFile = "watches.yaml"

// Options adjust the reconcilers beyond what the watches file says.
type Options struct {
	// ReconcilePeriod overrides every watch's reconcilePeriod when non-zero.
	ReconcilePeriod time.Duration
	// Policy, when set, is what a DataPlane may ask for: a DataPlane that
	// asks for more is refused before anything is rendered (condition
	// Irreconcilable, reason ErrorGettingValues, naming field, value and
	// flag), and one in a namespace outside Policy.Namespaces that never got
	// a release is let go on deletion. The operator always sets it.
	Policy *dataplanev1alpha1.Policy
}

// LoadWatches parses the watches file in assets and loads each watch's chart
// from assets. Unlike watches.Load it reads no path from the host's disk, so
// an embedded file system works.
func LoadWatches(assets fs.FS) ([]watches.Watch, error) {
	raw, err := fs.ReadFile(assets, WatchesFile)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", WatchesFile, err)
	}
	var ws []watches.Watch
	if err := yaml.UnmarshalStrict(raw, &ws); err != nil {
		return nil, fmt.Errorf("parse %s: %w", WatchesFile, err)
	}
	if len(ws) == 0 {
		return nil, fmt.Errorf("%s: no watches", WatchesFile)
	}
	seen := map[schema.GroupVersionKind]bool{}
	for i := range ws {
		w := &ws[i]
		gvk := w.GroupVersionKind
		if gvk.Version == "" || gvk.Kind == "" {
			return nil, fmt.Errorf("%s entry %d: version and kind must not be empty (got %q)", WatchesFile, i, gvk.String())
		}
		if seen[gvk] {
			return nil, fmt.Errorf("%s entry %d: duplicate kind %s", WatchesFile, i, gvk)
		}
		seen[gvk] = true
		if len(w.OverrideValues) > 0 {
			// Overrides would bypass the typed translator (and the chart's schema
			// is the only check left); keep values in one place.
			return nil, fmt.Errorf("%s entry %d (%s): overrideValues are not supported; put the setting in the kind's spec", WatchesFile, i, gvk.Kind)
		}
		c, err := LoadChart(assets, w.ChartPath)
		if err != nil {
			return nil, fmt.Errorf("%s entry %d (%s): %w", WatchesFile, i, gvk.Kind, err)
		}
		w.Chart = c
		if w.WatchDependentResources == nil {
			t := true
			w.WatchDependentResources = &t
		}
		if w.Selector == nil {
			w.Selector = &metav1.LabelSelector{}
		}
	}
	return ws, nil
}

// LoadChart loads the chart in directory dir of fsys.
func LoadChart(fsys fs.FS, dir string) (*chart.Chart, error) {
	dir = path.Clean(strings.TrimPrefix(dir, "./"))
	var files []*loader.BufferedFile
	err := fs.WalkDir(fsys, dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		data, err := fs.ReadFile(fsys, p)
		if err != nil {
			return err
		}
		files = append(files, &loader.BufferedFile{Name: strings.TrimPrefix(p, dir+"/"), Data: data})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read chart %s: %w", dir, err)
	}
	c, err := loader.LoadFiles(files)
	if err != nil {
		return nil, fmt.Errorf("load chart %s: %w", dir, err)
	}
	return c, nil
}

// Setup registers one Helm reconciler per watch in assets with mgr. The
// manager's scheme keeps the typed Go kinds: the reconcilers work on
// unstructured objects without re-registering them.
func Setup(mgr ctrl.Manager, assets fs.FS, o Options) error {
	ws, err := LoadWatches(assets)
	if err != nil {
		return err
	}
	for _, w := range ws {
		newTranslator, ok := Translators[w.GroupVersionKind]
		if !ok {
			return fmt.Errorf("watched kind %s has no value translator in internal/helmhybrid", w.GroupVersionKind)
		}
		tr := newTranslator(o.Policy)
		opts := []reconciler.Option{
			reconciler.WithGroupVersionKind(w.GroupVersionKind),
			reconciler.WithChart(*w.Chart),
			reconciler.WithValueTranslator(tr),
			reconciler.SkipDependentWatches(!*w.WatchDependentResources),
			reconciler.WithSelector(*w.Selector),
			reconciler.WithLog(ctrl.Log.WithName("helm").WithName(w.Kind)),
			reconciler.SkipPrimaryGVKSchemeRegistration(mgr.GetScheme().Recognizes(w.GroupVersionKind)),
		}
		if w.MaxConcurrentReconciles != nil {
			opts = append(opts, reconciler.WithMaxConcurrentReconciles(*w.MaxConcurrentReconciles))
		}
		period := time.Duration(0)
		if w.ReconcilePeriod != nil {
			period = w.ReconcilePeriod.Duration
		}
		if o.ReconcilePeriod != 0 {
			period = o.ReconcilePeriod
		}
		if period != 0 {
			opts = append(opts, reconciler.WithReconcilePeriod(period))
		}
		r, err := reconciler.New(opts...)
		if err != nil {
			return fmt.Errorf("helm reconciler for %s: %w", w.GroupVersionKind, err)
		}
		if err := r.SetupWithManager(mgr); err != nil {
			return fmt.Errorf("set up helm reconciler for %s: %w", w.GroupVersionKind, err)
		}
	}
	if err := (&ShardServerRollout{Client: mgr.GetClient(), Reader: mgr.GetAPIReader(), Recorder: mgr.GetEventRecorderFor("couchestor-dataplane")}).SetupWithManager(mgr); err != nil { //nolint:staticcheck // Eventf on a record.EventRecorder
		return fmt.Errorf("set up the DataPlane shard-server rollout: %w", err)
	}
	if o.Policy != nil {
		if err := ctrl.NewControllerManagedBy(mgr).Named("dataplane-unmanaged-namespace").
			For(&dataplanev1alpha1.DataPlane{}).
			Complete(&unmanagedFinalizerRelease{client: mgr.GetClient(), policy: *o.Policy}); err != nil {
			return fmt.Errorf("set up the DataPlane finalizer release: %w", err)
		}
	}
	return nil
}

// errNoSpec is returned for objects without a spec.
var errNoSpec = errors.New("object has no spec")

// Translators maps every Helm-managed kind to its typed value translator
// under a policy (nil: none).
var Translators = map[schema.GroupVersionKind]func(*dataplanev1alpha1.Policy) values.Translator{
	dataPlaneGVK: func(p *dataplanev1alpha1.Policy) values.Translator {
		return values.TranslatorFunc(func(ctx context.Context, u *unstructured.Unstructured) (chartutil.Values, error) {
			return translateDataPlane(ctx, u, p)
		})
	},
}
