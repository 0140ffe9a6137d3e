package stripe

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/erasure"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/pkg/shardserver"
)

// shardAnswer is what the fake shard server answers a PUT of shard idx at
// generation gen: a status and a body.
type shardAnswer func(idx int, gen int64) (int, string)

// fakeShards serves PUT /v1/shards with answer (and 204 to every DELETE)
// and records the generation of every PUT by shard index.
type fakeShards struct {
	mu   sync.Mutex
	puts map[int][]int64
}

func startFakeShards(t *testing.T, answer shardAnswer) (*fakeShards, *shardserver.Client, string) {
	t.Helper()
	f := &fakeShards{puts: map[int][]int64{}}
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodDelete {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		js, err := base64.RawURLEncoding.DecodeString(r.Header.Get(shardserver.HeaderShard))
		h := &shardserver.ShardHeader{}
		if err == nil {
			err = json.Unmarshal(js, h)
		}
		if err != nil || r.Method != http.MethodPut {
			http.Error(w, fmt.Sprintf("unexpected %s %s: %v", r.Method, r.URL, err), http.StatusBadRequest)
			return
		}
		f.mu.Lock()
		f.puts[h.ShardIndex] = append(f.puts[h.ShardIndex], h.Generation)
		f.mu.Unlock()
		code, body := answer(h.ShardIndex, h.Generation)
		if code == http.StatusOK {
			body = fmt.Sprintf(`{"offset":%d,"sizeBytes":%d,"checksum":%q}`, 4096*h.ShardIndex, h.SizeBytes, h.Checksum)
		}
		w.WriteHeader(code)
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	c, err := shardserver.NewClient(shardserver.ClientConfig{CAPEM: ca, Token: "t", Retries: 1, Backoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return f, c, strings.TrimPrefix(srv.URL, "https://")
}

func (f *fakeShards) gens(idx int) []int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.puts[idx])
}

// writeOneStripe writes stripe 0 of a new 2+1 volume whose three shards
// go to three pools of the fake server at addr.
func writeOneStripe(t *testing.T, c *shardserver.Client, addr string) error {
	t.Helper()
	const stripeSize = 64 << 10
	codec, err := erasure.NewStripeCodec(erasure.ReedSolomon, 2, 1, stripeSize)
	if err != nil {
		t.Fatal(err)
	}
	v := &Volume{Object: &storagev1.ECVolume{ObjectMeta: metav1.ObjectMeta{Name: "vol", UID: "0c7a2b3e-1d4f-4e5a-9b6c-7d8e9f0a1b2c"},
		Spec: storagev1.ECVolumeSpec{SizeBytes: stripeSize, PolicyRef: "p"}},
		Policy: "p", Algorithm: erasure.ReedSolomon, K: 2, M: 1, MinHealthy: 2, StripeSize: stripeSize, Codec: codec}
	pl := &placer{}
	for i := 0; i < 3; i++ {
		n := fmt.Sprintf("node-%d", i)
		pl.targets = append(pl.targets, &target{Entry: registry.Entry{Pool: fmt.Sprintf("pool-%d", i), Node: n, Address: addr}, free: 1 << 30})
		pl.nodes = append(pl.nodes, n)
	}
	s := &Store{Shards: c}
	var warned atomic.Bool
	return s.writeStripe(context.Background(), v, pl, 0, nil, make([]byte, stripeSize), 0, &warned)
}

func staleBody(idx int, gen, held int64, unknown bool) string {
	se := &shardserver.StaleError{Key: shardserver.Key{Volume: "vol", StripeID: 0, ShardIndex: idx}, Requested: gen, HeldGeneration: held, HeldUnknown: unknown}
	b, _ := json.Marshal(se)
	return string(b)
}

// A shard server that refuses a generation as stale without knowing the
// generation it holds (HeldGeneration -1, as servers sent it before
// HeldUnknown, or HeldUnknown) fails the stripe write with an error saying
// so, after one round of PUTs. Before, the writer read -1 as the held
// generation, stepped to max(1, -1+1) = 1 (the generation just refused)
// and retried it until it gave up.
func TestWriterDoesNotGuessPastAnUnknownHeldGeneration(t *testing.T) {
	for _, unknown := range []bool{false, true} {
		t.Run(fmt.Sprintf("heldUnknown=%v", unknown), func(t *testing.T) {
			f, c, addr := startFakeShards(t, func(idx int, gen int64) (int, string) {
				if idx == 0 {
					return http.StatusConflict, staleBody(idx, gen, -1, unknown)
				}
				return http.StatusOK, ""
			})
			err := writeOneStripe(t, c, addr)
			if err == nil || !strings.Contains(err.Error(), "the generation held could not be learnt") || !strings.Contains(err.Error(), "which one is unknown") {
				t.Fatalf("write over an unknown held generation: %v, want an error saying the held generation is unknown", err)
			}
			if g := f.gens(0); !slices.Equal(g, []int64{1}) {
				t.Fatalf("shard 0 was put at generations %v, want only 1 (no generation is known to be past the held one)", g)
			}
		})
	}
}

// Two shard servers refuse a version as stale, holding generations 3 and
// 9: the writer steps past the newest, to 10, not to 4 (which the second
// server holds too).
func TestWriterStepsPastTheNewestHeldGeneration(t *testing.T) {
	held := map[int]int64{0: 3, 1: 9}
	f, c, addr := startFakeShards(t, func(idx int, gen int64) (int, string) {
		if gen <= held[idx] {
			return http.StatusConflict, staleBody(idx, gen, held[idx], false)
		}
		if gen > 9 {
			// Stop the test here: the writer would go on to create the
			// ECStripe, which this test has no API server for.
			return http.StatusBadRequest, "invalid shard: stop here"
		}
		return http.StatusOK, ""
	})
	err := writeOneStripe(t, c, addr)
	if err == nil || !strings.Contains(err.Error(), "stop here") {
		t.Fatalf("write: %v, want the fake's refusal of generation 10", err)
	}
	for idx := 0; idx < 3; idx++ {
		if g := f.gens(idx); !slices.Equal(g, []int64{1, 10}) {
			t.Fatalf("shard %d was put at generations %v, want 1 then 10", idx, g)
		}
	}
}
