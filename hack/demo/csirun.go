package main

// The CSI step's run in the real cluster (csi.go decides whether it runs):
// the objects are tests/cluster's (tests/cluster/kit), so the demo shows
// what the cluster suite proves.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/billyronks/couchestor/tests/cluster/kit"
)

const (
	csiDemoNS    = "couchestor-demo"
	csiDemoClaim = "demo-files"
	podsWait     = 5 * time.Minute
)

type csiRun struct {
	root, runDir, lockPath, logDir string
	build                          bool
	kubectl, helm, kubeconfig      string
	log                            *os.File
}

func csiSay(format string, args ...any) {
	fmt.Printf("[%5.0fs] csi "+format+"\n", append([]any{since()}, args...)...)
}

// cmd runs a program in its own process group (a Ctrl-C at the terminal
// reaches the demo, which stops it and takes the cluster down, not the
// program half-way), output to the step's log; the cluster scripts'
// progress lines are shown.
func (r *csiRun) cmd(ctx context.Context, stdin string, bin string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = r.root
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+filepath.Join(r.logDir, "helm-cache"),
		"HELM_CONFIG_HOME="+filepath.Join(r.logDir, "helm-config"), "HELM_DATA_HOME="+filepath.Join(r.logDir, "helm-data"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var out strings.Builder
	cmd.Stdout = &out
	pr, pw := io.Pipe()
	cmd.Stderr = pw
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			l := sc.Text()
			fmt.Fprintln(r.log, l)
			if strings.HasPrefix(l, "[cluster] ") || strings.HasPrefix(l, "[csi-node-image] ") {
				csiSay("  %s", l)
			}
		}
	}()
	err := cmd.Run()
	pw.Close()
	<-done
	fmt.Fprintf(r.log, "$ %s %s\n%s\n", filepath.Base(bin), strings.Join(args, " "), out.String())
	if err != nil {
		return out.String(), fmt.Errorf("%s %s: %w", filepath.Base(bin), strings.Join(args, " "), err)
	}
	return out.String(), nil
}

func (r *csiRun) script(ctx context.Context, arg string) (string, error) {
	out, err := r.cmd(ctx, "", filepath.Join(r.root, "hack", "cluster.sh"), arg)
	return strings.TrimSpace(out), err
}

func (r *csiRun) k(ctx context.Context, stdin string, args ...string) (string, error) {
	out, err := r.cmd(ctx, stdin, r.kubectl, append([]string{"--kubeconfig", r.kubeconfig}, args...)...)
	if err != nil {
		return out, fmt.Errorf("%w: %s", err, strings.TrimSpace(out))
	}
	return out, nil
}

// until polls cond (every second) until it holds, the bound passes or ctx
// ends.
func until(ctx context.Context, bound time.Duration, what string, cond func() (bool, string)) error {
	deadline := time.Now().Add(bound)
	for {
		ok, last := cond()
		if ok {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w", what, ctx.Err())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not true within %s; last: %s", what, bound, last)
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// tryLock takes the cluster lock without waiting; busy when another holds
// it. The descriptor is close-on-exec: no process the demo starts keeps it.
func tryLock(path string) (f *os.File, busy bool, err error) {
	f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o666)
	if err != nil {
		return nil, false, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, true, nil
		}
		return nil, false, fmt.Errorf("flock %s: %w", path, err)
	}
	return f, false, nil
}

// clusterLive: hack/cluster.sh records "PID STARTTIME" of each process; the
// API server's still running means a cluster is up.
func clusterLive(runDir string) bool {
	b, err := os.ReadFile(filepath.Join(runDir, "pids", "kube-apiserver"))
	if err != nil {
		return false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return false
	}
	st, err := os.ReadFile("/proc/" + f[0] + "/stat")
	if err != nil {
		return false
	}
	s := string(st)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		fields := strings.Fields(s[i+1:])
		return len(fields) > 19 && fields[19] == f[1] // field 22 of stat
	}
	return false
}

// run is the step; nil when it ran through or was skipped by gateCSI.
func (r *csiRun) run(ctx context.Context) (err error) {
	lock, busy, err := tryLock(r.lockPath)
	if err != nil {
		return err
	}
	if skip := gateCSI(r.lockPath, busy, r.runDir, !busy && clusterLive(r.runDir)); skip != "" {
		if lock != nil {
			lock.Close()
		}
		csiSay("%s", skip)
		return nil
	}
	defer func() { lock.Close(); csiSay("cluster lock %s released", r.lockPath) }()
	csiSay("took the cluster lock %s (log of this step: %s)", r.lockPath, r.log.Name())
	start := time.Now()
	if r.build {
		csiSay("building the cluster's binaries and helm (%s)", csiBuildTime)
	}
	bins, err := r.script(ctx, "bins")
	if err != nil {
		return err
	}
	r.kubectl = filepath.Join(bins, "kubectl")
	if r.helm, err = r.script(ctx, "helm"); err != nil {
		return err
	}
	csiSay("building the CSI images: sidecars (cached), node plugin (Debian packages), workload")
	imgs, err := r.script(ctx, "csi-images")
	if err != nil {
		return err
	}
	os.Setenv("COUCHESTOR_CLUSTER_EXTRA_IMAGES", imgs)
	csiSay("bringing the single-node cluster up (containerd, kubelet, kube-proxy, control plane; images imported, never pulled)")
	// From here on the cluster goes down whatever happens (Ctrl-C too:
	// ctx ends, the running command is stopped, then this).
	defer func() {
		csiSay("taking the cluster down (hack/cluster.sh down)")
		dctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		if _, derr := r.script(dctx, "down"); derr != nil {
			err = errors.Join(err, fmt.Errorf("cluster down: %w (run hack/cluster.sh down)", derr))
		}
	}()
	if r.kubeconfig, err = r.script(ctx, "up"); err != nil {
		return err
	}
	csiSay("cluster up in %s; installing the chart with the CSI driver", time.Since(start).Round(time.Second))
	if err := r.install(ctx); err != nil {
		return err
	}
	return r.pods(ctx)
}

