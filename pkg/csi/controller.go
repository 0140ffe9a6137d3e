package csi

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/fence"
)

type controller struct {
	csipb.UnimplementedControllerServer
	d *Driver
}

func (c *controller) ControllerGetCapabilities(context.Context, *csipb.ControllerGetCapabilitiesRequest) (*csipb.ControllerGetCapabilitiesResponse, error) {
	var caps []*csipb.ControllerServiceCapability
	for _, t := range []csipb.ControllerServiceCapability_RPC_Type{
		csipb.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csipb.ControllerServiceCapability_RPC_EXPAND_VOLUME,
		csipb.ControllerServiceCapability_RPC_LIST_VOLUMES,
		csipb.ControllerServiceCapability_RPC_GET_CAPACITY,
		csipb.ControllerServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	} {
		caps = append(caps, &csipb.ControllerServiceCapability{Type: &csipb.ControllerServiceCapability_Rpc{
			Rpc: &csipb.ControllerServiceCapability_RPC{Type: t}}})
	}
	return &csipb.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

func csiVolume(ev *storagev1.ECVolume) *csipb.Volume {
	return &csipb.Volume{VolumeId: ev.Name, CapacityBytes: ev.Spec.SizeBytes,
		VolumeContext: map[string]string{ParamPolicy: ev.Spec.PolicyRef}}
}

// CreateVolume creates the ECVolume (idempotent by name: the same name with
// a compatible size and the same policy returns the existing volume).
func (c *controller) CreateVolume(ctx context.Context, req *csipb.CreateVolumeRequest) (*csipb.CreateVolumeResponse, error) {
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "name is required")
	}
	if err := CheckCapabilities(req.GetVolumeCapabilities()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if req.GetVolumeContentSource() != nil {
		return nil, status.Error(codes.InvalidArgument, "volume_content_source is not supported: the driver has no snapshots or clones")
	}
	policy, err := PolicyParameter(req.GetParameters())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	size, err := VolumeSize(req.GetCapacityRange())
	if err != nil {
		return nil, status.Error(codes.OutOfRange, err.Error())
	}
	name := VolumeName(req.GetName())
	unlock, err := c.d.lock(name)
	if err != nil {
		return nil, err
	}
	defer unlock()

	var existing storagev1.ECVolume
	err = c.d.Client.Get(ctx, client.ObjectKey{Name: name}, &existing)
	switch {
	case err == nil:
		return c.existing(&existing, req, policy)
	case !apierrors.IsNotFound(err):
		return nil, status.Errorf(codes.Unavailable, "get ECVolume %s: %v", name, err)
	}
	var pol storagev1.ErasureCodingPolicy
	if err := c.d.Client.Get(ctx, client.ObjectKey{Name: policy}, &pol); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, status.Errorf(codes.InvalidArgument, "StorageClass parameter %s %q: no ErasureCodingPolicy of that name", ParamPolicy, policy)
		}
		return nil, status.Errorf(codes.Unavailable, "get ErasureCodingPolicy %s: %v", policy, err)
	}
	ev := &storagev1.ECVolume{
		ObjectMeta: metav1.ObjectMeta{Name: name,
			Labels:      map[string]string{LabelManaged: "true"},
			Annotations: map[string]string{AnnotationCSIName: req.GetName()}},
		Spec: storagev1.ECVolumeSpec{SizeBytes: size, PolicyRef: policy},
	}
	if err := c.d.Client.Create(ctx, ev); err != nil {
		if apierrors.IsAlreadyExists(err) { // created meanwhile by a retry elsewhere
			if err := c.d.Client.Get(ctx, client.ObjectKey{Name: name}, &existing); err == nil {
				return c.existing(&existing, req, policy)
			}
		}
		if apierrors.IsInvalid(err) || apierrors.IsForbidden(err) {
			return nil, status.Errorf(codes.InvalidArgument, "create ECVolume %s: %v", name, err)
		}
		return nil, status.Errorf(codes.Unavailable, "create ECVolume %s: %v", name, err)
	}
	c.d.logf("csi: created ECVolume %s (%d bytes, policy %s) for volume %q", name, size, policy, req.GetName())
	return &csipb.CreateVolumeResponse{Volume: csiVolume(ev)}, nil
}

func (c *controller) existing(ev *storagev1.ECVolume, req *csipb.CreateVolumeRequest, policy string) (*csipb.CreateVolumeResponse, error) {
	if got := ev.Annotations[AnnotationCSIName]; got != req.GetName() {
		return nil, status.Errorf(codes.AlreadyExists, "ECVolume %s exists and was not created for volume %q (it records %q)", ev.Name, req.GetName(), got)
	}
	if ev.DeletionTimestamp != nil {
		return nil, status.Errorf(codes.Aborted, "ECVolume %s is being deleted; retry once it is gone", ev.Name)
	}
	if ev.Spec.PolicyRef != policy {
		return nil, status.Errorf(codes.AlreadyExists, "volume %q exists with %s %q, not %q", req.GetName(), ParamPolicy, ev.Spec.PolicyRef, policy)
	}
	r := req.GetCapacityRange()
	if r == nil {
		r = &csipb.CapacityRange{}
	}
	if !SizeFits(ev.Spec.SizeBytes, r) {
		return nil, status.Errorf(codes.AlreadyExists, "volume %q exists with %d bytes, outside capacity_range required %d limit %d", req.GetName(), ev.Spec.SizeBytes, r.GetRequiredBytes(), r.GetLimitBytes())
	}
	return &csipb.CreateVolumeResponse{Volume: csiVolume(ev)}, nil
}

