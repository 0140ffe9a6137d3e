package cluster

import (
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// ioRegion is one region the writer of testDataPlaneChangeRollsShardServers
// wrote: offset and the byte pattern it holds.
type ioRegion struct {
	off     int64
	pattern byte
}

const (
	rollRegionBytes = 256 << 10
	// Regions lie above the image of the ECVolume steps (6 MiB + 4 KiB).
	rollFirstRegion = 8 << 20
	rollRegions     = 64
)

// qemuIO runs qemu-io commands against uri; every command must report its
// full length done (qemu-io's exit status does not say when a command failed).
func qemuIO(uri string, cmds ...string) (string, error) {
	args := []string{"-f", "raw"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	args = append(args, uri)
	out, err := exec.Command("qemu-io", args...).CombinedOutput()
	s := string(out)
	if err != nil {
		return s, err
	}
	want := fmt.Sprintf("%d/%d bytes", rollRegionBytes, rollRegionBytes)
	if strings.Count(s, want) != len(cmds) || strings.Contains(s, "failed") {
		return s, fmt.Errorf("qemu-io %q: not every command completed", cmds)
	}
	return s, nil
}

// testDataPlaneChangeRollsShardServers changes the DataPlane (a new memory
// limit): the shard-server StatefulSets are OnDelete, so the operator
// restarts the pod (Event ShardServerRestart, condition
// ShardServersUpToDate) only while every other shard server is Ready and
// registered and the ECVolume's journal keeps its quorum. Throughout, an
// export keeps writing and reading the volume, and no more than one
// shard-server pod is ever down; afterwards every region written reads back
// exactly through a fresh export, and so does the image.
func testDataPlaneChangeRollsShardServers(t *testing.T) {
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(diagnoseNS(t, dpns), diagnose(t))
			out, _ := kubectl(t, "", "-n", dpns, "logs", "-l", "app=ecv-export", "--tail=60", "--prefix")
			t.Log(out)
		}
	})
	sts := "cold-" + node
	if got := strings.TrimSpace(mustKubectl(t, "", "-n", dpns, "get", "statefulset", sts, "-o", "jsonpath={.spec.updateStrategy.type}")); got != "OnDelete" {
		t.Fatalf("StatefulSet %s updateStrategy %q, want OnDelete (the operator rolls the shard servers)", sts, got)
	}
	allShards := "app.kubernetes.io/component=shard-server"
	readyPods := func() (map[string]string, error) {
		out, err := kubectl(t, "", "-n", dpns, "get", "pods", "-l", allShards,
			"-o", `jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status}/{.metadata.deletionTimestamp}{"\n"}{end}`)
		if err != nil {
			return nil, fmt.Errorf("%v: %s", err, out)
		}
		m := map[string]string{}
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			if n, st, ok := strings.Cut(l, "="); ok {
				m[n] = st
			}
		}
		return m, nil
	}
	initial, err := readyPods()
	if err != nil {
		t.Fatal(err)
	}
	servers := 0
	for n, st := range initial {
		if st != "True/" {
			t.Fatalf("shard-server pod %s is not Ready before the change: %v", n, initial)
		}
		servers++
	}
	oldUID := strings.TrimSpace(mustKubectl(t, "", "-n", dpns, "get", "pod", sts+"-0", "-o", "jsonpath={.metadata.uid}"))

	uri := startExport(t, "ecv-export-5")
	var (
		mu       sync.Mutex
		written  []ioRegion
		ioErr    error
		maxDown  int
		downSeen []string
		ops      int
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	// The writer: each round writes a new region and reads it back.
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			r := ioRegion{off: rollFirstRegion + int64(i%rollRegions)*rollRegionBytes, pattern: byte(0x11 + i%200)}
			if out, err := qemuIO(uri, fmt.Sprintf("write -P %d %d %d", r.pattern, r.off, rollRegionBytes),
				fmt.Sprintf("read -P %d %d %d", r.pattern, r.off, rollRegionBytes)); err != nil {
				mu.Lock()
				ioErr = fmt.Errorf("round %d: %v\n%s", i, err, out)
				mu.Unlock()
				return
			}
			mu.Lock()
			written = append(written, r)
			ops++
			mu.Unlock()
		}
	}()
	// The watcher: how many shard-server pods are not serving at once.
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(300 * time.Millisecond):
			}
			m, err := readyPods()
			if err != nil {
				continue
			}
			down := 0
			var who []string
			for n := range initial {
				if m[n] != "True/" {
					down++
					who = append(who, n+"="+m[n])
				}
			}
			mu.Lock()
			if down > maxDown {
				maxDown, downSeen = down, who
			}
			mu.Unlock()
		}
	}()
	stopIO := func() {
		select {
		case <-stop:
		default:
			close(stop)
			wg.Wait()
		}
	}
	defer stopIO()
	eventually(t, "the writer completes rounds before the change", 2*time.Minute, func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		return ops >= 2 || ioErr != nil, fmt.Sprintf("%d rounds", ops)
	})

	start := time.Now()
	mustKubectl(t, "", "-n", dpns, "patch", "dataplane", "cold", "--type=merge", "-p", `{"spec":{"resources":{"limits":{"memory":"320Mi"}}}}`)
	eventually(t, "the operator restarts the shard-server pod into the new revision and reports it up to date", podsBound, func() (bool, string) {
		mu.Lock()
		e := ioErr
		mu.Unlock()
		if e != nil {
			return true, "" // reported below
		}
		get := func(args ...string) string {
			out, err := kubectl(t, "", append([]string{"-n", dpns, "get"}, args...)...)
			if err != nil {
				return "error: " + out
			}
			return strings.TrimSpace(out)
		}
		uid := get("pod", sts+"-0", "--ignore-not-found", "-o", "jsonpath={.metadata.uid}")
		cond := get("dataplane", "cold", "-o", `jsonpath={.status.conditions[?(@.type=="ShardServersUpToDate")].status}/{.status.conditions[?(@.type=="ShardServersUpToDate")].message}`)
		lim := get("pod", sts+"-0", "--ignore-not-found", "-o", "jsonpath={.spec.containers[0].resources.limits.memory}")
		m, _ := readyPods()
		ready := 0
		for n := range initial {
			if m[n] == "True/" {
				ready++
			}
		}
		return uid != "" && uid != oldUID && strings.HasPrefix(cond, "True/") && lim == "320Mi" && ready == servers,
			fmt.Sprintf("uid %s (old %s), condition %s, limit %s, pods %v", uid, oldUID, cond, lim, m)
	})
	rolled := time.Since(start)
	// A few more rounds after the restart: the export goes on writing.
	mu.Lock()
	after := ops
	mu.Unlock()
	eventually(t, "the writer completes rounds after the rollout", 2*time.Minute, func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		return ops >= after+2 || ioErr != nil, fmt.Sprintf("%d rounds", ops)
	})
	stopIO()
	mu.Lock()
	defer mu.Unlock()
	if ioErr != nil {
		t.Fatalf("the export stopped writing or reading while the shard servers rolled: %v", ioErr)
	}
	if maxDown > 1 {
		t.Errorf("%d shard-server pods were down at once (%v), want at most 1", maxDown, downSeen)
	}
	evs := mustKubectl(t, "", "-n", dpns, "get", "events", "--field-selector", "involvedObject.kind=DataPlane,involvedObject.name=cold", "-o", "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}")
	if !strings.Contains(evs, "ShardServerRestart: ") || !strings.Contains(evs, "restarting pod "+sts+"-0 ") {
		t.Errorf("no ShardServerRestart Event for pod %s-0 on the DataPlane:\n%s", sts, evs)
	}
	t.Logf("DataPlane change → shard server %s-0 restarted by the operator and the DataPlane up to date in %s; the export completed %d write+read rounds of %d KiB (before, during and after the restart), none failed; at most %d of %d shard-server pods down at once (%v)",
		sts, rolled.Round(time.Second), ops, rollRegionBytes>>10, maxDown, servers, downSeen)
	stopExport(t, "ecv-export-5")

	// Every region reads back with its last pattern through a cold export.
	last := map[int64]byte{}
	for _, r := range written {
		last[r.off] = r.pattern
	}
	uri = startExport(t, "ecv-export-6")
	var cmds []string
	for off, p := range last {
		cmds = append(cmds, fmt.Sprintf("read -P %d %d %d", p, off, rollRegionBytes))
	}
	if out, err := qemuIO(uri, cmds...); err != nil {
		t.Fatalf("the regions written during the rollout do not read back: %v\n%s", err, out)
	}
	stopExport(t, "ecv-export-6")
	readBack(t, "ecv-export-7")
}
