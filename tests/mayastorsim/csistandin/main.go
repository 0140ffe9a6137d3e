// Command csistandin is a TEST DOUBLE: a stand-in for the node plugin of
// Mayastor's CSI driver (io.openebs.csi-mayastor), for the real-cluster
// story (tests/cluster). Mayastor's io-engine cannot run on these machines
// (SPDK, hugepages, NVMe-oF), so the bytes of a Mayastor volume live in one
// file per volume, <data-dir>/<volume handle>.img, attached through a loop
// device (losetup) when a pod uses it:
//
//   - raw block publish binds the loop device onto the kubelet's target file;
//   - filesystem publish mounts the loop device (formatted with the PV's
//     fsType, ext4 by default, the first time) on the target directory.
//
// It does no staging (no STAGE_UNSTAGE capability: the kubelet publishes
// directly) and no attach (its CSIDriver object says attachRequired: false).
// The volume handles are the REST double's volume UUIDs
// (tests/mayastorsim --api=rest), so the operator sees the same volume
// through Mayastor's REST API, Prometheus and the kubelet.
//
// With --provision it also plays the external-provisioner of a StorageClass
// of this driver (what a heat-up needs: a new replicated volume): a Pending
// PVC of such a class gets a new file of its requested size and a PV
// bound to it, named pvc-<uuid> as Mayastor's CSI driver names them;
// deleting such a PV (reclaim policy Delete, Released) removes the file.
//
//	csistandin --endpoint=/csi/csi.sock --node-id=NODE --data-dir=DIR [--provision --kubeconfig=...]
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Driver is Mayastor's CSI driver name.
const Driver = "io.openebs.csi-mayastor"

func main() {
	endpoint := flag.String("endpoint", "/csi/csi.sock", "unix socket the kubelet's registrar points at")
	nodeID := flag.String("node-id", "", "node name (NodeGetInfo)")
	dataDir := flag.String("data-dir", "", "directory of the volumes' files (<handle>.img) and the publish records")
	provision := flag.Bool("provision", false, "also provision PVCs of StorageClasses of this driver (a file per new volume)")
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig for --provision (empty: in-cluster)")
	flag.Parse()
	if *nodeID == "" || *dataDir == "" {
		log.Fatal("csistandin: --node-id and --data-dir are required")
	}
	n := &node{id: *nodeID, dir: *dataDir}
	for _, d := range []string{n.dir, n.recordDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			log.Fatalf("csistandin: %v", err)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if *provision {
		p, err := newProvisioner(*kubeconfig, n.dir)
		if err != nil {
			log.Fatalf("csistandin: provisioner: %v", err)
		}
		go p.run(ctx)
	}
	_ = os.Remove(*endpoint)
	if err := os.MkdirAll(filepath.Dir(*endpoint), 0o755); err != nil {
		log.Fatalf("csistandin: %v", err)
	}
	l, err := net.Listen("unix", *endpoint)
	if err != nil {
		log.Fatalf("csistandin: listen %s: %v", *endpoint, err)
	}
	srv := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		resp, err := h(ctx, req)
		if !strings.HasSuffix(info.FullMethod, "Probe") && !strings.HasSuffix(info.FullMethod, "GetCapabilities") {
			log.Printf("%s %+v -> err %v", info.FullMethod, req, err)
		}
		return resp, err
	}))
	csipb.RegisterIdentityServer(srv, identity{})
	csipb.RegisterNodeServer(srv, n)
	go func() { <-ctx.Done(); srv.GracefulStop() }()
	log.Printf("csistandin (TEST DOUBLE of %s's node plugin) serving %s, volumes under %s, provision=%v", Driver, *endpoint, n.dir, *provision)
	if err := srv.Serve(l); err != nil {
		log.Fatalf("csistandin: serve: %v", err)
	}
}

type identity struct {
	csipb.UnimplementedIdentityServer
}

func (identity) GetPluginInfo(context.Context, *csipb.GetPluginInfoRequest) (*csipb.GetPluginInfoResponse, error) {
	return &csipb.GetPluginInfoResponse{Name: Driver, VendorVersion: "standin"}, nil
}

func (identity) GetPluginCapabilities(context.Context, *csipb.GetPluginCapabilitiesRequest) (*csipb.GetPluginCapabilitiesResponse, error) {
	return &csipb.GetPluginCapabilitiesResponse{}, nil
}

func (identity) Probe(context.Context, *csipb.ProbeRequest) (*csipb.ProbeResponse, error) {
	return &csipb.ProbeResponse{}, nil
}

type node struct {
	csipb.UnimplementedNodeServer
	id, dir string
	mu      sync.Mutex
}

func (n *node) recordDir() string { return filepath.Join(n.dir, "published") }

// VolumeFile is where the bytes of the volume of that handle live.
func VolumeFile(dir, handle string) string { return filepath.Join(dir, handle+".img") }

// record is what a publish left: the loop device serving the target.
type record struct {
	Volume string `json:"volume"`
	Target string `json:"target"`
	Loop   string `json:"loop"`
	Block  bool   `json:"block"`
}

