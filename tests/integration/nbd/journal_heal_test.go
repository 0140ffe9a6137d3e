package nbd_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/tests/testenv"
)

// healExport is `couchestor ec-volume serve` (the real binary) over an
// ecCluster, with its journal's three replicas on shard servers.
type healExport struct {
	c       *ecCluster
	volume  string
	addr    string // NBD
	metrics string // /metrics URL
	cmd     *exec.Cmd
	exited  chan struct{}
}

// newHealExport creates an RS 2+1 policy with a 3-replica journal of 256
// MiB (room for the writes of a test while a shard server is away), a
// 32 MiB ECVolume, and starts its export.
func newHealExport(t *testing.T, c *ecCluster, volume string) *healExport {
	t.Helper()
	ctx := context.Background()
	pol := &storagev1.ErasureCodingPolicy{ObjectMeta: metav1.ObjectMeta{Name: "rs-heal"}, Spec: storagev1.ErasureCodingPolicySpec{
		DataShards: ptr.To(int32(2)), ParityShards: ptr.To(int32(1)), StripeSizeBytes: ptr.To(int64(1 << 20)),
		Algorithm: storagev1.ECAlgorithm("ReedSolomon"), MinHealthyShards: ptr.To(int32(2)),
		JournalConfig: &storagev1.JournalConfig{JournalSizeBytes: ptr.To(int64(256 << 20)), ReplicationFactor: ptr.To(int32(3)),
			DestageThresholdPercent: ptr.To(int32(50)), DestageInterval: "2s"}}}
	if err := c.env.Client.Create(ctx, pol); err != nil {
		t.Fatal(err)
	}
	if err := c.env.Client.Create(ctx, &storagev1.ECVolume{ObjectMeta: metav1.ObjectMeta{Name: volume},
		Spec: storagev1.ECVolumeSpec{SizeBytes: crashBlocks * crashBlock, PolicyRef: "rs-heal"}}); err != nil {
		t.Fatal(err)
	}
	e := &healExport{c: c, volume: volume}
	e.start(t)
	return e
}

func (e *healExport) start(t *testing.T) {
	t.Helper()
	nbdPort, metricsPort := testenv.FreePort(t), testenv.FreePort(t)
	e.addr, e.metrics = testenv.Addr(nbdPort), "http://"+testenv.Addr(metricsPort)+"/metrics"
	e.cmd = exec.Command(e.c.bin, "ec-volume", "serve", "--volume", e.volume, "--listen", e.addr,
		"--metrics-bind-address", testenv.Addr(metricsPort), "--cache-dir", filepath.Join(e.c.dir, "cache-"+e.volume),
		"--cache-memory-bytes", strconv.Itoa(8<<20), "--cache-disk-bytes", strconv.Itoa(16<<20),
		"--kubeconfig", e.c.kubeconfig, "--shard-secret", registry.DefaultNamespace+"/"+registry.DefaultShardSecret)
	e.cmd.Stdout, e.cmd.Stderr = os.Stderr, os.Stderr
	if err := e.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	e.exited = make(chan struct{})
	cmd, exited := e.cmd, e.exited
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() { e.stop(t) })
	waitListening(t, e.addr)
}

// stop ends the export with SIGTERM.
func (e *healExport) stop(t *testing.T) {
	select {
	case <-e.exited:
		return
	default:
	}
	_ = e.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-e.exited:
	case <-time.After(60 * time.Second):
		_ = e.cmd.Process.Kill()
		<-e.exited
		t.Errorf("ec-volume serve ignored SIGTERM for 60s")
	}
}

func (e *healExport) metric(name string) (float64, bool) {
	resp, err := http.Get(e.metrics)
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if line := sc.Text(); strings.HasPrefix(line, name+"{") || strings.HasPrefix(line, name+" ") {
			f := strings.Fields(line)
			v, err := strconv.ParseFloat(f[len(f)-1], 64)
			return v, err == nil
		}
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	return 0, false
}

func (e *healExport) condition(typ string) *metav1.Condition {
	cur := &storagev1.ECVolume{}
	if err := e.c.env.Client.Get(context.Background(), client.ObjectKey{Name: e.volume}, cur); err != nil {
		return nil
	}
	return meta.FindStatusCondition(cur.Status.Conditions, typ)
}

