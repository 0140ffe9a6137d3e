package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// MemberState is what the operator knows of a group member's pool.
// +kubebuilder:validation:Enum=Up;Suspect;Out;Backfilling
type MemberState string

const (
	// MemberUp: the pool's DiskPool is Online (or Degraded), its shard
	// server holds a live Lease and answers.
	MemberUp MemberState = "Up"
	// MemberSuspect: the pool is down for less than --ec-down-out-delay; it
	// keeps its slot (a restart costs no backfill).
	MemberSuspect MemberState = "Suspect"
	// MemberOut: the pool is down for the down-out delay or longer and no
	// eligible pool can take its slot (fewer eligible pools than slots).
	MemberOut MemberState = "Out"
	// MemberBackfilling: the member took the slot of a pool that was down
	// for the down-out delay; the group's shards of that slot are to be
	// reconstructed onto it (PlacementBackfill).
	MemberBackfilling MemberState = "Backfilling"
)

// PlacementMember is the pool holding one slot of a group: shard Slot of
// every stripe of the group lives on Pool.
type PlacementMember struct {
	// Slot is the shard index this member holds, in [0, width).
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=254
	Slot int32 `json:"slot"`
	// Pool is the DiskPool (= the shard server's pool) of the member.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Pool string `json:"pool"`
	// Node is the node of the member's shard server.
	// +kubebuilder:validation:MaxLength=253
	// +optional
	Node  string      `json:"node,omitempty"`
	State MemberState `json:"state"`
	// Reason says why the member is not Up.
	// +kubebuilder:validation:MaxLength=1024
	// +optional
	Reason string `json:"reason,omitempty"`
	// Since is when the member entered its state.
	// +optional
	Since *metav1.Time `json:"since,omitempty"`
}

// PlacementBackfill is a slot whose pool was lost and replaced: the shards
// of that slot of every stripe of the group are to be reconstructed from
// the surviving members onto the new one.
type PlacementBackfill struct {
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=254
	Slot int32 `json:"slot"`
	// From is the lost pool.
	// +kubebuilder:validation:MaxLength=253
	From string `json:"from"`
	// To is the member that replaced it.
	// +kubebuilder:validation:MaxLength=253
	To string `json:"to"`
	// Epoch is the group's epoch when the replacement was made.
	Epoch int64 `json:"epoch"`
	// Since is when the replacement was made.
	Since metav1.Time `json:"since"`
}

// ECPlacementGroupSpec names the group: which policy, which of its groups,
// how many there are, and how many slots each has. All of it is fixed at
// creation: a stripe's group is a hash of its volume and stripe id onto
// groupCount, and a group's slots are the policy's k+m.
// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="spec is immutable: the group count and width decide where every stripe's shards live"
// +kubebuilder:validation:XValidation:rule="self.group < self.groupCount",message="spec.group must be below spec.groupCount"
type ECPlacementGroupSpec struct {
	// PolicyRef is the ErasureCodingPolicy whose stripes the group holds.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	PolicyRef string `json:"policyRef"`
	// Group is the group's number, in [0, groupCount).
	// +kubebuilder:validation:Minimum=0
	Group int32 `json:"group"`
	// GroupCount is the number of groups of the policy.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65536
	GroupCount int32 `json:"groupCount"`
	// Width is the policy's dataShards + parityShards: the group's slots.
	// +kubebuilder:validation:Minimum=2
	// +kubebuilder:validation:Maximum=255
	Width int32 `json:"width"`
}

// ECPlacementGroupStatus is the group's membership, written by the
// operator's placement-group controller.
type ECPlacementGroupStatus struct {
	// Epoch counts membership changes: bumped on every change of a slot's
	// pool. Writers and servers will use it to fence a stale view.
	// +optional
	Epoch int64 `json:"epoch,omitempty"`
	// Members by slot.
	// +listType=map
	// +listMapKey=slot
	// +kubebuilder:validation:MaxItems=255
	// +optional
	Members []PlacementMember `json:"members,omitempty"`
	// SharedNodes is true when two members sit on one node (fewer eligible
	// nodes than slots): one node's loss then costs the group two shards.
	// +optional
	SharedNodes bool `json:"sharedNodes,omitempty"`
	// Backfills are the replaced slots whose shards are still to be
	// reconstructed onto their new member.
	// +listType=map
	// +listMapKey=slot
	// +kubebuilder:validation:MaxItems=255
	// +optional
	Backfills []PlacementBackfill `json:"backfills,omitempty"`
	// Conditions: Ready (every member Up), Balanced (the members are the
	// group's ideal ones over today's pools).
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// ECPlacementGroup is one placement group of an ErasureCodingPolicy: the
// k+m pools that hold the shards of every stripe hashed to it.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=ecpg,categories=couchestor
// +kubebuilder:selectablefield:JSONPath=`.spec.policyRef`
// +kubebuilder:printcolumn:name="Policy",type=string,JSONPath=`.spec.policyRef`
// +kubebuilder:printcolumn:name="Group",type=integer,JSONPath=`.spec.group`
// +kubebuilder:printcolumn:name="Epoch",type=integer,JSONPath=`.status.epoch`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Balanced",type=string,JSONPath=`.status.conditions[?(@.type=="Balanced")].status`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ECPlacementGroup struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec ECPlacementGroupSpec `json:"spec"`
	// +optional
	Status ECPlacementGroupStatus `json:"status,omitempty"`
}

// ECPlacementGroupList is a list of ECPlacementGroup.
// +kubebuilder:object:root=true
type ECPlacementGroupList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ECPlacementGroup `json:"items"`
}

func init() {
	SchemeBuilder.Register(&ECPlacementGroup{}, &ECPlacementGroupList{})
}
