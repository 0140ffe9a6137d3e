package v1

import (
	"strings"
	"testing"
	"time"
)

func TestParseDurationAcceptsGoSyntaxAndDays(t *testing.T) {
	cases := map[string]time.Duration{
		"30s":      30 * time.Second,
		"1h":       time.Hour,
		"1h30m":    90 * time.Minute,
		"1.5h":     90 * time.Minute,
		"7d":       7 * Day,
		"1d12h":    36 * time.Hour,
		"12h1d":    36 * time.Hour,
		"2d3h4m5s": 2*Day + 3*time.Hour + 4*time.Minute + 5*time.Second,
		"+5m":      5 * time.Minute,
		"1d0s":     Day,
		"500ms":    500 * time.Millisecond,
		"1µs":      time.Microsecond,
	}
	for in, want := range cases {
		got, err := ParseDuration(in)
		if err != nil || got != want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
}

func TestParseDurationRefuses(t *testing.T) {
	cases := map[string]string{
		"":                           "empty",
		"0":                          "zero",
		"0s":                         "zero",
		"0d":                         "zero",
		"-1h":                        "negative",
		"-":                          "negative",
		"+":                          "no value",
		"abc":                        "no number",
		"h":                          "no number",
		"10":                         "missing unit",
		"1.5d":                       "whole number",
		"1x":                         "unknown unit",
		"1d-2h":                      "unknown unit",
		"106752d":                    "too long",
		"106751d23h47m16.854775808s": "too long",
		"9223372036854775807d":       "too long",
	}
	for in, why := range cases {
		_, err := ParseDuration(in)
		if err == nil {
			t.Errorf("ParseDuration(%q) accepted", in)
			continue
		}
		if !strings.Contains(err.Error(), why) {
			t.Errorf("ParseDuration(%q) error %q does not say %q", in, err, why)
		}
	}
}

func TestFormatDurationRoundTrips(t *testing.T) {
	for _, d := range []time.Duration{1, time.Second, 90 * time.Minute, Day, 36 * time.Hour, 7*Day + 1, 1<<63 - 1} {
		s := FormatDuration(d)
		got, err := ParseDuration(s)
		if err != nil || got != d {
			t.Errorf("ParseDuration(FormatDuration(%d) = %q) = %v, %v", d, s, got, err)
		}
	}
	if s := FormatDuration(36 * time.Hour); s != "1d12h0m0s" {
		t.Errorf("FormatDuration(36h) = %q", s)
	}
}

// FuzzParseDuration: never panics; whatever parses is positive and survives
// FormatDuration → ParseDuration unchanged.
func FuzzParseDuration(f *testing.F) {
	for _, s := range []string{"30s", "1h30m", "7d", "1d12h", "0", "-1h", "1.5d", "+1d", "9223372036854775807ns", "106751d23h47m16.854775807s", "1µs"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDuration(s)
		if err != nil {
			return
		}
		if d <= 0 {
			t.Fatalf("ParseDuration(%q) = %v: accepted a non-positive duration", s, d)
		}
		back, err := ParseDuration(FormatDuration(d))
		if err != nil || back != d {
			t.Fatalf("round trip of %q (%v) via %q gave %v, %v", s, d, FormatDuration(d), back, err)
		}
	})
}
