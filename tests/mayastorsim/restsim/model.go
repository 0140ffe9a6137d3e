// Package restsim is the REST half of the Mayastor simulator (a TEST DOUBLE):
// an in-memory model of Mayastor 2.x's control plane — nodes, pools, volumes
// and their replicas and nexus — served as its REST API /v0 with the real
// field names (the shared structs of pkg/mayastorrest) and the real error
// bodies and status codes.
//
// It plays Mayastor's own rules, not CoucheStor's expectations:
//   - scale-up (PUT …/replica_count/{n+1}) places the new replica on a pool the
//     scheduler picks: online, uncordoned nodes holding no replica of the
//     volume; pools not Faulted/Unknown, not cordoned, with room; every
//     inclusion key of the volume's pool topology present in the pool's live
//     labels (value matching unless empty); ranked by fewest replicas, then
//     most free space;
//   - scale-down removes the victim Mayastor would: unhealthy or not-synced
//     first, then remote before nexus-local, then the oldest;
//   - the count moves by one per call, up only while the volume is Online;
//   - a new replica of a published volume rebuilds 0→100 (rebuild-progress)
//     at a rate, then is Online; an unpublished volume (no nexus) does not
//     rebuild; the volume is Degraded while its nexus has children ≠
//     num_replicas or a child is not Online;
//   - pool labels are the DiskPool's at creation, later changed only through
//     PUT/DELETE /v0/pools/{id}/label; pool cordon exists only if enabled.
//
// Knobs play a hostile world: the scheduler ignoring steering (probability),
// a removed child re-attached by a reconciler after a delay, latency, 412s,
// 5xx and dropped connections (probabilities, or exact counts via Faults).
package restsim

import (
	"crypto/sha256"
	"fmt"
	"math/rand"
	"sort"
	"sync"
	"time"

	"github.com/billyronks/couchestor/pkg/mayastorrest"
)

// CreatedByKey is the label Mayastor's DiskPool operator puts on the pools it
// creates and Mayastor's CSI driver requires of every volume's pools.
const (
	CreatedByKey   = "openebs.io/created-by"
	CreatedByValue = "operator-diskpool"
)

// Options of the model.
type Options struct {
	// RebuildBytesPerSecond is how fast a new replica rebuilds (default 1 GiB/s).
	RebuildBytesPerSecond int64
	// PoolCordon enables PUT/DELETE /v0/pools/{id}/cordon (OpenEBS 4.4+);
	// without it the routes do not exist (bare 404 as an older server).
	PoolCordon bool
	// SteerMissProbability: per scale-up, the scheduler ignores steering —
	// it matches the volume's inclusions against the pools' labels as they
	// were at creation (not the live ones) and ignores pool cordons — and
	// picks another pool than the steered one when one exists.
	SteerMissProbability float64
	// ReattachAfter > 0: a replica removed by scale-down comes back as a child
	// of the nexus after this delay (a reconciler re-attaching it).
	ReattachAfter time.Duration
	// Latency is added to every /v0 request.
	Latency time.Duration
	// Fail412Probability of a PUT replica_count answering 412
	// FailedPrecondition without acting; Fail5xxProbability of any /v0 request
	// answering 503 Unavailable; DropProbability of any /v0 request having its
	// connection closed without an answer.
	Fail412Probability, Fail5xxProbability, DropProbability float64
	Seed                                                    int64
	// HealthyField: send ReplicaTopology.healthy, as releases after 2.7 do.
	HealthyField bool
	Now          func() time.Time
}

// PoolDef is a pool as the DiskPool created it.
type PoolDef struct {
	ID, Node      string
	Disks         []string
	Labels        map[string]string // DiskPool spec.topology.labelled
	CapacityBytes int64
}

// VolumeDef is a volume as Mayastor's CSI driver created it.
type VolumeDef struct {
	UUID      string
	SizeBytes int64
	Pools     []string // one replica on each, in order (the first is the oldest)
	Published bool
	// PoolInclusion is added to the CSI driver's inclusion
	// {openebs.io/created-by: operator-diskpool} (StorageClass
	// poolHasTopologyKey / poolAffinityTopologyLabel).
	PoolInclusion map[string]string
	// TargetNode is where the nexus is created when the volume is published
	// (the node of the app's pod, as Mayastor's CSI publish names it); "":
	// the node of its oldest replica. A node without a pool is an io-engine
	// node with no storage of its own.
	TargetNode string
}

type node struct {
	id       string
	status   string // Online|Offline|Unknown
	cordoned []string
}

type pool struct {
	id, node string
	disks    []string
	labels   map[string]string
	initial  map[string]string // labels at creation
	capacity int64
	status   string
	cordon   *mayastorrest.PoolCordon
}

type replica struct {
	uuid, pool, node string
	seq              int // creation order: lower is older
	// rebuilding: started at rebuildFrom (zero = waiting for a nexus)
	rebuilding  bool
	rebuildFrom time.Time
	faulted     bool
}

