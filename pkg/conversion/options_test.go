package conversion

import (
	"flag"
	"strings"
	"testing"
)

func TestOptionsValidateAndCopier(t *testing.T) {
	parse := func(args ...string) *Options {
		var o Options
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		o.BindFlags(fs)
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		return &o
	}
	o := parse("--ec-conversion-image=img")
	if err := o.Validate(); err != nil || o.Retain != DefaultRetain || o.MaxBytesPerSecond != DefaultBandwidth {
		t.Fatalf("defaults: %v %+v", err, o)
	}
	if c := o.Copier(); c.RunAsUser != 0 || c.SupplementalGroups != nil {
		t.Fatalf("default copier: %+v", c)
	}
	if c := parse("--ec-conversion-run-as-user=65532", "--ec-conversion-device-group=6").Copier(); c.RunAsUser != 65532 || len(c.SupplementalGroups) != 1 || c.SupplementalGroups[0] != 6 {
		t.Fatalf("copier: %+v", c)
	}
	for _, c := range []struct{ arg, in string }{
		{"--ec-conversion-retain=-1h", "--ec-conversion-retain=-1h0m0s: must not be negative"},
		{"--ec-conversion-bandwidth=-1", "--ec-conversion-bandwidth=-1"},
		{"--ec-conversion-copy-deadline=10s", "at least 1m"},
		{"--ec-conversion-extent-size=1000", "--ec-conversion-extent-size=1000"},
		{"--ec-conversion-run-as-user=-2", "--ec-conversion-run-as-user=-2"},
		{"--ec-conversion-device-group=-5", "--ec-conversion-device-group=-5"},
	} {
		if err := parse(c.arg).Validate(); err == nil || !strings.Contains(err.Error(), c.in) {
			t.Errorf("%s: %v, want %q", c.arg, err, c.in)
		}
	}
}
