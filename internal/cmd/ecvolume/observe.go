package ecvolume

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/journal"
)

// Condition types the export writes on its ECVolume. The ECVolume controller
// owns Ready; these two belong to the process serving the volume.
const (
	// ConditionExported is True while an `ec-volume serve` process exports
	// the volume (reason Serving), False after it stopped cleanly (reason
	// Stopped). A killed process cannot clear it: the export's metrics
	// endpoint (scraped `up`) is the liveness truth, the condition says who
	// served it last and where.
	ConditionExported = "Exported"
	// ConditionDestaging is True while journaled writes reach the stripes
	// (reason DestageSucceeded) and False while destaging fails (reason
	// DestageFailing, the error in the message): writes then back-pressure
	// on the journal and the CoucheStorECVolumeDestageFailing alert fires.
	ConditionDestaging = "Destaging"
	// ConditionJournalQuorum is True while a majority of the journal's
	// replicas are in sync, so writes are acknowledged (reason InSync, or
	// Degraded while some replica is being caught up), and False while
	// fewer are (reason QuorumLost): writes then wait until enough
	// replicas are caught up and re-admitted.
	ConditionJournalQuorum = "JournalQuorum"
)

// observer publishes an export's health: Prometheus metrics on
// --metrics-bind-address and the Exported/Destaging conditions on the
// ECVolume. Metric names are stable API: the data-plane chart's
// PrometheusRule alerts on them.
type observer struct {
	volume string
	kube   client.Client
	now    func() time.Time

	reg              *prometheus.Registry
	destageFailures  prometheus.Counter
	destageFailing   prometheus.Gauge
	lastDestageOK    prometheus.Gauge
	stripesDestaged  prometheus.Counter
	stripeWriteHisto prometheus.Histogram
	io               *IOCounters

	mu         sync.Mutex
	journal    *journal.Journal
	quorum     metav1.Condition // last JournalQuorum computed (Type empty: no journal yet)
	failing    bool
	lastErr    string
	dirty      chan struct{} // a condition changed: write it
	exportedAt string        // listen address for the Exported message
}

func newObserver(volume string, kube client.Client) *observer {
	o := &observer{volume: volume, kube: kube, now: time.Now, reg: prometheus.NewRegistry(), dirty: make(chan struct{}, 1)}
	labels := prometheus.Labels{"volume": volume}
	o.destageFailures = prometheus.NewCounter(prometheus.CounterOpts{Name: "couchestor_ecvolume_destage_failures_total",
		Help: "Destage rounds that failed (stripe write, ECStripe update or journal trim); the destager retries.", ConstLabels: labels})
	o.destageFailing = prometheus.NewGauge(prometheus.GaugeOpts{Name: "couchestor_ecvolume_destage_failing",
		Help: "1 from a failed destage pass until a pass succeeds whole; the journal is not trimmed meanwhile and writes back-pressure once it is full.", ConstLabels: labels})
	o.lastDestageOK = prometheus.NewGauge(prometheus.GaugeOpts{Name: "couchestor_ecvolume_last_destage_success_timestamp_seconds",
		Help: "Unix time of the last stripe the destager stored (0: none since start).", ConstLabels: labels})
	o.stripesDestaged = prometheus.NewCounter(prometheus.CounterOpts{Name: "couchestor_ecvolume_stripes_destaged_total",
		Help: "Stripes written by the destager (each one a new ECStripe or a new copy-on-write generation).", ConstLabels: labels})
	o.stripeWriteHisto = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "couchestor_ecvolume_stripe_write_seconds",
		Help: "Time to destage one stripe (read-merge, encode, shard writes, ECStripe update).", ConstLabels: labels,
		Buckets: prometheus.ExponentialBuckets(0.005, 2, 12)})
	o.reg.MustRegister(o.destageFailures, o.destageFailing, o.lastDestageOK, o.stripesDestaged, o.stripeWriteHisto)
	o.io = NewIOCounters(volume)
	o.reg.MustRegister(o.io.Collectors()...)
	return o
}

