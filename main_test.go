package main

import (
	"strings"
	"testing"
)

func TestPprofOnlyOnLoopback(t *testing.T) {
	for _, tc := range []struct {
		addr string
		ok   bool
	}{
		{"", true}, {"0", true}, {"127.0.0.1:6060", true}, {"[::1]:6060", true}, {"localhost:6060", true},
		{":6060", false}, {"0.0.0.0:6060", false}, {"10.0.0.5:6060", false}, {"6060", false},
	} {
		err := checkPprofAddress(tc.addr)
		if (err == nil) != tc.ok {
			t.Errorf("checkPprofAddress(%q) = %v, want ok %v", tc.addr, err, tc.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "--pprof-bind-address") {
			t.Errorf("error %q does not name the flag", err)
		}
	}
}
