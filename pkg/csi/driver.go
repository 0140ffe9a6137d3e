// Package csi is the CSI driver of erasure-coded volumes
// (`couchestor csi`, driver DriverName): the Identity, Controller and Node
// services of the Container Storage Interface over ECVolumes.
//
// The controller side turns CSI volumes into ECVolume objects and back; it
// touches nothing but ECVolumes, the volume writer Leases (read only, to
// refuse deleting a volume in use) and the shard servers' free space. The
// node side runs each staged volume's export (`couchestor ec-volume serve`,
// which holds the volume's writer Lease) as a child process, attaches it as
// a block device (kernel NBD client, or nbdfuse with a loop device over its
// file), formats a blank device and mounts it. It owns its state directory
// and the devices and mounts it records there; it never touches a mount or
// device it did not record.
//
// Decisions written down:
//   - The driver's name is ec.csi.storage.billyronks.io: a subdomain of the
//     project's API group storage.billyronks.io, as CSI names are DNS names
//     owned by the vendor.
//   - Volumes are accessible from every node (their data is on shard
//     servers cluster-wide): CreateVolume returns no accessible_topology and
//     the plugin does not declare VOLUME_ACCESSIBILITY_CONSTRAINTS.
//     NodeGetInfo still reports the node's segment (TopologyKey).
//   - Expansion is OFFLINE: an export serves the size its ECVolume had when
//     it started (the NBD size is fixed at connection), so a grown volume
//     takes effect at the next NodeStageVolume, and NodeExpandVolume grows
//     the filesystem then; on a volume staged with the old size it fails
//     with FailedPrecondition saying so, never pretending.
package csi

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/pkg/shardserver"
)

// DriverName is the CSI driver name.
const DriverName = "ec.csi.storage.billyronks.io"

// TopologyKey is the topology segment NodeGetInfo reports.
const TopologyKey = "topology." + DriverName + "/node"

// Driver serves the CSI services. Controller and Node say which it serves
// (a controller Deployment runs one, the node DaemonSet the other; tests
// may run both in one process).
type Driver struct {
	Version    string
	Controller bool
	Node       bool

	// Client reads and writes ECVolumes (both services) and Leases.
	Client client.Client
	// RegistryNamespace holds shard-server and volume writer Leases.
	RegistryNamespace string
	// Shards reads shard servers' free space (GetCapacity).
	Shards *shardserver.Client

	// NodeID names this node (NodeGetInfo).
	NodeID string
	// StateDir holds the node plugin's per-volume state and working files.
	StateDir string
	// ExportCommand is the argv prefix of the export: the couchestor binary
	// and "ec-volume", "serve"; ExportArgs are appended (kubeconfig, shard
	// secret, namespaces, cache sizes).
	ExportCommand []string
	ExportArgs    []string
	// ExportMetrics gives each export a loopback metrics address
	// (--metrics-bind-address), which MetricsHandler passes on.
	ExportMetrics bool
	// Attach forces "kernel" or "nbdfuse"; empty picks kernel when a
	// /dev/nbd* device and nbd-client exist, else nbdfuse.
	Attach string

	Logf func(format string, args ...any)

	locks sync.Map // volume -> *sync.Mutex
}

func (d *Driver) logf(format string, args ...any) {
	if d.Logf != nil {
		d.Logf(format, args...)
		return
	}
	log.Printf(format, args...)
}

func (d *Driver) registry() *registry.Lookup {
	return &registry.Lookup{Client: d.Client, Namespace: d.registryNS()}
}

func (d *Driver) registryNS() string {
	if d.RegistryNamespace == "" {
		return registry.DefaultNamespace
	}
	return d.RegistryNamespace
}

// lock serialises calls on one volume; a second call while one runs gets
// Aborted (the CSI answer for "an operation on this volume is pending").
func (d *Driver) lock(volume string) (func(), error) {
	m, _ := d.locks.LoadOrStore(volume, &sync.Mutex{})
	mu := m.(*sync.Mutex)
	if !mu.TryLock() {
		return nil, status.Errorf(codes.Aborted, "an operation on volume %s is in progress", volume)
	}
	return mu.Unlock, nil
}

