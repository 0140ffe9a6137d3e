package csi

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// The node plugin's /metrics: the op counters (and the other
// couchestor_ecvolume_* series) of every export it runs, in one scrape
// target per node. Each export listens for its metrics on a loopback
// address of the plugin's pod (`ec-volume serve --metrics-bind-address`,
// chosen when the export starts and read back from its command line, like
// its NBD address), which no scraper outside the pod can reach; heat-up
// measures erasure-coded volumes by these counters, so they have to reach
// Prometheus. Each scrape of the plugin reads every running export's
// metrics (bounded in time and size), keeps the couchestor_ecvolume_*
// families and merges them (every series carries its volume label, so they
// never collide); `couchestor_csi_export_metrics_up{volume}` says per
// export whether its metrics were read.

const (
	// ExportMetricsPrefix is the prefix of the families the plugin passes on.
	ExportMetricsPrefix = "couchestor_ecvolume_"
	// exportMetricsLimit bounds one export's answer (a few KiB in practice).
	exportMetricsLimit = 4 << 20
	// exportMetricsTimeout bounds one export's answer in time.
	exportMetricsTimeout = 3 * time.Second
)

// MetricsHandler serves the exports' metrics (see above). ExportMetrics
// must be set for exports to have any.
func (d *Driver) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(exportGatherer{d: d}, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// exportGatherer gathers the running exports' families.
type exportGatherer struct{ d *Driver }

func (g exportGatherer) Gather() ([]*dto.MetricFamily, error) {
	vols, err := g.d.state().List()
	if err != nil {
		return nil, fmt.Errorf("list the node's volumes: %w", err)
	}
	slices.Sort(vols)
	up := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "couchestor_csi_export_metrics_up",
		Help: "1 when the node plugin read the metrics of the volume's running export in this scrape, 0 when it could not (its error is in the plugin's log)."},
		[]string{"volume"})
	var gs prometheus.Gatherers
	for _, v := range vols {
		pid := g.d.exportPID(v)
		if pid == 0 {
			continue // not exported on this node now
		}
		addr := argAfter(pid, "--metrics-bind-address")
		if addr == "" || addr == "0" {
			continue // started without metrics (before --export-metrics)
		}
		fams, err := scrapeExport(context.Background(), addr, v)
		if err != nil {
			g.d.logf("csi: volume %s: read its export's metrics: %v", v, err)
			up.WithLabelValues(v).Set(0)
			continue
		}
		up.WithLabelValues(v).Set(1)
		gs = append(gs, staticGatherer(fams))
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(up)
	return append(gs, reg).Gather()
}

type staticGatherer []*dto.MetricFamily

func (s staticGatherer) Gather() ([]*dto.MetricFamily, error) { return s, nil }

// scrapeExport reads one export's metrics and keeps the families of
// ExportMetricsPrefix whose every series is labelled with this volume.
func scrapeExport(ctx context.Context, addr, volume string) ([]*dto.MetricFamily, error) {
	ctx, cancel := context.WithTimeout(ctx, exportMetricsTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", string(expfmt.NewFormat(expfmt.TypeTextPlain)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET http://%s/metrics: %s", addr, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, exportMetricsLimit+1))
	if err != nil {
		return nil, err
	}
	if len(body) > exportMetricsLimit {
		return nil, fmt.Errorf("GET http://%s/metrics: answer longer than %d bytes", addr, exportMetricsLimit)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		return nil, fmt.Errorf("GET http://%s/metrics: %w", addr, err)
	}
	var out []*dto.MetricFamily
	for name, f := range fams {
		if !strings.HasPrefix(name, ExportMetricsPrefix) {
			continue
		}
		for _, m := range f.GetMetric() {
			if labelOf(m, "volume") != volume {
				return nil, fmt.Errorf("GET http://%s/metrics: %s has a series whose volume label is %q, not %q: not this volume's export", addr, name, labelOf(m, "volume"), volume)
			}
		}
		out = append(out, f)
	}
	return out, nil
}

func labelOf(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}
