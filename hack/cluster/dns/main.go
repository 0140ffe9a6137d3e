// Command dns is the cluster DNS of hack/cluster.sh's local cluster, a
// stand-in for CoreDNS (which is not built here): it answers A queries for
// Services (<svc>.<ns>.svc.<domain>: the ClusterIP, or a headless Service's
// ready endpoints) and for the hostnames of their endpoints
// (<hostname>.<svc>.<ns>.svc.<domain>: a StatefulSet pod behind its
// governing Service), read from the API server every second with its own
// least-privileged identity. It never forwards: every name outside the
// cluster domain is REFUSED, so no query leaves the machine.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

func main() {
	listen := flag.String("listen", "10.244.0.1:53", "UDP address to answer on")
	api := flag.String("api", "https://10.244.0.1:6443", "API server URL")
	ca := flag.String("ca", "", "API server CA (PEM)")
	cert := flag.String("cert", "", "client certificate (PEM)")
	key := flag.String("key", "", "client key (PEM)")
	domain := flag.String("domain", "cluster.local", "cluster domain")
	flag.Parse()
	client, err := apiClient(*ca, *cert, *key)
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	z := &zone{suffix: "svc." + strings.Trim(*domain, ".") + "."}
	go z.refresh(ctx, client, strings.TrimSuffix(*api, "/"))
	pc, err := net.ListenPacket("udp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	go func() { <-ctx.Done(); pc.Close() }()
	log.Printf("dns: answering for *.%s on %s", z.suffix, *listen)
	buf := make([]byte, 1232) // bounded: the EDNS-recommended UDP payload
	for {
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			log.Printf("dns: read: %v", err)
			continue
		}
		if out, err := z.answer(buf[:n]); err == nil {
			_, _ = pc.WriteTo(out, addr)
		}
	}
}

func apiClient(ca, cert, key string) (*http.Client, error) {
	pem, err := os.ReadFile(ca)
	if err != nil {
		return nil, fmt.Errorf("-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("-ca %s: no certificate", ca)
	}
	kp, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return nil, fmt.Errorf("-cert/-key: %w", err)
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{kp}, MinVersion: tls.VersionTLS12}}}, nil
}

type zone struct {
	suffix string // "svc.cluster.local."
	mu     sync.RWMutex
	names  map[string][]netip.Addr // lower-case FQDN → IPv4 addresses
}

type serviceList struct {
	Items []struct {
		Metadata struct{ Name, Namespace string }
		Spec     struct {
			ClusterIP string `json:"clusterIP"`
		}
	}
}

type sliceList struct {
	Items []struct {
		Metadata struct {
			Namespace string
			Labels    map[string]string
		}
		AddressType string `json:"addressType"`
		Endpoints   []struct {
			Addresses  []string
			Hostname   string
			Conditions struct {
				Ready *bool
			}
		}
	}
}

func (z *zone) refresh(ctx context.Context, c *http.Client, api string) {
	for {
		if names, err := z.load(ctx, c, api); err != nil {
			log.Printf("dns: refresh: %v", err)
		} else {
			z.mu.Lock()
			z.names = names
			z.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

func get(ctx context.Context, c *http.Client, url string, into any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("GET %s: %s %s", url, resp.Status, b)
	}
	return json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(into)
}

func (z *zone) load(ctx context.Context, c *http.Client, api string) (map[string][]netip.Addr, error) {
	var svcs serviceList
	if err := get(ctx, c, api+"/api/v1/services", &svcs); err != nil {
		return nil, err
	}
	var slices sliceList
	if err := get(ctx, c, api+"/apis/discovery.k8s.io/v1/endpointslices", &slices); err != nil {
		return nil, err
	}
	names := map[string][]netip.Addr{}
	headless := map[string]bool{}
	for _, s := range svcs.Items {
		fq := strings.ToLower(s.Metadata.Name + "." + s.Metadata.Namespace + "." + z.suffix)
		if s.Spec.ClusterIP == "None" {
			headless[fq] = true
			continue
		}
		if a, err := netip.ParseAddr(s.Spec.ClusterIP); err == nil && a.Is4() {
			names[fq] = []netip.Addr{a}
		}
	}
	for _, sl := range slices.Items {
		svc := sl.Metadata.Labels["kubernetes.io/service-name"]
		if svc == "" || sl.AddressType != "IPv4" {
			continue
		}
		fq := strings.ToLower(svc + "." + sl.Metadata.Namespace + "." + z.suffix)
		for _, ep := range sl.Endpoints {
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			for _, s := range ep.Addresses {
				a, err := netip.ParseAddr(s)
				if err != nil || !a.Is4() {
					continue
				}
				if headless[fq] {
					names[fq] = append(names[fq], a)
				}
				if ep.Hostname != "" {
					h := strings.ToLower(ep.Hostname) + "." + fq
					names[h] = append(names[h], a)
				}
			}
		}
	}
	return names, nil
}

// answer builds the reply to one query: A records for known names, an empty
// NOERROR for other types of a known name, NXDOMAIN for unknown names in the
// zone, REFUSED for anything outside it.
func (z *zone) answer(in []byte) ([]byte, error) {
	var p dnsmessage.Parser
	h, err := p.Start(in)
	if err != nil || h.Response {
		return nil, errors.New("not a query")
	}
	q, err := p.Question()
	if err != nil {
		return nil, err
	}
	name := strings.ToLower(q.Name.String())
	rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired, OpCode: h.OpCode}
	z.mu.RLock()
	addrs, known := z.names[name]
	z.mu.RUnlock()
	inZone := strings.HasSuffix(name, "."+z.suffix) || name == z.suffix
	switch {
	case h.OpCode != 0 || q.Class != dnsmessage.ClassINET:
		rh.RCode = dnsmessage.RCodeNotImplemented
	case !inZone:
		rh.RCode, rh.Authoritative = dnsmessage.RCodeRefused, false
	case !known:
		rh.RCode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(make([]byte, 0, 512), rh)
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		return nil, err
	}
	if err := b.Question(q); err != nil {
		return nil, err
	}
	if err := b.StartAnswers(); err != nil {
		return nil, err
	}
	if rh.RCode == dnsmessage.RCodeSuccess && q.Type == dnsmessage.TypeA {
		for i, a := range addrs {
			if i == 16 { // keep the reply well under 512 bytes
				break
			}
			if err := b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 5}, dnsmessage.AResource{A: a.As4()}); err != nil {
				return nil, err
			}
		}
	}
	return b.Finish()
}
