package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestPlanCSI: which of the machine's answers leads to running the step,
// building first, or one line saying why not and what would make it run.
func TestPlanCSI(t *testing.T) {
	for _, c := range []struct {
		name        string
		f           csiFacts
		run, build  bool
		lines       int
		want, never []string
	}{
		{name: "off", f: csiFacts{Mode: csiOff, CanWhy: "not root"}, lines: 1,
			want: []string{"skipped", "DEMO_CSI=off"}, never: []string{"not root"}},
		{name: "cannot run the cluster", f: csiFacts{Mode: csiAuto, CanWhy: "not root (the cluster needs root: containerd, bridge, iptables, cgroups)\n", CSICanWhy: "x", CachedWhy: "y"}, lines: 1,
			want: []string{"CSI pod step skipped", "needs a kubelet", "hack/cluster.sh can: not root"}},
		{name: "cannot run the cluster, build asked", f: csiFacts{Mode: csiBuild, CanWhy: "not Linux"}, lines: 1,
			want: []string{"skipped", "not Linux"}},
		{name: "sidecars cannot be built, no mirror", f: csiFacts{Mode: csiAuto, CSICanWhy: "livenessprobe v2.17.0 ... github.com/kubernetes-csi/livenessprobe is unreachable", CachedWhy: "not built yet: kubelet"}, lines: 1,
			want: []string{"skipped", "CSI sidecar images cannot be built", "unreachable", "set COUCHESTOR_GIT_MIRROR", "kubernetes-csi+livenessprobe/repo"}, never: []string{"kubelet"}},
		{name: "sidecars cannot be built, mirror lacks them", f: csiFacts{Mode: csiBuild, CSICanWhy: "unreachable", Mirror: "/srv/mirror"}, lines: 1,
			want: []string{"skipped", "COUCHESTOR_GIT_MIRROR=/srv/mirror is set but lacks"}},
		{name: "not built, auto", f: csiFacts{Mode: csiAuto, CachedWhy: "not built yet: kubelet helm\n"}, lines: 1,
			want: []string{"not run", "not built yet: kubelet helm", "make demo DEMO_CSI=build", "20 min"}},
		{name: "not built, build", f: csiFacts{Mode: csiBuild, CachedWhy: "not built yet: kubelet"}, run: true, build: true, lines: 2,
			want: []string{"building the real cluster's binaries first", "not built yet: kubelet", "20 min", "csi.enabled=true", "couchestor-ec"}},
		{name: "all built", f: csiFacts{Mode: csiAuto}, run: true, lines: 1,
			want: []string{"cluster lock", "csi.enabled=true", "couchestor-ec", "writing", "reading them back", "sha256", "taken down"}, never: []string{"building"}},
		{name: "all built, build asked", f: csiFacts{Mode: csiBuild}, run: true, lines: 1, never: []string{"building"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := planCSI(c.f)
			text := strings.Join(p.Lines, "\n")
			if p.Run != c.run || p.Build != c.build || len(p.Lines) != c.lines {
				t.Errorf("run %v build %v, %d lines; want %v %v %d:\n%s", p.Run, p.Build, len(p.Lines), c.run, c.build, c.lines, text)
			}
			for _, w := range c.want {
				if !strings.Contains(text, w) {
					t.Errorf("lacks %q:\n%s", w, text)
				}
			}
			for _, n := range c.never {
				if strings.Contains(text, n) {
					t.Errorf("says %q:\n%s", n, text)
				}
			}
			if !p.Run && !strings.Contains(text, "skipped") && !strings.Contains(text, "not run") {
				t.Errorf("a step that does not run must say so:\n%s", text)
			}
		})
	}
}

func TestValidCSIMode(t *testing.T) {
	for _, m := range []string{csiAuto, csiBuild, csiOff} {
		if err := validCSIMode(m); err != nil {
			t.Errorf("%s: %v", m, err)
		}
	}
	err := validCSIMode("yes")
	if err == nil || !strings.Contains(err.Error(), `--csi="yes"`) || !strings.Contains(err.Error(), "auto, build or off") {
		t.Errorf("validCSIMode(yes) = %v: want the flag, the value and the choices", err)
	}
}

// TestGateCSI: a lock held elsewhere or a cluster running outside the lock
// skips the step (naming the lock or the run directory); else it goes on.
func TestGateCSI(t *testing.T) {
	for _, c := range []struct {
		busy, live bool
		want       string
	}{
		{false, false, ""},
		{true, false, "another run holds the cluster lock /l"},
		{true, true, "another run holds the cluster lock /l"},
		{false, true, "a cluster is already running in /r outside the cluster lock"},
	} {
		got := gateCSI("/l", c.busy, "/r", c.live)
		if (c.want == "") != (got == "") || !strings.Contains(got, c.want) {
			t.Errorf("busy %v live %v: %q, want %q", c.busy, c.live, got, c.want)
		}
		if got != "" && !strings.Contains(got, "does not") {
			t.Errorf("busy %v live %v: %q does not say the demo leaves the cluster alone", c.busy, c.live, got)
		}
	}
}

// TestTryLockIsNonBlocking: a second taker of a held lock is told busy at
// once; after release it gets it.
func TestTryLockIsNonBlocking(t *testing.T) {
	p := filepath.Join(t.TempDir(), "couchestor-cluster.lock")
	a, busy, err := tryLock(p)
	if err != nil || busy || a == nil {
		t.Fatalf("first tryLock: %v %v %v", a, busy, err)
	}
	if b, busy, err := tryLock(p); err != nil || !busy || b != nil {
		t.Fatalf("second tryLock while held: %v busy %v %v, want busy", b, busy, err)
	}
	a.Close()
	b, busy, err := tryLock(p)
	if err != nil || busy {
		t.Fatalf("tryLock after release: busy %v %v", busy, err)
	}
	b.Close()
}

// TestClusterLive reads hack/cluster.sh's "PID STARTTIME" record: a live
// process with that start time is a running cluster; a recycled PID (other
// start time) or no record is not.
func TestClusterLive(t *testing.T) {
	dir := t.TempDir()
	if clusterLive(dir) {
		t.Fatal("no record: live")
	}
	st, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Skip(err)
	}
	s := string(st)
	start := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])[19]
	os.MkdirAll(filepath.Join(dir, "pids"), 0o755)
	write := func(st string) {
		if err := os.WriteFile(filepath.Join(dir, "pids", "kube-apiserver"), []byte(strconv.Itoa(os.Getpid())+" "+st+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(start)
	if !clusterLive(dir) {
		t.Error("our own PID and start time: not live")
	}
	write(start + "1")
	if clusterLive(dir) {
		t.Error("a recycled PID (another start time): live")
	}
}
