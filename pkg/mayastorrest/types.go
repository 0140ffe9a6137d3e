// Package mayastorrest is a client of Mayastor 2.x's control-plane REST API
// (/v0, control-plane/rest/openapi-specs/v0_api_spec.yaml of
// openebs/mayastor-control-plane) and the typed shapes of its answers.
//
// The JSON names are the API's own, a mix of snake_case, camelCase and
// kebab-case; TestFixturesRoundTrip decodes hand-written fixtures with
// DisallowUnknownFields and re-encodes them to prove every name matches.
// Optional fields are pointers (or omitempty maps and slices), so "absent" is
// never read as zero; required fields the operator relies on are checked after
// decoding (see validate.go) and a missing one is an error, never a zero.
package mayastorrest

// Volume is `Volume`: the user's spec and the control plane's state.
type Volume struct {
	Spec  VolumeSpec  `json:"spec"`
	State VolumeState `json:"state"`
}

// Volumes is one page of GET /v0/volumes.
type Volumes struct {
	Entries   []Volume `json:"entries"`
	NextToken *int64   `json:"next_token,omitempty"`
}

// VolumeSpec is `VolumeSpec`.
type VolumeSpec struct {
	UUID          string               `json:"uuid"`
	Size          int64                `json:"size"`
	NumReplicas   uint8                `json:"num_replicas"`
	Status        string               `json:"status"` // SpecStatus: Creating|Created|Deleting|Deleted
	Labels        map[string]string    `json:"labels,omitempty"`
	Operation     *VolumeOperation     `json:"operation,omitempty"`
	Target        *VolumeTarget        `json:"target,omitempty"`
	Topology      *Topology            `json:"topology,omitempty"`
	Policy        VolumePolicy         `json:"policy"`
	Thin          bool                 `json:"thin"`
	AsThin        *bool                `json:"as_thin,omitempty"`
	AffinityGroup *AffinityGroup       `json:"affinity_group,omitempty"`
	ContentSource *VolumeContentSource `json:"content_source,omitempty"`
	NumSnapshots  int32                `json:"num_snapshots"`
	MaxSnapshots  *int32               `json:"max_snapshots,omitempty"`
}

// VolumeOperation is the record of the operation in progress on a volume.
type VolumeOperation struct {
	Operation string `json:"operation"`
	Result    *bool  `json:"result,omitempty"`
}

// VolumeTarget is `VolumeTarget`: where front-end I/O is sent.
type VolumeTarget struct {
	Node          string           `json:"node"`
	Protocol      *string          `json:"protocol,omitempty"` // VolumeShareProtocol: nvmf|iscsi
	FrontendNodes []NodeAccessInfo `json:"frontend_nodes,omitempty"`
}

// NodeAccessInfo is a front-end node's access information.
type NodeAccessInfo struct {
	Name string `json:"name"`
	NQN  string `json:"nqn"`
}

// Topology is a volume's node and pool topology.
type Topology struct {
	NodeTopology *NodeTopology `json:"node_topology,omitempty"`
	PoolTopology *PoolTopology `json:"pool_topology,omitempty"`
}

// NodeTopology is `NodeTopology` (one of explicit or labelled).
type NodeTopology struct {
	Explicit *ExplicitNodeTopology `json:"explicit,omitempty"`
	Labelled *LabelledTopology     `json:"labelled,omitempty"`
}

// ExplicitNodeTopology names the nodes replicas may (or preferably) go to.
type ExplicitNodeTopology struct {
	AllowedNodes   []string `json:"allowed_nodes"`
	PreferredNodes []string `json:"preferred_nodes"`
}

// PoolTopology is `PoolTopology`: the pools a volume's replicas may use.
type PoolTopology struct {
	Labelled *LabelledTopology `json:"labelled,omitempty"`
}

// LabelledTopology is `LabelledTopology`. An inclusion key with an empty value
// only requires the key to be present.
type LabelledTopology struct {
	Exclusion   map[string]string `json:"exclusion"`
	Inclusion   map[string]string `json:"inclusion"`
	AffinityKey []string          `json:"affinity_key,omitempty"`
}

