package iops

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math"
	"net/http"
	"os"
	"strings"
	"text/template"
	"time"

	"github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
)

// Defaults for Mayastor 2.x's io-engine exporter (FACTS.md).
const (
	DefaultReadMetric  = "volume_num_read_ops"
	DefaultWriteMetric = "volume_num_write_ops"
	DefaultVolumeLabel = "pv_name"
	// DefaultQueryTemplate is the IOPS expression. Fields: .Window ("5400s"),
	// .ReadMetric, .WriteMetric, .VolumeLabel.
	DefaultQueryTemplate = `sum by ({{.VolumeLabel}}) (rate({{.ReadMetric}}[{{.Window}}]) + rate({{.WriteMetric}}[{{.Window}}]))`
	// DefaultCoverageTemplate is the instant-vector selector whose sample
	// timestamps say how well a volume's series covers the window (see the
	// package doc, rule 3). Fields as for DefaultQueryTemplate.
	DefaultCoverageTemplate = `{{.ReadMetric}}`
)

// The op counters of an erasure-coded volume's export (`couchestor
// ec-volume serve`, its --metrics-bind-address): what the StoragePolicy
// controller measures erasure-coded volumes by (heat-up). The volume label
// holds the ECVolume's name, which is its PV's CSI volume handle. Stable
// API: the export registers them under these names.
const (
	ECVolumeReadMetric  = "couchestor_ecvolume_read_ops_total"
	ECVolumeWriteMetric = "couchestor_ecvolume_write_ops_total"
	ECVolumeLabel       = "volume"
)

// kindLabel tags each half of the combined query so one request carries both.
const kindLabel = "couchestor_kind"

// Answer is one batched answer: per volume, the IOPS over the window and how
// its samples cover the window. A volume absent from IOPS has no series.
type Answer struct {
	IOPS map[string]float64
	// First is, per volume, the Unix time (seconds) of the earliest sample
	// seen from the window's start on (the sample current at the start may
	// be a little older). Nil when the coverage rule is disabled.
	First map[string]float64
	// MaxGap is, per volume, the longest time (seconds) any point of the
	// window waited for its latest sample: the largest gap between two
	// samples, or since the last one, to within one scrape interval. Nil when
	// the coverage rule is disabled.
	MaxGap map[string]float64
	// Age is, per volume, how old its newest sample is at At (seconds). Nil
	// when the coverage rule is disabled.
	Age map[string]float64
	// At is the evaluation time of the query; the window is (At-W, At].
	At time.Time
	// Query is the PromQL that was sent.
	Query string
}

// Querier answers the batched IOPS query for one sampling window.
type Querier interface {
	QueryIOPS(ctx context.Context, window time.Duration) (Answer, error)
}

// PrometheusConfig configures a PrometheusSource.
type PrometheusConfig struct {
	// Address of the Prometheus HTTP API, e.g. http://prometheus:9090.
	Address string
	// BearerTokenFile is read on every request (so rotated tokens work). Optional.
	BearerTokenFile string
	// CAFile holds PEM CA certificates for an https Address. Optional.
	CAFile string
	// Timeout bounds one query. Zero means 30 s.
	Timeout time.Duration

	ReadMetric  string
	WriteMetric string
	VolumeLabel string
	// QueryTemplate is the IOPS expression (text/template, see DefaultQueryTemplate).
	QueryTemplate string
	// CoverageTemplate is the selector whose sample timestamps measure
	// coverage (see DefaultCoverageTemplate). "-" disables the coverage rule
	// (every series then counts as covering the whole window).
	CoverageTemplate string
	// ScrapeInterval is Prometheus's scrape interval for the exporter: the
	// resolution at which gaps are measured. Zero means 30 s.
	ScrapeInterval time.Duration
}

// PrometheusSource is the Querier backed by Prometheus's HTTP API.
type PrometheusSource struct {
	api      promv1.API
	timeout  time.Duration
	label    string
	iopsTmpl *template.Template
	covTmpl  *template.Template
	fields   templateFields
	step     string
	now      func() time.Time
}

type templateFields struct {
	Window      string
	ReadMetric  string
	WriteMetric string
	VolumeLabel string
}

// NewPrometheusSource checks the configuration and builds a source. It does
// not contact Prometheus.
func NewPrometheusSource(cfg PrometheusConfig) (*PrometheusSource, error) {
	if cfg.Address == "" {
		return nil, errors.New("prometheus address: must not be empty")
	}
	def := func(v, d string) string {
		if v == "" {
			return d
		}
		return v
	}
	f := templateFields{
		ReadMetric:  def(cfg.ReadMetric, DefaultReadMetric),
		WriteMetric: def(cfg.WriteMetric, DefaultWriteMetric),
		VolumeLabel: def(cfg.VolumeLabel, DefaultVolumeLabel),
	}
	if !model.LabelName(f.VolumeLabel).IsValidLegacy() {
		return nil, fmt.Errorf("volume label %q: not a valid Prometheus label name", f.VolumeLabel)
	}
	iopsTmpl, err := template.New("iops").Option("missingkey=error").Parse(def(cfg.QueryTemplate, DefaultQueryTemplate))
	if err != nil {
		return nil, fmt.Errorf("query template: %w", err)
	}
	var covTmpl *template.Template
	if cfg.CoverageTemplate != "-" {
		covTmpl, err = template.New("coverage").Option("missingkey=error").Parse(def(cfg.CoverageTemplate, DefaultCoverageTemplate))
		if err != nil {
			return nil, fmt.Errorf("coverage template: %w", err)
		}
	}
	rt, err := roundTripper(cfg)
	if err != nil {
		return nil, err
	}
	c, err := api.NewClient(api.Config{Address: cfg.Address, RoundTripper: rt})
	if err != nil {
		return nil, fmt.Errorf("prometheus client for %s: %w", cfg.Address, err)
	}
	if cfg.ScrapeInterval < 0 {
		return nil, fmt.Errorf("scrape interval %s: must not be negative", cfg.ScrapeInterval)
	}
	if cfg.ScrapeInterval == 0 {
		cfg.ScrapeInterval = 30 * time.Second
	}
	s := &PrometheusSource{api: promv1.NewAPI(c), timeout: cfg.Timeout, label: f.VolumeLabel, iopsTmpl: iopsTmpl, covTmpl: covTmpl, fields: f,
		step: RenderWindow(cfg.ScrapeInterval), now: time.Now}
	if s.timeout <= 0 {
		s.timeout = 30 * time.Second
	}
	// Render once now so a broken template fails at start-up, not at the first evaluation.
	if _, err := s.Query(time.Hour); err != nil {
		return nil, err
	}
	return s, nil
}

