package migration

import (
	"context"
	"fmt"
	"maps"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mayastorv1alpha1 "github.com/billyronks/couchestor/apis/mayastor/v1alpha1"
	mayastorv1beta2 "github.com/billyronks/couchestor/apis/mayastor/v1beta2"
	"github.com/billyronks/couchestor/pkg/diskpool"
)

// Topology is a volume's pool topology: a pool is eligible when its labels
// contain every Inclusion pair and none of the Exclusion pairs.
type Topology struct {
	Inclusion map[string]string `json:"inclusion,omitempty"`
	Exclusion map[string]string `json:"exclusion,omitempty"`
}

func (t *Topology) clone() *Topology {
	if t == nil {
		return nil
	}
	return &Topology{Inclusion: maps.Clone(t.Inclusion), Exclusion: maps.Clone(t.Exclusion)}
}

// Replica is one replica of a volume.
type Replica struct {
	UUID   string
	Pool   string
	Node   string
	State  string // Unknown, Online, Degraded, Faulted
	Synced bool
}

// Healthy is Online and synced: a full copy of the data.
func (r Replica) Healthy() bool { return r.State == string(mayastorv1alpha1.StateOnline) && r.Synced }

// Faulted is a replica that will not become healthy.
func (r Replica) Faulted() bool { return r.State == string(mayastorv1alpha1.StateFaulted) }

// Volume is what the engine and the tier decisions know about a volume.
type Volume struct {
	ID          string
	Size        int64
	NumReplicas int32
	Topology    *Topology
	Replicas    []Replica
	// Published: the volume has a target (nexus), on TargetNode.
	Published  bool
	TargetNode string
	// Unmovable, when set, says why no replica of this volume may be moved
	// now (e.g. an unpublished volume on Mayastor 2.x does not rebuild).
	Unmovable string
}

// Pool is a storage pool.
type Pool struct {
	Name      string
	Node      string
	Labels    map[string]string
	Online    bool
	Status    string
	Capacity  int64
	Used      int64
	Available int64
}

// VolumeBackend reaches Mayastor's volumes and pools. The engine writes only
// numReplicas and the topology.
type VolumeBackend interface {
	// Describe names the backend and where it reads from, for conditions and logs.
	Describe() string
	// ListVolumes reads every volume in as few requests as the backend allows
	// (one paginated list per evaluation, never one request per volume).
	ListVolumes(ctx context.Context) ([]Volume, error)
	GetVolume(ctx context.Context, id string) (Volume, error)
	// SetReplicas writes numReplicas and the topology (nil: no constraint) in
	// one update. It must be idempotent.
	SetReplicas(ctx context.Context, id string, numReplicas int32, topology *Topology) error
	ListPools(ctx context.Context) ([]Pool, error)
	// Rules are the control plane's placement and removal rules.
	Rules() Rules
}

// RefusedError is a move the backend refuses for a reason that waiting does
// not change (e.g. Mayastor would remove another replica than the one to
// drop): the migration fails with the message instead of retrying.
type RefusedError struct{ Reason string }

func (e *RefusedError) Error() string { return e.Reason }

// MayastorVolumeBackend implements VolumeBackend over the MayastorVolume
// (openebs.io/v1alpha1) and DiskPool (openebs.io/v1beta2) kinds in Mayastor's
// namespace. A volume's ID is its MayastorVolume's name.
type MayastorVolumeBackend struct {
	Client    client.Client
	Namespace string
}

var _ VolumeBackend = (*MayastorVolumeBackend)(nil)

// Describe names the backend.
func (b *MayastorVolumeBackend) Describe() string {
	return fmt.Sprintf("MayastorVolume objects (openebs.io/v1alpha1) in namespace %s", b.Namespace)
}

// Rules: the schema's model places a replica on the pool its topology names,
// and its topology is written by the engine.
func (b *MayastorVolumeBackend) Rules() Rules {
	return Rules{SameNodeMoves: true, TopologyWritable: true}
}

