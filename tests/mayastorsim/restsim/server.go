package restsim

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/billyronks/couchestor/pkg/mayastorrest"
)

// errBody is Mayastor's error answer: RestJsonError with the status its kind
// maps to (stor-port's From<ReplyError> for RestError).
func writeErr(w http.ResponseWriter, status int, kind, message string) {
	writeJSON(w, status, mayastorrest.RestJsonError{Details: "", Message: message, Kind: kind})
}

// deserializeErr is the rest service's answer to a query, path or body it
// cannot parse (kind Deserialize, 400, the parser's error in details).
func deserializeErr(w http.ResponseWriter, details string) {
	writeJSON(w, http.StatusBadRequest, mayastorrest.RestJsonError{Details: details, Message: "", Kind: "Deserialize"})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// Handler serves /v0.
func (m *Model) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v0/volumes", m.listVolumes)
	mux.HandleFunc("GET /v0/volumes/{id}", m.getVolume)
	mux.HandleFunc("PUT /v0/volumes/{id}/replica_count/{n}", m.setReplicaCount)
	mux.HandleFunc("GET /v0/pools", m.listPools)
	mux.HandleFunc("GET /v0/pools/{id}", m.getPool)
	mux.HandleFunc("PUT /v0/pools/{id}/label/{kv}", m.putPoolLabel)
	mux.HandleFunc("DELETE /v0/pools/{id}/label/{key}", m.deletePoolLabel)
	mux.HandleFunc("PUT /v0/pools/{id}/cordon", func(w http.ResponseWriter, r *http.Request) { m.poolCordon(w, r, true) })
	mux.HandleFunc("DELETE /v0/pools/{id}/cordon", func(w http.ResponseWriter, r *http.Request) { m.poolCordon(w, r, false) })
	mux.HandleFunc("GET /v0/nodes", m.listNodes)
	mux.HandleFunc("GET /v0/nodes/{id}", m.getNode)
	return m.faulty(mux)
}