// watchJournal registers gauges read from the journal at scrape time and
// has runConditions follow its replicas' state.
func (o *observer) watchJournal(j *journal.Journal) {
	o.mu.Lock()
	o.journal = j
	o.mu.Unlock()
	labels := prometheus.Labels{"volume": o.volume}
	o.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "couchestor_ecvolume_journal_used_bytes",
			Help: "Journal bytes not yet destaged (records and in-flight reservations).", ConstLabels: labels},
			func() float64 { u, _ := j.Fill(); return float64(u) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "couchestor_ecvolume_journal_size_bytes",
			Help: "journalConfig.journalSizeBytes of the volume's policy.", ConstLabels: labels},
			func() float64 { _, s := j.Fill(); return float64(s) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "couchestor_ecvolume_journal_replicas",
			Help: "Journal replicas the export opened (journalConfig.replicationFactor).", ConstLabels: labels},
			func() float64 { return float64(len(j.HealthyStores())) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "couchestor_ecvolume_journal_quorum_waits_total",
			Help: "Batches of writes that had to wait because fewer than a majority of journal replicas were in sync.", ConstLabels: labels},
			func() float64 { return float64(j.Health().QuorumWaits) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "couchestor_ecvolume_journal_quorum_lost",
			Help: "1 while fewer than a majority of journal replicas are in sync: writes wait until enough are caught up.", ConstLabels: labels},
			func() float64 {
				if h := j.Health(); countTrue(h.InSync) < h.Quorum {
					return 1
				}
				return 0
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "couchestor_ecvolume_journal_healthy_replicas",
			Help: "Journal replicas in sync (taking every write); one that failed or fell behind is caught up and counted again. Below a majority of journalConfig.replicationFactor writes wait.", ConstLabels: labels},
			func() float64 { return float64(countTrue(j.HealthyStores())) }),
	)
}

func countTrue(bs []bool) int {
	n := 0
	for _, b := range bs {
		if b {
			n++
		}
	}
	return n
}

// journalQuorumCondition describes a journal's replication state. The
// message names replicas by index only, so it changes only with the state.
func journalQuorumCondition(h journal.Health) metav1.Condition {
	in := countTrue(h.InSync)
	var out []string
	for i, ok := range h.InSync {
		if !ok {
			out = append(out, strconv.Itoa(i))
		}
	}
	c := metav1.Condition{Type: ConditionJournalQuorum, Status: metav1.ConditionTrue, Reason: "InSync",
		Message: fmt.Sprintf("all %d journal replicas are in sync", len(h.InSync))}
	switch {
	case in < h.Quorum:
		c.Status, c.Reason = metav1.ConditionFalse, "QuorumLost"
		c.Message = fmt.Sprintf("%d of %d journal replicas in sync, a write needs %d: writes wait until replicas %s are caught up (their shard servers answer again)",
			in, len(h.InSync), h.Quorum, strings.Join(out, ","))
	case in < len(h.InSync):
		c.Reason = "Degraded"
		c.Message = fmt.Sprintf("%d of %d journal replicas in sync, writes are acknowledged by a majority; replicas %s are caught up and re-admitted once their shard servers answer",
			in, len(h.InSync), strings.Join(out, ","))
	}
	return c
}

// pollJournal recomputes the JournalQuorum condition and reports whether it changed.
func (o *observer) pollJournal() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.journal == nil {
		return false
	}
	c := journalQuorumCondition(o.journal.Health())
	if c.Status == o.quorum.Status && c.Reason == o.quorum.Reason && c.Message == o.quorum.Message {
		return false
	}
	if c.Status != o.quorum.Status || c.Reason != o.quorum.Reason {
		log.Printf("ec-volume %s: journal %s: %s", o.volume, c.Reason, c.Message)
	}
	o.quorum = c
	return true
}

// destageError is the volume's OnDestageError.
func (o *observer) destageError(err error) {
	o.destageFailures.Inc()
	o.destageFailing.Set(1)
	o.mu.Lock()
	var changed bool
	msg := err.Error()
	if len(msg) > 1024 {
		msg = msg[:1024] + "…"
	}
	changed = !o.failing || o.lastErr != msg
	o.failing, o.lastErr = true, msg
	o.mu.Unlock()
	if changed {
		o.poke()
	}
}

// stripeWritten records one stored stripe.
func (o *observer) stripeWritten(took time.Duration) {
	o.stripesDestaged.Inc()
	o.stripeWriteHisto.Observe(took.Seconds())
	o.lastDestageOK.Set(float64(o.now().Unix()))
}

