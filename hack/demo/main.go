// Command demo is `make demo`: CoucheStor doing its job on a laptop, with no
// cluster. It starts a local control plane (kube-apiserver + etcd), installs
// the CRDs, runs the Mayastor simulator (a test double: three nodes, each with
// a hot, a warm and a cold DiskPool, four more nodes with a cold DiskPool only,
// twenty volumes with PVs/PVCs and a scripted IO workload, playing Mayastor
// 2.x's control-plane REST API), a real Prometheus
// scraping it, one shard server process per cold DiskPool (seven), and the
// operator as its own process with its webhooks in self-signed mode; applies a
// sample ErasureCodingPolicy and StoragePolicy; and shows live what happens.
//
// A pod on an erasure-coded PVC (the CSI driver) needs a kubelet: where this
// machine runs the real single-node cluster, csi.go/csirun.go bring it up
// under the cluster lock once the erasure-coding part is over, install the
// chart with the CSI driver, and run a pod writing files onto an
// erasure-coded PVC and a second reading them back (sha256 printed), then
// take the cluster down; elsewhere one line says why not (--csi, DEMO_CSI).
//
// Two things run side by side: tiering (volumes move between hot, warm and
// cold pools as their IOPS change) and erasure coding (ec.go: an ECVolume is
// written through NBD, destaged into ECStripes, a shard server is killed, the
// operator rebuilds its shards elsewhere and the data reads back exactly).
// The operator runs with a 10s down-out delay and a 1 MiB/s rebuild
// bandwidth so the rebuild happens, visibly, within the demo.
//
// With --duration (DEMO_DURATION) it runs unattended and exits non-zero when
// the expected migrations did not happen or the erasure-coding part failed
// (it waits past --duration for an erasure-coding part still inside its own
// bounds). Ctrl-C (or SIGTERM, or the end of --duration) stops every process
// it started and removes its temporary files.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/internal/scheme"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/tests/mayastorsim/sim"
)

const policyName = "demo-tiering"

func main() {
	code, err := run()
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// procs are the processes the demo started; stopAll ends them all, and no
// process starts after it.
type procs struct {
	mu      sync.Mutex
	list    []*exec.Cmd
	stopped bool
}

func (p *procs) start(name, logPath string, bin string, args ...string) (*exec.Cmd, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		return nil, fmt.Errorf("start %s: the demo is stopping", name)
	}
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	// Our processes die with us even if we are killed outright.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p.list = append(p.list, cmd)
	return cmd, nil
}