// writerHolder returns the identity of the live holder of the volume's
// writer Lease, or "".
func (d *Driver) writerHolder(ctx context.Context, volume string) (string, error) {
	var l coordinationv1.Lease
	err := d.Client.Get(ctx, client.ObjectKey{Namespace: d.registryNS(), Name: fence.LeaseName(volume)}, &l)
	if apierrors.IsNotFound(err) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	h := ptr.Deref(l.Spec.HolderIdentity, "")
	if h == "" || l.Spec.RenewTime == nil {
		return "", nil
	}
	expires := l.Spec.RenewTime.Add(time.Duration(ptr.Deref(l.Spec.LeaseDurationSeconds, 0)) * time.Second)
	if time.Now().After(expires) {
		return "", nil
	}
	return h, nil
}

// DeleteVolume deletes the ECVolume (its finalizer then frees its stripes);
// a volume whose export still holds the writer Lease is refused.
func (c *controller) DeleteVolume(ctx context.Context, req *csipb.DeleteVolumeRequest) (*csipb.DeleteVolumeResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	}
	unlock, err := c.d.lock(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	var ev storagev1.ECVolume
	if err := c.d.Client.Get(ctx, client.ObjectKey{Name: id}, &ev); err != nil {
		if apierrors.IsNotFound(err) {
			return &csipb.DeleteVolumeResponse{}, nil
		}
		return nil, status.Errorf(codes.Unavailable, "get ECVolume %s: %v", id, err)
	}
	if ev.Labels[LabelManaged] != "true" {
		return nil, status.Errorf(codes.FailedPrecondition, "ECVolume %s was not created by %s (no %s label): not deleting it", id, DriverName, LabelManaged)
	}
	if h, err := c.d.writerHolder(ctx, id); err != nil {
		return nil, status.Errorf(codes.Unavailable, "read writer Lease of %s: %v", id, err)
	} else if h != "" {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is in use: its export %s holds the writer Lease", id, h)
	}
	if err := c.d.Client.Delete(ctx, &ev, client.Preconditions{UID: &ev.UID}); err != nil && !apierrors.IsNotFound(err) {
		return nil, status.Errorf(codes.Unavailable, "delete ECVolume %s: %v", id, err)
	}
	c.d.logf("csi: deleted ECVolume %s", id)
	return &csipb.DeleteVolumeResponse{}, nil
}

func (c *controller) ValidateVolumeCapabilities(ctx context.Context, req *csipb.ValidateVolumeCapabilitiesRequest) (*csipb.ValidateVolumeCapabilitiesResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "volume_capabilities are required")
	}
	var ev storagev1.ECVolume
	if err := c.d.Client.Get(ctx, client.ObjectKey{Name: req.GetVolumeId()}, &ev); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, status.Errorf(codes.NotFound, "volume %s does not exist", req.GetVolumeId())
		}
		return nil, status.Errorf(codes.Unavailable, "get ECVolume %s: %v", req.GetVolumeId(), err)
	}
	if err := CheckCapabilities(req.GetVolumeCapabilities()); err != nil {
		return &csipb.ValidateVolumeCapabilitiesResponse{Message: err.Error()}, nil
	}
	if p, ok := req.GetParameters()[ParamPolicy]; ok && p != ev.Spec.PolicyRef {
		return &csipb.ValidateVolumeCapabilitiesResponse{Message: fmt.Sprintf("volume %s has %s %q, not %q", ev.Name, ParamPolicy, ev.Spec.PolicyRef, p)}, nil
	}
	return &csipb.ValidateVolumeCapabilitiesResponse{Confirmed: &csipb.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext: req.GetVolumeContext(), VolumeCapabilities: req.GetVolumeCapabilities(), Parameters: req.GetParameters()}}, nil
}

