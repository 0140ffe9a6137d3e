// Package volumejournal owns an ECVolume's write journal as the export uses
// it: its parameters from the ErasureCodingPolicy's journalConfig (Settings,
// with the schema's defaults from apis/storage/v1) and the placement of its
// replicas on shard servers (Placement: choosing, recording on the ECVolume
// and replacing them). It does not serve I/O or hold the volume's writer
// Lease; `couchestor ec-volume serve` (internal/cmd/ecvolume) wires it up.
package volumejournal

import (
	"fmt"
	"time"

	"k8s.io/utils/ptr"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
)

// Settings are the journal parameters of a volume of one policy.
type Settings struct {
	SizeBytes               int64
	ReplicationFactor       int
	DestageThresholdPercent int
	DestageInterval         time.Duration
}

// SettingsOf reads spec.journalConfig of pol, each unset field taking the
// schema's default (storagev1.Default*), an absent journalConfig all of them.
func SettingsOf(pol *storagev1.ErasureCodingPolicy) (Settings, error) {
	jc := pol.Spec.JournalConfig
	if jc == nil {
		jc = &storagev1.JournalConfig{}
	}
	s := Settings{
		SizeBytes:               ptr.Deref(jc.JournalSizeBytes, storagev1.DefaultJournalSizeBytes),
		ReplicationFactor:       int(ptr.Deref(jc.ReplicationFactor, storagev1.DefaultJournalReplication)),
		DestageThresholdPercent: int(ptr.Deref(jc.DestageThresholdPercent, storagev1.DefaultDestageThresholdPercent)),
	}
	iv := jc.DestageInterval
	if iv == "" {
		iv = storagev1.DefaultDestageInterval
	}
	d, err := storagev1.ParseDuration(iv)
	if err != nil {
		return Settings{}, fmt.Errorf("ErasureCodingPolicy %s spec.journalConfig.destageInterval %q: %w", pol.Name, iv, err)
	}
	s.DestageInterval = d
	return s, nil
}
