package shardserver

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"
)

// ReadTokenFile reads the bearer tokens a server accepts: one per line
// (blank lines ignored), so a rotation can list the old and the new token
// until every client has the new one.
func ReadTokenFile(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("token file: %w", err)
	}
	var toks []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			toks = append(toks, l)
		}
	}
	if len(toks) == 0 {
		return nil, fmt.Errorf("token file %s is empty", path)
	}
	return toks, nil
}

// CredentialReloader keeps a server's serving certificate and bearer tokens
// equal to their files, so rotating them (a Secret update the kubelet
// projects into the pod, or a file rewritten in place) needs no restart.
// Files are re-read every Interval; a change applies to every TLS handshake
// and request after it is read. A file that cannot be read or parsed keeps
// the last good credentials and is reported through OnError: a half-written
// rotation never takes a server down.
type CredentialReloader struct {
	CertFile, KeyFile, TokenFile string
	Server                       *Server
	Interval                     time.Duration
	OnError                      func(error)

	mu       sync.RWMutex
	cert     *tls.Certificate
	certRaw  []byte // cert file + key file as last loaded
	tokenRaw []byte
}

// Load reads the files once; it fails when any is unusable (start-up).
func (c *CredentialReloader) Load() error {
	if _, err := c.reloadCert(); err != nil {
		return err
	}
	if _, err := c.reloadTokens(); err != nil {
		return err
	}
	return nil
}

// GetCertificate is the tls.Config hook: the newest loaded certificate.
func (c *CredentialReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.cert == nil {
		return nil, errors.New("shard server: no serving certificate loaded")
	}
	return c.cert, nil
}

// TLSConfig is the server's TLS configuration over the reloaded certificate.
func (c *CredentialReloader) TLSConfig() *tls.Config {
	return &tls.Config{GetCertificate: c.GetCertificate, MinVersion: tls.VersionTLS12}
}

// Run re-reads the files every Interval until ctx ends.
func (c *CredentialReloader) Run(ctx context.Context) {
	iv := c.Interval
	if iv <= 0 {
		iv = 10 * time.Second
	}
	t := time.NewTicker(iv)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, f := range []func() (bool, error){c.reloadCert, c.reloadTokens} {
			if _, err := f(); err != nil && c.OnError != nil {
				c.OnError(err)
			}
		}
	}
}

func (c *CredentialReloader) reloadCert() (bool, error) {
	crt, err := os.ReadFile(c.CertFile)
	if err != nil {
		return false, fmt.Errorf("read serving certificate: %w", err)
	}
	key, err := os.ReadFile(c.KeyFile)
	if err != nil {
		return false, fmt.Errorf("read serving key: %w", err)
	}
	raw := append(append(append([]byte{}, crt...), 0), key...)
	c.mu.RLock()
	same := bytes.Equal(raw, c.certRaw)
	c.mu.RUnlock()
	if same {
		return false, nil
	}
	kp, err := tls.X509KeyPair(crt, key)
	if err != nil {
		return false, fmt.Errorf("serving certificate %s / key %s (keeping the previous one): %w", c.CertFile, c.KeyFile, err)
	}
	c.mu.Lock()
	c.cert, c.certRaw = &kp, raw
	c.mu.Unlock()
	return true, nil
}

func (c *CredentialReloader) reloadTokens() (bool, error) {
	raw, err := os.ReadFile(c.TokenFile)
	if err != nil {
		return false, fmt.Errorf("read token file: %w", err)
	}
	c.mu.RLock()
	same := bytes.Equal(raw, c.tokenRaw)
	c.mu.RUnlock()
	if same {
		return false, nil
	}
	toks, err := ReadTokenFile(c.TokenFile)
	if err != nil {
		return false, fmt.Errorf("%w (keeping the previous tokens)", err)
	}
	if err := c.Server.SetTokens(toks); err != nil {
		return false, err
	}
	c.mu.Lock()
	c.tokenRaw = raw
	c.mu.Unlock()
	return true, nil
}

// ClientReloader keeps a Client's CA bundle and token equal to their source
// (the shard-client Secret, or the --ca-file and --token-file files), so
// rotating them needs no restart of the operator, an export or the CSI
// driver. With the servers accepting the old and the new token during a
// rotation (ReadTokenFile), a client picks the new credentials up within
// Interval. A source that cannot be read or holds unusable credentials keeps
// the current ones and is reported through OnError.
type ClientReloader struct {
	Client *Client
	// Load reads the source; only CAPEM and Token of its answer are used.
	Load     func(context.Context) (ClientConfig, error)
	Interval time.Duration // default 30s
	OnError  func(error)
	OnChange func() // after new credentials were applied (optional)

	mu      sync.Mutex
	last    time.Time
	running bool
}

func (r *ClientReloader) interval() time.Duration {
	if r.Interval <= 0 {
		return 30 * time.Second
	}
	return r.Interval
}

// Reload reads the source once and applies what it holds.
func (r *ClientReloader) Reload(ctx context.Context) error {
	cc, err := r.Load(ctx)
	if err == nil {
		var changed bool
		if changed, err = r.Client.SetCredentials(cc.CAPEM, cc.Token); err == nil && changed && r.OnChange != nil {
			r.OnChange()
		}
	}
	if err != nil {
		err = fmt.Errorf("reload the shard client's credentials (the current ones stay in use): %w", err)
		if r.OnError != nil {
			r.OnError(err)
		}
	}
	return err
}

// Run reloads every Interval until ctx ends.
func (r *ClientReloader) Run(ctx context.Context) {
	t := time.NewTicker(r.interval())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_ = r.Reload(ctx)
		}
	}
}

// Poke starts one reload in the background when the last started more than
// Interval ago; it never blocks its caller (for callers on a request path
// that own no long-lived goroutine). The reload may take timeout at most.
func (r *ClientReloader) Poke(ctx context.Context, timeout time.Duration) {
	r.mu.Lock()
	if r.running || time.Since(r.last) < r.interval() {
		r.mu.Unlock()
		return
	}
	r.running, r.last = true, time.Now()
	r.mu.Unlock()
	go func() {
		defer func() {
			r.mu.Lock()
			r.running = false
			r.mu.Unlock()
		}()
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
		defer cancel()
		_ = r.Reload(rctx)
	}()
}
