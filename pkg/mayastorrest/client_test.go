package mayastorrest

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func vol(id string) Volume {
	return Volume{
		Spec:  VolumeSpec{UUID: id, Size: 1 << 30, NumReplicas: 1, Status: "Created", Policy: VolumePolicy{SelfHeal: true}},
		State: VolumeState{UUID: id, Size: 1 << 30, Status: "Online", ReplicaTopology: map[string]ReplicaTopology{id + "-r": {State: "Online"}}},
	}
}

func newClient(t *testing.T, url string, mod func(*Config)) *Client {
	t.Helper()
	cfg := Config{URL: url}
	if mod != nil {
		mod(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func TestNewValidates(t *testing.T) {
	for _, url := range []string{"", "mayastor:8081", "ftp://x", "http://", "http://x/?a=b"} {
		if _, err := New(Config{URL: url}); err == nil {
			t.Errorf("New(%q) accepted", url)
		}
	}
	if _, err := New(Config{URL: "http://x", TokenFile: "/nonexistent"}); err == nil {
		t.Error("missing token file accepted")
	}
	if _, err := New(Config{URL: "http://x", CAFile: "/nonexistent"}); err == nil {
		t.Error("missing CA file accepted")
	}
	c, err := New(Config{URL: "http://x:8081/"})
	if err != nil {
		t.Fatal(err)
	}
	if c.cfg.Timeout != 10*time.Second || c.cfg.PageSize != 500 || c.cfg.MaxBodyBytes != 64<<20 {
		t.Fatalf("defaults: %+v", c.cfg)
	}
}

// TestListVolumesPages: max_entries on every request, next_token followed via
// starting_token, every volume once, one request per page.
func TestListVolumesPages(t *testing.T) {
	const total = 7
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v0/volumes" {
			http.NotFound(w, r)
			return
		}
		max, err := strconv.Atoi(r.URL.Query().Get("max_entries"))
		if err != nil {
			writeJSON(w, 400, RestJsonError{Kind: "Deserialize", Message: "", Details: "missing field `max_entries`"})
			return
		}
		start, _ := strconv.Atoi(r.URL.Query().Get("starting_token"))
		page := Volumes{Entries: []Volume{}}
		for i := start; i < total && i < start+max; i++ {
			page.Entries = append(page.Entries, vol(fmt.Sprintf("v%d", i)))
		}
		if start+max < total {
			n := int64(start + max)
			page.NextToken = &n
		}
		writeJSON(w, 200, page)
	}))
	defer srv.Close()
	c := newClient(t, srv.URL, func(c *Config) { c.PageSize = 3 })
	vs, err := c.ListVolumes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != total || vs[0].Spec.UUID != "v0" || vs[6].Spec.UUID != "v6" {
		t.Fatalf("got %d volumes: %+v", len(vs), vs)
	}
	if c.Requests() != 3 {
		t.Fatalf("requests = %d, want 3", c.Requests())
	}
}

