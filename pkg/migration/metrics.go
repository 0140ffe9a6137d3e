package migration

import (
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

var (
	migrationsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "couchestor_migrations_total",
		Help: "Finished migration attempts by result (success, failed, aborted) and tiers.",
	}, []string{"result", "from", "to"})
	activeMigrations = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "couchestor_active_migrations",
		Help: "Migrations in progress, by StoragePolicy.",
	}, []string{"policy"})
	migrationDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "couchestor_migration_duration_seconds",
		Help: "Duration of finished migration attempts, by result.",
		// 10 s .. ~45 h: a replica move is a full rebuild of the volume.
		Buckets: prometheus.ExponentialBuckets(10, 2, 15),
	}, []string{"result"})
)

func init() {
	metrics.Registry.MustRegister(migrationsTotal, activeMigrations, migrationDuration)
}