// stopAll stops processes in reverse start order: SIGTERM, then SIGKILL.
func (p *procs) stopAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stopped = true
	for i := len(p.list) - 1; i >= 0; i-- {
		cmd := p.list[i]
		if cmd.ProcessState != nil {
			continue
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func run() (int, error) {
	// If make (our parent) dies, we get SIGTERM and clean up.
	_, _, _ = syscall.RawSyscall(syscall.SYS_PRCTL, syscall.PR_SET_PDEATHSIG, uintptr(syscall.SIGTERM), 0)
	bin := flag.String("bin", "bin/couchestor", "operator binary")
	simBin := flag.String("sim", "bin/mayastorsim", "Mayastor simulator binary (test double)")
	prom := flag.String("prometheus", "", "Prometheus binary (hack/prometheus.sh)")
	duration := flag.Duration("duration", 0, "run this long unattended, then check the expected migrations happened (0: until Ctrl-C)")
	minMigrations := flag.Int("min-migrations", 4, "with --duration: successful migrations expected")
	csiMode := flag.String("csi", csiAuto, "the CSI pod step in the real cluster: auto (where its binaries are built; else say how), build (build them first, about 20 min once), off")
	clusterLock := flag.String("cluster-lock", filepath.Join(os.TempDir(), "couchestor-cluster.lock"), "the machine's cluster lock (taken without waiting; held: the CSI step is skipped)")
	clusterDir := flag.String("cluster-dir", envOr("COUCHESTOR_CLUSTER_DIR", "/var/tmp/couchestor-cluster"), "hack/cluster.sh's run directory")
	flag.Parse()
	if err := validCSIMode(*csiMode); err != nil {
		return 2, err
	}
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" || *prom == "" {
		return 2, errors.New("KUBEBUILDER_ASSETS and --prometheus are required: run `make demo`")
	}
	root, _ := os.Getwd()
	tmp, err := os.MkdirTemp("", "couchestor-demo-")
	if err != nil {
		return 1, err
	}
	defer os.RemoveAll(tmp)

	sigCtx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx := sigCtx
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}

	say("starting the local control plane (kube-apiserver + etcd) with the CRDs of a Mayastor 2.x cluster: DiskPool, no MayastorVolume")
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(root, "config/crd/bases"), filepath.Join(root, "config/crd/external/openebs.io_diskpools.yaml")},
		ErrorIfCRDPathMissing: true,
		Scheme:                scheme.New(),
	}
	cfg, err := env.Start()
	if err != nil {
		_ = env.Stop()
		return 1, fmt.Errorf("start control plane: %w", err)
	}
	defer func() { say("stopping the control plane"); _ = env.Stop() }()
	var ps procs
	defer func() { say("stopping the operator, Prometheus and the simulator"); ps.stopAll() }()

	localDir := filepath.Join(root, ".local")
	_ = os.MkdirAll(localDir, 0o755)
	kubeconfig := filepath.Join(localDir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, env.KubeConfig, 0o600); err != nil {
		return 1, err
	}
	c, err := client.New(cfg, client.Options{Scheme: env.Scheme})
	if err != nil {
		return 1, err
	}
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "mayastor"}}); err != nil {
		return 1, err
	}

	simAddr, _ := freeAddr()
	promAddr, _ := freeAddr()
	metricsAddr, _ := freeAddr()
	probeAddr, _ := freeAddr()
	webhookAddr, _ := freeAddr()
	_, webhookPort, _ := net.SplitHostPort(webhookAddr)

	say("starting the Mayastor simulator (test double of Mayastor 2.x's REST API /v0): 3 nodes x hot/warm/cold pools + 4 nodes with a cold pool, 20 volumes")
	scenarioPath := filepath.Join(tmp, "scenario.json")
	b, _ := json.MarshalIndent(scenario(), "", "  ")
	if err := os.WriteFile(scenarioPath, b, 0o600); err != nil {
		return 1, err
	}
	if _, err := ps.start("simulator", filepath.Join(tmp, "simulator.log"), *simBin, "--kubeconfig", kubeconfig,
		"--scenario", scenarioPath, "--listen", simAddr, "--api=rest", "--rebuild-bytes-per-second", "268435456"); err != nil {
		return 1, err
	}
	if err := waitHTTP(ctx, "http://"+simAddr+"/metrics", 60*time.Second); err != nil {
		return 1, fmt.Errorf("simulator: %w (log: %s)", err, filepath.Join(tmp, "simulator.log"))
	}
	// The REST API is served on the simulator's listener.
	restURL := "http://" + simAddr

	say("starting Prometheus, scraping the simulator and the operator every second")
	promCfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
- job_name: mayastor-io-engine
  static_configs: [{targets: [%q]}]
- job_name: couchestor
  static_configs: [{targets: [%q]}]
