package csi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	mount "k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"
	"sigs.k8s.io/controller-runtime/pkg/client"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
)

// exportStartTimeout bounds how long NodeStageVolume waits for the export
// to listen: it first waits for the volume's writer Lease, which a killed
// previous holder leaves for up to its duration (15 s by default).
const exportStartTimeout = 3 * time.Minute

type node struct {
	csipb.UnimplementedNodeServer
	d *Driver
}

func (d *Driver) state() stateDir { return stateDir{root: d.StateDir} }

func (d *Driver) mounter() *mount.SafeFormatAndMount {
	return mount.NewSafeFormatAndMount(mount.NewWithoutSystemd(""), utilexec.New())
}

func (d *Driver) cacheDir(volume string) string {
	return filepath.Join(d.state().VolumeDir(volume), "cache")
}

func (d *Driver) exportLog(volume string) string {
	return filepath.Join(d.state().VolumeDir(volume), "export.log")
}

// exportPID finds the volume's running export by its cache directory, which
// is this plugin's own and the volume's.
func (d *Driver) exportPID(volume string) int {
	return findProcess("--cache-dir", d.cacheDir(volume))
}

// ensureExport makes the volume's export run and listen on st.ExportAddr.
func (d *Driver) ensureExport(ctx context.Context, st *VolumeState) error {
	if pid := d.exportPID(st.Volume); pid != 0 {
		if addr := argAfter(pid, "--listen"); addr != "" && addr != st.ExportAddr {
			// Killed after starting the export, before recording its address.
			st.ExportAddr = addr
			if err := d.state().Save(st); err != nil {
				return err
			}
		}
		if err := waitListening(ctx, st.ExportAddr, pid, exportStartTimeout); err != nil {
			return fmt.Errorf("export of %s: %w: %s", st.Volume, err, tail(d.exportLog(st.Volume), 2000))
		}
		return nil
	}
	// Another attach holds the volume (an export elsewhere renews its writer
	// Lease): refuse at once, naming the holder, rather than wait in the
	// export until the kubelet's deadline hides why. A holder of this host
	// (hostname prefix of the identity) is this plugin's own earlier export,
	// killed with the plugin: the new export waits out its Lease as before.
	if h, err := d.writerHolder(ctx, st.Volume); err != nil {
		return fmt.Errorf("read the writer Lease of %s: %w", st.Volume, err)
	} else if h != "" && !ownHolder(h) {
		return &heldElsewhereError{volume: st.Volume, holder: h}
	}
	if st.ExportAddr == "" {
		addr, err := freeLoopbackAddr()
		if err != nil {
			return err
		}
		st.ExportAddr = addr
		if err := d.state().Save(st); err != nil {
			return err
		}
	}
	argv := append(slices.Clone(d.ExportCommand), "--volume", st.Volume, "--listen", st.ExportAddr, "--cache-dir", d.cacheDir(st.Volume))
	argv = append(argv, d.ExportArgs...)
	if d.ExportMetrics {
		// Read back from the command line by MetricsHandler; a port taken
		// meanwhile fails the export's start, and the kubelet's retry picks
		// another.
		maddr, err := freeLoopbackAddr()
		if err != nil {
			return err
		}
		argv = append(argv, "--metrics-bind-address", maddr)
	}
	if err := os.MkdirAll(d.cacheDir(st.Volume), 0o700); err != nil {
		return err
	}
	pid, err := startDetached(argv, d.exportLog(st.Volume), os.Environ())
	if err != nil {
		return err
	}
	d.logf("csi: volume %s: export started (pid %d, %s)", st.Volume, pid, st.ExportAddr)
	if err := waitListening(ctx, st.ExportAddr, pid, exportStartTimeout); err != nil {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return err
		}
		_ = stopProcess(context.WithoutCancel(ctx), pid, 30*time.Second)
		return fmt.Errorf("export of %s: %w: %s", st.Volume, err, tail(d.exportLog(st.Volume), 2000))
	}
	return nil
}

// heldElsewhereError: the volume's writer Lease is held by an export that
// is not this node plugin's.
type heldElsewhereError struct{ volume, holder string }

func (e *heldElsewhereError) Error() string {
	return fmt.Sprintf("volume %s is attached elsewhere: its writer Lease is held by %q (single-node writer); it can be staged here once that holder releases it or stops renewing it", e.volume, e.holder)
}

