package main

// The erasure-coding half of the demo: shard servers as processes (one per
// cold DiskPool, as the DataPlane chart deploys them), an ECVolume exported
// over NBD by `couchestor ec-volume serve`, data written and destaged into
// ECStripes, one shard server killed, the operator rebuilding its shards
// elsewhere, and the data read back exactly.

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/rebuild"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/pkg/shardserver"
)

const (
	ecPolicyName = "demo-cold-4-2"
	ecVolumeName = "demo-ecv"
	ecVolumeSize = 64 << 20
	// ecDataBytes are written at offset 0: 8 stripes of 1 MiB.
	ecDataBytes = 8 << 20
	// shardSecret is the operator's default --shard-client-secret.
	shardSecret = registry.DefaultShardSecret
	// Operator settings that make the rebuild fit in a demo (production
	// defaults: 10m down-out delay, 100 MiB/s rebuild bandwidth).
	ecDownOutDelay    = 10 * time.Second
	ecRebuildBytesSec = 1 << 20
)

// shardServer is one `couchestor shard-server` process.
type shardServer struct {
	pool, node, addr string
	cmd              *exec.Cmd
}

// ecDemo holds what the erasure-coding part needs.
type ecDemo struct {
	c                    client.Client
	ps                   *procs
	bin, kubeconfig, dir string
	servers              []*shardServer
	serves               int
	lastServeLog         string
}

// startShardServers creates the shard servers' TLS material and the client
// Secret the operator and the data plane read, and starts one shard server
// per pool; it returns when all have registered their Lease.
func (e *ecDemo) startShardServers(ctx context.Context, pools, nodes []string) error {
	if err := e.c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: registry.DefaultNamespace}}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", registry.DefaultNamespace, err)
	}
	certs, err := shardserver.NewCertificates([]string{"127.0.0.1"}, 24*time.Hour)
	if err != nil {
		return fmt.Errorf("shard-server certificates: %w", err)
	}
	tok := make([]byte, 16)
	if _, err := rand.Read(tok); err != nil {
		return err
	}
	token := hex.EncodeToString(tok)
	if err := os.MkdirAll(e.dir, 0o700); err != nil {
		return err
	}
	for name, b := range map[string][]byte{"tls.crt": certs.CertPEM, "tls.key": certs.KeyPEM, "token": []byte(token)} {
		if err := os.WriteFile(filepath.Join(e.dir, name), b, 0o600); err != nil {
			return err
		}
	}
	if err := e.c.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: registry.DefaultNamespace, Name: shardSecret},
		Data: map[string][]byte{registry.SecretKeyCA: certs.CAPEM, registry.SecretKeyToken: []byte(token)}}); err != nil {
		return fmt.Errorf("create Secret %s/%s: %w", registry.DefaultNamespace, shardSecret, err)
	}
	for i, pool := range pools {
		addr, err := freeAddr()
		if err != nil {
			return err
		}
		s := &shardServer{pool: pool, node: nodes[i], addr: addr}
		s.cmd, err = e.ps.start("shard server "+pool, filepath.Join(e.dir, "shard-server-"+pool+".log"), e.bin, "shard-server",
			"--data-dir", filepath.Join(e.dir, "pools", pool), "--pool", pool, "--node", s.node, "--listen", addr,
			"--capacity-bytes", strconv.Itoa(1<<30),
			"--tls-cert-file", filepath.Join(e.dir, "tls.crt"), "--tls-key-file", filepath.Join(e.dir, "tls.key"),
			"--token-file", filepath.Join(e.dir, "token"), "--kubeconfig", e.kubeconfig, "--lease-duration", "6s")
		if err != nil {
			return err
		}
		e.servers = append(e.servers, s)
	}
	lookup := &registry.Lookup{Client: e.c}
	return poll(ctx, 90*time.Second, fmt.Sprintf("%d shard servers registered", len(pools)), func() error {
		list, err := lookup.Servers(ctx)
		if err != nil {
			return err
		}
		if len(list) != len(pools) {
			return fmt.Errorf("%d of %d registered (logs: %s)", len(list), len(pools), e.dir)
		}
		return nil
	})
}

