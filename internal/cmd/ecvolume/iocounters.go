package ecvolume

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/billyronks/couchestor/pkg/iops"
	"github.com/billyronks/couchestor/pkg/nbd"
)

// IOCounters are the export's operation counters, per volume (ConstLabel
// volume = the ECVolume's name): NBD commands answered with success,
// counted when the reply is handed to the connection (nbd.Export.Answered).
// Refused and failed commands are not counted. The StoragePolicy controller
// reads the two op counters through Prometheus to measure an erasure-coded
// volume's IOPS (heat-up); the names are stable API (pkg/iops's
// ECVolumeReadMetric and ECVolumeWriteMetric).
//
//   - couchestor_ecvolume_read_ops_total: READ commands;
//   - couchestor_ecvolume_write_ops_total: WRITE and WRITE_ZEROES commands
//     (both change the volume's bytes; FLUSH and TRIM are not counted);
//   - couchestor_ecvolume_read_bytes_total / _write_bytes_total: their lengths.
type IOCounters struct {
	readOps, writeOps, readBytes, writeBytes prometheus.Counter
}

// NewIOCounters builds the counters of one volume; register Collectors.
func NewIOCounters(volume string) *IOCounters {
	labels := prometheus.Labels{iops.ECVolumeLabel: volume}
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: labels})
	}
	return &IOCounters{
		readOps:    counter(iops.ECVolumeReadMetric, "NBD READ commands the export answered with success."),
		writeOps:   counter(iops.ECVolumeWriteMetric, "NBD WRITE and WRITE_ZEROES commands the export answered with success."),
		readBytes:  counter("couchestor_ecvolume_read_bytes_total", "Bytes of the NBD READ commands the export answered with success."),
		writeBytes: counter("couchestor_ecvolume_write_bytes_total", "Bytes of the NBD WRITE and WRITE_ZEROES commands the export answered with success."),
	}
}

// Collectors are the four counters.
func (c *IOCounters) Collectors() []prometheus.Collector {
	return []prometheus.Collector{c.readOps, c.writeOps, c.readBytes, c.writeBytes}
}

// Answered counts one command answered with success (nbd.Export.Answered).
func (c *IOCounters) Answered(cmd uint16, length uint32) {
	switch cmd {
	case nbd.CmdRead:
		c.readOps.Inc()
		c.readBytes.Add(float64(length))
	case nbd.CmdWrite, nbd.CmdWriteZeroes:
		c.writeOps.Inc()
		c.writeBytes.Add(float64(length))
	}
}