// GetVolume reads the MayastorVolume.
func (b *MayastorVolumeBackend) GetVolume(ctx context.Context, id string) (Volume, error) {
	var msv mayastorv1alpha1.MayastorVolume
	if err := b.Client.Get(ctx, types.NamespacedName{Namespace: b.Namespace, Name: id}, &msv); err != nil {
		return Volume{}, fmt.Errorf("get MayastorVolume %s/%s: %w", b.Namespace, id, err)
	}
	return fromMayastorVolume(&msv), nil
}

// ListVolumes lists the MayastorVolumes (from the informer cache).
func (b *MayastorVolumeBackend) ListVolumes(ctx context.Context) ([]Volume, error) {
	var list mayastorv1alpha1.MayastorVolumeList
	if err := b.Client.List(ctx, &list, client.InNamespace(b.Namespace)); err != nil {
		return nil, fmt.Errorf("list MayastorVolumes in %s: %w", b.Namespace, err)
	}
	out := make([]Volume, 0, len(list.Items))
	for i := range list.Items {
		out = append(out, fromMayastorVolume(&list.Items[i]))
	}
	return out, nil
}

func fromMayastorVolume(msv *mayastorv1alpha1.MayastorVolume) Volume {
	v := Volume{ID: msv.Name, Size: msv.Spec.Size, NumReplicas: msv.Spec.NumReplicas, Published: msv.Status.Nexus != nil}
	if msv.Status.Nexus != nil {
		v.TargetNode = msv.Status.Nexus.Node
	}
	if t := msv.Spec.Topology; t != nil && t.Pool != nil && t.Pool.Labelled != nil {
		v.Topology = &Topology{Inclusion: maps.Clone(t.Pool.Labelled.Inclusion), Exclusion: maps.Clone(t.Pool.Labelled.Exclusion)}
	}
	for _, r := range msv.Status.Replicas {
		v.Replicas = append(v.Replicas, Replica{UUID: r.UUID, Pool: r.Pool, Node: r.Node, State: string(r.State), Synced: r.Synced})
	}
	return v
}

// SetReplicas updates spec.numReplicas and spec.topology, retrying on conflict.
func (b *MayastorVolumeBackend) SetReplicas(ctx context.Context, id string, n int32, topo *Topology) error {
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		var msv mayastorv1alpha1.MayastorVolume
		if err := b.Client.Get(ctx, types.NamespacedName{Namespace: b.Namespace, Name: id}, &msv); err != nil {
			return err
		}
		msv.Spec.NumReplicas = n
		if topo == nil || (len(topo.Inclusion) == 0 && len(topo.Exclusion) == 0) {
			msv.Spec.Topology = nil
		} else {
			msv.Spec.Topology = &mayastorv1alpha1.VolumeTopology{Pool: &mayastorv1alpha1.PoolTopology{
				Labelled: &mayastorv1alpha1.LabelledTopology{Inclusion: maps.Clone(topo.Inclusion), Exclusion: maps.Clone(topo.Exclusion)},
			}}
		}
		return b.Client.Update(ctx, &msv)
	})
	if err != nil {
		return fmt.Errorf("set MayastorVolume %s/%s to %d replicas: %w", b.Namespace, id, n, err)
	}
	return nil
}

// ListPools lists the DiskPools (v1beta3 or v1beta2, whichever is served).
func (b *MayastorVolumeBackend) ListPools(ctx context.Context) ([]Pool, error) {
	list, err := (&diskpool.Reader{Client: b.Client, Namespace: b.Namespace}).List(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Pool, 0, len(list))
	for _, dp := range list {
		out = append(out, Pool{
			Name: dp.Name, Node: dp.Node, Labels: dp.Labels,
			Online: dp.PoolStatus == mayastorv1beta2.PoolOnline, Status: string(dp.PoolStatus),
			Capacity: dp.Capacity, Used: dp.Used, Available: dp.Available,
		})
	}
	return out, nil
}
