package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func repoRoot(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(wd, "..", "..")
}

// TestCSIStepSaysWhyInOneLineWithoutACluster: where the real cluster cannot
// run, exactly one line, naming the skipped step and the reason.
func TestCSIStepSaysWhyInOneLineWithoutACluster(t *testing.T) {
	lines := csiStepLines(errors.New("exit status 1"), "not root (the cluster needs root: containerd, bridge, iptables, cgroups)\n", "", nil)
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "CSI pod step skipped") || !strings.Contains(lines[0], "not root") {
		t.Errorf("lines %q: want one line saying the step is skipped and why", lines)
	}
}

// TestCSIStepNamesWhatThePodNeeds: where it can, the lines name the cluster,
// every sidecar image the chart pulls (read from the chart's values) and
// the chart switch; none pretends a pod ran.
func TestCSIStepNamesWhatThePodNeeds(t *testing.T) {
	images, err := csiSidecarImages(repoRoot(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(images) != 4 {
		t.Fatalf("sidecar images %v, want provisioner, resizer, livenessprobe and registrar", images)
	}
	text := strings.Join(csiStepLines(nil, "", "", images), "\n")
	for _, want := range append([]string{"not run", "make test-cluster", "make cluster-up", "csi.enabled=true", "couchestor-ec"}, images...) {
		if !strings.Contains(text, want) {
			t.Errorf("CSI step text lacks %q:\n%s", want, text)
		}
	}
}

// TestCSIStepSaysWhichCommandBuildsTheCluster: where the cluster can run
// but its binaries are not built, one line: why, and the command.
func TestCSIStepSaysWhichCommandBuildsTheCluster(t *testing.T) {
	lines := csiStepLines(nil, "", "not built yet: kubelet helm\n", nil)
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "CSI pod step not run") || !strings.Contains(lines[0], "not built yet: kubelet helm") || !strings.Contains(lines[0], "make test-cluster") {
		t.Errorf("lines %q: want one line saying what is not built and which command builds it", lines)
	}
}
