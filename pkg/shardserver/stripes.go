package shardserver

// Per-stripe lookup and fence raise for the placement-group layout (README,
// "At scale: placement groups and a per-server stripe index", point 2; the
// writer and reader are pkg/stripe's group layout).
//
//	GET /v1/stripes/{stripe}?volume=NAME&uid=UID  → StripeHolding
//	PUT /v1/fences/{volume}?uid=UID&epoch=N       → 204, 412 when N is below the recorded epoch
//
// A holding lists every durable shard of the stripe this server holds, every
// shard index and every generation (the writer frees a superseded generation
// only after its successor is durable at quorum, so two may be held for a
// while), with the stripe metadata of its header: the reader decides the
// stripe's current generation from the holdings of a quorum of the group's
// members. It is answered from the store's extents, which are read from the
// shard headers on open and changed in the same steps as the stripe index
// (the index keeps only the newest generation of a slot and no header
// metadata). A store that stopped acknowledging answers an error, never an
// empty holding: an empty holding is a positive "this server holds nothing of
// the stripe", which a reader may count towards reading it as zeros.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
)

// HeldShard is one durable shard of a stripe held by a server.
type HeldShard struct {
	ShardIndex      int      `json:"shardIndex"`
	Generation      int64    `json:"generation"`
	Offset          int64    `json:"offset"`
	SizeBytes       int64    `json:"sizeBytes"`
	Checksum        string   `json:"checksum"`
	WriterEpoch     uint64   `json:"writerEpoch,omitempty"`
	PlacementGroups uint32   `json:"placementGroups,omitempty"`
	DataShards      int      `json:"dataShards"`
	ParityShards    int      `json:"parityShards"`
	StartLBA        int64    `json:"startLba"`
	EndLBA          int64    `json:"endLba"`
	ShardChecksums  []string `json:"shardChecksums"`
	StripeChecksum  string   `json:"stripeChecksum"`
	WrittenUnixNano int64    `json:"writtenUnixNano"`
}

// StripeHolding is what one server holds of one stripe.
type StripeHolding struct {
	Volume    string      `json:"volume"`
	VolumeUID string      `json:"volumeUid"`
	StripeID  int64       `json:"stripeId"`
	Shards    []HeldShard `json:"shards"`
}

// maxHeldShards bounds a holding: 255 shard indexes, a few generations each.
const maxHeldShards = 4 * 255

// StripeShards returns every durable shard of stripe id of volume (whose
// UID is uid; shards of another volume of that name are not listed) held by
// the store, sorted by shard index and generation.
func (s *Store) StripeShards(volume, uid string, id int64) (StripeHolding, error) {
	if err := s.Err(); err != nil {
		return StripeHolding{}, err
	}
	if volume == "" || uid == "" {
		return StripeHolding{}, fmt.Errorf("%w: a stripe lookup needs volume (%q) and uid (%q)", ErrBadIndexRequest, volume, uid)
	}
	if id < 0 {
		return StripeHolding{}, fmt.Errorf("%w: stripe %d must be >= 0", ErrBadIndexRequest, id)
	}
	out := StripeHolding{Volume: volume, VolumeUID: uid, StripeID: id, Shards: []HeldShard{}}
	s.mu.Lock()
	for i := 0; i <= 254; i++ {
		for _, e := range s.slots[Key{volume, id, i}] {
			h := e.header
			if e.pending || h == nil || h.VolumeUID != uid {
				continue
			}
			out.Shards = append(out.Shards, HeldShard{ShardIndex: h.ShardIndex, Generation: h.Generation, Offset: e.offset, SizeBytes: h.SizeBytes,
				Checksum: h.Checksum, WriterEpoch: h.WriterEpoch, PlacementGroups: h.PlacementGroups, DataShards: h.DataShards, ParityShards: h.ParityShards,
				StartLBA: h.StartLBA, EndLBA: h.EndLBA, ShardChecksums: h.ShardChecksums, StripeChecksum: h.StripeChecksum, WrittenUnixNano: h.WrittenUnixNano})
		}
	}
	s.mu.Unlock()
	if len(out.Shards) > maxHeldShards {
		return StripeHolding{}, fmt.Errorf("stripe %s/%d: %d shards held, more than the %d a lookup answers; free superseded generations", volume, id, len(out.Shards), maxHeldShards)
	}
	sort.Slice(out.Shards, func(i, j int) bool {
		a, b := out.Shards[i], out.Shards[j]
		if a.ShardIndex != b.ShardIndex {
			return a.ShardIndex < b.ShardIndex
		}
		return a.Generation < b.Generation
	})
	return out, nil
}