// ListVolumes pages through the driver's ECVolumes in name order; the
// starting token is the last name of the previous page.
func (c *controller) ListVolumes(ctx context.Context, req *csipb.ListVolumesRequest) (*csipb.ListVolumesResponse, error) {
	if req.GetMaxEntries() < 0 {
		return nil, status.Errorf(codes.InvalidArgument, "max_entries %d must not be negative", req.GetMaxEntries())
	}
	var list storagev1.ECVolumeList
	if err := c.d.Client.List(ctx, &list, client.MatchingLabels{LabelManaged: "true"}); err != nil {
		return nil, status.Errorf(codes.Unavailable, "list ECVolumes: %v", err)
	}
	sort.Slice(list.Items, func(i, j int) bool { return list.Items[i].Name < list.Items[j].Name })
	start := 0
	if tok := req.GetStartingToken(); tok != "" {
		n, err := strconv.Atoi(tok)
		if err != nil || n < 0 || n > len(list.Items) {
			return nil, status.Errorf(codes.Aborted, "starting_token %q is not one this driver returned (or the list shrank past it)", tok)
		}
		start = n
	}
	end := len(list.Items)
	if m := int(req.GetMaxEntries()); m > 0 && start+m < end {
		end = start + m
	}
	resp := &csipb.ListVolumesResponse{}
	for i := start; i < end; i++ {
		resp.Entries = append(resp.Entries, &csipb.ListVolumesResponse_Entry{Volume: csiVolume(&list.Items[i])})
	}
	if end < len(list.Items) {
		resp.NextToken = strconv.Itoa(end)
	}
	return resp, nil
}

// GetCapacity is the largest volume the live shard servers can still hold:
// under the policy named by the parameters (PlaceableBytes), or without one
// the raw free shard space.
func (c *controller) GetCapacity(ctx context.Context, req *csipb.GetCapacityRequest) (*csipb.GetCapacityResponse, error) {
	for _, vc := range req.GetVolumeCapabilities() {
		if err := CheckCapability(vc); err != nil {
			return &csipb.GetCapacityResponse{}, nil
		}
	}
	servers, err := c.d.registry().Servers(ctx)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "%v", err)
	}
	var free []int64
	for _, s := range servers {
		sp, err := c.d.Shards.Space(ctx, s.Address)
		if err != nil {
			c.d.logf("csi: GetCapacity: shard server of pool %s left out: %v", s.Pool, err)
			continue
		}
		free = append(free, sp.FreeBytes)
	}
	p := req.GetParameters()[ParamPolicy]
	if p == "" {
		var sum int64
		for _, f := range free {
			sum += f
		}
		return &csipb.GetCapacityResponse{AvailableCapacity: sum}, nil
	}
	var pol storagev1.ErasureCodingPolicy
	if err := c.d.Client.Get(ctx, client.ObjectKey{Name: p}, &pol); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, status.Errorf(codes.InvalidArgument, "parameter %s %q: no ErasureCodingPolicy of that name", ParamPolicy, p)
		}
		return nil, status.Errorf(codes.Unavailable, "get ErasureCodingPolicy %s: %v", p, err)
	}
	storagev1.DefaultErasureCodingPolicySpec(&pol.Spec)
	k, m := int(ptr.Deref(pol.Spec.DataShards, 0)), int(ptr.Deref(pol.Spec.ParityShards, 0))
	return &csipb.GetCapacityResponse{AvailableCapacity: PlaceableBytes(free, k, m)}, nil
}

// ControllerExpandVolume grows the ECVolume (spec.sizeBytes only grows);
// the node grows the filesystem at the next stage (OFFLINE expansion).
func (c *controller) ControllerExpandVolume(ctx context.Context, req *csipb.ControllerExpandVolumeRequest) (*csipb.ControllerExpandVolumeResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	}
	if req.GetCapacityRange() == nil {
		return nil, status.Error(codes.InvalidArgument, "capacity_range is required")
	}
	if req.GetVolumeCapability() != nil {
		if err := CheckCapability(req.GetVolumeCapability()); err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
	}
	unlock, err := c.d.lock(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	var ev storagev1.ECVolume
	if err := c.d.Client.Get(ctx, client.ObjectKey{Name: id}, &ev); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, status.Errorf(codes.NotFound, "volume %s does not exist", id)
		}
		return nil, status.Errorf(codes.Unavailable, "get ECVolume %s: %v", id, err)
	}
	block := req.GetVolumeCapability().GetBlock() != nil
	if SizeFits(ev.Spec.SizeBytes, req.GetCapacityRange()) || ev.Spec.SizeBytes >= req.GetCapacityRange().GetRequiredBytes() {
		return &csipb.ControllerExpandVolumeResponse{CapacityBytes: ev.Spec.SizeBytes, NodeExpansionRequired: !block}, nil
	}
	size, err := VolumeSize(req.GetCapacityRange())
	if err != nil {
		return nil, status.Error(codes.OutOfRange, err.Error())
	}
	ev.Spec.SizeBytes = size
	if err := c.d.Client.Update(ctx, &ev); err != nil {
		if apierrors.IsConflict(err) {
			return nil, status.Errorf(codes.Aborted, "ECVolume %s changed meanwhile: %v", id, err)
		}
		return nil, status.Errorf(codes.Unavailable, "grow ECVolume %s to %d bytes: %v", id, size, err)
	}
	c.d.logf("csi: grew ECVolume %s to %d bytes", id, size)
	return &csipb.ControllerExpandVolumeResponse{CapacityBytes: size, NodeExpansionRequired: !block}, nil
}
