package volumejournal

import (
	"strings"
	"testing"
	"time"

	"k8s.io/utils/ptr"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
)

// The export's journal parameters are the schema's defaults unless the
// policy sets them (10 GiB, 3 replicas, 80 %, 30 s).
func TestSettingsOf(t *testing.T) {
	def := Settings{SizeBytes: 10 << 30, ReplicationFactor: 3, DestageThresholdPercent: 80, DestageInterval: 30 * time.Second}
	for _, c := range []struct {
		name    string
		jc      *storagev1.JournalConfig
		want    Settings
		wantErr string
	}{
		{"no journalConfig", nil, def, ""},
		{"empty journalConfig", &storagev1.JournalConfig{}, def, ""},
		{"all set", &storagev1.JournalConfig{JournalSizeBytes: ptr.To(int64(1 << 20)), ReplicationFactor: ptr.To(int32(5)),
			DestageThresholdPercent: ptr.To(int32(50)), DestageInterval: "2m"},
			Settings{SizeBytes: 1 << 20, ReplicationFactor: 5, DestageThresholdPercent: 50, DestageInterval: 2 * time.Minute}, ""},
		{"bad interval", &storagev1.JournalConfig{DestageInterval: "soon"}, Settings{}, `spec.journalConfig.destageInterval "soon"`},
	} {
		pol := &storagev1.ErasureCodingPolicy{Spec: storagev1.ErasureCodingPolicySpec{JournalConfig: c.jc}}
		pol.Name = "p"
		got, err := SettingsOf(pol)
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("%s: error %v, want one containing %q", c.name, err, c.wantErr)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%s: %+v, %v; want %+v", c.name, got, err, c.want)
		}
	}
}