// run is the erasure-coding scenario; a nil error means the data came back
// exactly after a shard server was lost and its shards were rebuilt.
func (e *ecDemo) run(ctx context.Context) error {
	ecSay("creating ECVolume %s (%d MiB) under ErasureCodingPolicy %s (4+2 Reed-Solomon, 1 MiB stripes)", ecVolumeName, ecVolumeSize>>20, ecPolicyName)
	if err := e.c.Create(ctx, &storagev1.ECVolume{ObjectMeta: metav1.ObjectMeta{Name: ecVolumeName},
		Spec: storagev1.ECVolumeSpec{SizeBytes: ecVolumeSize, PolicyRef: ecPolicyName}}); err != nil {
		return fmt.Errorf("create ECVolume %s: %w", ecVolumeName, err)
	}

	// Known data: a seeded pseudo-random pattern, so a wrong byte anywhere shows.
	data := make([]byte, ecDataBytes)
	rng := mrand.NewChaCha8([32]byte{'c', 'o', 'u', 'c', 'h', 'e'})
	_, _ = rng.Read(data)
	want := sha256.Sum256(data)

	addr, stop, err := e.serve(ctx)
	if err != nil {
		return err
	}
	t0 := time.Now()
	if err := e.nbdWrite(ctx, addr, data); err != nil {
		stop()
		return err
	}
	ecSay("wrote %d MiB through NBD (nbd://%s/%s) in %.1fs, sha256 %s…", ecDataBytes>>20, addr, ecVolumeName, time.Since(t0).Seconds(), hex.EncodeToString(want[:])[:16])

	// The journal destages into full stripes (destageInterval 1s).
	nStripes := ecDataBytes / (1 << 20)
	last := -1
	err = poll(ctx, 3*time.Minute, fmt.Sprintf("%d ECStripes written and Healthy", nStripes), func() error {
		list, err := e.stripes(ctx)
		if err != nil {
			return err
		}
		healthy := 0
		for _, s := range list {
			if s.Status.State == storagev1.StripeHealthy {
				healthy++
			}
		}
		if healthy != last {
			ecSay("destaging the journal: %d of %d ECStripes Healthy", healthy, nStripes)
			last = healthy
		}
		if healthy < nStripes {
			return fmt.Errorf("%d of %d Healthy", healthy, nStripes)
		}
		return nil
	})
	// A clean stop: later reads go through a new export with a cold cache,
	// so they come from the shards, not from this process's memory.
	stop()
	if err != nil {
		return err
	}
	list, err := e.stripes(ctx)
	if err != nil {
		return err
	}
	e.printTables(ctx, list)

	// The victim: the shard server holding the most shards.
	count := map[string]int{}
	for _, s := range list {
		for _, l := range s.Spec.ShardLocations {
			count[l.PoolName]++
		}
	}
	var victim *shardServer
	for _, s := range e.servers {
		if victim == nil || count[s.pool] > count[victim.pool] {
			victim = s
		}
	}
	gen0 := map[string]int64{}
	for _, s := range list {
		gen0[s.Name] = s.Spec.Generation
	}
	ecSay("SIGKILL the shard server of pool %s on %s (it holds %d of the %d shards); down-out delay %s, rebuild bandwidth %d MiB/s",
		victim.pool, victim.node, count[victim.pool], 6*len(list), ecDownOutDelay, ecRebuildBytesSec>>20)
	_ = victim.cmd.Process.Kill()
	_ = victim.cmd.Wait()
	ecSay("(for %s its shards still count as healthy: a restart within the down-out delay costs no rebuild)", ecDownOutDelay)

	// A degraded read while the operator waits out the delay: the stripes
	// are decoded around the missing shards.
	t0 = time.Now()
	if err := e.readBack(ctx, want, "degraded (one shard server down)"); err != nil {
		return err
	}
	ecSay("(degraded read took %.1fs)", time.Since(t0).Seconds())

	// Watch the stripes: Degraded → Rebuilding → Healthy, shards off the victim.
	lastLine, seen := "", map[storagev1.ECStripeState]bool{}
	t0 = time.Now()
	err = poll(ctx, ecDownOutDelay+4*time.Minute, "every stripe rebuilt off pool "+victim.pool, func() error {
		list, err := e.stripes(ctx)
		if err != nil {
			return err
		}
		line, done := stripeLine(list, victim.pool, gen0)
		for _, s := range list {
			seen[s.Status.State] = true
		}
		if line != lastLine {
			ecSay("%s", line)
			lastLine = line
		}
		if !done {
			return errors.New(line)
		}
		return nil
	})
	if err != nil {
		return err
	}
	ecSay("rebuilt in %.0fs after the kill (states seen: %s)", time.Since(t0).Seconds(), statesSeen(seen))
	if list, err = e.stripes(ctx); err == nil {
		e.printTables(ctx, list)
	}
	return e.readBack(ctx, want, "after the rebuild")
}

