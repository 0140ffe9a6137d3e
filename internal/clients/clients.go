// Package clients builds the API-server and shard-server clients of the
// data-plane subcommands (`couchestor shard-server`, `ec`, `ec-volume
// serve`), so that how a kubeconfig is found, how long an API request may
// take and how a bearer token is read are decided once.
package clients

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/billyronks/couchestor/internal/scheme"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/pkg/shardserver"
)

// DefaultRequestTimeout bounds every API request of a data-plane process
// (issue 17 item 4): an API server that stopped answering (paused, a dead
// peer behind a live TCP connection) fails the request instead of hanging
// whoever made it — a destage, a Lease renewal, a view refresh — forever.
const DefaultRequestTimeout = 10 * time.Second

// Kube is how to reach the API server.
type Kube struct {
	// Kubeconfig names the kubeconfig (default $KUBECONFIG, else in-cluster).
	Kubeconfig string
	// QPS and Burst override client-go's client-side rate limit (5/10) when set.
	QPS   float32
	Burst int
	// RequestTimeout bounds each request (default DefaultRequestTimeout).
	RequestTimeout time.Duration
}

// Config is the rest.Config of k.
func (k Kube) Config() (*rest.Config, error) {
	kubeconfig := k.Kubeconfig
	if kubeconfig == "" {
		kubeconfig = os.Getenv("KUBECONFIG")
	}
	var cfg *rest.Config
	var err error
	if kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig: %w", err)
	}
	if k.QPS > 0 {
		cfg.QPS, cfg.Burst = k.QPS, k.Burst
	}
	cfg.Timeout = k.RequestTimeout
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultRequestTimeout
	}
	return cfg, nil
}

// Client is a controller-runtime client (no cache) with the project's scheme.
func (k Kube) Client() (client.Client, error) {
	cfg, err := k.Config()
	if err != nil {
		return nil, err
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme.New()})
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return c, nil
}

// ReadToken reads a bearer token file (--token-file): trimmed, not empty.
func ReadToken(path string) (string, error) {
	if path == "" {
		return "", errors.New("--token-file is required")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("--token-file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("--token-file %s is empty", path)
	}
	return tok, nil
}

// ShardClientConfig is the shard-server client configuration from
// --shard-secret (namespace/name of a Secret with ca.crt and token, read
// through kc) or from --ca-file and --token-file.
func ShardClientConfig(ctx context.Context, kc client.Reader, secret, caFile, tokenFile string) (shardserver.ClientConfig, error) {
	var cc shardserver.ClientConfig
	var err error
	switch {
	case secret != "":
		ns, name, ok := strings.Cut(secret, "/")
		if !ok {
			return cc, fmt.Errorf("--shard-secret %q must be namespace/name", secret)
		}
		return registry.ClientConfigFromSecret(ctx, kc, ns, name)
	case caFile != "":
		if cc.CAPEM, err = os.ReadFile(caFile); err != nil {
			return cc, fmt.Errorf("--ca-file: %w", err)
		}
		if cc.Token, err = ReadToken(tokenFile); err != nil {
			return cc, err
		}
		return cc, nil
	default:
		return cc, errors.New("either --shard-secret or --ca-file with --token-file is required")
	}
}