// ownHolder reports whether a writer Lease identity (host/pid/nonce, as
// `ec-volume serve` writes it) names an export of this host.
func ownHolder(identity string) bool {
	host, _ := os.Hostname()
	h, _, _ := strings.Cut(identity, "/")
	return host != "" && h == host
}

// stopExport stops the volume's export with SIGTERM: it closes its journal
// (every acknowledged write already durable in it) and releases the writer
// Lease before it exits.
func (d *Driver) stopExport(ctx context.Context, volume string) error {
	pid := d.exportPID(volume)
	if pid == 0 {
		return nil
	}
	if err := stopProcess(ctx, pid, 2*time.Minute); err != nil {
		return fmt.Errorf("stop export of %s: %w", volume, err)
	}
	d.logf("csi: volume %s: export stopped", volume)
	return nil
}

func (d *Driver) getVolume(ctx context.Context, id string) (*storagev1.ECVolume, error) {
	var ev storagev1.ECVolume
	if err := d.Client.Get(ctx, client.ObjectKey{Name: id}, &ev); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, status.Errorf(codes.NotFound, "volume %s does not exist", id)
		}
		return nil, status.Errorf(codes.Unavailable, "get ECVolume %s: %v", id, err)
	}
	return &ev, nil
}

func (n *node) NodeStageVolume(ctx context.Context, req *csipb.NodeStageVolumeRequest) (*csipb.NodeStageVolumeResponse, error) {
	id, path := req.GetVolumeId(), req.GetStagingTargetPath()
	switch {
	case id == "":
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	case path == "":
		return nil, status.Error(codes.InvalidArgument, "staging_target_path is required")
	case req.GetVolumeCapability() == nil:
		return nil, status.Error(codes.InvalidArgument, "volume_capability is required")
	}
	if err := CheckCapability(req.GetVolumeCapability()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	unlock, err := n.d.lock(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if _, err := n.d.getVolume(ctx, id); err != nil {
		return nil, err
	}
	capab := req.GetVolumeCapability()
	want := VolumeState{Volume: id, StagingPath: filepath.Clean(path), Block: capab.GetBlock() != nil,
		FsType: capab.GetMount().GetFsType(), MountFlags: capab.GetMount().GetMountFlags()}
	if !want.Block && want.FsType == "" {
		want.FsType = "ext4"
	}
	st, err := n.d.state().Load(id)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if st != nil && st.Unstaging {
		// A NodeUnstageVolume was cut short: finish it, then stage anew.
		if err := n.d.teardown(ctx, st); err != nil {
			return nil, status.Errorf(codes.Internal, "finish the interrupted unstage of %s: %v", id, err)
		}
		st = nil
	}
	if st != nil {
		switch {
		case st.StagingPath != want.StagingPath:
			return nil, status.Errorf(codes.FailedPrecondition, "volume %s is staged at %s, not %s", id, st.StagingPath, want.StagingPath)
		case st.Block != want.Block || st.FsType != want.FsType:
			return nil, status.Errorf(codes.AlreadyExists, "volume %s is staged at %s as block=%v fsType=%q, incompatible with block=%v fsType=%q", id, path, st.Block, st.FsType, want.Block, want.FsType)
		}
	} else {
		st = &want
		if st.Attach, err = pickAttach(n.d.Attach); err != nil {
			return nil, status.Error(codes.FailedPrecondition, err.Error())
		}
		if err := n.d.state().Save(st); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
	}
	if err := n.d.stage(ctx, st); err != nil {
		return nil, err
	}
	return &csipb.NodeStageVolumeResponse{}, nil
}

// stage runs each step that is not done yet: export, attach, format and
// mount. Each step checks the system, not the record, so a repeat after a
// kill at any point continues where the last run stopped.
func (d *Driver) stage(ctx context.Context, st *VolumeState) error {
	if err := d.ensureExport(ctx, st); err != nil {
		var held *heldElsewhereError
		if errors.As(err, &held) {
			return status.Error(codes.FailedPrecondition, err.Error())
		}
		return status.Errorf(codes.Internal, "%v", err)
	}
	dev, err := d.attach(ctx, st)
	if err != nil {
		return status.Errorf(codes.Internal, "attach volume %s: %v", st.Volume, err)
	}
	if !st.Block {
		if err := os.MkdirAll(st.StagingPath, 0o750); err != nil {
			return status.Errorf(codes.Internal, "staging path: %v", err)
		}
		mounted, err := isMountPoint(st.StagingPath)
		if err != nil {
			return status.Errorf(codes.Internal, "read mounts: %v", err)
		}
		if !mounted {
			m := d.mounter()
			existing, err := m.GetDiskFormat(dev)
			if err != nil {
				return status.Errorf(codes.Internal, "blkid %s: %v", dev, err)
			}
			if existing != "" && existing != st.FsType {
				return status.Errorf(codes.FailedPrecondition, "volume %s holds a %s filesystem, not the %s its fsType asks for: not formatting a device that is not blank", st.Volume, existing, st.FsType)
			}
			if existing == "ext4" {
				if err := growExt4Offline(ctx, dev); err != nil {
					return status.Errorf(codes.Internal, "volume %s: %v", st.Volume, err)
				}
			}
			if err := m.FormatAndMount(dev, st.StagingPath, st.FsType, st.MountFlags); err != nil {
				return status.Errorf(codes.Internal, "format and mount %s at %s: %v", dev, st.StagingPath, err)
			}
			d.logf("csi: volume %s: %s on %s mounted at %s (was %q)", st.Volume, st.FsType, dev, st.StagingPath, existing)
		}
	}
	if !st.Staged {
		st.Staged = true
		if err := d.state().Save(st); err != nil {
			return status.Error(codes.Internal, err.Error())
		}
	}
	return nil
}

func (n *node) NodeUnstageVolume(ctx context.Context, req *csipb.NodeUnstageVolumeRequest) (*csipb.NodeUnstageVolumeResponse, error) {
	id, path := req.GetVolumeId(), req.GetStagingTargetPath()
	switch {
	case id == "":
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	case path == "":
		return nil, status.Error(codes.InvalidArgument, "staging_target_path is required")
	}
	unlock, err := n.d.lock(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	st, err := n.d.state().Load(id)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if st == nil {
		return &csipb.NodeUnstageVolumeResponse{}, nil
	}
	if st.StagingPath != filepath.Clean(path) {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is staged at %s, not %s", id, st.StagingPath, path)
	}
	if len(st.Published) > 0 {
		var targets []string
		for t := range st.Published {
			targets = append(targets, t)
		}
		slices.Sort(targets)
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is still published at %s", id, strings.Join(targets, ", "))
	}
	st.Unstaging = true
	if err := n.d.state().Save(st); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if err := n.d.teardown(ctx, st); err != nil {
		return nil, status.Errorf(codes.Internal, "unstage %s: %v", id, err)
	}
	return &csipb.NodeUnstageVolumeResponse{}, nil
}

// teardown flushes and unmounts the staging path, detaches the device, stops
// the export (its journal closed, the writer Lease released) and forgets the
// volume. Idempotent: each step checks whether it is still needed.
func (d *Driver) teardown(ctx context.Context, st *VolumeState) error {
	m := d.mounter()
	if !st.Block {
		if mounted, _ := isMountPoint(st.StagingPath); mounted {
			if err := syncfs(st.StagingPath); err != nil {
				return err
			}
			if err := m.Unmount(st.StagingPath); err != nil {
				return fmt.Errorf("unmount %s: %w", st.StagingPath, err)
			}
		}
	}
	if err := d.detach(ctx, st); err != nil {
		return err
	}
	if err := d.stopExport(ctx, st.Volume); err != nil {
		return err
	}
	return d.state().Remove(st.Volume)
}

func syncfs(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("syncfs %s: %w", path, err)
	}
	return nil
}

func (n *node) NodePublishVolume(ctx context.Context, req *csipb.NodePublishVolumeRequest) (*csipb.NodePublishVolumeResponse, error) {
	id, target, staging := req.GetVolumeId(), req.GetTargetPath(), req.GetStagingTargetPath()
	switch {
	case id == "":
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	case target == "":
		return nil, status.Error(codes.InvalidArgument, "target_path is required")
	case req.GetVolumeCapability() == nil:
		return nil, status.Error(codes.InvalidArgument, "volume_capability is required")
	case staging == "":
		return nil, status.Error(codes.InvalidArgument, "staging_target_path is required (the driver stages volumes)")
	}
	if err := CheckCapability(req.GetVolumeCapability()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	unlock, err := n.d.lock(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	st, err := n.d.state().Load(id)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if st == nil || !st.Staged || st.Unstaging {
		if _, err := n.d.getVolume(ctx, id); err != nil {
			return nil, err
		}
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is not staged on this node", id)
	}
	if st.StagingPath != filepath.Clean(staging) {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is staged at %s, not %s", id, st.StagingPath, staging)
	}
	block := req.GetVolumeCapability().GetBlock() != nil
	if block != st.Block {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is staged as block=%v; publishing as block=%v is not possible", id, st.Block, block)
	}
	target = filepath.Clean(target)
	ro := req.GetReadonly() || req.GetVolumeCapability().GetAccessMode().GetMode() == csipb.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY
	mounted, err := isMountPoint(target)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "read mounts: %v", err)
	}
	if mounted {
		if was, ok := st.Published[target]; ok && was != ro {
			return nil, status.Errorf(codes.AlreadyExists, "volume %s is published at %s with readonly=%v", id, target, was)
		}
		if _, ok := st.Published[target]; ok {
			return &csipb.NodePublishVolumeResponse{}, nil
		}
		return nil, status.Errorf(codes.FailedPrecondition, "%s is a mount point this driver did not make", target)
	}
	if st.Published == nil {
		st.Published = map[string]bool{}
	}
	// Recorded first: an unpublish after a kill here finds the target.
	st.Published[target] = ro
	if err := n.d.state().Save(st); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	opts := []string{"bind"}
	if ro {
		opts = append(opts, "ro")
	}
	source := st.StagingPath
	if block {
		dev := n.d.device(ctx, st)
		if dev == "" {
			return nil, status.Errorf(codes.FailedPrecondition, "volume %s: its device is gone (stage it again)", id)
		}
		source = dev
		if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		f, err := os.OpenFile(target, os.O_CREATE, 0o600)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "create block target %s: %v", target, err)
		}
		f.Close()
	} else {
		if err := os.MkdirAll(target, 0o750); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		opts = append(opts, req.GetVolumeCapability().GetMount().GetMountFlags()...)
	}
	if err := n.d.mounter().Mount(source, target, "", opts); err != nil {
		return nil, status.Errorf(codes.Internal, "bind %s at %s: %v", source, target, err)
	}
	return &csipb.NodePublishVolumeResponse{}, nil
}