func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting until %s", limit, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// writeLoop writes random 64 KiB blocks from several NBD connections until
// stopped, recording every acknowledgement in state (one write in flight
// per block) and the latency of each write. A write that fails stops its
// connection and is reported by stop.
type writeLoop struct {
	mu        sync.Mutex
	latencies []time.Duration
	acks      []time.Time
	errs      []error
	quit      chan struct{}
	wg        sync.WaitGroup
}

func startWriteLoop(t *testing.T, addr, export string, state []blockState, seq *atomic.Uint64, workers int, pause time.Duration) *writeLoop {
	t.Helper()
	l := &writeLoop{quit: make(chan struct{})}
	for w := 0; w < workers; w++ {
		c, err := dialWire(addr, export)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			defer c.close()
			rng := rand.New(rand.NewPCG(uint64(w), seq.Load()))
			for {
				select {
				case <-l.quit:
					return
				case <-time.After(pause):
				}
				b := uint64(rng.IntN(crashBlocks/workers)*workers + w)
				s := seq.Add(1)
				state[b].inflight = s
				start := time.Now()
				err := c.write(b*crashBlock, blockContent(b, s))
				l.mu.Lock()
				if err != nil {
					l.errs = append(l.errs, fmt.Errorf("write of block %d (seq %d) after %v: %w", b, s, time.Since(start), err))
					l.mu.Unlock()
					return
				}
				now := time.Now()
				l.latencies = append(l.latencies, now.Sub(start))
				l.acks = append(l.acks, now)
				l.mu.Unlock()
				state[b].acked, state[b].inflight = s, 0
			}
		}()
	}
	return l
}

// acked is the number of acknowledged writes so far.
func (l *writeLoop) acked() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.acks)
}

// stop ends the loop and fails the test on any failed write.
func (l *writeLoop) stop(t *testing.T) {
	t.Helper()
	close(l.quit)
	l.wg.Wait()
	for _, err := range l.errs {
		t.Errorf("%v", err)
	}
	if len(l.errs) > 0 {
		t.FailNow()
	}
}

// maxGap is the longest time between two consecutive acknowledgements in [from, to].
func (l *writeLoop) maxGap(from, to time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	acks := slices.Clone(l.acks)
	slices.SortFunc(acks, func(a, b time.Time) int { return a.Compare(b) })
	prev, gap := from, time.Duration(0)
	for _, a := range acks {
		if a.Before(from) || a.After(to) {
			continue
		}
		gap, prev = max(gap, a.Sub(prev)), a
	}
	return max(gap, to.Sub(prev))
}

// p99 is the 99th percentile of the latencies of writes from index i on.
func (l *writeLoop) p99(from int) (time.Duration, int) {
	l.mu.Lock()
	lat := slices.Clone(l.latencies[from:])
	l.mu.Unlock()
	if len(lat) == 0 {
		return 0, 0
	}
	slices.Sort(lat)
	return lat[(len(lat)*99)/100], len(lat)
}

// waitReplicasEqual waits until the three journal replicas hold the same
// last seq (none is behind) while no write is in flight.
func waitReplicasEqual(t *testing.T, c *ecCluster, volume string, pools []string) {
	t.Helper()
	waitFor(t, 60*time.Second, "every journal replica holds the same last record", func() bool {
		infos := replicaInfos(t, c, volume, pools)
		for _, in := range infos {
			if in.LastSeq != infos[0].LastSeq || in.Epoch != infos[0].Epoch {
				return false
			}
		}
		return true
	})
}