func (r *csiRun) install(ctx context.Context) error {
	if _, err := r.k(ctx, "", "apply", "-f", filepath.Join(r.root, "config", "crd", "external")); err != nil {
		return err
	}
	for _, n := range []string{kit.DataNS, "mayastor", csiDemoNS} {
		if _, err := r.k(ctx, "", "create", "namespace", n); err != nil {
			return err
		}
	}
	args := append(kit.InstallArgs(r.root, r.runDir), kit.CSIValues(r.runDir)...)
	if _, err := r.cmd(ctx, "", r.helm, append([]string{"--kubeconfig", r.kubeconfig}, args...)...); err != nil {
		return err
	}
	ready := func(ns, sel string, n int) func() (bool, string) {
		return func() (bool, string) {
			out, err := r.k(ctx, "", "-n", ns, "get", "pods", "-l", sel,
				"-o", `jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}`)
			return err == nil && strings.Count(out, "=True") >= n, out
		}
	}
	if err := until(ctx, podsWait, "the operator pod Ready", ready(kit.OperatorNS, "control-plane=controller-manager", 1)); err != nil {
		return err
	}
	csiSay("operator Ready; a DataPlane (one shard server on the node) and two more shard servers behind its Service")
	// Through the operator's webhook, which answers once its Service is
	// programmed.
	if err := until(ctx, 2*time.Minute, "the DataPlane admitted", func() (bool, string) {
		out, err := r.k(ctx, kit.DataPlaneYAML(r.runDir), "apply", "-f", "-")
		return err == nil, fmt.Sprint(err, out)
	}); err != nil {
		return err
	}
	if err := until(ctx, podsWait, "the DataPlane's release Deployed", func() (bool, string) {
		out, err := r.k(ctx, "", "-n", kit.DataNS, "get", "dataplane", kit.DataPlane, "-o", `jsonpath={.status.conditions[?(@.type=="Deployed")].status}`)
		return err == nil && strings.TrimSpace(out) == "True", out
	}); err != nil {
		return err
	}
	shards := append([]kit.Shard{{Node: kit.Node, Pool: kit.DataPlanePool}}, kit.ExtraShards[:2]...)
	for _, s := range shards {
		if _, err := r.k(ctx, kit.DiskPool(s.Pool, s.Node), "apply", "-f", "-"); err != nil {
			return err
		}
		if _, err := r.k(ctx, "", "-n", "mayastor", "patch", "diskpool", s.Pool, "--subresource=status", "--type=merge", "-p", kit.DiskPoolOnline); err != nil {
			return err
		}
		if s.Pod != "" {
			if _, err := r.k(ctx, kit.ShardPod(s.Pod, s.Node, s.Pool), "apply", "-f", "-"); err != nil {
				return err
			}
		}
	}
	if err := until(ctx, podsWait, "3 shard servers registered", func() (bool, string) {
		out, err := r.k(ctx, "", "-n", kit.DataNS, "get", "leases", "-o", "jsonpath={.items[*].metadata.name}")
		n := 0
		for _, s := range shards {
			if strings.Contains(out, s.Pool) {
				n++
			}
		}
		return err == nil && n == len(shards), out
	}); err != nil {
		return err
	}
	if _, err := r.k(ctx, kit.ECPolicyYAML, "apply", "-f", "-"); err != nil {
		return err
	}
	if err := until(ctx, podsWait, "the CSI controller and node plugin Ready", func() (bool, string) {
		c, _ := ready(kit.OperatorNS, "app.kubernetes.io/component=csi-controller", 1)()
		n, _ := ready(kit.CSINodeNS, "app.kubernetes.io/component=csi-node", 1)()
		return c && n, fmt.Sprintf("controller %v, node %v", c, n)
	}); err != nil {
		return err
	}
	return until(ctx, 2*time.Minute, "the kubelet registers the driver", func() (bool, string) {
		out, err := r.k(ctx, "", "get", "csinode", kit.Node, "-o", "jsonpath={.spec.drivers[*].name}")
		return err == nil && strings.Contains(out, kit.CSIDriver), out
	})
}

