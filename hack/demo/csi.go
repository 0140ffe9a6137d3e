package main

// The CSI step: a pod on an erasure-coded PVC needs a kubelet, which the
// demo's control plane (kube-apiserver + etcd) does not have. Where this
// machine can run the real single-node cluster (hack/cluster.sh can), the
// CSI sidecars can be built (hack/cluster.sh csi-can) and the cluster's
// binaries are built (hack/cluster.sh cached; --csi=build builds them,
// about 20 min once), the step runs it (csirun.go): it takes the cluster
// lock without waiting, brings the cluster up, installs the chart with the
// CSI driver, makes an erasure-coded PVC, runs a pod writing files and a
// second reading them back, shows the objects and takes the cluster down.
// Everywhere else it says in one line why not and what would make it run.
// It never fakes a pod.
//
// planCSI and gateCSI decide from facts gathered by the caller; they run
// nothing (csi_test.go).

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// The values of --csi (make demo DEMO_CSI=...).
const (
	csiAuto  = "auto"  // run where everything is built; else say how
	csiBuild = "build" // build what is missing (about 20 min once), then run
	csiOff   = "off"   // skip, saying so
)

func validCSIMode(m string) error {
	switch m {
	case csiAuto, csiBuild, csiOff:
		return nil
	}
	return fmt.Errorf("--csi=%q (DEMO_CSI): want %s, %s or %s", m, csiAuto, csiBuild, csiOff)
}

// csiFacts is what the machine said: each *Why is the script's output, set
// (non-empty) only when that check failed.
type csiFacts struct {
	Mode      string
	CanWhy    string // hack/cluster.sh can
	CSICanWhy string // hack/cluster.sh csi-can
	CachedWhy string // hack/cluster.sh cached ("not built yet: ...")
	Mirror    string // $COUCHESTOR_GIT_MIRROR
}

// csiPlan: whether the step runs, whether it first builds the cluster's
// binaries, and the lines to print now.
type csiPlan struct {
	Run, Build bool
	Lines      []string
}

const csiBuildTime = "about 20 min once on 2 cores, then cached"

func planCSI(f csiFacts) csiPlan {
	one := func(s string, a ...any) csiPlan { return csiPlan{Lines: []string{fmt.Sprintf(s, a...)}} }
	if f.Mode == csiOff {
		return one("CSI pod step skipped: --csi=off (DEMO_CSI=off) was set; `make demo` runs it where this machine can run the real cluster")
	}
	if why := strings.TrimSpace(f.CanWhy); why != "" {
		return one("CSI pod step skipped: a pod on an erasure-coded PVC needs a kubelet, and this machine cannot run the real single-node cluster (hack/cluster.sh can: %s)", why)
	}
	if why := strings.TrimSpace(f.CSICanWhy); why != "" {
		hint := "set COUCHESTOR_GIT_MIRROR to a directory holding git copies kubernetes-csi+node-driver-registrar/repo and kubernetes-csi+livenessprobe/repo to build them without github.com"
		if f.Mirror != "" {
			hint = fmt.Sprintf("COUCHESTOR_GIT_MIRROR=%s is set but lacks kubernetes-csi+node-driver-registrar/repo or kubernetes-csi+livenessprobe/repo", f.Mirror)
		}
		return one("CSI pod step skipped: the CSI sidecar images cannot be built on this machine (hack/cluster.sh csi-can: %s); %s", why, hint)
	}
	if why := strings.TrimSpace(f.CachedWhy); why != "" {
		if f.Mode != csiBuild {
			return one("CSI pod step not run: it needs the real single-node cluster, whose binaries are not built on this machine (hack/cluster.sh cached: %s); `make demo DEMO_CSI=build` builds them (%s) and runs the step", why, csiBuildTime)
		}
		return csiPlan{Run: true, Build: true, Lines: []string{
			fmt.Sprintf("CSI pod step: building the real cluster's binaries first (%s; %s), then as below", why, csiBuildTime),
			csiRunLine,
		}}
	}
	return csiPlan{Run: true, Lines: []string{csiRunLine}}
}

const csiRunLine = "CSI pod step (\"csi\" lines, after the erasure-coding part; a few minutes): the real single-node cluster (hack/cluster.sh up, under the cluster lock),\n" +
	"  the chart with --set csi.enabled=true next to a DataPlane, an erasure-coded PVC of StorageClass couchestor-ec (RS 2+1),\n" +
	"  a pod writing a tree of files, a second pod reading them back with their sha256; then the cluster is taken down."

// gateCSI is the last check before the cluster is touched: the lock (held
// by another run: lockBusy) and a cluster already running without it
// (liveCluster: `make cluster-up` by hand). skip says why the step does not
// go on ("" when it does); neither case is a failure of the demo.
func gateCSI(lockPath string, lockBusy bool, runDir string, liveCluster bool) (skip string) {
	switch {
	case lockBusy:
		return fmt.Sprintf("CSI pod step skipped: another run holds the cluster lock %s (make test, make test-cluster or another demo is using the one cluster of this machine); the demo does not touch it", lockPath)
	case liveCluster:
		return fmt.Sprintf("CSI pod step skipped: a cluster is already running in %s outside the cluster lock (make cluster-up?); the demo does not replace it: `make cluster-down` first", runDir)
	}
	return ""
}

// clusterScript runs hack/cluster.sh ARG (stderr to errw) and returns its
// stdout, trimmed.
func clusterScript(ctx context.Context, root, arg string, env []string, errw *os.File) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(root, "hack", "cluster.sh"), arg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout = &out
	if errw != nil {
		cmd.Stderr = errw
	}
	err := cmd.Run()
	return strings.TrimSpace(out.String()), err
}

// gatherCSIFacts asks hack/cluster.sh what this machine can do.
func gatherCSIFacts(ctx context.Context, root, mode string) csiFacts {
	f := csiFacts{Mode: mode, Mirror: os.Getenv("COUCHESTOR_GIT_MIRROR")}
	if mode == csiOff {
		return f
	}
	why := func(arg string) string {
		out, err := clusterScript(ctx, root, arg, nil, nil)
		if err == nil {
			return ""
		}
		if out == "" {
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				return fmt.Sprintf("%v", ee)
			}
			return err.Error()
		}
		return out
	}
	if f.CanWhy = why("can"); f.CanWhy != "" {
		return f
	}
	if f.CSICanWhy = why("csi-can"); f.CSICanWhy != "" {
		return f
	}
	f.CachedWhy = why("cached")
	return f
}