// serve starts `couchestor ec-volume serve` and waits until it accepts NBD.
func (e *ecDemo) serve(ctx context.Context) (addr string, stop func(), err error) {
	addr, err = freeAddr()
	if err != nil {
		return "", nil, err
	}
	e.serves++
	n := strconv.Itoa(e.serves)
	logPath := filepath.Join(e.dir, "ec-volume-serve-"+n+".log")
	e.lastServeLog = logPath
	// The journal replicas live on three of the shard servers (recorded on
	// the ECVolume); a killed one is replaced when the export reopens.
	cmd, err := e.ps.start("ec-volume serve", logPath, e.bin, "ec-volume", "serve", "--volume", ecVolumeName, "--listen", addr,
		"--cache-dir", filepath.Join(e.dir, "cache-"+n),
		"--cache-memory-bytes", strconv.Itoa(16<<20), "--cache-disk-bytes", strconv.Itoa(32<<20),
		"--kubeconfig", e.kubeconfig, "--shard-secret", registry.DefaultNamespace+"/"+shardSecret)
	if err != nil {
		return "", nil, err
	}
	stop = func() { stopProcess(cmd, 30*time.Second) }
	err = poll(ctx, 60*time.Second, "ec-volume serve listening on "+addr, func() error {
		if cmd.ProcessState != nil {
			return errors.New("exited")
		}
		c, err := dialNBD(ctx, addr, ecVolumeName)
		if err != nil {
			return err
		}
		return c.Close()
	})
	if err != nil {
		stop()
		tail(logPath)
		return "", nil, err
	}
	return addr, stop, nil
}

func (e *ecDemo) nbdWrite(ctx context.Context, addr string, data []byte) error {
	wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	c, err := dialNBD(wctx, addr, ecVolumeName)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.WriteAt(wctx, data, 0); err != nil {
		return err
	}
	return c.Flush(wctx)
}

// readBack reads the data through a fresh export and compares checksums.
func (e *ecDemo) readBack(ctx context.Context, want [32]byte, when string) error {
	addr, stop, err := e.serve(ctx)
	if err != nil {
		return err
	}
	defer stop()
	rctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	c, err := dialNBD(rctx, addr, ecVolumeName)
	if err != nil {
		return err
	}
	defer c.Close()
	got := make([]byte, ecDataBytes)
	if err := c.ReadAt(rctx, got, 0); err != nil {
		return fmt.Errorf("read back %s: %w", when, err)
	}
	sum := sha256.Sum256(got)
	if sum != want {
		return fmt.Errorf("read back %s: sha256 %s, want %s: the data differs", when, hex.EncodeToString(sum[:]), hex.EncodeToString(want[:]))
	}
	ecSay("read %d MiB back through NBD %s: sha256 %s… matches", ecDataBytes>>20, when, hex.EncodeToString(sum[:])[:16])
	return nil
}

func (e *ecDemo) stripes(ctx context.Context) ([]storagev1.ECStripe, error) {
	var list storagev1.ECStripeList
	if err := e.c.List(ctx, &list, client.MatchingFields{storagev1.ECStripeVolumeRefField: ecVolumeName}); err != nil {
		return nil, err
	}
	sort.Slice(list.Items, func(i, j int) bool { return list.Items[i].Spec.StripeID < list.Items[j].Spec.StripeID })
	return list.Items, nil
}

