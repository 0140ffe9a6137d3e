// Package sim is the library part of the Mayastor simulator, a TEST DOUBLE of
// OpenEBS Mayastor's control plane and io-engine exporter. Mayastor cannot run
// here (SPDK, hugepages, NVMe-oF), so integration tests drive CoucheStor
// against this instead, through the same API objects a real Mayastor uses:
//
//   - DiskPools (openebs.io/v1beta2, namespaced, the real 2.x shape: spec.node,
//     spec.disks, spec.topology.labelled; status cr_state, pool_status,
//     capacity, used, available), with used/available accounted from replicas;
//   - MayastorVolumes (openebs.io/v1alpha1, named by the CSI volume handle)
//     whose status (replicas, nexus) the simulator owns and keeps;
//   - the PersistentVolumes (CSI driver io.openebs.csi-mayastor) and bound
//     PersistentVolumeClaims that a CSI provisioner would have created;
//   - the io-engine's cumulative counters volume_num_read_ops and
//     volume_num_write_ops{pv_name} on /metrics, driven by a per-volume IOPS
//     schedule that tests change at run time over HTTP (/control/...).
//
// Like the io-engine, only published volumes (with a nexus) export counters,
// and counters start from zero when the simulator starts.
//
// The simulator is deliberately not tuned to CoucheStor: it models what
// Mayastor does, not what the operator expects. Replica behaviour (scale up on
// a pool of its own choosing, sync, pick the victim on scale down) belongs in
// Sim.reconcileVolume, which today only re-asserts the modelled status.
//
// With a REST model (Sim.REST, package restsim; `mayastorsim --api=rest`) it
// plays a Mayastor 2.x cluster instead: no MayastorVolume objects, DiskPools of
// Sim.DiskPoolVersion whose status follows the model's pools, PVs named
// pvc-<uuid>, publication forwarded to the model, and counters labelled with
// the nexus's node as well as pv_name.
//
// The command in the parent directory (tests/mayastorsim) runs it as its own
// process; Start (process.go) launches that process from a test, and Client
// (client.go) drives it.
package sim

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/billyronks/couchestor/tests/mayastorsim/restsim"
)

// Scenario is the simulator's input (JSON).
type Scenario struct {
	// Namespace of DiskPools and MayastorVolumes (Mayastor's namespace). Default "mayastor".
	Namespace string `json:"namespace,omitempty"`
	// StorageClass of the PVs and PVCs. Default "mayastor".
	StorageClass string       `json:"storageClass,omitempty"`
	Pools        []PoolSpec   `json:"pools"`
	Volumes      []VolumeSpec `json:"volumes"`
}

// PoolSpec is one DiskPool.
type PoolSpec struct {
	Name          string            `json:"name"`
	Node          string            `json:"node"`
	Disks         []string          `json:"disks,omitempty"`
	Labels        map[string]string `json:"labels,omitempty"`
	CapacityBytes int64             `json:"capacityBytes"`
}

// VolumeSpec is one volume: PV + PVC + MayastorVolume + its counters.
type VolumeSpec struct {
	// Name of the PV (also the pv_name label of its counters).
	Name string `json:"name"`
	// UUID is the CSI volume handle and the MayastorVolume's name.
	UUID      string `json:"uuid"`
	SizeBytes int64  `json:"sizeBytes"`
	// Replicas name the pools holding a replica, one each.
	Replicas  []string `json:"replicas"`
	Published bool     `json:"published"`
	// NoMetrics: published but exporting no counters (a broken exporter).
	NoMetrics bool `json:"noMetrics,omitempty"`
	// IOPS is the rate from the start; Schedule changes it later.
	IOPS     float64    `json:"iops"`
	Schedule []IOPSStep `json:"schedule,omitempty"`
	// ReadFraction of the operations are reads (default 0.5).
	ReadFraction *float64 `json:"readFraction,omitempty"`
	PVC          PVCSpec  `json:"pvc"`
	// PVAnnotations are set on the PV at creation.
	PVAnnotations map[string]string `json:"pvAnnotations,omitempty"`
	// PoolInclusion (REST mode) is added to the pool-topology inclusion that
	// Mayastor's CSI driver gives every volume ({openebs.io/created-by:
	// operator-diskpool}), as a StorageClass's poolHasTopologyKey would.
	PoolInclusion map[string]string `json:"poolInclusion,omitempty"`
	// TargetNode (REST mode) is the node of the volume's nexus when
	// published (the app's node); default: the node of its oldest replica.
	TargetNode string `json:"targetNode,omitempty"`
}

