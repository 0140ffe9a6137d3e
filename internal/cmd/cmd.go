// Package cmd holds the data-plane subcommands of the couchestor binary:
// `couchestor shard-server` (serve one pool) and `couchestor ec ...`
// (recover, gc). main.go dispatches to them by name.
package cmd

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"syscall"
	"time"

	"github.com/billyronks/couchestor/internal/clients"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/pkg/shardserver"
	"github.com/billyronks/couchestor/pkg/stripe"
)

// ShardServerInit is `couchestor shard-server-init`: hand an empty
// root-owned data directory (a hostPath the kubelet just created) to the
// shard server's uid:gid. The data-plane chart runs it as an init container
// with only CAP_CHOWN, so the long-running server keeps no privilege at all.
func ShardServerInit(_ context.Context, args []string) error {
	fs := flag.NewFlagSet("shard-server-init", flag.ContinueOnError)
	dataDir := fs.String("data-dir", "", "The shard server's data directory. Required.")
	uid := fs.Uint("uid", 65532, "uid the shard server runs as (not 0).")
	gid := fs.Uint("gid", 65532, "gid the shard server runs as.")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if *dataDir == "" {
		return errors.New("--data-dir is required")
	}
	if *uid > 1<<31-1 || *gid > 1<<31-1 {
		return fmt.Errorf("--uid %d / --gid %d: must be below 2^31", *uid, *gid)
	}
	act, err := shardserver.PrepareDataDir(*dataDir, uint32(*uid), uint32(*gid))
	if err != nil {
		return err
	}
	if act == shardserver.DataDirHandOver {
		fmt.Fprintf(os.Stderr, "shard-server-init: %s handed to %d:%d (mode 0700)\n", *dataDir, *uid, *gid)
	} else {
		fmt.Fprintf(os.Stderr, "shard-server-init: %s already owned by %d:%d\n", *dataDir, *uid, *gid)
	}
	return nil
}

