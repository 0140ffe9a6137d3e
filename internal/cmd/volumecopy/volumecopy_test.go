package volumecopy

import (
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/billyronks/couchestor/pkg/blockcopy"
)

// TestResultFile: a copy writes an ok report; a refused flag or a smaller
// target writes the error, naming it, and fails.
func TestResultFile(t *testing.T) {
	dir := t.TempDir()
	src, tgt, small, out := filepath.Join(dir, "s"), filepath.Join(dir, "t"), filepath.Join(dir, "small"), filepath.Join(dir, "result")
	b := make([]byte, 9<<20)
	rand.Read(b)
	os.WriteFile(src, b, 0o600)
	os.WriteFile(tgt, make([]byte, 9<<20), 0o600)
	os.WriteFile(small, make([]byte, 1<<20), 0o600)
	read := func() blockcopy.Report {
		raw, err := os.ReadFile(out)
		if err != nil || len(raw) > blockcopy.MaxReportBytes {
			t.Fatalf("result file: %v (%d bytes)", err, len(raw))
		}
		r, err := blockcopy.DecodeReport(raw)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	if err := Command(context.Background(), []string{"--source", src, "--target", tgt, "--result-file", out}); err != nil {
		t.Fatal(err)
	}
	if r := read(); !r.OK || !r.Result.Verified || r.Result.Extents != 3 || r.Result.ExtentsWritten != 3 {
		t.Fatalf("report %+v", r)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--source", src, "--target", tgt, "--extent-size", "1000"}, "--extent-size=1000: 1000 bytes: must be a positive multiple of 4096"},
		{[]string{"--source", src, "--target", tgt, "--max-bytes-per-second", "-1"}, "--max-bytes-per-second=-1: must be >= 0"},
		{[]string{"--target", tgt}, "--source is required"},
		{[]string{"--source", src, "--target", small}, "smaller than source"},
	} {
		err := Command(context.Background(), append(tc.args, "--result-file", out))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
		if r := read(); r.OK || !strings.Contains(r.Error, tc.want) {
			t.Errorf("%v: report %+v, want the error %q", tc.args, r, tc.want)
		}
	}
}
