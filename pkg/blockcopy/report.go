package blockcopy

import (
	"encoding/json"
	"fmt"
	"strings"
)

// MaxReportBytes bounds a Report's JSON: Kubernetes keeps at most 4096
// bytes of a container's termination message (and 12 KiB across a pod's
// containers); a Result is about 400 bytes, the rest is room for the error.
const MaxReportBytes = 2048

// Report is the termination message of a `couchestor volume-copy` Job
// pod: what the controller reads back from the pod's status.
type Report struct {
	OK     bool   `json:"ok"`
	Error  string `json:"error,omitempty"`
	Result Result `json:"result"`
}

// EncodeReport is the compact JSON of a copy's outcome, at most
// MaxReportBytes: a longer error is cut (its start names the extent).
func EncodeReport(res Result, err error) []byte {
	r := Report{OK: err == nil, Result: res}
	if err != nil {
		r.Error = err.Error()
	}
	for {
		b, _ := json.Marshal(r) // a Report always marshals
		if len(b) <= MaxReportBytes || r.Error == "" {
			return b
		}
		// Cut runes from the end (valid UTF-8): a rune escapes to at most
		// 6 JSON bytes, so cutting over/6+1 never cuts more than needed.
		over := len(b) - MaxReportBytes + len("…")
		cut := []rune(strings.TrimSuffix(r.Error, "…"))
		keep := max(len(cut)-over/6-1, 0)
		r.Error = string(cut[:keep]) + "…"
	}
}

// DecodeReport parses a termination message written by EncodeReport.
func DecodeReport(b []byte) (Report, error) {
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("volume-copy report %.80q: %w", b, err)
	}
	return r, nil
}
