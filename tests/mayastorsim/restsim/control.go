package restsim

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

// SetPublished publishes (creates the nexus) or unpublishes a volume.
func (m *Model) SetPublished(uuid string, published bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	v := m.volumes[uuid]
	if v == nil {
		return fmt.Errorf("no REST volume %q", uuid)
	}
	m.refresh()
	m.publish(v, published)
	return nil
}

// Pools returns the pool ids holding a replica of the volume, oldest first.
func (m *Model) Pools(uuid string) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.refresh()
	v := m.volumes[uuid]
	if v == nil {
		return nil
	}
	var out []string
	for _, r := range v.replicas {
		out = append(out, r.pool)
	}
	return out
}

// TargetNode is the node of the volume's nexus ("" when unpublished).
func (m *Model) TargetNode(uuid string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if v := m.volumes[uuid]; v != nil {
		return v.targetNode
	}
	return ""
}

// PoolUsage is a pool's capacity, used bytes and status (for the DiskPool's
// status).
func (m *Model) PoolUsage(id string) (capacity, used int64, status string, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.refresh()
	p := m.pools[id]
	if p == nil {
		return 0, 0, "", false
	}
	return p.capacity, m.used(id), p.status, true
}

// Knobs are the run-time adjustable options (nil: unchanged).
type Knobs struct {
	SteerMissProbability  *float64 `json:"steerMissProbability,omitempty"`
	ReattachAfter         *string  `json:"reattachAfter,omitempty"`
	Latency               *string  `json:"latency,omitempty"`
	Fail412Probability    *float64 `json:"fail412Probability,omitempty"`
	Fail5xxProbability    *float64 `json:"fail5xxProbability,omitempty"`
	DropProbability       *float64 `json:"dropProbability,omitempty"`
	RebuildBytesPerSecond *int64   `json:"rebuildBytesPerSecond,omitempty"`
	PoolCordon            *bool    `json:"poolCordon,omitempty"`
}

// SetKnobs changes options at run time, all or nothing.
func (m *Model) SetKnobs(k Knobs) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	o := m.opt
	prob := func(name string, src *float64, dst *float64) error {
		if src == nil {
			return nil
		}
		if *src < 0 || *src > 1 {
			return fmt.Errorf("%s %v: must be in [0,1]", name, *src)
		}
		*dst = *src
		return nil
	}
	dur := func(name string, src *string, dst *time.Duration) error {
		if src == nil {
			return nil
		}
		d, err := time.ParseDuration(*src)
		if err != nil || d < 0 {
			return fmt.Errorf("%s %q: must be a duration >= 0", name, *src)
		}
		*dst = d
		return nil
	}
	for _, err := range []error{
		prob("steerMissProbability", k.SteerMissProbability, &o.SteerMissProbability),
		prob("fail412Probability", k.Fail412Probability, &o.Fail412Probability),
		prob("fail5xxProbability", k.Fail5xxProbability, &o.Fail5xxProbability),
		prob("dropProbability", k.DropProbability, &o.DropProbability),
		dur("reattachAfter", k.ReattachAfter, &o.ReattachAfter),
		dur("latency", k.Latency, &o.Latency),
	} {
		if err != nil {
			return err
		}
	}
	if k.RebuildBytesPerSecond != nil {
		if *k.RebuildBytesPerSecond <= 0 {
			return fmt.Errorf("rebuildBytesPerSecond %d: must be > 0", *k.RebuildBytesPerSecond)
		}
		m.refresh()
		// keep the bytes rebuilt so far: move each rebuild's start
		now := m.opt.Now()
		for _, v := range m.volumes {
			for _, r := range v.replicas {
				if r.rebuilding && !r.rebuildFrom.IsZero() {
					done := now.Sub(r.rebuildFrom).Seconds() * float64(o.RebuildBytesPerSecond)
					r.rebuildFrom = now.Add(-time.Duration(done / float64(*k.RebuildBytesPerSecond) * float64(time.Second)))
				}
			}
		}
		o.RebuildBytesPerSecond = *k.RebuildBytesPerSecond
	}
	if k.PoolCordon != nil {
		o.PoolCordon = *k.PoolCordon
	}
	m.opt = o
	return nil
}

