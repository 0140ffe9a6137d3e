package helmhybrid

import (
	"context"
	"fmt"

	"helm.sh/helm/v3/pkg/chartutil"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	dataplanev1alpha1 "github.com/billyronks/couchestor/apis/dataplane/v1alpha1"
)

var dataPlaneGVK = dataplanev1alpha1.GroupVersion.WithKind("DataPlane")

// TranslateDataPlane turns a DataPlane into values of the
// couchestor-dataplane chart. Only fields set in the spec are emitted; Helm
// merges them over the chart's values.yaml, whose defaults equal the CRD's.
// The object's identity becomes `owner`, so hook objects outside the release
// manifest (the token Secret) are garbage-collected with the DataPlane.
func TranslateDataPlane(ctx context.Context, u *unstructured.Unstructured) (chartutil.Values, error) {
	return translateDataPlane(ctx, u, nil)
}

// translateDataPlane is TranslateDataPlane under policy p (nil: none). A
// refusal is the translator's error, which the Helm reconciler reports as
// condition Irreconcilable (reason ErrorGettingValues) without rendering.
func translateDataPlane(_ context.Context, u *unstructured.Unstructured, p *dataplanev1alpha1.Policy) (chartutil.Values, error) {
	if _, ok := u.Object["spec"]; !ok {
		return nil, fmt.Errorf("DataPlane %s/%s: %w", u.GetNamespace(), u.GetName(), errNoSpec)
	}
	var dp dataplanev1alpha1.DataPlane
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(u.Object, &dp, true); err != nil {
		return nil, fmt.Errorf("DataPlane %s/%s: decode spec: %w", u.GetNamespace(), u.GetName(), err)
	}
	if p != nil {
		if errs := p.Validate(&dp); len(errs) > 0 {
			return nil, fmt.Errorf("DataPlane %s/%s refused by the operator's policy: %s", u.GetNamespace(), u.GetName(), errs.ToAggregate().Error())
		}
	}
	return DataPlaneValues(&dp)
}

// DataPlaneValues is the chart values of a typed DataPlane.
func DataPlaneValues(dp *dataplanev1alpha1.DataPlane) (chartutil.Values, error) {
	s := dp.Spec
	v := chartutil.Values{}
	if s.Image != "" {
		v["image"] = s.Image
	}
	if s.ImagePullPolicy != "" {
		v["imagePullPolicy"] = string(s.ImagePullPolicy)
	}
	servers := make([]any, 0, len(s.ShardServers))
	for _, ss := range s.ShardServers {
		servers = append(servers, map[string]any{"node": ss.Node, "diskPool": ss.DiskPool})
	}
	v["shardServers"] = servers
	if s.Port != nil {
		v["port"] = int64(*s.Port)
	}
	st := map[string]any{}
	if s.Storage.Type != "" {
		st["type"] = string(s.Storage.Type)
	}
	if s.Storage.Size != nil {
		st["size"] = s.Storage.Size.String()
	}
	if s.Storage.MayastorProtocol != "" {
		st["mayastorProtocol"] = s.Storage.MayastorProtocol
	}
	if s.Storage.HostPath != "" {
		st["hostPath"] = s.Storage.HostPath
	}
	if len(st) > 0 {
		v["storage"] = st
	}
	if len(s.Resources.Limits) > 0 || len(s.Resources.Requests) > 0 {
		r, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&s.Resources)
		if err != nil {
			return nil, fmt.Errorf("spec.resources: %w", err)
		}
		// The spec's resources replace the chart's defaults as a whole: a
		// user who sets only limits must not inherit the default requests,
		// and Helm deletes a default key whose value is null.
		for _, k := range []string{"limits", "requests"} {
			if _, ok := r[k]; !ok {
				r[k] = nil
			}
		}
		v["resources"] = r
	}
	if len(s.Tolerations) > 0 {
		ts := make([]any, 0, len(s.Tolerations))
		for i := range s.Tolerations {
			t, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&s.Tolerations[i])
			if err != nil {
				return nil, fmt.Errorf("spec.tolerations[%d]: %w", i, err)
			}
			ts = append(ts, t)
		}
		v["tolerations"] = ts
	}
	m := map[string]any{}
	setBool := func(k string, b *bool) {
		if b != nil {
			m[k] = *b
		}
	}
	setBool("serviceMonitor", s.Monitoring.ServiceMonitor)
	setBool("prometheusRule", s.Monitoring.PrometheusRule)
	setBool("grafanaDashboard", s.Monitoring.GrafanaDashboard)
	if s.Monitoring.ScrapeInterval != "" {
		m["scrapeInterval"] = s.Monitoring.ScrapeInterval
	}
	if s.Monitoring.MayastorNamespace != "" {
		m["mayastorNamespace"] = s.Monitoring.MayastorNamespace
	}
	if len(s.Monitoring.IOEngineServiceSelector) > 0 {
		sel := map[string]any{}
		for k, val := range s.Monitoring.IOEngineServiceSelector {
			sel[k] = val
		}
		m["ioEngineServiceSelector"] = sel
	}
	if s.Monitoring.IOPSWindow != "" {
		m["iopsWindow"] = s.Monitoring.IOPSWindow
	}
	if len(m) > 0 {
		v["monitoring"] = m
	}
	if dp.UID != "" {
		v["owner"] = map[string]any{
			"apiVersion": dataplanev1alpha1.GroupVersion.String(),
			"kind":       "DataPlane",
			"name":       dp.Name,
			"uid":        string(dp.UID),
		}
	}
	return v, nil
}
