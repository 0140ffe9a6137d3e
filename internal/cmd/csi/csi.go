// Package csi is `couchestor csi`: it wires flags, the Kubernetes client and
// the shard-server client into pkg/csi's Driver and serves it. main.go
// dispatches to Command by name.
package csi

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/billyronks/couchestor/internal/clients"
	pkgcsi "github.com/billyronks/couchestor/pkg/csi"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/pkg/shardserver"
)

// Version is reported by GetPluginInfo (set by main).
var Version = "dev"

// DefaultShardSecret is the Secret the data-plane chart writes for a
// DataPlane named couchestor (<release>-shard-token), the install chart's
// default csi.dataPlane.
const DefaultShardSecret = registry.DefaultShardSecret

type repeated []string

func (r *repeated) String() string     { return strings.Join(*r, " ") }
func (r *repeated) Set(v string) error { *r = append(*r, v); return nil }

// Command is `couchestor csi [flags]`.
func Command(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("csi", flag.ContinueOnError)
	endpoint := fs.String("endpoint", "unix:///csi/csi.sock", "CSI endpoint: unix:///path/to/socket (or tcp://host:port for tests).")
	controller := fs.Bool("controller", false, "Serve the Controller service (the controller Deployment).")
	node := fs.Bool("node", false, "Serve the Node service (the node DaemonSet; runs exports, attaches and mounts: needs root, /dev and the kubelet directory).")
	nodeID := fs.String("node-id", os.Getenv("NODE_NAME"), "Node name (default $NODE_NAME). Required with --node.")
	stateDir := fs.String("state-dir", "/var/lib/couchestor-csi", "Directory of the node plugin's per-volume state, export caches and logs (a hostPath: it must outlive the plugin).")
	kubeconfig := fs.String("kubeconfig", "", "Kubeconfig (default $KUBECONFIG, else in-cluster).")
	credsReload := fs.Duration("shard-credentials-reload-interval", 30*time.Second, "How often the shard servers' CA bundle and token are re-read (by the driver and the exports it runs), so that a rotation is picked up without a restart.")
	kubeTimeout := fs.Duration("kube-request-timeout", clients.DefaultRequestTimeout, "Longest an API-server request of the driver may take before it fails (the CSI call then fails and the sidecar retries it). Passed on to the exports the node runs.")
	registryNS := fs.String("registry-namespace", registry.DefaultNamespace, "Namespace of the shard-server Leases and the volumes' writer Leases.")
	mayastorNS := fs.String("mayastor-namespace", "mayastor", "Namespace of the DiskPools (passed to the exports).")
	secret := fs.String("shard-secret", registry.DefaultNamespace+"/"+DefaultShardSecret, "namespace/name of the Secret with the shard servers' ca.crt and token (default: the one a DataPlane named couchestor writes in the registry's default namespace; ignored with --ca-file and --token-file).")
	caFile := fs.String("ca-file", "", "CA bundle of the shard servers (PEM).")
	tokenFile := fs.String("token-file", "", "Bearer token file of the shard servers.")
	attach := fs.String("attach", "", "How the node attaches an export: kernel (nbd-client on /dev/nbd*), nbdfuse (nbdfuse and a loop device), or empty to pick kernel when /dev/nbd0 and nbd-client exist.")
	metricsAddr := fs.String("metrics-bind-address", "0", "With --node: address of the node plugin's /metrics, which carries the couchestor_ecvolume_* counters of every export it runs (heat-up measures erasure-coded volumes by them; scrape it), e.g. :9810. \"0\" disables it, and the exports then serve no metrics.")
	var exportArgs repeated
	fs.Var(&exportArgs, "export-arg", "Extra argument for each `couchestor ec-volume serve` the node runs (repeatable), e.g. --export-arg=--cache-memory-bytes=67108864.")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	secretSet := false
	fs.Visit(func(f *flag.Flag) { secretSet = secretSet || f.Name == "shard-secret" })
	if !secretSet && (*caFile != "" || *tokenFile != "") {
		*secret = "" // files instead of the default Secret
	}
	if !*controller && !*node {
		return errors.New("name the service to serve: --controller, --node or both")
	}
	if *node && *nodeID == "" {
		return errors.New("--node-id (or $NODE_NAME) is required with --node")
	}
	if *kubeTimeout <= 0 {
		return fmt.Errorf("--kube-request-timeout %v must be positive", *kubeTimeout)
	}
	if *credsReload <= 0 {
		return fmt.Errorf("--shard-credentials-reload-interval %v must be positive", *credsReload)
	}
	exportMetrics := *metricsAddr != "" && *metricsAddr != "0"
	if exportMetrics && !*node {
		return fmt.Errorf("--metrics-bind-address %s: only the node service (--node) runs exports to serve the metrics of", *metricsAddr)
	}
	for _, a := range exportArgs {
		if exportMetrics && strings.HasPrefix(a, "--metrics-bind-address") {
			return fmt.Errorf("--export-arg=%s: with --metrics-bind-address the node plugin gives each export its own metrics address", a)
		}
	}
	kc, err := clients.Kube{Kubeconfig: *kubeconfig, RequestTimeout: *kubeTimeout}.Client()
	if err != nil {
		return err
	}
	cc, err := clients.ShardClientConfig(ctx, kc, *secret, *caFile, *tokenFile)
	if err != nil {
		return err
	}
	// The exports read the same credentials the same way.
	shardFlags := []string{"--shard-secret", *secret}
	if *secret == "" {
		shardFlags = []string{"--ca-file", *caFile, "--token-file", *tokenFile}
	}
	sc, err := shardserver.NewClient(cc)
	if err != nil {
		return err
	}
	// A rotated CA bundle or token is picked up without a restart.
	go (&shardserver.ClientReloader{Client: sc, Interval: *credsReload,
		Load: func(ctx context.Context) (shardserver.ClientConfig, error) {
			return clients.ShardClientConfig(ctx, kc, *secret, *caFile, *tokenFile)
		},
		OnChange: func() { log.Printf("csi: new shard-client credentials in use") },
		OnError:  func(err error) { log.Printf("csi: %v", err) }}).Run(ctx)
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find the couchestor binary for the exports: %w", err)
	}
	xargs := []string{"--registry-namespace", *registryNS, "--mayastor-namespace", *mayastorNS, "--kube-request-timeout", kubeTimeout.String(),
		"--shard-credentials-reload-interval", credsReload.String()}
	if *kubeconfig != "" {
		xargs = append(xargs, "--kubeconfig", *kubeconfig)
	}
	xargs = append(append(xargs, shardFlags...), exportArgs...)
	d := &pkgcsi.Driver{Version: Version, Controller: *controller, Node: *node, Client: kc,
		RegistryNamespace: *registryNS, Shards: sc, NodeID: *nodeID, StateDir: *stateDir,
		ExportCommand: []string{self, "ec-volume", "serve"}, ExportArgs: xargs, Attach: *attach, ExportMetrics: exportMetrics}
	if exportMetrics {
		l, err := net.Listen("tcp", *metricsAddr)
		if err != nil {
			return fmt.Errorf("--metrics-bind-address %s: %w", *metricsAddr, err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", d.MetricsHandler())
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() {
			<-ctx.Done()
			_ = srv.Close()
		}()
		go func() {
			if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Printf("csi: metrics server: %v", err)
			}
		}()
		log.Printf("csi: the exports' metrics on http://%s/metrics", l.Addr())
	}
	return d.Serve(ctx, *endpoint)
}