// VolumePolicy is `VolumePolicy`.
type VolumePolicy struct {
	SelfHeal bool `json:"self_heal"`
}

// AffinityGroup is `AffinityGroup`.
type AffinityGroup struct {
	ID string `json:"id"`
}

// VolumeContentSource is `VolumeContentSource`.
type VolumeContentSource struct {
	Snapshot *SnapshotAsSource `json:"snapshot,omitempty"`
}

// SnapshotAsSource is `SnapshotAsSource`.
type SnapshotAsSource struct {
	Snapshot string `json:"snapshot"`
	Volume   string `json:"volume"`
}

// VolumeState is `VolumeState`: the runtime state of a volume.
type VolumeState struct {
	UUID            string                     `json:"uuid"`
	Size            int64                      `json:"size"`
	Status          string                     `json:"status"` // VolumeStatus: Unknown|Online|Degraded|Faulted|Shutdown
	Target          *Nexus                     `json:"target,omitempty"`
	ReplicaTopology map[string]ReplicaTopology `json:"replica_topology"`
	Usage           *VolumeUsage               `json:"usage,omitempty"`
}

// VolumeUsage is `VolumeUsage`.
type VolumeUsage struct {
	Capacity                int64 `json:"capacity"`
	Allocated               int64 `json:"allocated"`
	AllocatedReplica        int64 `json:"allocated_replica"`
	AllocatedSnapshots      int64 `json:"allocated_snapshots"`
	AllocatedAllSnapshots   int64 `json:"allocated_all_snapshots"`
	TotalAllocated          int64 `json:"total_allocated"`
	TotalAllocatedReplicas  int64 `json:"total_allocated_replicas"`
	TotalAllocatedSnapshots int64 `json:"total_allocated_snapshots"`
}

// ReplicaTopology is `ReplicaTopology`, keyed by replica uuid in
// VolumeState.ReplicaTopology. Healthy is sent by newer releases only.
type ReplicaTopology struct {
	Node              *string       `json:"node,omitempty"`
	Pool              *string       `json:"pool,omitempty"`
	State             string        `json:"state"`                         // ReplicaState: Unknown|Online|Degraded|Faulted
	ChildStatus       *string       `json:"child-status,omitempty"`        // ChildState: Unknown|Online|Degraded|Faulted
	ChildStatusReason *string       `json:"child-status-reason,omitempty"` // ChildStateReason: OutOfSpace
	Usage             *ReplicaUsage `json:"usage,omitempty"`
	RebuildProgress   *int          `json:"rebuild-progress,omitempty"` // 0-100, present while rebuilding
	Healthy           *bool         `json:"healthy,omitempty"`
}

// ReplicaUsage is `ReplicaUsage`.
type ReplicaUsage struct {
	Capacity              int64 `json:"capacity"`
	Allocated             int64 `json:"allocated"`
	AllocatedSnapshots    int64 `json:"allocated_snapshots"`
	AllocatedAllSnapshots int64 `json:"allocated_all_snapshots"`
}

// Nexus is `Nexus`, the volume's target. UUID is the nexus's own id, not the
// volume's.
type Nexus struct {
	Children  []Child `json:"children"`
	DeviceURI string  `json:"deviceUri"` // missing and "" mean the same: not published
	Node      string  `json:"node"`
	Rebuilds  int32   `json:"rebuilds"`
	Protocol  string  `json:"protocol"` // Protocol: none|nvmf|iscsi|nbd
	Size      int64   `json:"size"`
	State     string  `json:"state"` // NexusState: Unknown|Online|Degraded|Faulted|ShuttingDown|Shutdown
	UUID      string  `json:"uuid"`
}

// Child is a nexus child; its URI ends in ?uuid=<replica uuid>.
type Child struct {
	RebuildProgress *int    `json:"rebuildProgress,omitempty"`
	State           string  `json:"state"` // ChildState
	StateReason     *string `json:"state_reason,omitempty"`
	URI             string  `json:"uri"`
}