// RaiseFence records epoch as the writer epoch of volume (uid) once every
// write admitted before it has finished; an epoch below the recorded one is
// ErrFenced.
func (s *Store) RaiseFence(volume, uid string, epoch uint64) error {
	if err := s.Err(); err != nil {
		return err
	}
	return s.fences.raise(volume, uid, epoch)
}

func (s *Server) stripeShards(w http.ResponseWriter, r *http.Request) {
	q, err := indexQuery(r, "volume", "uid")
	var id int64
	if err == nil {
		v := r.PathValue("stripe")
		if id, err = strconv.ParseInt(v, 10, 64); err != nil || id < 0 {
			err = fmt.Errorf("%w: stripe %q must be a stripe id >= 0", ErrBadIndexRequest, truncateParam(v))
		}
	}
	if err != nil {
		writeErr(w, err)
		return
	}
	h, err := s.store.StripeShards(q["volume"], q["uid"], id)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, h)
}

func (s *Server) raiseFence(w http.ResponseWriter, r *http.Request) {
	q, err := indexQuery(r, "uid", "epoch")
	var epoch uint64
	if err == nil {
		if epoch, err = strconv.ParseUint(q["epoch"], 10, 64); err != nil || epoch == 0 {
			err = fmt.Errorf("%w: epoch=%q must be a writer epoch above 0", ErrBadShard, truncateParam(q["epoch"]))
		}
	}
	if err == nil {
		err = s.store.RaiseFence(r.PathValue("volume"), q["uid"], epoch)
	}
	if err != nil {
		writeErr(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// StripeShards asks addr which shards of stripe id of volume (uid) it holds.
func (c *Client) StripeShards(ctx context.Context, addr, volume, uid string, id int64) (StripeHolding, error) {
	_, data, err := c.do(ctx, http.MethodGet, addr, "/v1/stripes/"+strconv.FormatInt(id, 10), url.Values{"volume": {volume}, "uid": {uid}}, nil, nil)
	if err != nil {
		return StripeHolding{}, fmt.Errorf("look up stripe %s/%d on %s: %w", volume, id, addr, err)
	}
	var h StripeHolding
	if err := json.Unmarshal(data, &h); err != nil {
		return StripeHolding{}, fmt.Errorf("look up stripe %s/%d on %s: decode: %w", volume, id, addr, err)
	}
	if h.Volume != volume || h.VolumeUID != uid || h.StripeID != id {
		return StripeHolding{}, fmt.Errorf("look up stripe %s/%d on %s: the answer names stripe %s/%d of uid %q", volume, id, addr, h.Volume, h.StripeID, h.VolumeUID)
	}
	return h, nil
}

// RaiseFence makes addr refuse writes of volume (uid) below epoch, after its
// writes in flight have finished. ErrFenced: addr has seen a newer epoch.
func (c *Client) RaiseFence(ctx context.Context, addr, volume, uid string, epoch uint64) error {
	_, _, err := c.do(ctx, http.MethodPut, addr, "/v1/fences/"+volume, url.Values{"uid": {uid}, "epoch": {strconv.FormatUint(epoch, 10)}}, nil, nil)
	if err != nil {
		return fmt.Errorf("raise the writer fence of %s to epoch %d on %s: %w", volume, epoch, addr, err)
	}
	return nil
}