func TestListVolumesRejectsBadPages(t *testing.T) {
	cases := map[string]string{
		"no entries":          `{"next_token": 3}`,
		"entries null":        `{"entries": null}`,
		"token stuck":         `{"entries": [` + mustJSON(vol("a")) + `], "next_token": 0}`,
		"volume without id":   `{"entries": [{"spec": {"size": 1, "num_replicas": 1, "status": "Created", "policy": {"self_heal": true}, "thin": false, "num_snapshots": 0}, "state": {"uuid": "a", "size": 1, "status": "Online", "replica_topology": {}}}]}`,
		"no replica_topology": `{"entries": [{"spec": {"uuid": "a", "size": 1, "num_replicas": 1, "status": "Created", "policy": {"self_heal": true}, "thin": false, "num_snapshots": 0}, "state": {"uuid": "a", "size": 1, "status": "Online"}}]}`,
		"no num_replicas":     `{"entries": [{"spec": {"uuid": "a", "size": 1, "status": "Created", "policy": {"self_heal": true}, "thin": false, "num_snapshots": 0}, "state": {"uuid": "a", "size": 1, "status": "Online", "replica_topology": {}}}]}`,
		"garbage":             `<html>hello</html>`,
		"truncated json":      `{"entries": [`,
		"wrong type":          `{"entries": {}}`,
		"empty body":          ``,
	}
	for name, body := range cases {
		t.Run(name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(200)
				_, _ = io.WriteString(w, body)
			}))
			defer srv.Close()
			vs, err := newClient(t, srv.URL, nil).ListVolumes(context.Background())
			var de *DecodeError
			if !errors.As(err, &de) || vs != nil {
				t.Fatalf("want DecodeError and no volumes, got %v, %v", vs, err)
			}
			if !strings.Contains(err.Error(), "GET /v0/volumes") {
				t.Fatalf("error does not name the call: %v", err)
			}
		})
	}
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// TestErrorAnswers: status and Mayastor's error body become an APIError that
// names the call, the status and the body's message; the predicates classify.
func TestErrorAnswers(t *testing.T) {
	type pred struct{ notFound, precond, conflict, unavail bool }
	cases := []struct {
		name   string
		status int
		body   string
		want   pred
		kind   string
	}{
		{"404 NotFound body", 404, `{"details":"","message":"SvcError :: VolumeNotFound: Volume 'v' not found","kind":"NotFound"}`, pred{notFound: true}, "NotFound"},
		{"404 no body", 404, ``, pred{}, ""},
		{"412 body", 412, `{"details":"","message":"SvcError :: ReplicaIncrease: Unable to increase replica count due to volume 'v' in state 'Degraded'","kind":"FailedPrecondition"}`, pred{precond: true}, "FailedPrecondition"},
		{"412 no body", 412, `precondition failed`, pred{precond: true}, ""},
		{"409 InUse", 409, `{"details":"","message":"in use","kind":"InUse"}`, pred{conflict: true}, "InUse"},
		{"409 no body", 409, ``, pred{conflict: true}, ""},
		{"503 body", 503, `{"details":"","message":"core agent down","kind":"Unavailable"}`, pred{unavail: true}, "Unavailable"},
		{"503 no body", 503, `Service Unavailable`, pred{unavail: true}, ""},
		{"500 Internal", 500, `{"details":"boom","message":"internal","kind":"Internal"}`, pred{}, "Internal"},
		{"502 no body", 502, ``, pred{unavail: true}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tc.status)
				_, _ = io.WriteString(w, tc.body)
			}))
			defer srv.Close()
			_, err := newClient(t, srv.URL, nil).SetReplicaCount(context.Background(), "v", 3)
			var a *APIError
			if !errors.As(err, &a) {
				t.Fatalf("want APIError, got %v", err)
			}
			if a.Status != tc.status || a.Kind != tc.kind || a.Call != "PUT /v0/volumes/v/replica_count/3" {
				t.Fatalf("APIError = %+v", a)
			}
			msg := err.Error()
			if !strings.Contains(msg, a.Call) || !strings.Contains(msg, strconv.Itoa(tc.status)) {
				t.Fatalf("error %q does not name call and status", msg)
			}
			if tc.kind != "" {
				var body RestJsonError
				_ = json.Unmarshal([]byte(tc.body), &body)
				if !strings.Contains(msg, body.Message) {
					t.Fatalf("error %q lacks the body's message", msg)
				}
			}
			got := pred{IsNotFound(err), IsFailedPrecondition(err), IsConflict(err), IsUnavailable(err)}
			if got != tc.want {
				t.Fatalf("predicates = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestTokenReadEveryRequest: the bearer token is sent, re-read after rotation,
// and never appears in an error.
func TestTokenReadEveryRequest(t *testing.T) {
	var seen atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Store(r.Header.Get("Authorization"))
		writeJSON(w, 401, RestJsonError{Kind: "Unauthorized", Message: "bad token"})
	}))
	defer srv.Close()
	tf := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tf, []byte("secret-one\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := newClient(t, srv.URL, func(c *Config) { c.TokenFile = tf })
	_, err := c.ListPools(context.Background())
	if seen.Load() != "Bearer secret-one" {
		t.Fatalf("Authorization = %v", seen.Load())
	}
	if err == nil || strings.Contains(err.Error(), "secret") {
		t.Fatalf("error %v", err)
	}
	if err := os.WriteFile(tf, []byte("secret-two"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, _ = c.ListPools(context.Background())
	if seen.Load() != "Bearer secret-two" {
		t.Fatalf("rotated token not used: %v", seen.Load())
	}
}

func TestTimeoutAndDroppedConnection(t *testing.T) {
	block := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()
	defer close(block)
	c := newClient(t, slow.URL, func(c *Config) { c.Timeout = 100 * time.Millisecond })
	_, err := c.GetVolume(context.Background(), "v")
	if !IsUnavailable(err) || !strings.Contains(err.Error(), "GET /v0/volumes/v") {
		t.Fatalf("timeout: %v", err)
	}

	drop := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			_ = conn.Close()
		}
	}))
	defer drop.Close()
	_, err = newClient(t, drop.URL, nil).ListNodes(context.Background())
	var te *TransportError
	if !errors.As(err, &te) || !IsUnavailable(err) {
		t.Fatalf("dropped: %v", err)
	}

	// a body cut short of its Content-Length
	short := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, buf, _ := w.(http.Hijacker).Hijack()
		_, _ = buf.WriteString("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n[{\"id\": \"n1\"")
		_ = buf.Flush()
		_ = conn.Close()
	}))
	defer short.Close()
	ns, err := newClient(t, short.URL, nil).ListNodes(context.Background())
	if err == nil || ns != nil || !strings.Contains(err.Error(), "GET /v0/nodes") {
		t.Fatalf("truncated: %v %v", ns, err)
	}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	_, err = newClient(t, "http://"+addr, nil).ListPools(context.Background())
	if !IsUnavailable(err) {
		t.Fatalf("refused: %v", err)
	}
}