func (n *node) NodeUnpublishVolume(ctx context.Context, req *csipb.NodeUnpublishVolumeRequest) (*csipb.NodeUnpublishVolumeResponse, error) {
	id, target := req.GetVolumeId(), req.GetTargetPath()
	switch {
	case id == "":
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	case target == "":
		return nil, status.Error(codes.InvalidArgument, "target_path is required")
	}
	unlock, err := n.d.lock(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	target = filepath.Clean(target)
	st, err := n.d.state().Load(id)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if mounted, _ := isMountPoint(target); mounted {
		if st == nil {
			return nil, status.Errorf(codes.FailedPrecondition, "%s is mounted but volume %s is not staged here: not unmounting what this driver did not mount", target, id)
		}
		if _, ok := st.Published[target]; !ok {
			return nil, status.Errorf(codes.FailedPrecondition, "%s is not a publish target of volume %s", target, id)
		}
		if st.Block {
			if err := flushDevice(target); err != nil {
				return nil, status.Error(codes.Internal, err.Error())
			}
		} else if err := syncfs(target); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
	}
	if err := mount.CleanupMountPoint(target, n.d.mounter(), true); err != nil {
		return nil, status.Errorf(codes.Internal, "unmount %s: %v", target, err)
	}
	if st != nil {
		if _, ok := st.Published[target]; ok {
			delete(st.Published, target)
			if err := n.d.state().Save(st); err != nil {
				return nil, status.Error(codes.Internal, err.Error())
			}
		}
	}
	return &csipb.NodeUnpublishVolumeResponse{}, nil
}

func (n *node) NodeGetVolumeStats(ctx context.Context, req *csipb.NodeGetVolumeStatsRequest) (*csipb.NodeGetVolumeStatsResponse, error) {
	id, path := req.GetVolumeId(), req.GetVolumePath()
	switch {
	case id == "":
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	case path == "":
		return nil, status.Error(codes.InvalidArgument, "volume_path is required")
	}
	st, err := n.d.state().Load(id)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if st == nil || !st.Staged {
		return nil, status.Errorf(codes.NotFound, "volume %s is not staged on this node", id)
	}
	path = filepath.Clean(path)
	if _, ok := st.Published[path]; !ok && path != st.StagingPath {
		return nil, status.Errorf(codes.NotFound, "%s is neither the staging path nor a publish target of volume %s", path, id)
	}
	if _, err := os.Stat(path); err != nil {
		return nil, status.Errorf(codes.NotFound, "volume path %s: %v", path, err)
	}
	resp := &csipb.NodeGetVolumeStatsResponse{VolumeCondition: n.d.condition(ctx, st)}
	if st.Block {
		size, err := deviceSize(path)
		if path == st.StagingPath {
			size, err = deviceSize(n.d.device(ctx, st))
		}
		if err != nil {
			return nil, status.Errorf(codes.Internal, "size of %s: %v", path, err)
		}
		resp.Usage = []*csipb.VolumeUsage{{Unit: csipb.VolumeUsage_BYTES, Total: size}}
		return resp, nil
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(path, &sfs); err != nil {
		return nil, status.Errorf(codes.Internal, "statfs %s: %v", path, err)
	}
	bs := int64(sfs.Bsize)
	resp.Usage = []*csipb.VolumeUsage{
		{Unit: csipb.VolumeUsage_BYTES, Total: int64(sfs.Blocks) * bs, Available: int64(sfs.Bavail) * bs, Used: int64(sfs.Blocks-sfs.Bfree) * bs},
		{Unit: csipb.VolumeUsage_INODES, Total: int64(sfs.Files), Available: int64(sfs.Ffree), Used: int64(sfs.Files - sfs.Ffree)},
	}
	return resp, nil
}

// condition reports a staged volume whose export or device is gone.
func (d *Driver) condition(ctx context.Context, st *VolumeState) *csipb.VolumeCondition {
	if d.exportPID(st.Volume) == 0 {
		return &csipb.VolumeCondition{Abnormal: true, Message: fmt.Sprintf("the export of volume %s is not running (log: %s): I/O fails until the volume is unstaged and staged again", st.Volume, tail(d.exportLog(st.Volume), 300))}
	}
	if d.device(ctx, st) == "" {
		return &csipb.VolumeCondition{Abnormal: true, Message: fmt.Sprintf("the block device of volume %s is detached (%s client gone)", st.Volume, st.Attach)}
	}
	return &csipb.VolumeCondition{Message: "export running, device attached"}
}

// growExt4Offline grows an unmounted ext4 filesystem to its device (the
// volume was expanded while unstaged: expansion is OFFLINE). Offline, since
// an online ext4 resize needs CAP_SYS_RESOURCE, which a node plugin may
// lack (it does in the cluster of tests/cluster); NodeExpandVolume then
// finds nothing left to do.
func growExt4Offline(ctx context.Context, dev string) error {
	need, err := mount.NewResizeFs(utilexec.New()).NeedResize(dev, "")
	if err != nil || !need {
		return err
	}
	// resize2fs refuses a filesystem not checked since its last mount.
	if out, err := exec.CommandContext(ctx, "e2fsck", "-f", "-p", dev).CombinedOutput(); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() > 1 { // 1: errors corrected
			return fmt.Errorf("e2fsck -f -p %s before growing it: %v: %s", dev, err, out)
		}
	}
	if _, err := run(ctx, "resize2fs", dev); err != nil {
		return fmt.Errorf("grow the filesystem on %s: %w", dev, err)
	}
	return nil
}

func deviceSize(path string) (int64, error) {
	if path == "" {
		return 0, errors.New("no device attached")
	}
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return f.Seek(0, io.SeekEnd)
}

// NodeExpandVolume grows the filesystem to the device. The device has the
// size the export started with (OFFLINE expansion): a larger request than
// that is refused until the volume is staged again.
func (n *node) NodeExpandVolume(ctx context.Context, req *csipb.NodeExpandVolumeRequest) (*csipb.NodeExpandVolumeResponse, error) {
	id, path := req.GetVolumeId(), req.GetVolumePath()
	switch {
	case id == "":
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	case path == "":
		return nil, status.Error(codes.InvalidArgument, "volume_path is required")
	}
	unlock, err := n.d.lock(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	st, err := n.d.state().Load(id)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if st == nil || !st.Staged {
		return nil, status.Errorf(codes.NotFound, "volume %s is not staged on this node", id)
	}
	if _, err := os.Stat(path); err != nil {
		return nil, status.Errorf(codes.NotFound, "volume path %s: %v", path, err)
	}
	dev := n.d.device(ctx, st)
	size, err := deviceSize(dev)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "volume %s: device: %v", id, err)
	}
	if req.GetCapacityRange().GetRequiredBytes() > size {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is staged with %d bytes, less than the %d asked: its export serves the size it started with (expansion is OFFLINE: unstage and stage the volume again)", id, size, req.GetCapacityRange().GetRequiredBytes())
	}
	if !st.Block && req.GetVolumeCapability().GetBlock() == nil {
		if _, err := mount.NewResizeFs(utilexec.New()).Resize(dev, st.StagingPath); err != nil {
			return nil, status.Errorf(codes.Internal, "grow the filesystem of %s: %v", id, err)
		}
	}
	return &csipb.NodeExpandVolumeResponse{CapacityBytes: size}, nil
}

