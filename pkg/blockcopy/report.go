package blockcopy

import (
	"encoding/json"
	"fmt"
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
		// Cut by what is over (JSON escaping can make the string longer
		// than its bytes), keeping valid UTF-8.
		over := len(b) - MaxReportBytes + len("…")
		cut := []rune(r.Error)
		keep := len(cut) - over
		if keep < 0 {
			keep = 0
		}
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
