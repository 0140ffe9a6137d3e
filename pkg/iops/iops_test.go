package iops

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeProm answers /api/v1/query like Prometheus does, from a canned vector.
type fakeProm struct {
	mu   sync.Mutex
	iops map[string]float64
	// covered lists the volumes whose samples cover the whole window (first
	// sample an hour ago, gaps of one second); the others get no coverage answer.
	covered map[string]bool
	fail    bool
	queries atomic.Int64
	last    string
	auth    string
}

func (f *fakeProm) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.queries.Add(1)
	_ = r.ParseForm()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.last = r.Form.Get("query")
	f.auth = r.Header.Get("Authorization")
	if f.fail {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(`{"status":"error","errorType":"unavailable","error":"tsdb not ready"}`))
		return
	}
	type sample struct {
		Metric map[string]string `json:"metric"`
		Value  [2]any            `json:"value"`
	}
	var res []sample
	for v, x := range f.iops {
		res = append(res, sample{map[string]string{"pv_name": v, "couchestor_kind": "iops"}, [2]any{1.0, fmt.Sprint(x)}})
	}
	for v := range f.covered {
		first := float64(time.Now().Add(-10 * time.Hour).Unix())
		res = append(res, sample{map[string]string{"pv_name": v, "couchestor_kind": "first"}, [2]any{1.0, fmt.Sprint(first)}},
			sample{map[string]string{"pv_name": v, "couchestor_kind": "gap"}, [2]any{1.0, "1"}},
			sample{map[string]string{"pv_name": v, "couchestor_kind": "age"}, [2]any{1.0, "0.5"}})
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"status": "success", "data": map[string]any{"resultType": "vector", "result": res}})
}