// ShardServer is `couchestor shard-server`: serve one pool's shard store over
// HTTPS (HTTP/2) and keep its registry Lease.
func ShardServer(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("shard-server", flag.ContinueOnError)
	dataDir := fs.String("data-dir", "", "Directory of the pool's shard store (in production a filesystem on a volume pinned to the node's cold DiskPool). Required.")
	pool := fs.String("pool", "", "Name of the DiskPool this server serves. Required.")
	node := fs.String("node", os.Getenv("NODE_NAME"), "Node name (default $NODE_NAME). Required.")
	listen := fs.String("listen", ":8443", "Address to listen on (HTTPS).")
	advertise := fs.String("advertise-address", "", "host:port others reach this server at (default: the listen address when it names a host).")
	capacity := fs.Int64("capacity-bytes", 0, "Bytes the store may use (default: the data directory filesystem's size).")
	certFile := fs.String("tls-cert-file", "", "Serving certificate (PEM). Required.")
	keyFile := fs.String("tls-key-file", "", "Serving key (PEM). Required.")
	tokenFile := fs.String("token-file", "", "File holding the bearer tokens clients may present, one per line (list the old and the new one while rotating). Required.")
	reloadEvery := fs.Duration("credentials-reload-interval", 10*time.Second, "How often the TLS certificate, key and token files are re-read; a changed file applies to new handshakes and requests without a restart.")
	kubeconfig := fs.String("kubeconfig", "", "Kubeconfig (default $KUBECONFIG, else in-cluster).")
	ns := fs.String("registry-namespace", registry.DefaultNamespace, "Namespace of the shard-server Leases.")
	leaseDur := fs.Duration("lease-duration", 15*time.Second, "Registry Lease duration; renewed every third of it.")
	lim := shardserver.DefaultLimits()
	fs.IntVar(&lim.MaxConns, "max-connections", lim.MaxConns, "Connections served at once; the next ones get 503 naming this limit.")
	fs.Int64Var(&lim.RequestMemoryBytes, "max-request-memory-bytes", 0, fmt.Sprintf("Bytes of request bodies and shard read buffers held at once; a request waits for room, one larger than all of it gets 413. 0: half the container's memory limit (cgroup), or %d without one.", shardserver.DefaultRequestMemoryBytes))
	fs.DurationVar(&lim.ReadTimeout, "read-timeout", lim.ReadTimeout, "Time to receive one request, body included.")
	fs.DurationVar(&lim.WriteTimeout, "write-timeout", lim.WriteTimeout, "Time to send one response (a journal scan: each record).")
	fs.DurationVar(&lim.IdleTimeout, "idle-timeout", lim.IdleTimeout, "Idle connections are closed after this.")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	for name, v := range map[string]string{"--data-dir": *dataDir, "--pool": *pool, "--node": *node, "--tls-cert-file": *certFile, "--tls-key-file": *keyFile} {
		if v == "" {
			return fmt.Errorf("%s is required", name)
		}
	}
	if *tokenFile == "" {
		return errors.New("--token-file is required")
	}
	if *reloadEvery <= 0 {
		return fmt.Errorf("--credentials-reload-interval=%v: must be positive", *reloadEvery)
	}
	toks, err := shardserver.ReadTokenFile(*tokenFile)
	if err != nil {
		return fmt.Errorf("--token-file: %w", err)
	}
	addr := *advertise
	if addr == "" {
		host, _, err := net.SplitHostPort(*listen)
		if err != nil || host == "" || host == "0.0.0.0" || host == "::" {
			return fmt.Errorf("--advertise-address is required when --listen %q names no host", *listen)
		}
		addr = *listen
	}
	if *capacity == 0 {
		if err := os.MkdirAll(*dataDir, 0o750); err != nil {
			return err
		}
		var st syscall.Statfs_t
		if err := syscall.Statfs(*dataDir, &st); err != nil {
			return fmt.Errorf("--capacity-bytes: statfs %s: %w", *dataDir, err)
		}
		*capacity = int64(st.Blocks) * int64(st.Bsize)
	}
	store, err := shardserver.OpenStore(*dataDir, *capacity)
	if err != nil {
		return err
	}
	defer store.Close()
	if why := store.IndexRebuilt(); why != "" {
		fmt.Fprintf(os.Stderr, "shard-server: %s\n", why)
	}
	if r := store.UnindexableReport(); r != "" {
		fmt.Fprintf(os.Stderr, "shard-server: %s\n", r)
	}
	srv, err := shardserver.NewServer(store, toks[0])
	if err != nil {
		return err
	}
	defer srv.Close()
	if lim.RequestMemoryBytes == 0 {
		lim.RequestMemoryBytes = shardserver.DefaultRequestMemoryBytes
		if m, ok := shardserver.CgroupMemoryLimit(); ok {
			lim.RequestMemoryBytes = m / 2
		}
	}
	if err := srv.SetLimits(lim); err != nil {
		return fmt.Errorf("--max-connections, --max-request-memory-bytes, --read-timeout, --write-timeout, --idle-timeout: %w", err)
	}
	creds := &shardserver.CredentialReloader{CertFile: *certFile, KeyFile: *keyFile, TokenFile: *tokenFile, Server: srv,
		Interval: *reloadEvery, OnError: func(err error) { fmt.Fprintf(os.Stderr, "shard-server: %v\n", err) }}
	if err := creds.Load(); err != nil {
		return fmt.Errorf("--tls-cert-file/--tls-key-file/--token-file: %w", err)
	}
	credCtx, stopCreds := context.WithCancel(ctx)
	defer stopCreds()
	go creds.Run(credCtx)
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", *listen, err)
	}
	hs := srv.HTTPServer(creds.TLSConfig())
	serveErr := make(chan error, 1)
	go func() { serveErr <- hs.ServeTLS(srv.LimitListener(ln), "", "") }()

	kc, err := clients.Kube{Kubeconfig: *kubeconfig}.Client()
	if err != nil {
		hs.Close()
		return err
	}
	reg := &registry.Registrar{Client: kc, Namespace: *ns, Pool: *pool, Node: *node, Address: addr, LeaseDuration: *leaseDur}
	regCtx, stopReg := context.WithCancel(ctx)
	regErr := make(chan error, 1)
	go func() {
		regErr <- reg.Run(regCtx, func(err error) { fmt.Fprintf(os.Stderr, "shard-server: %v\n", err) })
	}()
	fmt.Fprintf(os.Stderr, "shard-server: pool %s on node %s serving %s at %s (capacity %d bytes, at most %d connections, %d bytes of request memory)\n", *pool, *node, *dataDir, addr, *capacity, lim.MaxConns, lim.RequestMemoryBytes)
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-serveErr:
	case runErr = <-regErr:
	}
	stopReg()
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = hs.Shutdown(sctx)
	if err := <-regErr; runErr == nil && err != nil && !errors.Is(err, context.Canceled) {
		runErr = err
	}
	if errors.Is(runErr, http.ErrServerClosed) {
		runErr = nil
	}
	return runErr
}