`, simAddr, metricsAddr)
	if err := os.WriteFile(filepath.Join(tmp, "prometheus.yml"), []byte(promCfg), 0o600); err != nil {
		return 1, err
	}
	if _, err := ps.start("prometheus", filepath.Join(tmp, "prometheus.log"), *prom,
		"--config.file="+filepath.Join(tmp, "prometheus.yml"), "--storage.tsdb.path="+filepath.Join(tmp, "tsdb"),
		"--web.listen-address="+promAddr); err != nil {
		return 1, err
	}
	if err := waitHTTP(ctx, "http://"+promAddr+"/-/ready", 60*time.Second); err != nil {
		return 1, fmt.Errorf("prometheus: %w", err)
	}

	ec := &ecDemo{c: c, ps: &ps, bin: *bin, kubeconfig: kubeconfig, dir: filepath.Join(tmp, "ec")}
	var coldPools, coldNodes []string
	for _, p := range scenario().Pools {
		if p.Labels["tier"] == "cold" {
			coldPools, coldNodes = append(coldPools, p.Name), append(coldNodes, p.Node)
		}
	}
	say(fmt.Sprintf("starting %d shard servers, one per cold DiskPool (TLS + token; client Secret %s/%s)", len(coldPools), registry.DefaultNamespace, shardSecret))
	if err := ec.startShardServers(ctx, coldPools, coldNodes); err != nil {
		return 1, fmt.Errorf("shard servers: %w", err)
	}

	say(fmt.Sprintf("starting the operator (webhooks in self-signed mode; demo settings: --ec-down-out-delay %s, --ec-rebuild-bandwidth-bytes %d)", ecDownOutDelay, ecRebuildBytesSec))
	opLog := filepath.Join(tmp, "operator.log")
	op, err := ps.start("operator", opLog, *bin,
		"--kubeconfig", kubeconfig,
		"--metrics-bind-address", metricsAddr, "--health-probe-bind-address", probeAddr,
		"--leader-election-namespace", "default", "--mayastor-namespace", "mayastor", "--mayastor-api-url", restURL,
		"--webhook-cert-mode", "self-signed", "--webhook-port", webhookPort,
		"--webhook-local-url", "https://localhost:"+webhookPort, "--webhook-cert-dir", filepath.Join(tmp, "certs"),
		"--webhook-namespace", "default",
		"--prometheus-url", "http://"+promAddr, "--prometheus-scrape-interval", "1s",
		"--evaluation-interval", "5s", "--metrics-cache-ttl", "2s", "--zap-encoder", "console",
		// A shard server lost for longer than this is rebuilt elsewhere (the
		// default, 10m, rides out restarts; a demo cannot wait that long).
		"--ec-down-out-delay", ecDownOutDelay.String(), "--ec-pool-probe-interval", "1s",
		"--ec-rebuild-bandwidth-bytes", strconv.Itoa(ecRebuildBytesSec), "--ec-policy-validation-interval", "5s")
	if err != nil {
		return 1, err
	}
	opExited := make(chan struct{})
	go func() { _, _ = op.Process.Wait(); close(opExited) }()
	if err := waitHTTP(ctx, "http://"+probeAddr+"/readyz", 120*time.Second); err != nil {
		tail(opLog) // the log is removed with the demo's directory
		return 1, fmt.Errorf("operator never became ready: %w (log: %s)", err, opLog)
	}

	say("applying an ErasureCodingPolicy and a StoragePolicy (through the webhooks)")
	// A small journal destaged every second, so written data turns into
	// ECStripes while you watch (defaults: 10 GiB, every 30s).
	if err := c.Create(ctx, &storagev1.ErasureCodingPolicy{ObjectMeta: metav1.ObjectMeta{Name: ecPolicyName},
		Spec: storagev1.ErasureCodingPolicySpec{DataShards: ptr.To[int32](4), ParityShards: ptr.To[int32](2),
			JournalConfig: &storagev1.JournalConfig{JournalSizeBytes: ptr.To[int64](64 << 20), DestageThresholdPercent: ptr.To[int32](50), DestageInterval: "1s"}}}); err != nil {
		return 1, fmt.Errorf("apply ErasureCodingPolicy: %w", err)
	}
	sel := func(t string) *metav1.LabelSelector {
		return &metav1.LabelSelector{MatchLabels: map[string]string{"tier": t}}
	}
	if err := c.Create(ctx, &storagev1.StoragePolicy{ObjectMeta: metav1.ObjectMeta{Name: policyName},
		Spec: storagev1.StoragePolicySpec{
			HighWatermarkIOPS: ptr.To[int64](500), WarmWatermarkIOPS: ptr.To[int64](200), LowWatermarkIOPS: ptr.To[int64](50),
			SamplingWindow: "20s", CooldownPeriod: "3m", MigrationTimeout: "2m", MaxConcurrentMigrations: ptr.To[int32](3),
			HotPoolSelector: sel("hot"), WarmPoolSelector: sel("warm"), ColdPoolSelector: sel("cold"),
			ECPolicyRef: ecPolicyName,
		}}); err != nil {
		return 1, fmt.Errorf("apply StoragePolicy: %w", err)
	}

	kubectl := filepath.Join(assets, "kubectl")
	fmt.Printf(`
  kubeconfig:  %[1]s
  kubectl:     %[2]s
  try:         KUBECONFIG=%[1]s %[2]s get sp,ecp,ecv,ecs
               KUBECONFIG=%[1]s %[2]s get sp %[3]s -o yaml
               KUBECONFIG=%[1]s %[2]s get events -A --sort-by=.lastTimestamp
  Prometheus:  http://%[4]s/graph?g0.expr=couchestor_migrations_total
  metrics:     http://%[5]s/metrics      readiness: http://%[6]s/readyz
  workload:    6 volumes heat up, 6 cool down, 1 flaps around the 500-IOPS watermark, 7 stay put

