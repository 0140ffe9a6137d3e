package csi_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestLifecycleKeepsData: data written through a published volume — a file
// on ext4, a file on xfs, raw bytes on a volumeMode Block device — reads
// back, byte for byte, after unpublish, unstage (export stopped, nothing
// left behind) and a new stage with a fresh export and a cold cache; the
// second stage finds the filesystem and does not format it again; while
// staged, DeleteVolume is refused naming the export that holds the Lease.
func TestLifecycleKeepsData(t *testing.T) {
	requireRoot(t)
	c := newCluster(t, 3)
	dir := t.TempDir()
	p := c.startPlugin(dir)
	defer p.stop()
	cc := p.conn(t)
	ctl, nd := csipb.NewControllerClient(cc), csipb.NewNodeClient(cc)
	ctx := context.Background()
	for _, mode := range []struct {
		name string
		cap  *csipb.VolumeCapability
	}{{"ext4", mountCap("ext4")}, {"xfs", mountCap("xfs")}, {"block", blockCap()}} {
		t.Run(mode.name, func(t *testing.T) {
			cr, err := ctl.CreateVolume(ctx, &csipb.CreateVolumeRequest{Name: "pvc-lifecycle-" + mode.name,
				CapacityRange: &csipb.CapacityRange{RequiredBytes: 320 << 20}, VolumeCapabilities: []*csipb.VolumeCapability{mode.cap},
				Parameters: map[string]string{"erasureCodingPolicy": policyName}})
			check(t, err)
			vol := cr.GetVolume()
			staging, target := filepath.Join(dir, "staging-"+mode.name), filepath.Join(dir, "target-"+mode.name)
			block := mode.cap.GetBlock() != nil
			data := make([]byte, 5<<20+123)
			if block {
				data = data[:5<<20] // whole sectors
			}
			_, _ = rand.Read(data)
			for round := 0; round < 2; round++ {
				_, err := nd.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: vol.VolumeId, StagingTargetPath: staging, VolumeCapability: mode.cap})
				check(t, err)
				_, err = nd.NodePublishVolume(ctx, &csipb.NodePublishVolumeRequest{VolumeId: vol.VolumeId, StagingTargetPath: staging, TargetPath: target, VolumeCapability: mode.cap})
				check(t, err)
				f := filepath.Join(target, "data.bin")
				if block {
					f = target
				}
				if round == 0 {
					fh, err := os.OpenFile(f, os.O_WRONLY|os.O_CREATE, 0o600)
					check(t, err)
					_, err = fh.WriteAt(data, 1<<20)
					check(t, err)
					check(t, fh.Close())
				} else {
					fh, err := os.Open(f)
					check(t, err)
					got := make([]byte, len(data))
					_, err = fh.ReadAt(got, 1<<20)
					fh.Close()
					check(t, err)
					if !bytes.Equal(got, data) {
						t.Fatal("the data read back after unstage and a new stage differs from what was written")
					}
				}
				if round == 0 {
					// In use: the export holds the writer Lease, so the
					// volume is not deleted under it.
					_, err := ctl.DeleteVolume(ctx, &csipb.DeleteVolumeRequest{VolumeId: vol.VolumeId})
					if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "holds the writer Lease") {
						t.Fatalf("DeleteVolume of a staged volume: %v, want FailedPrecondition naming the Lease holder", err)
					}
				}
				st, err := nd.NodeGetVolumeStats(ctx, &csipb.NodeGetVolumeStatsRequest{VolumeId: vol.VolumeId, VolumePath: target})
				check(t, err)
				if st.GetVolumeCondition().GetAbnormal() || len(st.GetUsage()) == 0 {
					t.Fatalf("stats: %v", st)
				}
				if u := st.GetUsage()[0]; block && u.GetTotal() != vol.CapacityBytes || !block && u.GetUsed() < int64(len(data)) {
					t.Fatalf("stats after writing %d bytes to a %d-byte volume: %v", len(data), vol.CapacityBytes, st)
				}
				_, err = nd.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: vol.VolumeId, TargetPath: target})
				check(t, err)
				_, err = nd.NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{VolumeId: vol.VolumeId, StagingTargetPath: staging})
				check(t, err)
				if left := leftovers(p.stateDir, dir); len(left) > 0 {
					t.Fatalf("after unstage: %v", left)
				}
			}
			_, err = ctl.DeleteVolume(ctx, &csipb.DeleteVolumeRequest{VolumeId: vol.VolumeId})
			check(t, err)
		})
	}
}