// storeFlags are the flags every `ec` command shares.
type storeFlags struct {
	kubeconfig, registryNS, mayastorNS, secret, caFile, tokenFile string
}

func (f *storeFlags) bind(fs *flag.FlagSet) {
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "Kubeconfig (default $KUBECONFIG, else in-cluster).")
	fs.StringVar(&f.registryNS, "registry-namespace", registry.DefaultNamespace, "Namespace of the shard-server Leases.")
	fs.StringVar(&f.mayastorNS, "mayastor-namespace", "mayastor", "Namespace of the DiskPools.")
	fs.StringVar(&f.secret, "shard-secret", "", "namespace/name of the Secret with the shard servers' ca.crt and token (or --ca-file and --token-file).")
	fs.StringVar(&f.caFile, "ca-file", "", "CA bundle of the shard servers (PEM).")
	fs.StringVar(&f.tokenFile, "token-file", "", "Bearer token file of the shard servers.")
}

func (f *storeFlags) open(ctx context.Context) (*stripe.Store, error) {
	// recover and gc List every ECStripe of a volume in one request.
	kc, err := clients.Kube{Kubeconfig: f.kubeconfig, RequestTimeout: 2 * time.Minute}.Client()
	if err != nil {
		return nil, err
	}
	cc, err := clients.ShardClientConfig(ctx, kc, f.secret, f.caFile, f.tokenFile)
	if err != nil {
		return nil, err
	}
	sc, err := shardserver.NewClient(cc)
	if err != nil {
		return nil, err
	}
	return &stripe.Store{Client: kc, Shards: sc, Registry: &registry.Lookup{Client: kc, Namespace: f.registryNS}, MayastorNamespace: f.mayastorNS}, nil
}

// EC is `couchestor ec <recover|gc> ...`.
func EC(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return errors.New("usage: couchestor ec recover --volume NAME | couchestor ec gc --volume NAME [--grace 10m]")
	}
	var sf storeFlags
	fs := flag.NewFlagSet("ec "+args[0], flag.ContinueOnError)
	sf.bind(fs)
	volume := fs.String("volume", "", "ECVolume name. Required.")
	grace := fs.Duration("grace", 10*time.Minute, "gc: free unreferenced shards written longer ago than this (must exceed the longest write).")
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if *volume == "" {
		return errors.New("--volume is required")
	}
	st, err := sf.open(ctx)
	if err != nil {
		return err
	}
	switch args[0] {
	case "recover":
		v, err := st.OpenVolume(ctx, *volume)
		if err != nil {
			return err
		}
		rep, err := st.Recover(ctx, v)
		fmt.Printf("volume %s: %d ECStripes restored %v, %d degraded %v, %d already present, %d unrecoverable %v\n",
			*volume, len(rep.Restored), rep.Restored, len(rep.Degraded), rep.Degraded, rep.Existing, len(rep.Lost), rep.Lost)
		for _, s := range rep.Skipped {
			fmt.Printf("skipped: %s\n", s)
		}
		if err == nil && len(rep.Lost) > 0 {
			err = fmt.Errorf("%d stripes have too few shards left to restore: %v", len(rep.Lost), rep.Lost)
		}
		return err
	case "gc":
		rep, err := st.CollectOrphans(ctx, *volume, *grace)
		fmt.Printf("volume %s: freed %d orphaned shards (%d bytes), %d younger than %s kept\n", *volume, rep.Freed, rep.FreedBytes, rep.Young, *grace)
		return err
	default:
		return fmt.Errorf("unknown ec command %q: want recover or gc", args[0])
	}
}