// AddFaults adds exact counts of failures for the next requests.
func (m *Model) AddFaults(f Faults) error {
	if f.Fail412 < 0 || f.Fail5xx < 0 || f.Drop < 0 {
		return fmt.Errorf("faults %+v: counts must be >= 0", f)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.faults.Fail412 += f.Fail412
	m.faults.Fail5xx += f.Fail5xx
	m.faults.Drop += f.Drop
	return nil
}

// SetNode sets a node's status (Online|Offline|Unknown) and cordon.
func (m *Model) SetNode(id, status string, cordoned *bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := m.nodes[id]
	if n == nil {
		return fmt.Errorf("no node %q", id)
	}
	if status != "" {
		if status != "Online" && status != "Offline" && status != "Unknown" {
			return fmt.Errorf("node status %q: must be Online, Offline or Unknown", status)
		}
		n.status = status
	}
	if cordoned != nil {
		n.cordoned = nil
		if *cordoned {
			n.cordoned = []string{"sim"}
		}
	}
	return nil
}

// SetPoolStatus sets a pool's state status (Online|Degraded|Faulted|Unknown).
func (m *Model) SetPoolStatus(id, status string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.pools[id]
	if p == nil {
		return fmt.Errorf("no pool %q", id)
	}
	switch status {
	case "Online", "Degraded", "Faulted", "Unknown":
	default:
		return fmt.Errorf("pool status %q: must be Online, Degraded, Faulted or Unknown", status)
	}
	p.status = status
	return nil
}

// SetReplicaFaulted marks a replica (by uuid) of a volume faulted or healthy.
func (m *Model) SetReplicaFaulted(volume, replica string, faulted bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	v := m.volumes[volume]
	if v == nil {
		return fmt.Errorf("no volume %q", volume)
	}
	for _, r := range v.replicas {
		if r.uuid == replica {
			r.faulted = faulted
			return nil
		}
	}
	return fmt.Errorf("volume %s has no replica %q", volume, replica)
}

// ControlHandler serves the model's knobs:
//
//	POST /control/rest/knobs   Knobs
//	POST /control/rest/faults  {"fail412": 1, "fail5xx": 2, "drop": 1}
//	POST /control/rest/nodes/{id}  {"status": "Offline", "cordoned": true}
//	POST /control/rest/pools/{id}  {"status": "Faulted"}
//	POST /control/rest/volumes/{uuid}/replicas/{replica}  {"faulted": true}
//	GET  /control/rest/requests  -> {"requests": n}
func (m *Model) ControlHandler() http.Handler {
	mux := http.NewServeMux()
	decode := func(w http.ResponseWriter, r *http.Request, v any) bool {
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16))
		dec.DisallowUnknownFields()
		if err := dec.Decode(v); err != nil {
			http.Error(w, "body: "+err.Error(), http.StatusBadRequest)
			return false
		}
		return true
	}
	reply := func(w http.ResponseWriter, err error) {
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
		}
	}
	mux.HandleFunc("POST /control/rest/knobs", func(w http.ResponseWriter, r *http.Request) {
		var k Knobs
		if decode(w, r, &k) {
			reply(w, m.SetKnobs(k))
		}
	})
	mux.HandleFunc("POST /control/rest/faults", func(w http.ResponseWriter, r *http.Request) {
		var f Faults
		if decode(w, r, &f) {
			reply(w, m.AddFaults(f))
		}
	})
	mux.HandleFunc("POST /control/rest/nodes/{id}", func(w http.ResponseWriter, r *http.Request) {
		var b struct {
			Status   string `json:"status"`
			Cordoned *bool  `json:"cordoned"`
		}
		if decode(w, r, &b) {
			reply(w, m.SetNode(r.PathValue("id"), b.Status, b.Cordoned))
		}
	})
	mux.HandleFunc("POST /control/rest/pools/{id}", func(w http.ResponseWriter, r *http.Request) {
		var b struct {
			Status string `json:"status"`
		}
		if decode(w, r, &b) {
			reply(w, m.SetPoolStatus(r.PathValue("id"), b.Status))
		}
	})
	mux.HandleFunc("POST /control/rest/volumes/{uuid}/replicas/{replica}", func(w http.ResponseWriter, r *http.Request) {
		var b struct {
			Faulted *bool `json:"faulted"`
		}
		if decode(w, r, &b) {
			if b.Faulted == nil {
				http.Error(w, `body must be {"faulted": <bool>}`, http.StatusBadRequest)
				return
			}
			reply(w, m.SetReplicaFaulted(r.PathValue("uuid"), r.PathValue("replica"), *b.Faulted))
		}
	})
	mux.HandleFunc("GET /control/rest/requests", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]int64{"requests": m.Requests()})
	})
	return mux
}
