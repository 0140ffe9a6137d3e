package cluster

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// podFigures reads the kubelet's summary API (through the API server's node
// proxy) and returns, per pod of namespace whose name starts with prefix,
// "name rss=… MiB cpu=… m" (CPU: the kubelet's recent usage, millicores).
func podFigures(t *testing.T, namespace, prefix string) string {
	t.Helper()
	out, err := kubectl(t, "", "get", "--raw", "/api/v1/nodes/"+node+"/proxy/stats/summary")
	if err != nil {
		return "summary API: " + err.Error() + ": " + out
	}
	var s struct {
		Pods []struct {
			PodRef     struct{ Name, Namespace string }
			Containers []struct {
				Name   string
				CPU    struct{ UsageNanoCores *uint64 }
				Memory struct {
					RSSBytes        *uint64
					WorkingSetBytes *uint64
				}
			}
		}
	}
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		return "summary API: " + err.Error()
	}
	var b []string
	for _, p := range s.Pods {
		if p.PodRef.Namespace != namespace || !strings.HasPrefix(p.PodRef.Name, prefix) {
			continue
		}
		var rss, ws, cpu uint64
		for _, c := range p.Containers {
			if c.Memory.RSSBytes != nil {
				rss += *c.Memory.RSSBytes
			}
			if c.Memory.WorkingSetBytes != nil {
				ws += *c.Memory.WorkingSetBytes
			}
			if c.CPU.UsageNanoCores != nil {
				cpu += *c.CPU.UsageNanoCores
			}
		}
		b = append(b, fmt.Sprintf("%s rss=%.1fMiB workingSet=%.1fMiB cpu=%dm", p.PodRef.Name, float64(rss)/(1<<20), float64(ws)/(1<<20), cpu/1e6))
	}
	return strings.Join(b, "; ")
}

// logFigures logs the operator pods' and the shard servers' resource use
// under a FIGURE label (the README quotes these lines).
func logFigures(t *testing.T, when string) {
	t.Helper()
	l, _ := leader(t)
	t.Logf("FIGURE %s: operator leader %s; operator pods: %s; shard servers: %s", when, l,
		podFigures(t, ns, "couchestor-"), podFigures(t, dpns, "cold-"))
}
