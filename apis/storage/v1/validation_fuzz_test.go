package v1

import (
	"encoding/json"
	"testing"

	"k8s.io/apimachinery/pkg/util/validation/field"
)

// The fuzz targets decode arbitrary JSON into a spec (as the API server would
// hand it to the webhook) and require the rule functions never to panic, to
// be deterministic, and never to refuse a spec without saying why.

func FuzzValidateStoragePolicySpec(f *testing.F) {
	for _, s := range []string{
		`{}`,
		`{"lowWatermarkIOPS":3000}`,
		`{"highWatermarkIOPS":-1,"samplingWindow":"1d","hotPoolSelector":{},"coldPoolSelector":{"matchLabels":{"t":"c"}}}`,
		`{"hotPoolSelector":{"matchExpressions":[{"key":"t","operator":"In"}]},"volumeSelector":{"matchLabels":{"a":"b"}},"maxConcurrentMigrations":0}`,
	} {
		f.Add([]byte(s), []byte(`[{"metadata":{"name":"other"},"spec":{"volumeSelector":{"matchLabels":{"a":"c"}}}}]`))
	}
	f.Fuzz(func(t *testing.T, specJSON, othersJSON []byte) {
		var s StoragePolicySpec
		if json.Unmarshal(specJSON, &s) != nil {
			return
		}
		var others []StoragePolicy
		_ = json.Unmarshal(othersJSON, &others)
		errs1, w1 := ValidateStoragePolicySpec(&s, field.NewPath("spec"))
		errs2, w2 := ValidateStoragePolicySpec(&s, field.NewPath("spec"))
		if len(errs1) != len(errs2) || len(w1) != len(w2) {
			t.Fatal("not deterministic")
		}
		for _, e := range errs1 {
			if e.Field == "" || e.Error() == "" {
				t.Fatalf("error without field or message: %#v", e)
			}
		}
		_ = ValidateECPolicyRef(&s, false, field.NewPath("spec"))
		_ = StoragePolicyOverlapWarnings("me", &s, others, field.NewPath("spec"))
	})
}

func FuzzValidateErasureCodingPolicySpec(f *testing.F) {
	for _, s := range []string{
		`{}`,
		`{"dataShards":200,"parityShards":56}`,
		`{"algorithm":"LRC","dataShards":12,"parityShards":4,"minHealthyShards":13}`,
		`{"algorithm":"LRC","dataShards":5,"parityShards":4,"stripeSizeBytes":66048}`,
		`{"journalConfig":{"replicationFactor":0,"destageThresholdPercent":101,"destageInterval":"-1s"},"scrubInterval":"1.5d"}`,
		`{"dataShards":-2147483648,"parityShards":2147483647,"minHealthyShards":-1}`,
	} {
		f.Add([]byte(s), []byte(`{"dataShards":6}`), uint8(1))
	}
	f.Fuzz(func(t *testing.T, specJSON, oldJSON []byte, stripes uint8) {
		var s, old ErasureCodingPolicySpec
		if json.Unmarshal(specJSON, &s) != nil {
			return
		}
		_ = json.Unmarshal(oldJSON, &old)
		errs, _ := ValidateErasureCodingPolicySpec(&s, field.NewPath("spec"))
		for _, e := range errs {
			if e.Field == "" {
				t.Fatalf("error without field: %#v", e)
			}
		}
		_ = ValidateErasureCodingPolicyUpdate(&old, &s, int(stripes), field.NewPath("spec"))
	})
}

func FuzzValidateECStripeSpec(f *testing.F) {
	valid, _ := json.Marshal(stripe(4, 2))
	for _, s := range []string{
		string(valid),
		`{"volumeRef":"v","policyRef":"ec","lbaRange":{"startLba":5,"endLba":5},"shardLocations":[{"shardIndex":9},{"shardIndex":9}]}`,
		`{"volumeRef":"","policyRef":"","stripeId":-1,"lbaRange":{"startLba":-9223372036854775808,"endLba":9223372036854775807}}`,
	} {
		f.Add([]byte(s), []byte(`{"dataShards":4,"parityShards":2}`), true)
	}
	f.Fuzz(func(t *testing.T, specJSON, policyJSON []byte, policyExists bool) {
		var s ECStripeSpec
		if json.Unmarshal(specJSON, &s) != nil {
			return
		}
		var pol *ErasureCodingPolicySpec
		if policyExists {
			pol = &ErasureCodingPolicySpec{}
			_ = json.Unmarshal(policyJSON, pol)
		}
		errs, _ := ValidateECStripeSpec(&s, pol, field.NewPath("spec"))
		for _, e := range errs {
			if e.Field == "" {
				t.Fatalf("error without field: %#v", e)
			}
		}
		n := fakeNeighbours{map[string]ECStripeSpec{"other": stripe(4, 2)}}
		_ = ValidateECStripeNeighbours("me", &s, n, field.NewPath("spec"))
		c := ECStripe{Spec: s}
		DefaultECStripe(&c)
	})
}