// IOPSStep switches a volume's rate After the simulator started.
type IOPSStep struct {
	After Duration `json:"after"`
	IOPS  float64  `json:"iops"`
}

// PVCSpec is the claim bound to the PV.
type PVCSpec struct {
	Namespace   string            `json:"namespace"`
	Name        string            `json:"name"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// Duration is a time.Duration written as "10s" in JSON.
type Duration struct{ time.Duration }

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// RESTDefs are the scenario's pools and volumes for the REST model. Mayastor's
// CSI driver names a PV pvc-<uuid>; REST mode requires the scenario to do so.
func (s *Scenario) RESTDefs() ([]restsim.PoolDef, []restsim.VolumeDef, error) {
	if err := s.normalize(); err != nil {
		return nil, nil, err
	}
	var pools []restsim.PoolDef
	for _, p := range s.Pools {
		pools = append(pools, restsim.PoolDef{ID: p.Name, Node: p.Node, Disks: p.Disks, Labels: p.Labels, CapacityBytes: p.CapacityBytes})
	}
	var vols []restsim.VolumeDef
	for _, v := range s.Volumes {
		if v.Name != "pvc-"+v.UUID {
			return nil, nil, fmt.Errorf("volume %s: name must be pvc-<uuid> (%q) in REST mode, as Mayastor's CSI driver names its PVs", v.Name, "pvc-"+v.UUID)
		}
		vols = append(vols, restsim.VolumeDef{UUID: v.UUID, SizeBytes: v.SizeBytes, Pools: v.Replicas, Published: v.Published, PoolInclusion: v.PoolInclusion, TargetNode: v.TargetNode})
	}
	return pools, vols, nil
}

// LoadScenario reads a scenario file and checks it.
func LoadScenario(path string) (*Scenario, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read scenario: %w", err)
	}
	var s Scenario
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("parse scenario %s: %w", path, err)
	}
	return &s, s.normalize()
}

func (s *Scenario) normalize() error {
	if s.Namespace == "" {
		s.Namespace = "mayastor"
	}
	if s.StorageClass == "" {
		s.StorageClass = "mayastor"
	}
	pools := map[string]bool{}
	for _, p := range s.Pools {
		if p.Name == "" || p.Node == "" {
			return fmt.Errorf("pool %q: name and node are required", p.Name)
		}
		pools[p.Name] = true
	}
	seen := map[string]bool{}
	for i, v := range s.Volumes {
		if v.Name == "" || v.UUID == "" || v.PVC.Name == "" || v.PVC.Namespace == "" {
			return fmt.Errorf("volume %d: name, uuid, pvc.namespace and pvc.name are required", i)
		}
		if seen[v.Name] {
			return fmt.Errorf("volume %s: duplicate", v.Name)
		}
		seen[v.Name] = true
		for _, r := range v.Replicas {
			if !pools[r] {
				return fmt.Errorf("volume %s: replica on unknown pool %q", v.Name, r)
			}
		}
		if v.ReadFraction != nil && (*v.ReadFraction < 0 || *v.ReadFraction > 1) {
			return fmt.Errorf("volume %s: readFraction %v not in [0,1]", v.Name, *v.ReadFraction)
		}
	}
	return nil
}
