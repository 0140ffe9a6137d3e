package csi_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
)

// TestLifecycleKeepsData: a file written through a published ext4 volume
// reads back, byte for byte, after unpublish, unstage (export stopped,
// nothing left behind) and a new stage with a fresh export and cold cache.
func TestLifecycleKeepsData(t *testing.T) {
	requireRoot(t)
	c := newCluster(t, 3)
	dir := t.TempDir()
	p := c.startPlugin(dir)
	defer p.stop()
	cc := p.conn(t)
	ctl, nd := csipb.NewControllerClient(cc), csipb.NewNodeClient(cc)
	ctx := context.Background()
	cr, err := ctl.CreateVolume(ctx, &csipb.CreateVolumeRequest{Name: "pvc-lifecycle",
		CapacityRange: &csipb.CapacityRange{RequiredBytes: 64 << 20}, VolumeCapabilities: []*csipb.VolumeCapability{mountCap("ext4")},
		Parameters: map[string]string{"erasureCodingPolicy": policyName}})
	check(t, err)
	vol := cr.GetVolume()
	staging, target := filepath.Join(dir, "staging"), filepath.Join(dir, "target")
	data := make([]byte, 5<<20+123)
	_, _ = rand.Read(data)
	for round := 0; round < 2; round++ {
		_, err = nd.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: vol.VolumeId, StagingTargetPath: staging, VolumeCapability: mountCap("ext4")})
		check(t, err)
		_, err = nd.NodePublishVolume(ctx, &csipb.NodePublishVolumeRequest{VolumeId: vol.VolumeId, StagingTargetPath: staging, TargetPath: target, VolumeCapability: mountCap("ext4")})
		check(t, err)
		f := filepath.Join(target, "data.bin")
		if round == 0 {
			if err := os.WriteFile(f, data, 0o600); err != nil {
				t.Fatal(err)
			}
		} else {
			got, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Fatal("the file read back after unstage and a new stage differs from what was written")
			}
		}
		st, err := nd.NodeGetVolumeStats(ctx, &csipb.NodeGetVolumeStatsRequest{VolumeId: vol.VolumeId, VolumePath: target})
		check(t, err)
		if st.GetVolumeCondition().GetAbnormal() || len(st.GetUsage()) == 0 || st.GetUsage()[0].GetUsed() < int64(len(data)) {
			t.Fatalf("stats after writing %d bytes: %v", len(data), st)
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
}