func (n *node) recordPath(target string) string {
	s := sha256.Sum256([]byte(target))
	return filepath.Join(n.recordDir(), hex.EncodeToString(s[:8])+".json")
}

func (n *node) NodeGetInfo(context.Context, *csipb.NodeGetInfoRequest) (*csipb.NodeGetInfoResponse, error) {
	return &csipb.NodeGetInfoResponse{NodeId: n.id}, nil
}

func (n *node) NodeGetCapabilities(context.Context, *csipb.NodeGetCapabilitiesRequest) (*csipb.NodeGetCapabilitiesResponse, error) {
	return &csipb.NodeGetCapabilitiesResponse{}, nil
}

func run(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)), nil
}

func (n *node) NodePublishVolume(_ context.Context, req *csipb.NodePublishVolumeRequest) (*csipb.NodePublishVolumeResponse, error) {
	vol, target := req.GetVolumeId(), req.GetTargetPath()
	if vol == "" || target == "" || req.GetVolumeCapability() == nil {
		return nil, status.Error(codes.InvalidArgument, "NodePublishVolume: volume_id, target_path and volume_capability are required")
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if raw, err := os.ReadFile(n.recordPath(target)); err == nil {
		var r record
		if json.Unmarshal(raw, &r) == nil && r.Volume == vol && mounted(target) {
			return &csipb.NodePublishVolumeResponse{}, nil // published already (a retry)
		}
	}
	file := VolumeFile(n.dir, vol)
	if _, err := os.Stat(file); err != nil {
		return nil, status.Errorf(codes.NotFound, "volume %s: its file %s: %v (the stand-in serves only volumes whose file exists)", vol, file, err)
	}
	loop, err := run("losetup", "--find", "--show", "--direct-io=on", file)
	if err != nil {
		if loop, err = run("losetup", "--find", "--show", file); err != nil {
			return nil, status.Errorf(codes.Internal, "volume %s: %v", vol, err)
		}
	}
	block := req.GetVolumeCapability().GetBlock() != nil
	undo := func() { _, _ = run("losetup", "-d", loop) }
	if block {
		if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
			undo()
			return nil, status.Error(codes.Internal, err.Error())
		}
		f, err := os.OpenFile(target, os.O_CREATE|os.O_RDWR, 0o600)
		if err != nil {
			undo()
			return nil, status.Error(codes.Internal, err.Error())
		}
		f.Close()
		if _, err := run("mount", "--bind", loop, target); err != nil {
			undo()
			return nil, status.Errorf(codes.Internal, "volume %s: %v", vol, err)
		}
	} else {
		fs := req.GetVolumeCapability().GetMount().GetFsType()
		if fs == "" {
			fs = "ext4"
		}
		if err := os.MkdirAll(target, 0o750); err != nil {
			undo()
			return nil, status.Error(codes.Internal, err.Error())
		}
		if have, _ := run("blkid", "-o", "value", "-s", "TYPE", loop); strings.TrimSpace(have) == "" {
			if _, err := run("mkfs."+fs, "-q", loop); err != nil {
				undo()
				return nil, status.Errorf(codes.Internal, "volume %s: %v", vol, err)
			}
		}
		args := []string{"-t", fs}
		if req.GetReadonly() {
			args = append(args, "-o", "ro")
		}
		if _, err := run("mount", append(args, loop, target)...); err != nil {
			undo()
			return nil, status.Errorf(codes.Internal, "volume %s: %v", vol, err)
		}
	}
	raw, _ := json.Marshal(record{Volume: vol, Target: target, Loop: loop, Block: block})
	if err := os.WriteFile(n.recordPath(target), raw, 0o600); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &csipb.NodePublishVolumeResponse{}, nil
}

func mounted(target string) bool {
	_, err := run("mountpoint", "-q", target)
	if err == nil {
		return true
	}
	out, _ := run("findmnt", "-n", "-o", "TARGET", "--target", target)
	return strings.TrimSpace(out) == target
}

func (n *node) NodeUnpublishVolume(_ context.Context, req *csipb.NodeUnpublishVolumeRequest) (*csipb.NodeUnpublishVolumeResponse, error) {
	target := req.GetTargetPath()
	if target == "" {
		return nil, status.Error(codes.InvalidArgument, "NodeUnpublishVolume: target_path is required")
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	var r record
	raw, err := os.ReadFile(n.recordPath(target))
	if err == nil {
		err = json.Unmarshal(raw, &r)
	}
	for mounted(target) {
		if _, err := run("umount", target); err != nil {
			return nil, status.Errorf(codes.Internal, "unpublish %s: %v", target, err)
		}
	}
	if r.Loop != "" {
		// A loop device still open elsewhere is detached when its last
		// user closes it (the kernel's autoclear).
		if out, err := run("losetup", "-d", r.Loop); err != nil && !strings.Contains(out, "No such device") {
			return nil, status.Errorf(codes.Internal, "unpublish %s: %v", target, err)
		}
	}
	if r.Block {
		_ = os.Remove(target)
	}
	if err := os.Remove(n.recordPath(target)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &csipb.NodeUnpublishVolumeResponse{}, nil
}