// Serve listens on endpoint (unix:///path or a path; tcp://host:port) and
// serves until ctx ends.
func (d *Driver) Serve(ctx context.Context, endpoint string) error {
	if !d.Controller && !d.Node {
		return errors.New("neither the controller nor the node service is enabled")
	}
	network, addr, err := parseEndpoint(endpoint)
	if err != nil {
		return err
	}
	if network == "unix" {
		if err := os.Remove(addr); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove stale socket %s: %w", addr, err)
		}
	}
	l, err := net.Listen(network, addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", endpoint, err)
	}
	if d.Node {
		d.recover(ctx)
		go d.supervise(ctx, 5*time.Second)
	}
	srv := grpc.NewServer(grpc.UnaryInterceptor(d.logCalls))
	csipb.RegisterIdentityServer(srv, &identity{d: d})
	if d.Controller {
		csipb.RegisterControllerServer(srv, &controller{d: d})
	}
	if d.Node {
		csipb.RegisterNodeServer(srv, &node{d: d})
	}
	go func() {
		<-ctx.Done()
		srv.GracefulStop()
	}()
	d.logf("csi: %s serving on %s (controller=%v node=%v)", DriverName, endpoint, d.Controller, d.Node)
	return srv.Serve(l)
}

func parseEndpoint(ep string) (string, string, error) {
	if strings.HasPrefix(ep, "/") {
		return "unix", ep, nil
	}
	u, err := url.Parse(ep)
	if err != nil {
		return "", "", fmt.Errorf("--endpoint %q: %w", ep, err)
	}
	switch u.Scheme {
	case "unix":
		p := u.Path
		if u.Host != "" {
			p = u.Host + p
		}
		if p == "" {
			return "", "", fmt.Errorf("--endpoint %q names no socket path", ep)
		}
		return "unix", p, nil
	case "tcp":
		return "tcp", u.Host, nil
	}
	return "", "", fmt.Errorf("--endpoint %q: scheme must be unix or tcp", ep)
}

// logCalls logs each call that fails (and, briefly, each mutating call),
// never its secrets.
func (d *Driver) logCalls(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	resp, err := h(ctx, req)
	if err != nil {
		d.logf("csi: %s: %v", info.FullMethod, err)
	}
	return resp, err
}

type identity struct {
	csipb.UnimplementedIdentityServer
	d *Driver
}

func (i *identity) GetPluginInfo(context.Context, *csipb.GetPluginInfoRequest) (*csipb.GetPluginInfoResponse, error) {
	v := i.d.Version
	if v == "" {
		v = "dev"
	}
	return &csipb.GetPluginInfoResponse{Name: DriverName, VendorVersion: v}, nil
}

func (i *identity) GetPluginCapabilities(context.Context, *csipb.GetPluginCapabilitiesRequest) (*csipb.GetPluginCapabilitiesResponse, error) {
	caps := []*csipb.PluginCapability{{Type: &csipb.PluginCapability_VolumeExpansion_{
		VolumeExpansion: &csipb.PluginCapability_VolumeExpansion{Type: csipb.PluginCapability_VolumeExpansion_OFFLINE}}}}
	if i.d.Controller {
		caps = append(caps, &csipb.PluginCapability{Type: &csipb.PluginCapability_Service_{
			Service: &csipb.PluginCapability_Service{Type: csipb.PluginCapability_Service_CONTROLLER_SERVICE}}})
	}
	return &csipb.GetPluginCapabilitiesResponse{Capabilities: caps}, nil
}

// Probe is ready once the API server answers (both services need it).
func (i *identity) Probe(ctx context.Context, _ *csipb.ProbeRequest) (*csipb.ProbeResponse, error) {
	if _, err := i.d.registry().Servers(ctx); err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "API server: %v", err)
	}
	return &csipb.ProbeResponse{}, nil
}