func (n *node) NodeGetCapabilities(context.Context, *csipb.NodeGetCapabilitiesRequest) (*csipb.NodeGetCapabilitiesResponse, error) {
	var caps []*csipb.NodeServiceCapability
	for _, t := range []csipb.NodeServiceCapability_RPC_Type{
		csipb.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
		csipb.NodeServiceCapability_RPC_GET_VOLUME_STATS,
		csipb.NodeServiceCapability_RPC_EXPAND_VOLUME,
		csipb.NodeServiceCapability_RPC_VOLUME_CONDITION,
		csipb.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	} {
		caps = append(caps, &csipb.NodeServiceCapability{Type: &csipb.NodeServiceCapability_Rpc{
			Rpc: &csipb.NodeServiceCapability_RPC{Type: t}}})
	}
	return &csipb.NodeGetCapabilitiesResponse{Capabilities: caps}, nil
}

func (n *node) NodeGetInfo(context.Context, *csipb.NodeGetInfoRequest) (*csipb.NodeGetInfoResponse, error) {
	return &csipb.NodeGetInfoResponse{NodeId: n.d.NodeID,
		AccessibleTopology: &csipb.Topology{Segments: map[string]string{TopologyKey: n.d.NodeID}}}, nil
}

// recover runs at start: it reports each recorded volume as found, finishes
// interrupted unstages, and restarts the data path of staged volumes whose
// export or device is gone but whose staging path is not in use (nothing
// mounted, nothing published), so the next call finds them whole.
func (d *Driver) recover(ctx context.Context) {
	vols, err := d.state().List()
	if err != nil {
		d.logf("csi: read state directory %s: %v", d.StateDir, err)
		return
	}
	for _, v := range vols {
		st, err := d.state().Load(v)
		if err != nil || st == nil {
			d.logf("csi: volume %s: %v", v, err)
			continue
		}
		if st.Unstaging {
			if err := d.teardown(ctx, st); err != nil {
				d.logf("csi: volume %s: finish interrupted unstage: %v", v, err)
			} else {
				d.logf("csi: volume %s: finished the unstage a previous plugin began", v)
			}
			continue
		}
		c := d.condition(ctx, st)
		d.logf("csi: volume %s recorded at %s (staged=%v): %s", v, st.StagingPath, st.Staged, c.GetMessage())
	}
}

// supervise watches the exports of staged volumes and says, once per exit,
// when one stopped while its volume is staged (it lost its writer Lease, or
// crashed): I/O to the volume then fails, NodeGetVolumeStats reports it
// abnormal, and unstaging and staging it again starts a new export. It is
// not restarted in place: nbdfuse does not reconnect, and an export that
// lost its Lease must not take it back from the writer that has it now.
func (d *Driver) supervise(ctx context.Context, every time.Duration) {
	reported := map[string]bool{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
		vols, _ := d.state().List()
		for _, v := range vols {
			st, _ := d.state().Load(v) // written by rename: whole or absent
			gone := st != nil && st.Staged && !st.Unstaging && d.exportPID(v) == 0
			if gone && !reported[v] {
				d.logf("csi: volume %s: its export exited while the volume is staged; I/O to it fails until it is unstaged and staged again. Export log: %s", v, tail(d.exportLog(v), 1000))
			}
			reported[v] = gone
		}
	}
}
