package csi_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestPluginKilledAtEachStepIsRepaired SIGKILLs the node plugin at each step
// of NodeStageVolume (export started, nbdfuse running, loop device attached,
// filesystem mounted) and of NodeUnstageVolume (staging path unmounted,
// device detached); a new plugin on the same state directory then finishes
// the interrupted call when the CO repeats it, the data written before
// reads back, and a final unstage leaves no process, loop device or mount.
func TestPluginKilledAtEachStepIsRepaired(t *testing.T) {
	requireRoot(t)
	c := newCluster(t, 3)
	dir := t.TempDir()
	staging, target := filepath.Join(dir, "staging"), filepath.Join(dir, "target")
	p := c.startPlugin(dir)
	defer func() { p.stop() }()
	ctx := context.Background()
	clients := func() (csipb.ControllerClient, csipb.NodeClient) {
		cc := p.conn(t)
		return csipb.NewControllerClient(cc), csipb.NewNodeClient(cc)
	}
	ctl, nd := clients()
	cr, err := ctl.CreateVolume(ctx, &csipb.CreateVolumeRequest{Name: "pvc-crash",
		CapacityRange: &csipb.CapacityRange{RequiredBytes: 64 << 20}, VolumeCapabilities: []*csipb.VolumeCapability{mountCap("ext4")},
		Parameters: map[string]string{"erasureCodingPolicy": policyName}})
	check(t, err)
	id := cr.GetVolume().GetVolumeId()
	stage := func() error {
		_, err := nd.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: mountCap("ext4")})
		return err
	}
	unstage := func() error {
		_, err := nd.NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
		return err
	}
	data := make([]byte, 3<<20+77)
	_, _ = rand.Read(data)
	wrote := false
	// writeOrVerify publishes, writes (first time) or checks the file, and
	// unpublishes.
	writeOrVerify := func() {
		t.Helper()
		_, err := nd.NodePublishVolume(ctx, &csipb.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: mountCap("ext4")})
		check(t, err)
		f := filepath.Join(target, "data.bin")
		if !wrote {
			check(t, os.WriteFile(f, data, 0o600))
			wrote = true
		} else if got, err := os.ReadFile(f); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("data written before the kill does not read back (err %v)", err)
		}
		_, err = nd.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
		check(t, err)
	}
	// killWhen runs call in the background and SIGKILLs the plugin as soon
	// as cond holds (polled every 5 ms), then starts a new plugin.
	killWhen := func(step string, call func() error, cond func() bool) {
		t.Helper()
		done := make(chan error, 1)
		go func() { done <- call() }()
		deadline := time.Now().Add(3 * time.Minute)
		for !cond() {
			select {
			case err := <-done:
				t.Fatalf("%s: the call ended (%v) before the step was reached", step, err)
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: step not reached in 3 minutes", step)
			}
			time.Sleep(5 * time.Millisecond)
		}
		p.kill()
		<-done
		t.Logf("plugin killed at %q", step)
		p = c.startPlugin(dir)
		ctl, nd = clients()
	}
	exportRuns := func() bool { return procWith(p.stateDir, "ec-volume serve") }
	fuseRuns := func() bool { return procWith(p.stateDir, "nbdfuse") }
	loopAttached := func() bool { return loopOver(p.stateDir) }
	mounted := func() bool { return isMounted(staging) }

	for _, step := range []struct {
		name string
		cond func() bool
	}{{"export started", exportRuns}, {"nbdfuse running", fuseRuns}, {"loop attached", loopAttached}, {"mounted", mounted}} {
		killWhen("stage: "+step.name, stage, step.cond)
		check(t, stage()) // the CO repeats the call; the new plugin finishes it
		writeOrVerify()
		check(t, unstage())
		if left := leftovers(p.stateDir, dir); len(left) > 0 {
			t.Fatalf("after the repaired stage and an unstage: %v", left)
		}
	}
	for _, step := range []struct {
		name string
		cond func() bool
	}{{"staging unmounted", func() bool { return !mounted() }}, {"loop detached", func() bool { return !loopAttached() }}} {
		check(t, stage())
		writeOrVerify()
		killWhen("unstage: "+step.name, unstage, step.cond)
		check(t, unstage())
		if left := leftovers(p.stateDir, dir); len(left) > 0 {
			t.Fatalf("after the repaired unstage: %v", left)
		}
	}
	check(t, stage())
	writeOrVerify()
	check(t, unstage())
	// DeleteVolume is refused while the writer Lease is live. An export
	// normally releases it when it stops; when it did not (seen once under
	// CI load, cause not yet found), the Lease expires after its duration
	// (15 s) and a retry succeeds, as external-provisioner retries. Bounded
	// by four lease durations; the export's log is printed if it still fails.
	deadline := time.Now().Add(time.Minute)
	for {
		_, err = ctl.DeleteVolume(ctx, &csipb.DeleteVolumeRequest{VolumeId: id})
		if status.Code(err) != codes.FailedPrecondition || time.Now().After(deadline) {
			break
		}
		t.Logf("DeleteVolume refused, retrying: %v", err)
		time.Sleep(time.Second)
	}
	if err != nil {
		filepath.WalkDir(p.stateDir, func(path string, de os.DirEntry, _ error) error {
			if de != nil && de.Name() == "export.log" {
				b, _ := os.ReadFile(path)
				t.Logf("%s:\n%s", path, b)
			}
			return nil
		})
	}
	check(t, err)
}

func procWith(stateDir, what string) bool {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		cl := strings.ReplaceAll(string(b), "\x00", " ")
		if strings.Contains(cl, stateDir) && strings.Contains(cl, what) {
			return true
		}
	}
	return false
}

func loopOver(stateDir string) bool {
	b, _ := exec.Command("losetup", "--list", "--noheadings", "--output", "BACK-FILE").Output()
	return strings.Contains(string(b), stateDir)
}

func isMounted(path string) bool {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[4] == path {
			return true
		}
	}
	return false
}
