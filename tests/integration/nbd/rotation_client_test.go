package nbd_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/pkg/shardserver"
	"github.com/billyronks/couchestor/tests/testenv"
)

// rotationProbe is GET /v1/space on a new connection with this CA and token.
func rotationProbe(addr string, caPEM []byte, token string) int {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	req, _ := http.NewRequest(http.MethodGet, "https://"+addr+"/v1/space", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := hc.Do(req)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func replaceFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path+".new", b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".new", path); err != nil {
		t.Fatal(err)
	}
}

// TestExportPicksUpRotatedShardCredentials rotates the shard servers' CA,
// certificate and token the documented way (servers accept both tokens and
// clients trust both CAs during the overlap, then the old ones go) while one
// export process keeps running. At the end the servers hold only the new
// credentials and have been restarted (so every connection is new): the same
// export still journals, destages and reads back every block. On the old
// code the export kept the credentials it read at start, and its journal
// appends and destages were refused (401) once the old token went.
func TestExportPicksUpRotatedShardCredentials(t *testing.T) {
	c := newECCluster(t, 3)
	ctx := context.Background()
	for i := range c.shardArgs { // the servers re-read their files often
		c.stopShard(i)
		c.shardArgs[i] = append(c.shardArgs[i], "--credentials-reload-interval", "200ms")
		c.startShard(i)
	}
	pol := &storagev1.ErasureCodingPolicy{ObjectMeta: metav1.ObjectMeta{Name: "rs-rot"}, Spec: storagev1.ErasureCodingPolicySpec{
		DataShards: ptr.To(int32(2)), ParityShards: ptr.To(int32(1)), StripeSizeBytes: ptr.To(int64(1 << 20)),
		Algorithm: storagev1.AlgorithmReedSolomon,
		JournalConfig: &storagev1.JournalConfig{JournalSizeBytes: ptr.To(int64(8 << 20)), ReplicationFactor: ptr.To(int32(3)),
			DestageThresholdPercent: ptr.To(int32(50)), DestageInterval: "1s"}}}
	if err := c.env.Client.Create(ctx, pol); err != nil {
		t.Fatal(err)
	}
	const vol, blocks = "ecv-rotation", 64 // 4 MiB of 64 KiB blocks
	if err := c.env.Client.Create(ctx, &storagev1.ECVolume{ObjectMeta: metav1.ObjectMeta{Name: vol},
		Spec: storagev1.ECVolumeSpec{SizeBytes: blocks * crashBlock, PolicyRef: pol.Name}}); err != nil {
		t.Fatal(err)
	}
	e := &fenceExport{addr: testenv.Addr(testenv.FreePort(t)), metricsAddr: testenv.Addr(testenv.FreePort(t)), out: &lockedBuffer{}, done: make(chan struct{})}
	e.cmd = exec.Command(c.bin, "ec-volume", "serve", "--volume", vol, "--listen", e.addr, "--metrics-bind-address", e.metricsAddr,
		"--cache-dir", filepath.Join(c.dir, "rot-cache"), "--cache-memory-bytes", strconv.Itoa(1<<20), "--cache-disk-bytes", strconv.Itoa(2<<20),
		"--shard-credentials-reload-interval", "200ms",
		"--kubeconfig", c.kubeconfig, "--shard-secret", registry.DefaultNamespace+"/"+registry.DefaultShardSecret)
	e.cmd.Stdout, e.cmd.Stderr = e.out, e.out
	if err := e.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { e.exitErr = e.cmd.Wait(); close(e.done) }()
	t.Cleanup(func() { _ = e.cmd.Process.Kill(); <-e.done })
	waitListening(t, e.addr)

	state := make([]blockState, blocks)
	var seq atomic.Uint64
	writeAll := func(when string) {
		t.Helper()
		w, err := dialWire(e.addr, vol)
		if err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		defer w.close()
		// Bounded: on the old code a refused journal append left the write
		// waiting for a quorum until the test binary's own timeout.
		_ = w.c.SetDeadline(time.Now().Add(120 * time.Second))
		for b := uint64(0); b < blocks; b++ {
			s := seq.Add(1)
			if err := w.write(b*crashBlock, blockContent(b, s)); err != nil {
				t.Fatalf("%s: write block %d: %v\nexport output:\n%s", when, b, err, e.out.String())
			}
			state[b].acked = s
		}
	}
	destaged := func(when string) {
		t.Helper()
		eventually(t, 120*time.Second, when+": the journal is destaged", func() bool {
			used, ok := e.metric("couchestor_ecvolume_journal_used_bytes")
			return ok && used == 0
		})
	}
	writeAll("before the rotation")
	destaged("before the rotation")

	// The rotation, step by step, as the README describes it.
	const oldToken, newToken = "nbd-e2e-token", "nbd-e2e-rotated"
	oldCA := ca(t, c)
	next, err := shardserver.NewCertificates([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	addrs := c.shardAddrs()
	setSecret := func(caPEM []byte, token string) {
		t.Helper()
		sec := &corev1.Secret{}
		if err := c.env.Client.Get(ctx, client.ObjectKey{Namespace: registry.DefaultNamespace, Name: registry.DefaultShardSecret}, sec); err != nil {
			t.Fatal(err)
		}
		sec.Data[registry.SecretKeyCA], sec.Data[registry.SecretKeyToken] = caPEM, []byte(token)
		if err := c.env.Client.Update(ctx, sec); err != nil {
			t.Fatal(err)
		}
	}
	servers := func(what string, caPEM []byte, token string, want int) {
		t.Helper()
		eventually(t, 60*time.Second, what, func() bool {
			for _, a := range addrs {
				if rotationProbe(a, caPEM, token) != want {
					return false
				}
			}
			return true
		})
	}
	// 1. Servers accept both tokens; clients trust both CAs.
	replaceFile(t, filepath.Join(c.dir, "token"), []byte(oldToken+"\n"+newToken+"\n"))
	setSecret(append(append([]byte{}, oldCA...), next.CAPEM...), oldToken)
	servers("the servers accept the new token", oldCA, newToken, http.StatusOK)
	// 2. Servers serve the new certificate; clients send the new token.
	replaceFile(t, filepath.Join(c.dir, "tls.key"), next.KeyPEM)
	replaceFile(t, filepath.Join(c.dir, "tls.crt"), next.CertPEM)
	setSecret(append(append([]byte{}, oldCA...), next.CAPEM...), newToken)
	servers("the servers serve the new certificate", next.CAPEM, newToken, http.StatusOK)
	writeAll("during the rotation")
	destaged("during the rotation")
	// 3. The old token and CA go.
	setSecret(next.CAPEM, newToken)
	replaceFile(t, filepath.Join(c.dir, "token"), []byte(newToken+"\n"))
	servers("the servers refuse the old token", next.CAPEM, oldToken, http.StatusUnauthorized)
	for i := range c.shards { // every connection the export opens from now on is new
		c.restartShard(i, 0)
	}
	// The export, never restarted, works on the new credentials alone.
	writeAll("after the rotation")
	destaged("after the rotation")
	verifyExport(t, e.addr, vol, state)
	select {
	case <-e.done:
		t.Fatalf("the export exited: %v\n%s", e.exitErr, e.out.String())
	default:
	}
}

// ca is the CA bundle in the shard-client Secret.
func ca(t *testing.T, c *ecCluster) []byte {
	t.Helper()
	sec := &corev1.Secret{}
	if err := c.env.Client.Get(context.Background(), client.ObjectKey{Namespace: registry.DefaultNamespace, Name: registry.DefaultShardSecret}, sec); err != nil {
		t.Fatal(err)
	}
	return sec.Data[registry.SecretKeyCA]
}

// shardAddrs are the shard servers' --listen addresses.
func (c *ecCluster) shardAddrs() []string {
	var out []string
	for _, args := range c.shardArgs {
		for i := 0; i+1 < len(args); i++ {
			if args[i] == "--listen" {
				out = append(out, args[i+1])
			}
		}
	}
	return out
}