// RenderWindow renders a sampling window as PromQL whole seconds, rounded up
// ("[5400s]"); at least 1s.
func RenderWindow(w time.Duration) string {
	s := int64(math.Ceil(w.Seconds()))
	if s < 1 {
		s = 1
	}
	return fmt.Sprintf("%ds", s)
}

// Query returns the PromQL sent for a window: the IOPS expression and, when
// the coverage rule is enabled, two subqueries over the coverage selector at
// the scrape interval's resolution — the earliest sample timestamp and the
// longest wait for a sample — all joined into one request.
func (s *PrometheusSource) Query(window time.Duration) (string, error) {
	f := s.fields
	f.Window = RenderWindow(window)
	var b strings.Builder
	if err := s.iopsTmpl.Execute(&b, f); err != nil {
		return "", fmt.Errorf("render query template: %w", err)
	}
	q := fmt.Sprintf(`label_replace(%s, %q, "iops", "", "")`, b.String(), kindLabel)
	if s.covTmpl != nil {
		b.Reset()
		if err := s.covTmpl.Execute(&b, f); err != nil {
			return "", fmt.Errorf("render coverage template: %w", err)
		}
		sel := b.String()
		l := f.VolumeLabel
		first := fmt.Sprintf(`min by (%s) (min_over_time(timestamp(%s)[%s:%s]))`, l, sel, f.Window, s.step)
		gap := fmt.Sprintf(`max by (%s) (max_over_time((time() - timestamp(%s))[%s:%s]))`, l, sel, f.Window, s.step)
		age := fmt.Sprintf(`min by (%s) (time() - timestamp(%s))`, l, sel)
		q += fmt.Sprintf(` or label_replace(%s, %q, "first", "", "") or label_replace(%s, %q, "gap", "", "") or label_replace(%s, %q, "age", "", "")`,
			first, kindLabel, gap, kindLabel, age, kindLabel)
	}
	return q, nil
}

// QueryIOPS sends the one batched query for window.
func (s *PrometheusSource) QueryIOPS(ctx context.Context, window time.Duration) (Answer, error) {
	q, err := s.Query(window)
	if err != nil {
		return Answer{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	start := time.Now()
	at := s.now()
	val, _, _, err := s.api.Query(ctx, q, at)
	queryDuration.Observe(time.Since(start).Seconds())
	if err != nil {
		queryErrors.Inc()
		return Answer{Query: q}, fmt.Errorf("prometheus query %q: %w", q, err)
	}
	vec, ok := val.(model.Vector)
	if !ok {
		queryErrors.Inc()
		return Answer{Query: q}, fmt.Errorf("prometheus query %q: want an instant vector, got %s", q, val.Type())
	}
	a := Answer{IOPS: make(map[string]float64, len(vec)/3+1), First: map[string]float64{}, MaxGap: map[string]float64{}, Age: map[string]float64{}, At: at, Query: q}
	for _, smp := range vec {
		vol := string(smp.Metric[model.LabelName(s.label)])
		v := float64(smp.Value)
		if vol == "" || math.IsNaN(v) || math.IsInf(v, 0) {
			continue // not attributable, or not a number: treated as no series
		}
		switch smp.Metric[kindLabel] {
		case "iops":
			a.IOPS[vol] += v
		case "first":
			if old, ok := a.First[vol]; !ok || v < old {
				a.First[vol] = v
			}
		case "gap":
			a.MaxGap[vol] = max(a.MaxGap[vol], v)
		case "age":
			if old, ok := a.Age[vol]; !ok || v < old {
				a.Age[vol] = v
			}
		}
	}
	if s.covTmpl == nil {
		a.First, a.MaxGap, a.Age = nil, nil, nil
	}
	return a, nil
}

func roundTripper(cfg PrometheusConfig) (http.RoundTripper, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("prometheus CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("prometheus CA file %s: no PEM certificate in it", cfg.CAFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	if cfg.BearerTokenFile == "" {
		return tr, nil
	}
	if _, err := os.Stat(cfg.BearerTokenFile); err != nil {
		return nil, fmt.Errorf("prometheus bearer token file: %w", err)
	}
	return &bearerFile{next: tr, file: cfg.BearerTokenFile}, nil
}

// bearerFile adds the token read from a file to each request.
type bearerFile struct {
	next http.RoundTripper
	file string
}

func (b *bearerFile) RoundTrip(req *http.Request) (*http.Response, error) {
	tok, err := os.ReadFile(b.file)
	if err != nil {
		return nil, fmt.Errorf("read bearer token file: %w", err)
	}
	req = req.Clone(req.Context())
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	return b.next.RoundTrip(req)
}