// faulty adds the latency and the injected 5xx and dropped connections.
func (m *Model) faulty(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m.mu.Lock()
		m.requests++
		lat := m.opt.Latency
		drop := m.faults.Drop > 0 || (m.opt.DropProbability > 0 && m.rng.Float64() < m.opt.DropProbability)
		if m.faults.Drop > 0 {
			m.faults.Drop--
		}
		fail := !drop && (m.faults.Fail5xx > 0 || (m.opt.Fail5xxProbability > 0 && m.rng.Float64() < m.opt.Fail5xxProbability))
		if fail && m.faults.Fail5xx > 0 {
			m.faults.Fail5xx--
		}
		m.mu.Unlock()
		if lat > 0 {
			select {
			case <-time.After(lat):
			case <-r.Context().Done():
				return
			}
		}
		if drop {
			if hj, ok := w.(http.Hijacker); ok {
				if conn, _, err := hj.Hijack(); err == nil {
					_ = conn.Close()
					return
				}
			}
			panic(http.ErrAbortHandler)
		}
		if fail {
			writeErr(w, http.StatusServiceUnavailable, "Unavailable", "SvcError :: NatsUnavailable: the core agent is unavailable (injected)")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// Requests is the number of /v0 requests served (or failed) so far.
func (m *Model) Requests() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.requests
}

func (m *Model) listVolumes(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if !q.Has("max_entries") {
		deserializeErr(w, "Query deserialize error: missing field `max_entries`")
		return
	}
	max, err := strconv.ParseUint(q.Get("max_entries"), 10, 63)
	if err != nil {
		deserializeErr(w, "deserialize error: "+r.URL.String())
		return
	}
	var start uint64
	if q.Has("starting_token") {
		if start, err = strconv.ParseUint(q.Get("starting_token"), 10, 63); err != nil {
			deserializeErr(w, "deserialize error: "+r.URL.String())
			return
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.refresh()
	ids := make([]string, 0, len(m.volumes))
	for id := range m.volumes {
		if q.Has("volume_id") && id != q.Get("volume_id") {
			continue
		}
		ids = append(ids, id)
	}
	sort.Strings(ids)
	page := mayastorrest.Volumes{Entries: []mayastorrest.Volume{}}
	end := uint64(len(ids))
	if max > 0 && start+max < end {
		end = start + max
		next := int64(end)
		page.NextToken = &next
	}
	for i := start; i < end; i++ {
		page.Entries = append(page.Entries, m.render(m.volumes[ids[i]]))
	}
	writeJSON(w, http.StatusOK, page)
}

func volumeNotFound(w http.ResponseWriter, id string) {
	writeErr(w, http.StatusNotFound, "NotFound", fmt.Sprintf("SvcError :: VolumeNotFound: Volume '%s' not found", id))
}

func poolNotFound(w http.ResponseWriter, id string) {
	writeErr(w, http.StatusNotFound, "NotFound", fmt.Sprintf("SvcError :: PoolNotFound: Pool '%s' not found", id))
}

func (m *Model) getVolume(w http.ResponseWriter, r *http.Request) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.refresh()
	v := m.volumes[r.PathValue("id")]
	if v == nil {
		volumeNotFound(w, r.PathValue("id"))
		return
	}
	writeJSON(w, http.StatusOK, m.render(v))
}

func (m *Model) setReplicaCount(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	n, err := strconv.ParseUint(r.PathValue("n"), 10, 8)
	if err != nil {
		deserializeErr(w, "deserialize error: "+r.URL.String())
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.refresh()
	v := m.volumes[id]
	if v == nil {
		volumeNotFound(w, id)
		return
	}
	now := m.opt.Now()
	status := m.status(v, now)
	inject := m.faults.Fail412 > 0 || (m.opt.Fail412Probability > 0 && m.rng.Float64() < m.opt.Fail412Probability)
	if m.faults.Fail412 > 0 {
		m.faults.Fail412--
	}
	want := int(n)
	switch {
	case inject:
		writeErr(w, http.StatusPreconditionFailed, "FailedPrecondition", fmt.Sprintf("SvcError :: ReplicaIncrease: Unable to increase replica count due to volume '%s' in state 'Degraded' (injected)", id))
		return
	case want == v.numReplicas:
		writeErr(w, http.StatusPreconditionFailed, "FailedPrecondition", fmt.Sprintf("SvcError :: ReplicaCountAchieved: Replica count of Volume '%s' is already '%d'", id, v.numReplicas))
		return
	case want < 1:
		writeErr(w, http.StatusPreconditionFailed, "FailedPrecondition", fmt.Sprintf("SvcError :: LastReplica: Cannot remove the last replica '' of volume '%s'", id))
		return
	case want-v.numReplicas > 1 || v.numReplicas-want > 1:
		writeErr(w, http.StatusPreconditionFailed, "FailedPrecondition", "SvcError :: ReplicaChangeCount: Replica count only allowed to change by a maximum of one at a time")
		return
	case want > v.numReplicas && status != "Online":
		writeErr(w, http.StatusPreconditionFailed, "FailedPrecondition", fmt.Sprintf("SvcError :: ReplicaIncrease: Unable to increase replica count due to volume '%s' in state '%s'", id, status))
		return
	}
	if want > v.numReplicas {
		p := m.pick(v)
		if p == nil {
			writeErr(w, http.StatusInsufficientStorage, "ResourceExhausted", fmt.Sprintf("SvcError :: NotEnoughResources: Not enough suitable pools available, 0/1 (volume '%s')", id))
			return
		}
		m.seq++
		nr := &replica{uuid: m.randomUUID(), pool: p.id, node: p.node, seq: m.seq, rebuilding: true}
		if v.published {
			nr.rebuildFrom = now
		}
		v.replicas = append(v.replicas, nr)
		v.numReplicas = want
	} else {
		vic := m.victim(v)
		healthy := 0
		for _, x := range v.replicas {
			if x != vic && !x.faulted && !x.rebuilding {
				healthy++
			}
		}
		if healthy == 0 && !vic.faulted && !vic.rebuilding {
			writeErr(w, http.StatusPreconditionFailed, "FailedPrecondition", fmt.Sprintf("SvcError :: LastHealthyReplica: Cannot remove the last healthy replica '%s' of volume '%s'", vic.uuid, id))
			return
		}
		keep := v.replicas[:0]
		for _, x := range v.replicas {
			if x != vic {
				keep = append(keep, x)
			}
		}
		v.replicas = keep
		v.numReplicas = want
		if m.opt.ReattachAfter > 0 && !vic.rebuilding && !vic.faulted {
			m.pending = append(m.pending, reattach{at: now.Add(m.opt.ReattachAfter), volume: id, r: *vic})
		}
	}
	v.op = &mayastorrest.VolumeOperation{Operation: "SetReplica"}
	writeJSON(w, http.StatusOK, m.render(v))
}

func (m *Model) render(v *volume) mayastorrest.Volume {
	now := m.opt.Now()
	inc := map[string]string{}
	for k, x := range v.inclusion {
		inc[k] = x
	}
	out := mayastorrest.Volume{
		Spec: mayastorrest.VolumeSpec{
			UUID: v.uuid, Size: v.size, NumReplicas: uint8(v.numReplicas), Status: "Created",
			Labels:   map[string]string{"openebs.io/created-by": "csi-mayastor"},
			Topology: &mayastorrest.Topology{PoolTopology: &mayastorrest.PoolTopology{Labelled: &mayastorrest.LabelledTopology{Exclusion: map[string]string{}, Inclusion: inc}}},
			Policy:   mayastorrest.VolumePolicy{SelfHeal: true},
		},
		State: mayastorrest.VolumeState{UUID: v.uuid, Size: v.size, Status: m.status(v, now), ReplicaTopology: map[string]mayastorrest.ReplicaTopology{}},
	}
	if v.op != nil {
		op := *v.op
		out.Spec.Operation = &op
	}
	var nexus *mayastorrest.Nexus
	if v.published {
		proto := "nvmf"
		out.Spec.Target = &mayastorrest.VolumeTarget{Node: v.targetNode, Protocol: &proto}
		nexus = &mayastorrest.Nexus{
			Children:  []mayastorrest.Child{},
			DeviceURI: fmt.Sprintf("nvmf://%s:8420/nqn.2019-05.io.openebs:%s", v.targetNode, v.uuid),
			Node:      v.targetNode, Protocol: "nvmf", Size: v.size, UUID: v.nexusUUID, State: "Online",
		}
	}
	rs := append([]*replica(nil), v.replicas...)
	sort.Slice(rs, func(i, j int) bool { return rs[i].seq < rs[j].seq })
	for _, r := range rs {
		node, pool := r.node, r.pool
		t := mayastorrest.ReplicaTopology{Node: &node, Pool: &pool, State: "Online"}
		if r.faulted {
			t.State = "Faulted"
		}
		if m.opt.HealthyField {
			h := !r.faulted && !r.rebuilding
			t.Healthy = &h
		}
		if nexus != nil {
			cs := "Online"
			var prog *int
			switch {
			case r.faulted:
				cs = "Faulted"
			case r.rebuilding:
				cs = "Degraded"
				p := m.progress(v, r, now)
				prog = &p
			}
			t.ChildStatus, t.RebuildProgress = &cs, prog
			uri := fmt.Sprintf("nvmf://%s:8420/nqn.2019-05.io.openebs:%s?uuid=%s", r.node, r.uuid, r.uuid)
			if r.node == v.targetNode {
				uri = fmt.Sprintf("bdev:///%s?uuid=%s", r.uuid, r.uuid)
			}
			var cp *int
			if prog != nil {
				x := *prog
				cp = &x
			}
			nexus.Children = append(nexus.Children, mayastorrest.Child{URI: uri, State: cs, RebuildProgress: cp})
			if r.rebuilding {
				nexus.Rebuilds++
			}
		}
		out.State.ReplicaTopology[r.uuid] = t
	}
	if nexus != nil {
		if out.State.Status != "Online" {
			nexus.State = "Degraded"
		}
		out.State.Target = nexus
	}
	return out
}

func (m *Model) renderPool(p *pool) mayastorrest.Pool {
	labels := map[string]string{}
	for k, v := range p.labels {
		labels[k] = v
	}
	used := m.used(p.id)
	disks := make([]string, len(p.disks))
	for i, d := range p.disks {
		disks[i] = "aio://" + d + "?uuid=" + uuidOf(p.id, d)
	}
	out := mayastorrest.Pool{ID: p.id,
		Spec:  &mayastorrest.PoolSpec{Disks: append([]string(nil), p.disks...), ID: p.id, Labels: labels, Node: p.node, Status: "Created"},
		State: &mayastorrest.PoolState{Capacity: p.capacity, Disks: disks, ID: p.id, Node: p.node, Status: p.status, Used: used, Committed: &used},
	}
	if p.cordon != nil {
		c := *p.cordon
		out.Spec.CordonDrain = &mayastorrest.PoolCordonDrain{Cordoned: &c}
	}
	return out
}

func (m *Model) listPools(w http.ResponseWriter, _ *http.Request) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.refresh()
	ids := make([]string, 0, len(m.pools))
	for id := range m.pools {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	out := []mayastorrest.Pool{}
	for _, id := range ids {
		out = append(out, m.renderPool(m.pools[id]))
	}
	writeJSON(w, http.StatusOK, out)
}

func (m *Model) getPool(w http.ResponseWriter, r *http.Request) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.pools[r.PathValue("id")]
	if p == nil {
		poolNotFound(w, r.PathValue("id"))
		return
	}
	writeJSON(w, http.StatusOK, m.renderPool(p))
}

// putPoolLabel follows the core agent: the same value again is AlreadyExists
// (422); another value without overwrite is FailedPrecondition (412).
func (m *Model) putPoolLabel(w http.ResponseWriter, r *http.Request) {
	key, value, ok := strings.Cut(r.PathValue("kv"), "=")
	if !ok || key == "" {
		deserializeErr(w, "deserialize error: "+r.URL.String())
		return
	}
	overwrite := false
	if o := r.URL.Query().Get("overwrite"); o != "" {
		b, err := strconv.ParseBool(o)
		if err != nil {
			deserializeErr(w, "deserialize error: "+r.URL.String())
			return
		}
		overwrite = b
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	id := r.PathValue("id")
	p := m.pools[id]
	if p == nil {
		poolNotFound(w, id)
		return
	}
	if old, has := p.labels[key]; has {
		if old == value {
			writeErr(w, http.StatusUnprocessableEntity, "AlreadyExists", fmt.Sprintf("SvcError :: LabelsExists: Pool %s is already labelled with labels '%s=%s'", id, key, value))
			return
		}
		if !overwrite {
			writeErr(w, http.StatusPreconditionFailed, "FailedPrecondition", fmt.Sprintf("SvcError :: LabelsExists: Pool %s is already labelled with labels '%s=%s'", id, key, old))
			return
		}
	}
	p.labels[key] = value
	writeJSON(w, http.StatusOK, m.renderPool(p))
}

func (m *Model) deletePoolLabel(w http.ResponseWriter, r *http.Request) {
	key := r.PathValue("key")
	m.mu.Lock()
	defer m.mu.Unlock()
	id := r.PathValue("id")
	p := m.pools[id]
	if p == nil {
		poolNotFound(w, id)
		return
	}
	if key == CreatedByKey {
		writeErr(w, http.StatusBadRequest, "InvalidArgument", fmt.Sprintf("SvcError :: ForbiddenUnlabelKey: The label key '%s' of Pool cannot be removed", key))
		return
	}
	if _, has := p.labels[key]; !has {
		writeErr(w, http.StatusPreconditionFailed, "FailedPrecondition", fmt.Sprintf("SvcError :: LabelNotFound: Pool %s doesn't have the label key '%s'", id, key))
		return
	}
	delete(p.labels, key)
	writeJSON(w, http.StatusOK, m.renderPool(p))
}

// poolCordon is PUT (on) / DELETE (off) /v0/pools/{id}/cordon with a
// PoolCordonReq body. Cordoning what is already cordoned, or uncordoning what
// is not, is AlreadyExists (422), as the kubectl plugin expects.
func (m *Model) poolCordon(w http.ResponseWriter, r *http.Request, on bool) {
	m.mu.Lock()
	enabled := m.opt.PoolCordon
	m.mu.Unlock()
	if !enabled {
		w.WriteHeader(http.StatusNotFound) // an older server has no such route
		return
	}
	var req mayastorrest.PoolCordon
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&req); err != nil {
		deserializeErr(w, "deserialize error: "+r.URL.String())
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	id := r.PathValue("id")
	p := m.pools[id]
	if p == nil {
		poolNotFound(w, id)
		return
	}
	cur := mayastorrest.PoolCordon{}
	if p.cordon != nil {
		cur = *p.cordon
	}
	next := cur
	set := func(dst *bool, want bool) {
		if want {
			*dst = on
		}
	}
	set(&next.Replicas, req.Replicas)
	set(&next.Snapshots, req.Snapshots)
	set(&next.Restores, req.Restores)
	set(&next.Import, req.Import)
	if next == cur {
		what := "cordoned"
		if !on {
			what = "uncordoned"
		}
		writeErr(w, http.StatusUnprocessableEntity, "AlreadyExists", fmt.Sprintf("SvcError :: PoolCordon: Pool %s is already %s for the requested resources", id, what))
		return
	}
	if next == (mayastorrest.PoolCordon{}) {
		p.cordon = nil
	} else {
		p.cordon = &next
	}
	writeJSON(w, http.StatusOK, m.renderPool(p))
}

func (m *Model) renderNode(n *node) mayastorrest.Node {
	ep := "10.0.0.1:10124"
	out := mayastorrest.Node{ID: n.id,
		Spec:  &mayastorrest.NodeSpec{GRPCEndpoint: ep, ID: n.id},
		State: &mayastorrest.NodeState{GRPCEndpoint: ep, ID: n.id, Status: n.status},
	}
	if len(n.cordoned) > 0 {
		out.Spec.CordonDrainState = &mayastorrest.CordonDrainState{CordonedState: &mayastorrest.CordonedState{CordonLabels: append([]string(nil), n.cordoned...)}}
	}
	return out
}

func (m *Model) listNodes(w http.ResponseWriter, _ *http.Request) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ids := make([]string, 0, len(m.nodes))
	for id := range m.nodes {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	out := []mayastorrest.Node{}
	for _, id := range ids {
		out = append(out, m.renderNode(m.nodes[id]))
	}
	writeJSON(w, http.StatusOK, out)
}

func (m *Model) getNode(w http.ResponseWriter, r *http.Request) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := m.nodes[r.PathValue("id")]
	if n == nil {
		writeErr(w, http.StatusNotFound, "NotFound", fmt.Sprintf("SvcError :: NodeNotFound: Node '%s' not found", r.PathValue("id")))
		return
	}
	writeJSON(w, http.StatusOK, m.renderNode(n))
}
