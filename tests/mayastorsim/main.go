// Command mayastorsim runs the Mayastor simulator, a TEST DOUBLE of OpenEBS
// Mayastor's control plane and io-engine exporter (see package sim), as its
// own process against a Kubernetes API server:
//
//	go run ./tests/mayastorsim --kubeconfig kc --scenario scenario.json --listen 127.0.0.1:9502
//
// It creates the scenario's DiskPools, MayastorVolumes, PVs and PVCs, keeps
// their status, and serves /metrics (volume_num_read_ops,
// volume_num_write_ops{pv_name}) and a control API (/control/...) on --listen.
// When everything is created and served it prints "mayastorsim ready <addr>".
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/billyronks/couchestor/internal/scheme"
	"github.com/billyronks/couchestor/tests/mayastorsim/replicasim"
	"github.com/billyronks/couchestor/tests/mayastorsim/sim"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "mayastorsim: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the API server to populate (required)")
	scenario := flag.String("scenario", "", "scenario JSON file (required; see package sim)")
	listen := flag.String("listen", "127.0.0.1:9502", "address of /metrics and /control")
	interval := flag.Duration("sync-interval", time.Second, "how often MayastorVolume and DiskPool status is re-asserted")
	replicas := flag.Bool("replica-behaviour", false, "also play Mayastor's replica behaviour (package replicasim): scale up onto a pool of its own choosing, sync, choose the victim on scale down")
	syncRate := flag.Int64("replica-sync-bytes-per-second", 1<<30, "rebuild speed of a new replica, with --replica-behaviour")
	seed := flag.Int64("seed", 1, "seed of the replica behaviour's pool choice")
	flag.Parse()
	if *kubeconfig == "" || *scenario == "" {
		return errors.New("--kubeconfig and --scenario are required")
	}
	sc, err := sim.LoadScenario(*scenario)
	if err != nil {
		return err
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme.New()})
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	s, err := sim.New(c, sc, nil)
	if err != nil {
		return err
	}
	s.ExternalReplicas = *replicas
	if err := s.Create(ctx); err != nil {
		return err
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", *listen, err)
	}
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	go s.Run(ctx, *interval, func(err error) { fmt.Fprintf(os.Stderr, "mayastorsim: sync: %v\n", err) })
	if *replicas {
		rs := replicasim.New(c, sc.Namespace, replicasim.Options{SyncBytesPerSecond: *syncRate, Seed: *seed, Interval: 200 * time.Millisecond})
		go func() { _ = rs.Run(ctx) }()
	}
	fmt.Printf("mayastorsim ready %s\n", l.Addr())
	<-ctx.Done()
	shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(shut)
}
