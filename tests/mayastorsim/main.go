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
//
// With --api=rest it plays a Mayastor 2.x cluster instead (package restsim):
// no MayastorVolume objects (the API server has no such kind), DiskPools of
// --diskpool-version, PVs pvc-<uuid> with volumeHandle <uuid>, and the control
// plane's REST API /v0 (volumes, replicas, pools, nodes) on the same listener
// or on --rest-listen, plus its knobs under /control/rest/. The ready line is
// then "mayastorsim ready <addr> rest=http://<rest addr>".
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
	"github.com/billyronks/couchestor/tests/mayastorsim/restsim"
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
	seed := flag.Int64("seed", 1, "seed of the replica behaviour's pool choice (and of the REST model's random choices)")
	api := flag.String("api", "crd", "crd: MayastorVolume objects (the data-model schema); rest: Mayastor 2.x's REST API /v0 and no MayastorVolume")
	dspVersion := flag.String("diskpool-version", "v1beta2", "DiskPool version to create: v1beta2 or v1beta3")
	restListen := flag.String("rest-listen", "", "with --api=rest: address of /v0 (default: the --listen listener)")
	poolCordon := flag.Bool("pool-cordon", false, "with --api=rest: serve pool cordon PUT/DELETE /v0/pools/{id}/cordon (OpenEBS 4.4+); without it the route does not exist")
	rebuildRate := flag.Int64("rebuild-bytes-per-second", 1<<30, "with --api=rest: rebuild speed of a new replica")
	steerMiss := flag.Float64("steer-miss-probability", 0, "with --api=rest: probability that a scale-up ignores steering (live pool labels, pool cordons) and picks another pool")
	reattach := flag.Duration("reattach-removed-after", 0, "with --api=rest: a replica removed by scale-down is re-attached to the nexus after this delay (0: never)")
	latency := flag.Duration("rest-latency", 0, "with --api=rest: latency added to every /v0 request")
	fail412 := flag.Float64("fail-412-probability", 0, "with --api=rest: probability that PUT replica_count answers 412 FailedPrecondition")
	fail5xx := flag.Float64("fail-5xx-probability", 0, "with --api=rest: probability that a /v0 request answers 503 Unavailable")
	healthy := flag.Bool("healthy-field", false, "with --api=rest: send replica_topology's healthy field, as releases after 2.7 do")
	drop := flag.Float64("drop-probability", 0, "with --api=rest: probability that a /v0 request's connection is closed without an answer")
	flag.Parse()
	if *api != "crd" && *api != "rest" {
		return fmt.Errorf("--api %q: must be crd or rest", *api)
	}
	if *dspVersion != "v1beta2" && *dspVersion != "v1beta3" {
		return fmt.Errorf("--diskpool-version %q: must be v1beta2 or v1beta3", *dspVersion)
	}
	if *api == "rest" && *replicas {
		return errors.New("--replica-behaviour plays replicas on MayastorVolume objects: it cannot be used with --api=rest (the REST model has its own)")
	}
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
	// A scenario of 10,000 volumes is 20,000 objects: client-go's default
	// limit (5 requests/s) would take hours to create them.
	cfg.QPS, cfg.Burst = 500, 1000
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
	s.DiskPoolVersion = *dspVersion
	var model *restsim.Model
	if *api == "rest" {
		pools, vols, err := sc.RESTDefs()
		if err != nil {
			return err
		}
		model, err = restsim.New(restsim.Options{
			RebuildBytesPerSecond: *rebuildRate, PoolCordon: *poolCordon, SteerMissProbability: *steerMiss,
			ReattachAfter: *reattach, Latency: *latency, Fail412Probability: *fail412, Fail5xxProbability: *fail5xx,
			DropProbability: *drop, Seed: *seed, HealthyField: *healthy,
		}, pools, vols)
		if err != nil {
			return err
		}
		s.REST = model
	}
	if err := s.Create(ctx); err != nil {
		return err
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", *listen, err)
	}
	handler := s.Handler()
	var servers []*http.Server
	ready := fmt.Sprintf("mayastorsim ready %s", l.Addr())
	if model != nil {
		mux := http.NewServeMux()
		mux.Handle("/control/rest/", model.ControlHandler())
		mux.Handle("/", handler)
		handler = mux
		restAddr := l.Addr().String()
		if *restListen == "" {
			mux.Handle("/v0/", model.Handler())
		} else {
			rl, err := net.Listen("tcp", *restListen)
			if err != nil {
				return fmt.Errorf("listen %s: %w", *restListen, err)
			}
			restAddr = rl.Addr().String()
			rsrv := &http.Server{Handler: model.Handler(), ReadHeaderTimeout: 5 * time.Second}
			servers = append(servers, rsrv)
			go func() { _ = rsrv.Serve(rl) }()
		}
		ready += " rest=http://" + restAddr
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second}
	servers = append(servers, srv)
	go func() { _ = srv.Serve(l) }()
	go s.Run(ctx, *interval, func(err error) { fmt.Fprintf(os.Stderr, "mayastorsim: sync: %v\n", err) })
	if *replicas {
		rs := replicasim.New(c, sc.Namespace, replicasim.Options{SyncBytesPerSecond: *syncRate, Seed: *seed, Interval: 200 * time.Millisecond})
		go func() { _ = rs.Run(ctx) }()
	}
	fmt.Println(ready)
	<-ctx.Done()
	shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var first error
	for _, x := range servers {
		if err := x.Shutdown(shut); err != nil && first == nil {
			first = err
		}
	}
	return first
}
