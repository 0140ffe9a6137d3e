package ecstripes

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/billyronks/couchestor/pkg/shardserver"
	"github.com/billyronks/couchestor/tests/testenv"
)

// writeAtomic replaces a file as the kubelet updates a Secret volume: the
// new content appears at once, never half-written.
func writeAtomic(t *testing.T, path string, b []byte) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// space asks GET /v1/space on a new connection with this CA and token.
func space(addr string, caPEM []byte, token string) (int, error) {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	req, _ := http.NewRequest(http.MethodGet, "https://"+addr+"/v1/space", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// TestShardServerReloadsRotatedCredentials: a running shard server (the real
// binary) takes a new serving certificate (from a new CA) and a new token
// from its files without a restart: new connections with the new CA and
// token are accepted, the old token is refused, the old CA no longer
// verifies, and the process is the same one throughout.
func TestShardServerReloadsRotatedCredentials(t *testing.T) {
	c := newCluster(t, 0)
	s := &server{pool: "pool-rot", node: "node-rot", dataDir: filepath.Join(c.dir, "pool-rot"), port: testenv.FreePort(t)}
	cmd := exec.Command(c.bin, "shard-server", "--data-dir", s.dataDir, "--pool", s.pool, "--node", s.node,
		"--listen", testenv.Addr(s.port), "--capacity-bytes", strconv.Itoa(1<<30),
		"--tls-cert-file", filepath.Join(c.dir, "tls.crt"), "--tls-key-file", filepath.Join(c.dir, "tls.key"),
		"--token-file", filepath.Join(c.dir, "token"), "--kubeconfig", c.kubeconfig, "--lease-duration", "6s",
		"--credentials-reload-interval", "200ms")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s.cmd = cmd
	c.servers = append(c.servers, s)
	pid := cmd.Process.Pid
	addr := testenv.Addr(s.port)

	eventuallyEC(t, "the server answers with the first credentials", func() error {
		if code, err := space(addr, c.certs.CAPEM, token); err != nil || code != http.StatusOK {
			return fmt.Errorf("HTTP %d, %v", code, err)
		}
		return nil
	})

	next, err := shardserver.NewCertificates([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	const newToken = "rotated-token"
	// Key first, then certificate: a reload between the two keeps the old pair.
	writeAtomic(t, filepath.Join(c.dir, "tls.key"), next.KeyPEM)
	writeAtomic(t, filepath.Join(c.dir, "tls.crt"), next.CertPEM)
	writeAtomic(t, filepath.Join(c.dir, "token"), []byte(newToken+"\n"))

	eventuallyEC(t, "new connections are accepted with the new CA and token", func() error {
		if code, err := space(addr, next.CAPEM, newToken); err != nil || code != http.StatusOK {
			return fmt.Errorf("HTTP %d, %v", code, err)
		}
		return nil
	})
	if code, err := space(addr, next.CAPEM, token); err != nil || code != http.StatusUnauthorized {
		t.Errorf("the old token after rotation: HTTP %d, %v; want 401", code, err)
	}
	if _, err := space(addr, c.certs.CAPEM, newToken); err == nil {
		t.Error("a client trusting only the old CA still verifies the server after rotation")
	}

	// Rotation window: both tokens listed, both accepted.
	writeAtomic(t, filepath.Join(c.dir, "token"), []byte(newToken+"\n"+token+"\n"))
	eventuallyEC(t, "both tokens are accepted while both are listed", func() error {
		if code, err := space(addr, next.CAPEM, token); err != nil || code != http.StatusOK {
			return fmt.Errorf("old token: HTTP %d, %v", code, err)
		}
		if code, err := space(addr, next.CAPEM, newToken); err != nil || code != http.StatusOK {
			return fmt.Errorf("new token: HTTP %d, %v", code, err)
		}
		return nil
	})
	// A broken file keeps the last good credentials.
	writeAtomic(t, filepath.Join(c.dir, "tls.crt"), []byte("not a certificate"))
	writeAtomic(t, filepath.Join(c.dir, "token"), nil)
	time.Sleep(time.Second) // five reload periods: the broken files have been read
	if code, err := space(addr, next.CAPEM, newToken); err != nil || code != http.StatusOK {
		t.Errorf("after unusable files the last good credentials must stay: HTTP %d, %v", code, err)
	}
	if s.cmd == nil || s.cmd.Process.Pid != pid || s.cmd.ProcessState != nil {
		t.Error("the shard server was restarted")
	}
}

func eventuallyEC(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		if err = cond(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: still failing after 60s: %v", what, err)
}