// destagePassed is the volume's OnDestageSuccess: a whole pass wrote its
// stripes and trimmed the journal. Only that clears "failing": with stripes
// destaged in parallel, one stripe that keeps failing must not be hidden by
// its neighbours' successes (the alert's "for" would restart each time).
func (o *observer) destagePassed(int) {
	o.destageFailing.Set(0)
	o.mu.Lock()
	changed := o.failing
	o.failing, o.lastErr = false, ""
	o.mu.Unlock()
	if changed {
		o.poke()
	}
}

func (o *observer) poke() {
	select {
	case o.dirty <- struct{}{}:
	default:
	}
}

// serveMetrics serves /metrics and /healthz on addr ("0" or "" disables it).
func (o *observer) serveMetrics(ctx context.Context, addr string) error {
	if addr == "" || addr == "0" {
		return nil
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--metrics-bind-address %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(o.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Printf("ec-volume %s: metrics server: %v", o.volume, err)
		}
	}()
	log.Printf("ec-volume %s: metrics on http://%s/metrics", o.volume, l.Addr())
	return nil
}

// runConditions keeps the ECVolume's Exported and Destaging conditions
// current until ctx ends, then marks the export Stopped (with a short
// deadline of its own: the process is shutting down).
func (o *observer) runConditions(ctx context.Context, listenAddr string) {
	o.mu.Lock()
	o.exportedAt = listenAddr
	o.mu.Unlock()
	o.pollJournal()
	o.poke()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			if o.pollJournal() {
				o.poke()
			}
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if err := o.writeConditions(sctx, false); err != nil {
				log.Printf("ec-volume %s: mark Exported=False: %v", o.volume, err)
			}
			cancel()
			return
		case <-o.dirty:
			if err := o.writeConditions(ctx, true); err != nil && ctx.Err() == nil {
				log.Printf("ec-volume %s: update ECVolume conditions (retrying in 10s): %v", o.volume, err)
				select {
				case <-ctx.Done():
				case <-time.After(10 * time.Second):
					o.poke()
				}
			}
		}
	}
}

// writeConditions stores the conditions with an optimistic-lock status update
// (the ECVolume controller writes the same status: neither may drop the
// other's fields).
func (o *observer) writeConditions(ctx context.Context, serving bool) error {
	o.mu.Lock()
	failing, lastErr, addr, quorum := o.failing, o.lastErr, o.exportedAt, o.quorum
	o.mu.Unlock()
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		vol := &storagev1.ECVolume{}
		if err := o.kube.Get(ctx, client.ObjectKey{Name: o.volume}, vol); err != nil {
			if apierrors.IsNotFound(err) {
				return nil // deleted under us: nothing to report on
			}
			return err
		}
		exp := metav1.Condition{Type: ConditionExported, Status: metav1.ConditionTrue, Reason: "Serving",
			Message: "exported over NBD on " + addr, ObservedGeneration: vol.Generation}
		if !serving {
			exp.Status, exp.Reason, exp.Message = metav1.ConditionFalse, "Stopped", "the export on "+addr+" stopped"
		}
		des := metav1.Condition{Type: ConditionDestaging, Status: metav1.ConditionTrue, Reason: "DestageSucceeded",
			Message: "journaled writes reach the stripes", ObservedGeneration: vol.Generation}
		if failing {
			des.Status, des.Reason = metav1.ConditionFalse, "DestageFailing"
			des.Message = "destaging fails, writes back-pressure once the journal is full: " + lastErr
		}
		changed := meta.SetStatusCondition(&vol.Status.Conditions, exp)
		changed = meta.SetStatusCondition(&vol.Status.Conditions, des) || changed
		if quorum.Type != "" {
			quorum.ObservedGeneration = vol.Generation
			changed = meta.SetStatusCondition(&vol.Status.Conditions, quorum) || changed
		}
		if !changed {
			return nil
		}
		return o.kube.Status().Update(ctx, vol)
	})
}

// observedSink wraps the stripe path to time and count stored stripes.
type observedSink struct {
	*StripeAdapter
	o *observer
}

// WriteStripe implements journal.StripeSink.
func (s observedSink) WriteStripe(ctx context.Context, idx int64, extents []journal.Extent) error {
	start := s.o.now()
	if err := s.StripeAdapter.WriteStripe(ctx, idx, extents); err != nil {
		return err
	}
	s.o.stripeWritten(s.o.now().Sub(start))
	return nil
}