func TestOversizedBody(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		_, _ = io.WriteString(w, `[`+strings.Repeat(`{"id":"p","spec":{"disks":[],"id":"p","node":"n","status":"Created"}},`, 100)+`{"id":"q"}]`)
	}))
	defer srv.Close()
	_, err := newClient(t, srv.URL, func(c *Config) { c.MaxBodyBytes = 1024 }).ListPools(context.Background())
	if err == nil || !strings.Contains(err.Error(), "exceeds 1024 bytes") || !strings.Contains(err.Error(), "GET /v0/pools") {
		t.Fatalf("oversized: %v", err)
	}
}

// TestPoolCalls: label paths keep a key with '/' in one segment; cordon sends
// replicas=true only; AlreadyExists is success.
func TestPoolCalls(t *testing.T) {
	type req struct{ method, path, query, body string }
	var got []req
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got = append(got, req{r.Method, r.URL.EscapedPath(), r.URL.RawQuery, string(b)})
		if strings.HasSuffix(r.URL.Path, "/cordon") && r.Method == http.MethodDelete {
			writeJSON(w, 422, RestJsonError{Kind: "AlreadyExists", Message: "not cordoned"})
			return
		}
		writeJSON(w, 200, Pool{ID: "p1", Spec: &PoolSpec{ID: "p1", Node: "n1", Status: "Created", Disks: []string{"/d"}, Labels: map[string]string{"openebs.io/tier": "hot"}}})
	}))
	defer srv.Close()
	c := newClient(t, srv.URL, nil)
	ctx := context.Background()
	p, err := c.PutPoolLabel(ctx, "p1", "openebs.io/tier", "hot", false)
	if err != nil || p.Labels()["openebs.io/tier"] != "hot" {
		t.Fatalf("PutPoolLabel: %+v %v", p, err)
	}
	if _, err := c.DeletePoolLabel(ctx, "p1", "openebs.io/tier"); err != nil {
		t.Fatal(err)
	}
	if err := c.CordonPool(ctx, "p1"); err != nil {
		t.Fatal(err)
	}
	if err := c.UncordonPool(ctx, "p1"); err != nil {
		t.Fatalf("uncordon of an uncordoned pool: %v", err)
	}
	want := []req{
		{"PUT", "/v0/pools/p1/label/openebs.io%2Ftier=hot", "overwrite=false", ""},
		{"DELETE", "/v0/pools/p1/label/openebs.io%2Ftier", "", ""},
		{"PUT", "/v0/pools/p1/cordon", "", `{"replicas":true,"snapshots":false,"restores":false,"import":false}`},
		{"DELETE", "/v0/pools/p1/cordon", "", `{"replicas":true,"snapshots":false,"restores":false,"import":false}`},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("requests:\n got %v\nwant %v", got, want)
	}
	if _, err := c.PutPoolLabel(ctx, "p1", "a=b", "c", false); err == nil {
		t.Fatal("key with '=' accepted")
	}
}

// TestSupportsPoolCordon: a server that routes the probe answers NotFound for
// the random pool (supported); one without the route answers a bare 404 or 405
// (not supported); a 5xx is an error and is not cached; a definite answer is.
func TestSupportsPoolCordon(t *testing.T) {
	cases := []struct {
		name    string
		handler http.HandlerFunc
		want    bool
		wantErr bool
	}{
		{"new server", func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, 404, RestJsonError{Kind: "NotFound", Message: "SvcError :: PoolNotFound: Pool '" + strings.Split(r.URL.Path, "/")[3] + "' not found"})
		}, true, false},
		{"old server 404", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(404) }, false, false},
		{"old server 405", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(405) }, false, false},
		{"503", func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, 503, RestJsonError{Kind: "Unavailable", Message: "down"})
		}, false, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var probes []string
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				probes = append(probes, r.Method+" "+r.URL.Path)
				tc.handler(w, r)
			}))
			defer srv.Close()
			c := newClient(t, srv.URL, nil)
			for i := 0; i < 2; i++ {
				ok, err := c.SupportsPoolCordon(context.Background())
				if ok != tc.want || (err != nil) != tc.wantErr {
					t.Fatalf("SupportsPoolCordon = %v, %v", ok, err)
				}
			}
			wantProbes := 1
			if tc.wantErr {
				wantProbes = 2
			}
			if len(probes) != wantProbes || !strings.HasPrefix(probes[0], "DELETE /v0/pools/couchestor-cordon-probe-") || !strings.HasSuffix(probes[0], "/cordon") {
				t.Fatalf("probes = %v", probes)
			}
		})
	}
}