// runPod runs a treeio pod to completion and returns its output; the pod
// is left (Completed) for the listing.
func (r *csiRun) runPod(ctx context.Context, name string, args ...string) (string, error) {
	if _, err := r.k(ctx, kit.TreeioPod(csiDemoNS, name, csiDemoClaim, false, args...), "apply", "-f", "-"); err != nil {
		return "", err
	}
	start := time.Now()
	var failed bool
	if err := until(ctx, podsWait, "pod "+name+" Succeeded", func() (bool, string) {
		out, err := r.k(ctx, "", "-n", csiDemoNS, "get", "pod", name, "-o", "jsonpath={.status.phase}")
		failed = strings.TrimSpace(out) == "Failed"
		return err == nil && (failed || strings.TrimSpace(out) == "Succeeded"), out
	}); err != nil {
		ev, _ := r.k(ctx, "", "-n", csiDemoNS, "get", "events", "--sort-by=.lastTimestamp")
		return "", fmt.Errorf("%w\n%s", err, ev)
	}
	logs, err := r.k(ctx, "", "-n", csiDemoNS, "logs", name)
	if failed {
		return "", fmt.Errorf("pod %s failed: %v\n%s", name, err, logs)
	}
	csiSay("pod %s (treeio %s) Succeeded in %s", name, strings.Join(args, " "), time.Since(start).Round(time.Second))
	return logs, err
}

// unstaged waits until the node plugin has let the volume go (its state
// record gone): the next pod's export starts with a cold cache and reads
// from the shard servers.
func (r *csiRun) unstaged(ctx context.Context, vol string) error {
	return until(ctx, 3*time.Minute, "volume "+vol+" unstaged", func() (bool, string) {
		_, err := os.Stat(filepath.Join(kit.CSIStateDir(r.runDir), "volumes", vol+".json"))
		return os.IsNotExist(err), fmt.Sprint(err)
	})
}

func (r *csiRun) pods(ctx context.Context) error {
	csiSay("driver registered; PVC %s/%s (64Mi, StorageClass %s: ErasureCodingPolicy %s)", csiDemoNS, csiDemoClaim, kit.CSIClass, kit.ECPolicy)
	if _, err := r.k(ctx, kit.PVC(csiDemoNS, csiDemoClaim, "64Mi", "Filesystem"), "apply", "-f", "-"); err != nil {
		return err
	}
	var pv string
	if err := until(ctx, 3*time.Minute, "PVC Bound", func() (bool, string) {
		out, err := r.k(ctx, "", "-n", csiDemoNS, "get", "pvc", csiDemoClaim, "-o", "jsonpath={.status.phase}/{.spec.volumeName}")
		ph, name, _ := strings.Cut(strings.TrimSpace(out), "/")
		pv = name
		return err == nil && ph == "Bound", out
	}); err != nil {
		return err
	}
	vol, err := r.k(ctx, "", "get", "pv", pv, "-o", "jsonpath={.spec.csi.volumeHandle}")
	if err != nil {
		return err
	}
	vol = strings.TrimSpace(vol)
	csiSay("PVC Bound to %s: ECVolume %s", pv, vol)
	written, err := r.runPod(ctx, "writer", "write", "/data", "couchestor-demo")
	if err != nil {
		return err
	}
	if !strings.Contains(written, fmt.Sprintf("files %d", kit.TreeFiles)) {
		return fmt.Errorf("the writer pod wrote no tree:\n%s", written)
	}
	csiSay("the writer pod wrote %d files through the driver (ext4 on the erasure-coded volume)", kit.TreeFiles)
	if _, err := r.k(ctx, "", "-n", csiDemoNS, "delete", "pod", "writer", "--wait=true", "--timeout=120s"); err != nil {
		return err
	}
	if err := r.unstaged(ctx, vol); err != nil {
		return err
	}
	csiSay("volume unstaged (export stopped, journal flushed); a second pod reads the tree back with a cold cache")
	read, err := r.runPod(ctx, "reader", "read", "/data")
	if err != nil {
		return err
	}
	for _, l := range strings.Split(strings.TrimRight(read, "\n"), "\n") {
		csiSay("  reader: %s", l)
	}
	for _, args := range [][]string{{"-n", csiDemoNS, "get", "pvc,pv,pod", "-o", "wide"}, {"get", "ecvolume", "-o", "wide"}} {
		out, err := r.k(ctx, "", args...)
		if err != nil {
			return err
		}
		csiSay("$ kubectl %s", strings.Join(args, " "))
		for _, l := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
			csiSay("  %s", l)
		}
	}
	if strings.TrimSpace(read) != strings.TrimSpace(written) {
		return fmt.Errorf("the reader pod's sha256 differ from the writer's\nwritten:\n%s\nread:\n%s", written, read)
	}
	csiSay("every sha256 the reader printed matches what the writer wrote: %d files back from the erasure-coded PVC", kit.TreeFiles)
	// Let the node plugin detach before the cluster goes.
	if _, err := r.k(ctx, "", "-n", csiDemoNS, "delete", "pod", "reader", "--wait=true", "--timeout=120s"); err != nil {
		return err
	}
	return r.unstaged(ctx, vol)
}
