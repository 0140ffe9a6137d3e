package csi_test

import (
	"path/filepath"
	"testing"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
)

// TestSanity runs the CSI conformance suite (csi-test v5.4.0 pkg/sanity)
// against `couchestor csi` serving both services in one process, with real
// mounts: every NodeStageVolume runs a real export over shard servers,
// nbdfuse, a loop device, mkfs.ext4 and mount.
func TestSanity(t *testing.T) {
	requireRoot(t)
	c := newCluster(t, 3)
	dir := t.TempDir()
	p := c.startPlugin(dir)
	t.Cleanup(func() {
		p.stop()
		if left := leftovers(p.stateDir, dir); len(left) > 0 {
			t.Errorf("the suite left, after every volume was unstaged and deleted: %v", left)
		}
	})
	cfg := sanity.NewTestConfig()
	cfg.Address = "unix://" + p.socket
	cfg.TargetPath = filepath.Join(dir, "target")
	cfg.StagingPath = filepath.Join(dir, "staging")
	cfg.TestVolumeSize = 64 << 20
	cfg.TestVolumeExpandSize = 96 << 20
	cfg.TestVolumeParameters = map[string]string{"erasureCodingPolicy": policyName}
	cfg.IdempotentCount = 3
	sanity.Test(t, cfg)
}
