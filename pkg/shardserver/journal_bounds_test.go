package shardserver

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/billyronks/couchestor/pkg/journal"
)

// Sequence numbers, epochs and trim points at 2^64-1 (and anything above
// 2^63-1) are refused with 400 naming the value: seq+1 and epoch+1 would wrap
// to 0 (truncate?after=2^64-1 emptied the replica, an epoch at the top let
// the next writer's epoch wrap below every fence).
func TestJournalNumbersThatWouldWrapRefused(t *testing.T) {
	srv := limitedServer(t, DefaultLimits())
	do := func(method, path string, body []byte) *httptest.ResponseRecorder {
		r := httptest.NewRequest(method, path, bytes.NewReader(body))
		r.Header.Set("Authorization", "Bearer secret")
		w := httptest.NewRecorder()
		srv.ServeHTTP(w, r)
		return w
	}
	rec := journal.Record{Seq: 1, Epoch: 1, Kind: journal.KindWrite, LBA: 0, Data: make([]byte, journal.LBASize)}
	if w := do("POST", "/v1/journals/v/records", journal.AppendEncoded(nil, &rec)); w.Code != http.StatusNoContent {
		t.Fatalf("append: %d %s", w.Code, w.Body)
	}
	const max = "18446744073709551615"
	for _, path := range []string{
		"/v1/journals/v/truncate?after=" + max,
		"/v1/journals/v/trim?through=" + max,
		"/v1/journals/v/reset?through=" + max,
		"/v1/journals/v/epoch?epoch=" + max,
		"/v1/journals/v/epoch?epoch=9223372036854775808",
	} {
		if w := do("POST", path, nil); w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), "wraps around") {
			t.Errorf("POST %s: %d %q, want 400 saying it would wrap around", path, w.Code, w.Body)
		}
	}
	for _, path := range []string{"/v1/journals/v/records?after=" + max, "/v1/journals/v/records/" + max} {
		if w := do("GET", path, nil); w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), "wraps around") {
			t.Errorf("GET %s: %d %q, want 400", path, w.Code, w.Body)
		}
	}
	for _, bad := range []journal.Record{{Seq: ^uint64(0), Epoch: 1, Kind: journal.KindEpoch}, {Seq: 2, Epoch: ^uint64(0), Kind: journal.KindEpoch}} {
		if w := do("POST", "/v1/journals/v/records", journal.AppendEncoded(nil, &bad)); w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), "wraps around") {
			t.Errorf("append of seq %d epoch %d: %d %q, want 400", bad.Seq, bad.Epoch, w.Code, w.Body)
		}
	}
	// Nothing was lost or changed on the way.
	w := do("GET", "/v1/journals/v", nil)
	if !strings.Contains(w.Body.String(), `"LastSeq":1`) || !strings.Contains(w.Body.String(), `"TrimmedThrough":0`) {
		t.Fatalf("replica after the refused requests: %s", w.Body)
	}
	srv.Close()
}
