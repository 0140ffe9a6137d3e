package testenv

import (
	"strconv"
	"strings"
)

// MetricValue sums the samples of name whose label set contains every given
// label (k="v" pairs), from a Prometheus text exposition. found is false when
// no sample matched.
func MetricValue(exposition, name string, labels ...string) (sum float64, found bool) {
	for _, line := range strings.Split(exposition, "\n") {
		if !strings.HasPrefix(line, name) || strings.HasPrefix(line, "#") {
			continue
		}
		rest := line[len(name):]
		if rest == "" || (rest[0] != '{' && rest[0] != ' ') {
			continue // a longer metric name with the same prefix
		}
		match := true
		for _, l := range labels {
			if !strings.Contains(rest, l) {
				match = false
			}
		}
		if !match {
			continue
		}
		f := strings.Fields(rest[strings.LastIndex(rest, "}")+1:])
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		sum += v
		found = true
	}
	return sum, found
}
