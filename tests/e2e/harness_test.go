package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/mayastorrest"
	"github.com/billyronks/couchestor/tests/testenv"
)

// proc is a child process with its output in a log file. It can be killed
// and started again with the same arguments (Prometheus on the same address
// and data dir, the operator after a SIGKILL).
type proc struct {
	name string
	bin  string
	args []string
	log  string
	cmd  *exec.Cmd
	done chan struct{}
}

func startProc(t *testing.T, name, logPath, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, bin: bin, args: args, log: logPath}
	p.start(t)
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("--- last lines of %s (%s) ---\n%s", name, logPath, tailFile(logPath, 40))
		}
	})
	return p
}

func (p *proc) start(t *testing.T) {
	t.Helper()
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "==== %s started at %s\n", p.name, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(p.bin, p.args...)
	cmd.Stdout, cmd.Stderr = f, f
	// Children die with the test binary even if it is killed outright.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start %s: %v", p.name, err)
	}
	p.cmd, p.done = cmd, make(chan struct{})
	go func(done chan struct{}) { _ = cmd.Wait(); f.Close(); close(done) }(p.done)
}

func (p *proc) running() bool {
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill() {
	if !p.running() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// stop sends SIGTERM, then SIGKILL after 20 s.
func (p *proc) stop() {
	if !p.running() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		p.kill()
	}
}

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func freeAddr(t *testing.T) string { return testenv.Addr(testenv.FreePort(t)) }

// eventually polls cond every 250 ms until it returns true or timeout passes;
// the last error cond returned goes into the failure message.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for {
		ok, err := cond()
		if ok {
			return
		}
		if err != nil {
			last = err
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true within %s (last error: %v)", what, timeout, last)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func httpGet(url string) (int, string, error) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// metricValue sums the samples of name whose label set contains every given
// label (k="v" pairs), from a Prometheus text exposition. found is false when
// no sample matched.
func metricValue(exposition, name string, labels ...string) (sum float64, found bool) {
	for _, line := range strings.Split(exposition, "\n") {
		if !strings.HasPrefix(line, name) || strings.HasPrefix(line, "#") {
			continue
		}
		rest := line[len(name):]
		if rest == "" || (rest[0] != '{' && rest[0] != ' ') {
			continue // a longer metric name with the same prefix
		}
		match := true
		for _, l := range labels {
			if !strings.Contains(rest, l) {
				match = false
			}
		}
		if !match {
			continue
		}
		f := strings.Fields(rest[strings.LastIndex(rest, "}")+1:])
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		sum += v
		found = true
	}
	return sum, found
}

// operator is one couchestor process and its addresses.
type operator struct {
	*proc
	metricsAddr, probeAddr, webhookPort string
}

func (o *operator) metrics() (string, error) {
	code, body, err := httpGet("http://" + o.metricsAddr + "/metrics")
	if err == nil && code != 200 {
		err = fmt.Errorf("/metrics: HTTP %d", code)
	}
	return body, err
}

// isLeader reads controller-runtime's leader_election_master_status gauge.
func (o *operator) isLeader() bool {
	m, err := o.metrics()
	if err != nil {
		return false
	}
	v, ok := metricValue(m, "leader_election_master_status")
	return ok && v == 1
}

func (o *operator) waitReady(t *testing.T) {
	t.Helper()
	if err := testenv.WaitHTTP200("http://"+o.probeAddr+"/readyz", 2*time.Minute); err != nil {
		t.Fatalf("%s never became ready: %v\n%s", o.name, err, tailFile(o.log, 40))
	}
}

// kubectl runs the project's kubectl against the suite's control plane.
func (s *suite) kubectl(stdin string, args ...string) (string, error) {
	cmd := exec.Command(s.kubectlBin, args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+s.kubeconfig)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, out.String())
	}
	return out.String(), nil
}

func (s *suite) policy(t *testing.T, name string) *storagev1.StoragePolicy {
	t.Helper()
	p := &storagev1.StoragePolicy{}
	if err := s.c.Get(context.Background(), client.ObjectKey{Name: name}, p); err != nil {
		t.Fatalf("get StoragePolicy %s: %v", name, err)
	}
	return p
}

func conditionStatus(p *storagev1.StoragePolicy, typ string) metav1.ConditionStatus {
	for _, c := range p.Status.Conditions {
		if c.Type == typ {
			return c.Status
		}
	}
	return metav1.ConditionUnknown
}

// volumes reads the suite's volumes (by name) from the REST double's /v0
// API, as Mayastor 2.x's control plane shows them: there is no MayastorVolume
// object on a 2.x cluster.
func (s *suite) volumes(names ...string) (map[string]*mayastorrest.Volume, error) {
	list, err := s.rest.ListVolumes(context.Background())
	if err != nil {
		return nil, err
	}
	byUUID := map[string]*mayastorrest.Volume{}
	for i := range list {
		byUUID[list[i].Spec.UUID] = &list[i]
	}
	out := map[string]*mayastorrest.Volume{}
	for _, n := range names {
		v := byUUID[s.uuid[n]]
		if v == nil {
			return nil, fmt.Errorf("no REST volume for %s (uuid %s)", n, s.uuid[n])
		}
		out[n] = v
	}
	return out, nil
}

// healthyReplicas counts replicas holding a full copy: Online, their nexus
// child Online and not rebuilding. (MAYASTOR.md's sync predicate also wants
// the volume Online, which it is not while any replica rebuilds, so it would
// count 0 full copies in the middle of every move.)
func healthyReplicas(v *mayastorrest.Volume) int {
	n := 0
	for _, r := range v.State.ReplicaTopology {
		if r.State == "Online" && ptr.Deref(r.ChildStatus, "") == "Online" && r.RebuildProgress == nil && ptr.Deref(r.Healthy, true) {
			n++
		}
	}
	return n
}

// onTier reports whether v has want replicas, all on pools of tier (pool
// names end in -hot, -warm or -cold in the suite's scenario) and synced, and
// asks for no more.
func onTier(v *mayastorrest.Volume, tier string, want int) bool {
	if len(v.State.ReplicaTopology) != want || int(v.Spec.NumReplicas) != want {
		return false
	}
	for id, r := range v.State.ReplicaTopology {
		if r.Pool == nil || !strings.HasSuffix(*r.Pool, "-"+tier) || r.State != "Online" || !mayastorrest.ReplicaSynced(*v, id) {
			return false
		}
	}
	return true
}

func replicaPools(v *mayastorrest.Volume) string {
	var ps []string
	for id, r := range v.State.ReplicaTopology {
		ps = append(ps, fmt.Sprintf("%s(%s,synced=%v)", ptr.Deref(r.Pool, "?"), r.State, mayastorrest.ReplicaSynced(*v, id)))
	}
	sort.Strings(ps)
	return fmt.Sprintf("%s num_replicas=%d", strings.Join(ps, " "), v.Spec.NumReplicas)
}

func waitTCPClosed(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return nil
		}
		c.Close()
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s still accepts connections", addr)
}