Watermarks: hot >= 500 IOPS, warm >= 200, cold <= 50, over a 20s window; cooldown 3m.
Erasure coding ("ec" lines), meanwhile: 8 MiB written through NBD into ECVolume %[7]s, destaged into
4+2 ECStripes on 7 shard servers; one shard server is then killed, and after the %[8]s down-out
delay the operator rebuilds its shards on the spare pool; the data is read back and checksummed.
`, kubeconfig, kubectl, policyName, promAddr, metricsAddr, probeAddr, ecVolumeName, ecDownOutDelay)
	csiPlan := planCSI(gatherCSIFacts(sigCtx, root, *csiMode))
	for _, l := range csiPlan.Lines {
		fmt.Println(l)
	}
	fmt.Println()
	if *duration > 0 {
		fmt.Printf("Running unattended for %s (expecting at least %d migrations).\n\n", *duration, *minMigrations)
	} else {
		fmt.Print("Ctrl-C stops everything.\n\n")
	}

	demoStart = time.Now()
	// The erasure-coding part runs beside the tiering display, bounded by
	// its own limits rather than by --duration; Ctrl-C ends it.
	ecCtx, ecCancel := context.WithCancel(sigCtx)
	defer ecCancel()
	ecResult := make(chan error, 1)
	ecFinished := make(chan struct{})
	go func() { err := ec.run(ecCtx); close(ecFinished); ecResult <- err }()
	// The CSI step starts once the erasure-coding part is over (its
	// rebuild has time bounds; the cluster loads this machine), has its
	// own bounds and ends, taking the cluster down, on Ctrl-C.
	csiResult := make(chan error, 1)
	if csiPlan.Run {
		r := &csiRun{root: root, runDir: *clusterDir, lockPath: *clusterLock, logDir: filepath.Join(tmp, "csi"), build: csiPlan.Build}
		go func() {
			select {
			case <-ecFinished:
			case <-sigCtx.Done():
				csiResult <- nil
				return
			}
			if err := os.MkdirAll(r.logDir, 0o755); err != nil {
				csiResult <- err
				return
			}
			f, err := os.Create(filepath.Join(r.logDir, "csi.log"))
			if err != nil {
				csiResult <- err
				return
			}
			r.log = f
			err = r.run(sigCtx)
			f.Close()
			if err != nil {
				tail(f.Name())
			}
			csiResult <- err
		}()
	} else {
		csiResult <- nil
	}
	ecErr, ecDone := error(nil), false
	watchErr := watch(ctx, c, opExited, ecResult, func(err error) {
		ecErr, ecDone = err, true
		if err != nil {
			fmt.Printf("[%5.0fs] ec  FAILED: %v\n", since(), err)
		} else {
			fmt.Printf("[%5.0fs] ec  erasure coding: written, destaged, one shard server lost, rebuilt, read back exactly\n", since())
		}
	})
	if !ecDone {
		if *duration > 0 && sigCtx.Err() == nil && watchErr == nil {
			fmt.Printf("[%5.0fs] waiting for the erasure-coding part to finish (it has its own bounds)\n", since())
		} else {
			ecCancel()
		}
		select {
		case ecErr = <-ecResult:
		case <-opExited:
			ecCancel()
			ecErr = errors.Join(errors.New("the operator exited unexpectedly"), <-ecResult)
		}
		if sigCtx.Err() != nil {
			fmt.Printf("[%5.0fs] ec  interrupted\n", since())
			if *duration == 0 || errors.Is(ecErr, context.Canceled) {
				ecErr = nil // stopped by the user, not failed
			}
		} else if ecErr != nil {
			fmt.Printf("[%5.0fs] ec  FAILED: %v\n", since(), ecErr)
		} else {
			fmt.Printf("[%5.0fs] ec  erasure coding: written, destaged, one shard server lost, rebuilt, read back exactly\n", since())
		}
	}
	if csiPlan.Run {
		if sigCtx.Err() == nil {
			fmt.Printf("[%5.0fs] waiting for the CSI pod step to finish (it has its own bounds; Ctrl-C takes its cluster down)\n", since())
		}
	}
	csiErr := <-csiResult
	if sigCtx.Err() != nil && csiErr != nil && errors.Is(csiErr, context.Canceled) {
		fmt.Printf("[%5.0fs] csi interrupted; the cluster is down\n", since())
		csiErr = nil
	} else if csiPlan.Run && csiErr == nil && sigCtx.Err() == nil {
		fmt.Printf("[%5.0fs] csi CSI pod step done\n", since())
	}
	// Read the outcome with a fresh context: ctx may be done.
	final := &storagev1.StoragePolicy{}
	fctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	getErr := c.Get(fctx, client.ObjectKey{Name: policyName}, final)
	if watchErr != nil {
		tail(opLog)
		return 1, watchErr
	}
	if ecErr != nil {
		tail(opLog)
		if ec.lastServeLog != "" {
			tail(ec.lastServeLog)
		}
		return 1, fmt.Errorf("erasure coding: %w (logs in %s are removed on exit)", ecErr, ec.dir)
	}
	if csiErr != nil {
		return 1, fmt.Errorf("CSI pod step: %w (its log in %s is removed on exit)", csiErr, filepath.Join(tmp, "csi"))
	}
	if *duration == 0 {
		return 0, nil
	}
	if getErr != nil {
		return 1, getErr
	}
	ok := 0
	for _, h := range final.Status.MigrationHistory {
		if h.Success && !h.DryRun {
			ok++
		}
	}
	fmt.Printf("\nresult: %d successful migrations, %d failed, %d total\n", ok, final.Status.FailedMigrations, final.Status.TotalMigrations)
	if ok < *minMigrations {
		tail(opLog)
		return 1, fmt.Errorf("expected at least %d successful migrations in %s, saw %d", *minMigrations, *duration, ok)
	}
	fmt.Println("demo: the expected migrations happened, and the erasure-coded data survived the loss of a shard server")
	return 0, nil
}

// demoStart is when the show began: every live line is stamped with the
// seconds since.
var demoStart = time.Now()

func since() float64 { return time.Since(demoStart).Seconds() }

// watch prints the policy's tier counts and every new history entry and Event
// until ctx ends; the erasure-coding part's result goes to onEC when it comes.
func watch(ctx context.Context, c client.Client, opExited <-chan struct{}, ecResult <-chan error, onEC func(error)) error {
	seenHistory := map[string]bool{}
	seenEvents := map[string]int32{}
	seenMessages := map[string]bool{}
	lastLine := ""
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-opExited:
			return errors.New("the operator exited unexpectedly")
		case err := <-ecResult:
			onEC(err)
			ecResult = nil
			continue
		case <-t.C:
		}
		sp := &storagev1.StoragePolicy{}
		if err := c.Get(ctx, client.ObjectKey{Name: policyName}, sp); err != nil {
			continue
		}
		s := sp.Status
		line := fmt.Sprintf("%-7s watched %2d | hot %2d  warm %2d  cold %2d | migrating %d | done %d, failed %d",
			s.Phase, s.WatchedVolumes, s.HotVolumes, s.WarmVolumes, s.ColdVolumes, s.ActiveMigrations, s.TotalMigrations-s.FailedMigrations, s.FailedMigrations)
		if line != lastLine {
			fmt.Printf("[%5.0fs] %s\n", since(), line)
			lastLine = line
		}
		for i := len(s.MigrationHistory) - 1; i >= 0; i-- {
			h := s.MigrationHistory[i]
			key := h.VolumeName + h.Timestamp.String() + h.ToTier
			if seenHistory[key] {
				continue
			}
			seenHistory[key] = true
			result := "done"
			if !h.Success {
				result = "FAILED: " + h.Error
			}
			fmt.Printf("[%5.0fs]   history: %s %s -> %s (%.0f IOPS) in %s, %s\n", since(), claimOf(h.VolumeName), h.FromTier, h.ToTier, h.TriggerIOPS, h.Duration, result)
		}
		var evs corev1.EventList
		if err := c.List(ctx, &evs); err == nil {
			sort.Slice(evs.Items, func(i, j int) bool { return evs.Items[i].CreationTimestamp.Before(&evs.Items[j].CreationTimestamp) })
			for _, e := range evs.Items {
				if seenEvents[string(e.UID)] == e.Count && e.Count != 0 || (e.Count == 0 && seenEvents[string(e.UID)] == -1) {
					continue
				}
				if e.Count == 0 {
					seenEvents[string(e.UID)] = -1
				} else {
					seenEvents[string(e.UID)] = e.Count
				}
				msg := strings.TrimPrefix(e.Message, "(combined from similar events): ")
				if msg == "" {
					msg = e.Reason
				}
				// Rebuild Events do not name their stripe: say which.
				if e.InvolvedObject.Kind == "ECStripe" && !strings.Contains(msg, e.InvolvedObject.Name) {
					msg = e.InvolvedObject.Name + ": " + msg
				}
				// The engine reports on the PV and on the policy: show each once.
				if seenMessages[msg] {
					continue
				}
				seenMessages[msg] = true
				fmt.Printf("[%5.0fs]   event %-8s %-20s %s\n", since(), e.Type, e.Reason, strings.TrimSpace(msg))
			}
		}
	}
}

func say(s string) { fmt.Printf("==> %s\n", s) }

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func tail(path string) {
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 30 {
		lines = lines[len(lines)-30:]
	}
	fmt.Fprintf(os.Stderr, "--- last lines of %s ---\n%s\n", path, strings.Join(lines, "\n"))
}

func waitHTTP(ctx context.Context, url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		resp, err := http.Get(url)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
			last = fmt.Errorf("%s: HTTP %d", url, resp.StatusCode)
		} else {
			last = err
		}
		time.Sleep(300 * time.Millisecond)
	}
	return last
}

// claimOf names a PV (pvc-<uuid>, as Mayastor's CSI driver names it) by its
// claim, for the display.
func claimOf(pv string) string {
	for _, v := range scenario().Volumes {
		if v.Name == pv {
			return v.PVC.Name + " (" + pv + ")"
		}
	}
	return pv
}

// scenario is the demo's cluster: 3 nodes, each with a hot, warm and cold pool,
// 4 storage nodes with a cold pool only (erasure coding wants k+m = 6 shards
// on distinct nodes, plus a spare to rebuild onto), and 20 two-replica volumes
// with a scripted workload, on Mayastor 2.x: PVs named pvc-<uuid>, each
// volume's topology requiring the pool label key "tier" (a StorageClass's
// poolHasTopologyKey, which the operator's placement lever withholds from the
// pools of other tiers), published on node-app, its pod's node (a replica
// local to the nexus is the last Mayastor removes, so it could not move).
func scenario() *sim.Scenario {
	const gib = int64(1) << 30
	sc := &sim.Scenario{Namespace: "mayastor", StorageClass: "mayastor"}
	nodes := []string{"node-1", "node-2", "node-3"}
	for _, n := range nodes {
		for _, t := range []string{"hot", "warm", "cold"} {
			sc.Pools = append(sc.Pools, sim.PoolSpec{Name: n + "-" + t, Node: n, Disks: []string{"/dev/" + t},
				Labels: map[string]string{"tier": t}, CapacityBytes: 200 * gib})
		}
	}
	for i := 4; i <= 7; i++ {
		n := fmt.Sprintf("node-%d", i)
		sc.Pools = append(sc.Pools, sim.PoolSpec{Name: n + "-cold", Node: n, Disks: []string{"/dev/cold"},
			Labels: map[string]string{"tier": "cold"}, CapacityBytes: 200 * gib})
	}
	after := func(d time.Duration, iops float64) []sim.IOPSStep {
		return []sim.IOPSStep{{After: sim.Duration{Duration: d}, IOPS: iops}}
	}
	add := func(name, tier string, i int, iops float64, sched []sim.IOPSStep) {
		a, b := nodes[i%3], nodes[(i+1)%3]
		u := fmt.Sprintf("00000000-0000-4000-8000-%012d", len(sc.Volumes)+1)
		sc.Volumes = append(sc.Volumes, sim.VolumeSpec{
			Name: "pvc-" + u, UUID: u, SizeBytes: gib, PoolInclusion: map[string]string{"tier": ""}, TargetNode: "node-app",
			Replicas: []string{a + "-" + tier, b + "-" + tier}, Published: true, IOPS: iops, Schedule: sched,
			PVC: sim.PVCSpec{Namespace: "default", Name: name + "-claim", Labels: map[string]string{"app": "demo"}},
		})
	}
	for i := 0; i < 6; i++ { // quiet now, busy from 10s on: cold -> hot
		add(fmt.Sprintf("heating-%d", i), "cold", i, 10, after(10*time.Second, 900))
	}
	for i := 0; i < 6; i++ { // busy now, idle from 10s on: hot -> cold
		add(fmt.Sprintf("cooling-%d", i), "hot", i, 900, after(10*time.Second, 5))
	}
	for i := 0; i < 4; i++ {
		add(fmt.Sprintf("steady-warm-%d", i), "warm", i, 300, nil)
	}
	for i := 0; i < 3; i++ {
		add(fmt.Sprintf("steady-hot-%d", i), "hot", i, 900, nil)
	}
	// Flaps around the high watermark: moves once, then cooldown holds it.
	add("flapping", "warm", 0, 560, []sim.IOPSStep{
		{After: sim.Duration{Duration: 30 * time.Second}, IOPS: 150},
		{After: sim.Duration{Duration: 50 * time.Second}, IOPS: 600},
		{After: sim.Duration{Duration: 70 * time.Second}, IOPS: 150},
	})
	return sc
}