// TestJournalHealsAfterRollingRestarts restarts the shard servers of two
// journal replicas one after the other (SIGTERM, 3 s down, start,
// registered: what a rolling chart upgrade does) while four NBD connections
// write to the
// export. Writes go on or resume within seconds, never fail; each returning
// replica is caught up and re-admitted (the JournalQuorum condition and the
// in-sync gauge come back to all three); every acknowledged write reads
// back, also through a restarted export. The old code left a restarted
// replica out until the export restarted, so the second restart lost the
// quorum for good: every later write failed.
func TestJournalHealsAfterRollingRestarts(t *testing.T) {
	c := newECCluster(t, 4)
	const volume = "ecv-rolling"
	e := newHealExport(t, c, volume)
	pools, _ := journalPools(t, c, volume)
	state := make([]blockState, crashBlocks)
	var seq atomic.Uint64
	loop := startWriteLoop(t, e.addr, volume, state, &seq, 4, 5*time.Millisecond)
	waitFor(t, 60*time.Second, "50 writes acknowledged", func() bool { return loop.acked() >= 50 })
	start := time.Now()
	for _, p := range pools[:2] {
		i, _ := strconv.Atoi(strings.TrimPrefix(p, "pool-"))
		before := loop.acked()
		c.restartShard(i, 3*time.Second)
		t.Logf("restarted the shard server of %s (journal replica); %d writes acknowledged meanwhile", p, loop.acked()-before)
	}
	restarted := time.Now()
	n := loop.acked()
	waitFor(t, 60*time.Second, "writes acknowledged after both restarts", func() bool { return loop.acked() >= n+50 })
	waitFor(t, 60*time.Second, "all three journal replicas back in sync", func() bool {
		v, ok := e.metric("couchestor_ecvolume_journal_healthy_replicas")
		return ok && v == 3
	})
	loop.stop(t)
	end := time.Now()
	gap := loop.maxGap(start, end)
	waits, _ := e.metric("couchestor_ecvolume_journal_quorum_waits_total")
	t.Logf("restarts took %v; %d writes acknowledged; longest pause between acknowledgements %v; %v batches waited for a quorum",
		restarted.Sub(start).Round(time.Millisecond), loop.acked(), gap.Round(time.Millisecond), waits)
	if gap > 15*time.Second {
		t.Errorf("writes paused for %v during the rolling restarts, want them to resume within seconds", gap)
	}
	waitFor(t, 30*time.Second, "JournalQuorum=True/InSync on the ECVolume", func() bool {
		q := e.condition("JournalQuorum")
		return q != nil && q.Status == metav1.ConditionTrue && q.Reason == "InSync"
	})
	waitReplicasEqual(t, c, volume, pools)
	verifyExport(t, e.addr, volume, state)
	// Replay: a fresh export reads every acknowledged write back.
	e.stop(t)
	e.start(t)
	verifyExport(t, e.addr, volume, state)
}

// TestHungReplicaDoesNotStallWrites SIGSTOPs the shard server of one
// journal replica for 10 s while NBD connections write: writes are
// acknowledged by the other two replicas, p99 write latency stays under
// 2 s; after SIGCONT the replica catches up (all three replicas hold the
// same log) and every acknowledged write reads back. The old code waited
// for every replica on every write: the first write after SIGSTOP hung for
// the shard client's timeouts (minutes).
func TestHungReplicaDoesNotStallWrites(t *testing.T) {
	c := newECCluster(t, 4)
	const volume = "ecv-hung"
	e := newHealExport(t, c, volume)
	pools, _ := journalPools(t, c, volume)
	state := make([]blockState, crashBlocks)
	var seq atomic.Uint64
	loop := startWriteLoop(t, e.addr, volume, state, &seq, 4, 10*time.Millisecond)
	waitFor(t, 60*time.Second, "50 writes acknowledged", func() bool { return loop.acked() >= 50 })
	victim, _ := strconv.Atoi(strings.TrimPrefix(pools[1], "pool-"))
	proc := c.shards[victim].Process
	if err := proc.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := loop.acked()
	t.Cleanup(func() { _ = proc.Signal(syscall.SIGCONT) })
	time.Sleep(10 * time.Second) // the measured window: writes go on meanwhile
	p99, n := loop.p99(stopped)
	if err := proc.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	t.Logf("with the shard server of %s stopped for 10s: %d writes acknowledged, p99 latency %v", pools[1], n, p99.Round(time.Millisecond))
	if n < 20 {
		t.Errorf("only %d writes acknowledged in the 10 s the replica hung", n)
	}
	if p99 > 2*time.Second {
		t.Errorf("p99 write latency %v with one replica hung, want < 2s", p99)
	}
	waitFor(t, 90*time.Second, "all three journal replicas in sync after SIGCONT", func() bool {
		v, ok := e.metric("couchestor_ecvolume_journal_healthy_replicas")
		return ok && v == 3
	})
	loop.stop(t)
	waitReplicasEqual(t, c, volume, pools)
	verifyExport(t, e.addr, volume, state)
}