// printTables prints `kubectl get ecv,ecs -o wide` style lines.
func (e *ecDemo) printTables(ctx context.Context, list []storagev1.ECStripe) {
	var b strings.Builder
	v := &storagev1.ECVolume{}
	if err := e.c.Get(ctx, client.ObjectKey{Name: ecVolumeName}, v); err == nil {
		fmt.Fprintf(&b, "    %-22s %-9s %-14s %-6s %-8s %s\n", "NAME", "SIZE", "POLICY", "PHASE", "STRIPES", "WRITTEN")
		fmt.Fprintf(&b, "    %-22s %-9d %-14s %-6s %-8d %d\n", "ecvolume/"+v.Name, v.Spec.SizeBytes, v.Spec.PolicyRef, v.Status.Phase, v.Status.Stripes, v.Status.BytesWritten)
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "    %-22s %-9s %-6s %-10s %-7s %-9s %-7s %-4s %s\n", "NAME", "VOLUME", "STRIPE", "STATE", "HEALTHY", "START LBA", "END LBA", "GEN", "POOLS (shard 0..5)")
	for _, s := range list {
		var pools []string
		for _, l := range s.Spec.ShardLocations {
			pools = append(pools, strings.TrimSuffix(l.PoolName, "-cold"))
		}
		fmt.Fprintf(&b, "    %-22s %-9s %-6d %-10s %-7d %-9d %-7d %-4d %s\n", "ecstripe/"+s.Name, s.Spec.VolumeRef, s.Spec.StripeID, s.Status.State,
			s.Status.HealthyShards, s.Spec.LbaRange.StartLba, s.Spec.LbaRange.EndLba, s.Spec.Generation, strings.Join(pools, ","))
	}
	fmt.Print(b.String())
}

// stripeLine is one live line: state counts, then per stripe its state
// initial, healthy shards and rebuild progress. done is true when every
// stripe is Healthy with all shards healthy, none on the lost pool, no
// rebuild intent left, and every stripe that had a shard there moved on to a
// new generation.
func stripeLine(list []storagev1.ECStripe, lost string, gen0 map[string]int64) (string, bool) {
	counts := map[storagev1.ECStripeState]int{}
	var cells []string
	done := len(list) > 0
	for _, s := range list {
		st := s.Status.State
		if st == "" {
			st = storagev1.StripeWriting
		}
		counts[st]++
		cell := fmt.Sprintf("%s%d", string(st)[:1], s.Status.HealthyShards)
		if s.Status.RebuildProgress != nil {
			cell += fmt.Sprintf("·%d%%", *s.Status.RebuildProgress)
		}
		cells = append(cells, cell)
		if st != storagev1.StripeHealthy || int(s.Status.HealthyShards) != len(s.Spec.ShardLocations) || s.Annotations[rebuild.AnnotationIntent] != "" {
			done = false
		}
		for _, l := range s.Spec.ShardLocations {
			if l.PoolName == lost {
				done = false
			}
		}
	}
	var parts []string
	for _, st := range []storagev1.ECStripeState{storagev1.StripeHealthy, storagev1.StripeDegraded, storagev1.StripeRebuilding, storagev1.StripeFailed, storagev1.StripeWriting} {
		if counts[st] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", st, counts[st]))
		}
	}
	return fmt.Sprintf("ecs: %-34s | per stripe (state, healthy shards, rebuild %%): %s", strings.Join(parts, ", "), strings.Join(cells, " ")), done
}

func statesSeen(seen map[storagev1.ECStripeState]bool) string {
	var out []string
	for _, st := range []storagev1.ECStripeState{storagev1.StripeHealthy, storagev1.StripeDegraded, storagev1.StripeRebuilding, storagev1.StripeFailed} {
		if seen[st] {
			out = append(out, string(st))
		}
	}
	return strings.Join(out, ", ")
}

// stopProcess ends cmd with SIGTERM (SIGKILL after grace) and waits.
func stopProcess(cmd *exec.Cmd, grace time.Duration) {
	if cmd.ProcessState != nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		_ = cmd.Process.Kill()
		<-done
	}
}

// poll calls cond every 250ms until it returns nil, ctx ends or bound passes.
func poll(ctx context.Context, bound time.Duration, what string, cond func() error) error {
	deadline := time.Now().Add(bound)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w", what, ctx.Err())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not true within %s: %v", what, bound, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func ecSay(format string, args ...any) {
	fmt.Printf("[%5.0fs] ec  "+format+"\n", append([]any{since()}, args...)...)
}