// Pool is `Pool`. Its id is the DiskPool's name.
type Pool struct {
	ID    string     `json:"id"`
	Spec  *PoolSpec  `json:"spec,omitempty"`
	State *PoolState `json:"state,omitempty"`
}

// PoolSpec is `PoolSpec`. CordonDrain is sent by servers with pool cordon
// (OpenEBS 4.4+).
type PoolSpec struct {
	Disks       []string          `json:"disks"`
	ID          string            `json:"id"`
	Labels      map[string]string `json:"labels,omitempty"`
	Node        string            `json:"node"`
	Status      string            `json:"status"` // SpecStatus
	CordonDrain *PoolCordonDrain  `json:"cordon_drain,omitempty"`
}

// PoolCordonDrain is a pool's cordon state (one of).
type PoolCordonDrain struct {
	Cordoned *PoolCordon `json:"cordoned,omitempty"`
}

// PoolCordon is `PoolCordonReq`, also the cordoned state of a pool: which new
// resources may not be placed on it.
type PoolCordon struct {
	Replicas  bool `json:"replicas"`
	Snapshots bool `json:"snapshots"`
	Restores  bool `json:"restores"`
	Import    bool `json:"import"`
}

// PoolState is `PoolState`, as io-engine reports it. Free space is
// Capacity - Used.
type PoolState struct {
	Capacity  int64    `json:"capacity"`
	Disks     []string `json:"disks"`
	ID        string   `json:"id"`
	Node      string   `json:"node"`
	Status    string   `json:"status"` // PoolStatus: Unknown|Online|Degraded|Faulted
	Used      int64    `json:"used"`
	Committed *int64   `json:"committed,omitempty"`
}

// Node is `Node`, an io-engine instance.
type Node struct {
	ID    string     `json:"id"`
	Spec  *NodeSpec  `json:"spec,omitempty"`
	State *NodeState `json:"state,omitempty"`
}

// NodeSpec is `NodeSpec`.
type NodeSpec struct {
	GRPCEndpoint     string            `json:"grpcEndpoint"`
	ID               string            `json:"id"`
	Labels           map[string]string `json:"labels,omitempty"`
	CordonDrainState *CordonDrainState `json:"cordondrainstate,omitempty"`
	NodeNQN          *string           `json:"node_nqn,omitempty"`
	Version          *string           `json:"version,omitempty"`
}

// CordonDrainState is `CordonDrainState` (one of).
type CordonDrainState struct {
	CordonedState *CordonedState `json:"cordonedstate,omitempty"`
	DrainingState *DrainState    `json:"drainingstate,omitempty"`
	DrainedState  *DrainState    `json:"drainedstate,omitempty"`
}

// CordonedState is `CordonedState`.
type CordonedState struct {
	CordonLabels []string `json:"cordonlabels"`
}

// DrainState is `DrainState`.
type DrainState struct {
	CordonLabels []string `json:"cordonlabels"`
	DrainLabels  []string `json:"drainlabels"`
}

// NodeState is `NodeState`.
type NodeState struct {
	GRPCEndpoint string  `json:"grpcEndpoint"`
	ID           string  `json:"id"`
	Status       string  `json:"status"` // NodeStatus: Unknown|Online|Offline
	NodeNQN      *string `json:"node_nqn,omitempty"`
	Version      *string `json:"version,omitempty"`
}

// RestJsonError is the body of every error answer.
type RestJsonError struct { //nolint:revive // the API's own name
	Details string `json:"details"`
	Message string `json:"message"`
	Kind    string `json:"kind"`
}

// Cordoned reports whether the pool's spec says new replicas may not be
// placed on it.
func (p Pool) Cordoned() bool {
	return p.Spec != nil && p.Spec.CordonDrain != nil && p.Spec.CordonDrain.Cordoned != nil && p.Spec.CordonDrain.Cordoned.Replicas
}

// Labels are the pool's live labels (nil without a spec).
func (p Pool) Labels() map[string]string {
	if p.Spec == nil {
		return nil
	}
	return p.Spec.Labels
}