func TestRequestsMetric(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, []Node{{ID: "n1"}})
	}))
	defer srv.Close()
	before := testutil.ToFloat64(requestsTotal.WithLabelValues("ListNodes", "200"))
	if _, err := newClient(t, srv.URL, nil).ListNodes(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(requestsTotal.WithLabelValues("ListNodes", "200")); got != before+1 {
		t.Fatalf("counter %v -> %v", before, got)
	}
}

func TestReplicaSynced(t *testing.T) {
	online, degraded := "Online", "Degraded"
	p := 50
	yes, no := true, false
	base := func() Volume {
		return Volume{
			Spec: VolumeSpec{UUID: "v", NumReplicas: 2},
			State: VolumeState{Status: "Online",
				Target: &Nexus{Children: []Child{{URI: "bdev:///v?uuid=r1", State: "Online"}, {URI: "nvmf://x/v?uuid=r2", State: "Online"}}},
				ReplicaTopology: map[string]ReplicaTopology{
					"r1": {State: "Online", ChildStatus: &online},
					"r2": {State: "Online", ChildStatus: &online},
				}},
		}
	}
	cases := []struct {
		name string
		mod  func(*Volume)
		want bool
	}{
		{"synced", func(*Volume) {}, true},
		{"healthy true", func(v *Volume) {
			r := v.State.ReplicaTopology["r2"]
			r.Healthy = &yes
			v.State.ReplicaTopology["r2"] = r
		}, true},
		{"healthy false", func(v *Volume) {
			r := v.State.ReplicaTopology["r2"]
			r.Healthy = &no
			v.State.ReplicaTopology["r2"] = r
		}, false},
		{"unpublished", func(v *Volume) { v.State.Target = nil }, false},
		{"volume degraded", func(v *Volume) { v.State.Status = "Degraded" }, false},
		{"rebuilding", func(v *Volume) {
			r := v.State.ReplicaTopology["r2"]
			r.RebuildProgress = &p
			v.State.ReplicaTopology["r2"] = r
		}, false},
		{"child degraded", func(v *Volume) {
			r := v.State.ReplicaTopology["r2"]
			r.ChildStatus = &degraded
			v.State.ReplicaTopology["r2"] = r
		}, false},
		{"no child-status", func(v *Volume) {
			r := v.State.ReplicaTopology["r2"]
			r.ChildStatus = nil
			v.State.ReplicaTopology["r2"] = r
		}, false},
		{"children below num_replicas", func(v *Volume) { v.Spec.NumReplicas = 3 }, false},
		{"another child not online", func(v *Volume) { v.State.Target.Children[0].State = "Degraded" }, false},
		{"unknown replica", func(v *Volume) { delete(v.State.ReplicaTopology, "r2") }, false},
	}
	for _, tc := range cases {
		v := base()
		tc.mod(&v)
		if got := ReplicaSynced(v, "r2"); got != tc.want {
			t.Errorf("%s: ReplicaSynced = %v, want %v", tc.name, got, tc.want)
		}
	}
	for uri, want := range map[string]string{"nvmf://h:8420/nqn:x?uuid=abc": "abc", "bdev:///x": "", "bdev:///x?uuid=": "", "loopback:///r?a=1&uuid=z": "z"} {
		if got := ChildReplicaUUID(uri); got != want {
			t.Errorf("ChildReplicaUUID(%q) = %q, want %q", uri, got, want)
		}
	}
}

// TestCAFile: an https server is trusted through CAFile, and not without it.
func TestCAFile(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, []Node{{ID: "n1"}})
	}))
	defer srv.Close()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	der := srv.Certificate().Raw
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := os.WriteFile(ca, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	ns, err := newClient(t, srv.URL, func(c *Config) { c.CAFile = ca }).ListNodes(context.Background())
	if err != nil || len(ns) != 1 {
		t.Fatalf("with CA: %v %v", ns, err)
	}
	if _, err := newClient(t, srv.URL, nil).ListNodes(context.Background()); err == nil {
		t.Fatal("an unknown CA was trusted")
	}
	bad := filepath.Join(t.TempDir(), "bad.pem")
	_ = os.WriteFile(bad, []byte("not a certificate"), 0o600)
	if _, err := New(Config{URL: srv.URL, CAFile: bad}); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Fatalf("bad CA file: %v", err)
	}
}