func newSource(t *testing.T, f *fakeProm, mod func(*PrometheusConfig)) *PrometheusSource {
	t.Helper()
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	cfg := PrometheusConfig{Address: srv.URL, Timeout: 5 * time.Second}
	if mod != nil {
		mod(&cfg)
	}
	s, err := NewPrometheusSource(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestDefaultQueryIsOneBatchedRequestWithWindowInWholeSeconds(t *testing.T) {
	f := &fakeProm{iops: map[string]float64{"pv-a": 10}, covered: map[string]bool{"pv-a": true}}
	s := newSource(t, f, nil)
	m := &Meter{Querier: s, ScrapeInterval: 30 * time.Second}
	vols := []Volume{{"pv-a", true}, {"pv-b", false}, {"pv-c", true}}
	m.Measure(context.Background(), 90*time.Minute, vols)
	if n := f.queries.Load(); n != 1 {
		t.Fatalf("%d requests for 3 volumes, want exactly 1", n)
	}
	want := `label_replace(sum by (pv_name) (rate(volume_num_read_ops[5400s]) + rate(volume_num_write_ops[5400s])), "couchestor_kind", "iops", "", "") or label_replace(min by (pv_name) (min_over_time(timestamp(volume_num_read_ops)[5400s:30s])), "couchestor_kind", "first", "", "") or label_replace(max by (pv_name) (max_over_time((time() - timestamp(volume_num_read_ops))[5400s:30s])), "couchestor_kind", "gap", "", "") or label_replace(min by (pv_name) (time() - timestamp(volume_num_read_ops)), "couchestor_kind", "age", "", "")`
	if f.last != want {
		t.Fatalf("query\n got %s\nwant %s", f.last, want)
	}
}

func TestCustomMetricNamesLabelAndTemplate(t *testing.T) {
	s := newSource(t, &fakeProm{}, func(c *PrometheusConfig) {
		c.ReadMetric, c.WriteMetric, c.VolumeLabel = "r_ops", "w_ops", "volume"
		c.CoverageTemplate = "-"
	})
	q, err := s.Query(1500 * time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if want := `label_replace(sum by (volume) (rate(r_ops[2s]) + rate(w_ops[2s])), "couchestor_kind", "iops", "", "")`; q != want {
		t.Fatalf("got %s want %s", q, want)
	}
	if _, err := NewPrometheusSource(PrometheusConfig{Address: "http://x", QueryTemplate: "{{.Nope}}"}); err == nil {
		t.Fatal("a template naming an unknown field was accepted")
	}
	if _, err := NewPrometheusSource(PrometheusConfig{Address: "http://x", VolumeLabel: "pv-name"}); err == nil {
		t.Fatal("an invalid label name was accepted")
	}
}

func TestRulesPerVolume(t *testing.T) {
	const window = 100 * time.Second
	cov := Coverage{ScrapeInterval: 10 * time.Second, MaxGap: 30 * time.Second} // edges: 15 s
	at := time.Unix(10_000, 0)
	start := float64(at.Unix()) - window.Seconds() // 9900
	ans := Answer{
		At:   at,
		IOPS: map[string]float64{"full": 4800, "idle": 0, "late": 900, "gap": 5100, "edge": 50, "edgegap": 60, "gone": 12, "nocov": 70, "stale": 80},
		First: map[string]float64{"full": start - 4, "idle": start, "late": start + 50, "gap": start - 1,
			"edge": start + 15, "edgegap": start, "gone": start - 2, "stale": start},
		MaxGap: map[string]float64{"full": 10, "idle": 12, "late": 10, "gap": 40, "edge": 10, "edgegap": 30, "gone": 70, "stale": 20},
		Age:    map[string]float64{"full": 3, "idle": 15, "late": 1, "gap": 1, "edge": 1, "edgegap": 2, "gone": 70, "stale": 20},
	}
	cases := []struct {
		v    Volume
		want Measurement
	}{
		{Volume{"full", true}, Measurement{IOPS: 4800, Known: true, Coverage: 1, MaxGap: 10 * time.Second}},
		{Volume{"idle", true}, Measurement{IOPS: 0, Known: true, Coverage: 1, MaxGap: 12 * time.Second}},
		// Begins half-way through the window: its rate under-reports.
		// Its newest sample is 20 s old (the exporter stopped): rate() under-reports too.
		{Volume{"stale", true}, Measurement{Reason: ReasonInsufficientCoverage, Coverage: 1, MaxGap: 20 * time.Second}},
		{Volume{"late", true}, Measurement{Reason: ReasonInsufficientCoverage, Coverage: 0.5, MaxGap: 10 * time.Second}},
		// Covers the window end to end but with a 40 s hole (a Prometheus restart):
		// the count of samples could still be high; the gap is what matters.
		{Volume{"gap", true}, Measurement{Reason: ReasonInsufficientCoverage, Coverage: 1, MaxGap: 40 * time.Second}},
		{Volume{"edge", true}, Measurement{IOPS: 50, Known: true, Coverage: 0.85, MaxGap: 10 * time.Second}}, // first sample 1.5 intervals late: counts
		{Volume{"edgegap", true}, Measurement{IOPS: 60, Known: true, Coverage: 1, MaxGap: 30 * time.Second}}, // gap exactly maxGap: counts
		{Volume{"nocov", true}, Measurement{Reason: ReasonInsufficientCoverage}},                             // no coverage answer: not known to cover
		{Volume{"missing", true}, Measurement{Reason: ReasonNoSeries}},
		{Volume{"missing", false}, Measurement{IOPS: 0, Known: true}},                                      // unpublished: no I/O
		{Volume{"gone", false}, Measurement{IOPS: 12, Known: true, Coverage: 1, MaxGap: 70 * time.Second}}, // unpublished mid-window: its series is the truth
	}
	for _, c := range cases {
		got := Decide(c.v, ans, window, cov)
		if got != c.want {
			t.Errorf("%+v: got %+v want %+v", c.v, got, c.want)
		}
	}
	if got := DefaultMaxGap(time.Second); got != 6*time.Second {
		t.Errorf("DefaultMaxGap(1s) = %s, want 6s", got)
	}
	if got := DefaultMaxGap(30 * time.Second); got != 90*time.Second {
		t.Errorf("DefaultMaxGap(30s) = %s, want 90s", got)
	}
}

func TestPrometheusFailureMakesEveryVolumeUnknownNeverZero(t *testing.T) {
	f := &fakeProm{fail: true}
	m := &Meter{Querier: newSource(t, f, nil), ScrapeInterval: time.Second}
	r := m.Measure(context.Background(), 20*time.Second, []Volume{{"a", true}, {"b", false}})
	if r.Err == nil || !r.Queried {
		t.Fatalf("want a query error, got %+v", r)
	}
	for name, ms := range r.Measurements {
		if ms.Known || ms.Reason != ReasonPrometheusUnavailable {
			t.Errorf("%s: %+v, want unknown (PrometheusUnavailable)", name, ms)
		}
	}
	// Unreachable, too.
	m2 := &Meter{Querier: mustSource(t, "http://127.0.0.1:1"), ScrapeInterval: time.Second}
	r = m2.Measure(context.Background(), 20*time.Second, []Volume{{"a", true}})
	if r.Err == nil || r.Measurements["a"].Known {
		t.Fatalf("unreachable Prometheus gave %+v", r)
	}
}

func mustSource(t *testing.T, addr string) *PrometheusSource {
	s, err := NewPrometheusSource(PrometheusConfig{Address: addr, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestCacheAnswersWithinTTLAndExpires(t *testing.T) {
	now := time.Unix(1000, 0)
	clock := func() time.Time { return now }
	f := &fakeProm{iops: map[string]float64{"a": 7}, covered: map[string]bool{"a": true}}
	m := &Meter{Querier: newSource(t, f, nil), Cache: NewMetricsCache(30*time.Second, clock), ScrapeInterval: time.Second, Now: clock}
	vols := []Volume{{"a", true}, {"b", false}}
	for range 3 {
		r := m.Measure(context.Background(), 20*time.Second, vols)
		if r.Measurements["a"].IOPS != 7 || !r.Measurements["b"].Known {
			t.Fatalf("got %+v", r.Measurements)
		}
	}
	if n := f.queries.Load(); n != 1 {
		t.Fatalf("%d queries within the TTL, want 1", n)
	}
	// Another window is another measurement.
	m.Measure(context.Background(), 40*time.Second, vols)
	if n := f.queries.Load(); n != 2 {
		t.Fatalf("%d queries after a new window, want 2", n)
	}
	now = now.Add(30 * time.Second)
	m.Measure(context.Background(), 20*time.Second, vols)
	if n := f.queries.Load(); n != 3 {
		t.Fatalf("%d queries after TTL expiry, want 3", n)
	}
	// Unknown volumes are not cached: a published volume without series asks again.
	f.mu.Lock()
	f.iops = map[string]float64{}
	f.mu.Unlock()
	now = now.Add(31 * time.Second)
	m.Measure(context.Background(), 20*time.Second, vols)
	r := m.Measure(context.Background(), 20*time.Second, vols)
	if n := f.queries.Load(); n != 5 || r.Measurements["a"].Known {
		t.Fatalf("queries %d, a=%+v: an unknown volume must not be served from the cache", n, r.Measurements["a"])
	}
}

func TestCacheConcurrentUse(t *testing.T) {
	c := NewMetricsCache(time.Minute, nil)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				c.Put(time.Second, time.Now(), map[string]float64{fmt.Sprint(g, i%7): float64(i)})
				c.Get(time.Second, fmt.Sprint(g, i%5))
			}
		}()
	}
	wg.Wait()
	if c.Len() == 0 {
		t.Fatal("nothing cached")
	}
}

func TestBearerTokenFileIsSentAndReReadEachRequest(t *testing.T) {
	dir := t.TempDir()
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte("first\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f := &fakeProm{}
	s := newSource(t, f, func(c *PrometheusConfig) { c.BearerTokenFile = tok })
	if _, err := s.QueryIOPS(context.Background(), time.Minute); err != nil {
		t.Fatal(err)
	}
	if f.auth != "Bearer first" {
		t.Fatalf("Authorization %q", f.auth)
	}
	_ = os.WriteFile(tok, []byte("second"), 0o600)
	_, _ = s.QueryIOPS(context.Background(), time.Minute)
	if f.auth != "Bearer second" {
		t.Fatalf("rotated token not used: %q", f.auth)
	}
	if _, err := NewPrometheusSource(PrometheusConfig{Address: "http://x", CAFile: filepath.Join(dir, "nope")}); err == nil || !strings.Contains(err.Error(), "CA file") {
		t.Fatalf("missing CA file: %v", err)
	}
}

func TestWindowTooShort(t *testing.T) {
	if !WindowTooShort(59*time.Second, 15*time.Second) || WindowTooShort(60*time.Second, 15*time.Second) {
		t.Fatal("four scrape intervals is the boundary")
	}
}