type volume struct {
	uuid        string
	size        int64
	numReplicas int
	replicas    []*replica
	inclusion   map[string]string
	published   bool
	nexusUUID   string
	targetNode  string
	// publishOn is VolumeDef.TargetNode.
	publishOn string
	op        *mayastorrest.VolumeOperation
}

type reattach struct {
	at     time.Time
	volume string
	r      replica
}

// Faults are exact counts of the next requests to fail (deterministic tests).
type Faults struct {
	Fail412 int `json:"fail412"` // next PUT replica_count calls answering 412
	Fail5xx int `json:"fail5xx"` // next /v0 requests answering 503
	Drop    int `json:"drop"`    // next /v0 requests whose connection is closed
}

// Model is the simulated control plane. Safe for concurrent use.
type Model struct {
	mu       sync.Mutex
	opt      Options
	rng      *rand.Rand
	nodes    map[string]*node
	pools    map[string]*pool
	volumes  map[string]*volume
	seq      int
	pending  []reattach
	faults   Faults
	requests int64
}

// New builds a model of pools (their nodes are Online) and volumes.
func New(opt Options, pools []PoolDef, vols []VolumeDef) (*Model, error) {
	if opt.RebuildBytesPerSecond <= 0 {
		opt.RebuildBytesPerSecond = 1 << 30
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	for _, p := range []struct {
		name string
		v    float64
	}{{"steer miss", opt.SteerMissProbability}, {"412", opt.Fail412Probability}, {"5xx", opt.Fail5xxProbability}, {"drop", opt.DropProbability}} {
		if p.v < 0 || p.v > 1 {
			return nil, fmt.Errorf("%s probability %v: must be in [0,1]", p.name, p.v)
		}
	}
	m := &Model{opt: opt, rng: rand.New(rand.NewSource(opt.Seed)), nodes: map[string]*node{}, pools: map[string]*pool{}, volumes: map[string]*volume{}}
	for _, p := range pools {
		if p.ID == "" || p.Node == "" {
			return nil, fmt.Errorf("pool %q: id and node are required", p.ID)
		}
		labels := map[string]string{CreatedByKey: CreatedByValue}
		for k, v := range p.Labels {
			labels[k] = v
		}
		disks := p.Disks
		if len(disks) == 0 {
			disks = []string{"/dev/sim-" + p.ID}
		}
		initial := map[string]string{}
		for k, v := range labels {
			initial[k] = v
		}
		m.pools[p.ID] = &pool{id: p.ID, node: p.Node, disks: disks, labels: labels, initial: initial, capacity: p.CapacityBytes, status: "Online"}
		if m.nodes[p.Node] == nil {
			m.nodes[p.Node] = &node{id: p.Node, status: "Online"}
		}
	}
	for _, d := range vols {
		if d.UUID == "" || d.SizeBytes <= 0 || len(d.Pools) == 0 {
			return nil, fmt.Errorf("volume %q: uuid, size > 0 and at least one replica pool are required", d.UUID)
		}
		if m.volumes[d.UUID] != nil {
			return nil, fmt.Errorf("volume %s: duplicate", d.UUID)
		}
		inc := map[string]string{CreatedByKey: CreatedByValue}
		for k, v := range d.PoolInclusion {
			inc[k] = v
		}
		v := &volume{uuid: d.UUID, size: d.SizeBytes, numReplicas: len(d.Pools), inclusion: inc, publishOn: d.TargetNode}
		if d.TargetNode != "" && m.nodes[d.TargetNode] == nil {
			m.nodes[d.TargetNode] = &node{id: d.TargetNode, status: "Online"}
		}
		for i, pid := range d.Pools {
			p := m.pools[pid]
			if p == nil {
				return nil, fmt.Errorf("volume %s: replica on unknown pool %q", d.UUID, pid)
			}
			m.seq++
			v.replicas = append(v.replicas, &replica{uuid: uuidOf(d.UUID, fmt.Sprint("replica-", i)), pool: pid, node: p.node, seq: m.seq})
		}
		m.volumes[d.UUID] = v
		if d.Published {
			m.publish(v, true)
		}
	}
	return m, nil
}

// uuidOf derives a stable UUID-shaped id.
func uuidOf(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	b := h.Sum(nil)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func (m *Model) randomUUID() string {
	return uuidOf(fmt.Sprint(m.rng.Int63()), fmt.Sprint(m.seq))
}

// publish creates (or removes) the volume's nexus. A nexus is created on the
// node of the oldest replica, so that replica is nexus-local; replicas that
// never finished a rebuild start (or restart) it now.
func (m *Model) publish(v *volume, on bool) {
	if on == v.published {
		return
	}
	v.published = on
	if !on {
		v.nexusUUID, v.targetNode = "", ""
		for _, r := range v.replicas {
			if r.rebuilding {
				r.rebuildFrom = time.Time{} // no nexus: the rebuild stops
			}
		}
		return
	}
	m.seq++
	v.nexusUUID = uuidOf(v.uuid, "nexus", fmt.Sprint(m.seq))
	oldest := v.replicas[0]
	for _, r := range v.replicas {
		if r.seq < oldest.seq && !r.rebuilding {
			oldest = r
		}
	}
	v.targetNode = oldest.node
	if v.publishOn != "" {
		v.targetNode = v.publishOn
	}
	now := m.opt.Now()
	for _, r := range v.replicas {
		if r.rebuilding {
			r.rebuildFrom = now
		}
	}
}

// progress of a rebuilding replica (0-100) at now; 100 means done.
func (m *Model) progress(v *volume, r *replica, now time.Time) int {
	if !r.rebuilding {
		return 100
	}
	if r.rebuildFrom.IsZero() {
		return 0
	}
	done := float64(now.Sub(r.rebuildFrom).Seconds()) * float64(m.opt.RebuildBytesPerSecond)
	p := int(done * 100 / float64(v.size))
	if p > 100 {
		p = 100
	}
	return p
}

// refresh finishes rebuilds and applies due re-attachments.
func (m *Model) refresh() {
	now := m.opt.Now()
	for _, v := range m.volumes {
		for _, r := range v.replicas {
			if r.rebuilding && v.published && m.progress(v, r, now) >= 100 {
				r.rebuilding = false
			}
		}
	}
	keep := m.pending[:0]
	for _, p := range m.pending {
		if now.Before(p.at) {
			keep = append(keep, p)
			continue
		}
		if v := m.volumes[p.volume]; v != nil && m.pools[p.r.pool] != nil {
			r := p.r
			v.replicas = append(v.replicas, &r)
		}
	}
	m.pending = keep
}

// status of a volume by Mayastor's rule.
func (m *Model) status(v *volume, now time.Time) string {
	if len(v.replicas) == 0 {
		return "Faulted"
	}
	if !v.published {
		if len(v.replicas) >= v.numReplicas {
			return "Online"
		}
		return "Degraded"
	}
	online := 0
	for _, r := range v.replicas {
		if !r.faulted && !r.rebuilding {
			online++
		}
	}
	switch {
	case online == 0:
		return "Faulted"
	case len(v.replicas) != v.numReplicas || online != len(v.replicas):
		return "Degraded"
	}
	return "Online"
}

func (m *Model) used(poolID string) int64 {
	var u int64
	for _, v := range m.volumes {
		for _, r := range v.replicas {
			if r.pool == poolID {
				u += v.size
			}
		}
	}
	return u
}

func (m *Model) replicasOn(poolID string) int {
	n := 0
	for _, v := range m.volumes {
		for _, r := range v.replicas {
			if r.pool == poolID {
				n++
			}
		}
	}
	return n
}

// candidates are the pools a new replica of v may go to, best first. steer
// false ignores what steering levers change: labels are matched as they were
// at the pool's creation, and pool cordons are ignored.
func (m *Model) candidates(v *volume, steer bool) []*pool {
	held := map[string]bool{}
	for _, r := range v.replicas {
		held[r.node] = true
	}
	var out []*pool
	for _, p := range m.pools {
		n := m.nodes[p.node]
		if n == nil || n.status != "Online" || len(n.cordoned) > 0 || held[p.node] {
			continue
		}
		if p.status == "Faulted" || p.status == "Unknown" {
			continue
		}
		if p.capacity-m.used(p.id) < v.size {
			continue
		}
		if steer && p.cordon != nil && p.cordon.Replicas {
			continue
		}
		ok := true
		labels := p.labels
		if !steer {
			labels = p.initial
		}
		for k, want := range v.inclusion {
			got, has := labels[k]
			if !has || (want != "" && got != want) {
				ok = false
				break
			}
		}
		if ok {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		ri, rj := m.replicasOn(out[i].id), m.replicasOn(out[j].id)
		if ri != rj {
			return ri < rj
		}
		fi, fj := out[i].capacity-m.used(out[i].id), out[j].capacity-m.used(out[j].id)
		if fi != fj {
			return fi > fj
		}
		return out[i].id < out[j].id
	})
	return out
}

// pick is the scheduler's choice for a new replica of v (nil: none fits).
func (m *Model) pick(v *volume) *pool {
	steered := m.candidates(v, true)
	if m.opt.SteerMissProbability > 0 && m.rng.Float64() < m.opt.SteerMissProbability {
		for _, p := range m.candidates(v, false) {
			if len(steered) == 0 || p != steered[0] {
				return p
			}
		}
	}
	if len(steered) == 0 {
		return nil
	}
	return steered[0]
}

// victim is the replica Mayastor removes on scale-down.
func (m *Model) victim(v *volume) *replica {
	rs := append([]*replica(nil), v.replicas...)
	rank := func(r *replica) (int, int) {
		unhealthy := 1
		if r.faulted || r.rebuilding {
			unhealthy = 0
		}
		local := 0
		if v.published && r.node == v.targetNode {
			local = 1
		}
		return unhealthy, local
	}
	sort.SliceStable(rs, func(i, j int) bool {
		ui, li := rank(rs[i])
		uj, lj := rank(rs[j])
		if ui != uj {
			return ui < uj
		}
		if li != lj {
			return li < lj
		}
		return rs[i].seq < rs[j].seq
	})
	return rs[0]
}
