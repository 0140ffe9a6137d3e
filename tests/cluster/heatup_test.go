package cluster

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/billyronks/couchestor/pkg/conversion"
	"github.com/billyronks/couchestor/tests/cluster/kit"
	"github.com/billyronks/couchestor/tests/mayastorsim/sim"
)

// heatPolicyPatch lowers the story policy's watermarks to what a pod
// rewriting one file with fsync reaches through the export (tens of IOPS)
// and its cooldown to a minute, so the erasure-coded busy volume heats up
// within the step; heatPolicyRestore puts the story's values back.
const (
	heatPolicyPatch   = `{"spec":{"cooldownPeriod":"1m","highWatermarkIOPS":20,"warmWatermarkIOPS":10,"lowWatermarkIOPS":2}}`
	heatPolicyRestore = `{"spec":{"cooldownPeriod":"1h","highWatermarkIOPS":5000,"warmWatermarkIOPS":2000,"lowWatermarkIOPS":500}}`
)

// testConversionHeatUp: the erasure-coded busy volume (converted by the
// step before) gets a pod that keeps writing; its export's op counters
// reach the story's Prometheus through the CSI node plugin's /metrics, the
// operator finds the volume hot and says it waits for that pod
// (Kubernetes cannot swap a volume under a running pod); once the pod is
// deleted the operator, killed at every step it is seen at, converts the
// volume back to a replicated volume of the StorageClass it came from, and
// a new pod reads the same sha256s.
func testConversionHeatUp(t *testing.T) {
	convCleanupOnFailure(t)
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(heatDiagnose(t))
		}
	})
	ecPV := "ec-" + convBusy.Name
	if _, vol := claimBinding(t, "busy"); vol != ecPV {
		t.Fatalf("PVC busy is bound to %q, want the erasure-coded %s (the step before converts it)", vol, ecPV)
	}
	mustKubectl(t, "", "patch", "storagepolicy", convPolicy, "--type=merge", "-p", heatPolicyPatch)
	defer func() {
		_, _ = kubectl(t, "", "patch", "storagepolicy", convPolicy, "--type=merge", "-p", heatPolicyRestore)
	}()

	eventually(t, "the story's Prometheus scrapes the CSI node plugin", 2*time.Minute, func() (bool, string) {
		v, out := promScalar(t, `max(up{job="couchestor-csi-node"})`)
		return v == "1", out
	})
	start := time.Now()
	mustKubectl(t, kit.TreeioPod(convNS, "busy-churn", "busy", false, "churn", "/data"), "apply", "-f", "-")
	eventually(t, "the churning pod runs", podsBound, func() (bool, string) {
		out, err := kubectl(t, "", "-n", convNS, "get", "pod", "busy-churn", "-o", "jsonpath={.status.phase}")
		return err == nil && strings.TrimSpace(out) == "Running", out
	})
	eventually(t, "the export's write counter reaches Prometheus", 3*time.Minute, func() (bool, string) {
		v, out := promScalar(t, fmt.Sprintf(`sum(couchestor_ecvolume_write_ops_total{volume=%q})`, ecPV))
		return v != "" && v != "0", out
	})
	want := "in use by pod " + convNS + "/busy-churn"
	eventually(t, "the hot erasure-coded volume waits for its pod, said by the condition and an Event", 5*time.Minute, func() (bool, string) {
		cond, _ := kubectl(t, "", "get", "storagepolicy", convPolicy, "-o", `jsonpath={.status.conditions[?(@.type=="ErasureCoding")].message}`)
		ev := policyEventsOf(t, convPolicy)
		return strings.Contains(ev, "ConversionWaiting: PV "+ecPV+" (erasure-coded → ") && strings.Contains(ev, want),
			"condition: " + cond + "\nevents:\n" + ev
	})
	t.Logf("the busy erasure-coded volume found hot and waiting for its pod %s after the pod started", time.Since(start).Round(time.Second))
	if r := pvRecord(t, ecPV); r != nil {
		t.Fatalf("the erasure-coded volume has a conversion record while its pod runs: %+v", r)
	}
	mustKubectl(t, "", "-n", convNS, "delete", "pod", "busy-churn", "--wait=true", "--timeout=120s")

	start = time.Now()
	killed := map[conversion.Step]string{}
	var order []string
	var rec *conversion.Record
	eventually(t, "PVC busy converted back to a replicated volume once its pod is gone, the leader killed at each step seen", 12*time.Minute, func() (bool, string) {
		rec = pvRecord(t, ecPV)
		if rec != nil && rec.Direction != conversion.ToReplicated {
			t.Fatalf("the record on %s is not a conversion back to replicated: %+v", ecPV, rec)
		}
		if rec != nil && rec.Step != conversion.StepRetaining && rec.Step != conversion.StepRollingBack && killed[rec.Step] == "" {
			if leader := leaderPod(t); leader != "" {
				if _, err := kubectl(t, "", "-n", ns, "delete", "pod", leader, "--wait=false"); err == nil {
					killed[rec.Step] = leader
					order = append(order, fmt.Sprintf("%s (leader %s)", rec.Step, leader))
					t.Logf("heat-up of %s at step %s: leader pod %s deleted", ecPV, rec.Step, leader)
				}
			}
		}
		if rec != nil && rec.Step == conversion.StepRollingBack {
			t.Fatalf("the heat-up rolls back after an operator kill: %s", rec.Failure)
		}
		ph, vol := claimBinding(t, "busy")
		step := "none"
		if rec != nil {
			step = string(rec.Step)
			convStory.heatedPV = rec.Target
		}
		return rec != nil && ph == "Bound" && vol == rec.Target && rec.Step == conversion.StepRetaining,
			fmt.Sprintf("PVC %s/%s, record step %s\nevents:\n%s", ph, vol, step, policyEventsOf(t, convPolicy))
	})
	t.Logf("heat-up: PVC busy back on a replicated volume %s after its pod was deleted; the leader was killed at: %s",
		time.Since(start).Round(time.Second), strings.Join(order, ", "))
	if killed[conversion.StepCopying] == "" || killed[conversion.StepRebinding] == "" {
		t.Errorf("the leader was not killed at both Copying and Rebinding (killed at %v): the resume of those steps is unproven", order)
	}
	if rec.Target != conversion.HeatUpTarget(rec.ID) {
		t.Errorf("heat-up ended on PV %s, want %s", rec.Target, conversion.HeatUpTarget(rec.ID))
	}
	got := strings.TrimSpace(mustKubectl(t, "", "get", "pv", rec.Target, "-o", "jsonpath={.spec.storageClassName}/{.spec.csi.driver}"))
	if got != "mayastor/"+sim.CSIDriver {
		t.Errorf("PV %s: storage class / CSI driver %q, want the StorageClass it came from and Mayastor's driver (mayastor/%s)", rec.Target, got, sim.CSIDriver)
	}
	if rec.Copy == nil || rec.Copy.SourceDigest != rec.Copy.TargetDigest || rec.Copy.SizeBytes != convBusy.SizeBytes {
		t.Errorf("heat-up record: copy %+v, want both digests equal over %d bytes", rec.Copy, convBusy.SizeBytes)
	}
	eventually(t, "2 operator pods Ready again", podsBound, func() (bool, string) {
		out, _ := kubectl(t, "", "-n", ns, "get", "pods", "-l", "control-plane=controller-manager",
			"-o", `jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}`)
		return strings.Count(out, "=True") == 2, out
	})
	sameLines(t, "pod on the heated-up busy PVC", convStory.written["busy"], convTreeio(t, "busy-reader-rep", "busy", "read", "/data"))
	hist := mustKubectl(t, "", "get", "storagepolicy", convPolicy, "-o", "jsonpath={.status.migrationHistory}")
	if !strings.Contains(hist, `"fromTier":"erasure-coded"`) {
		t.Errorf("history holds no erasure-coded → replicated entry: %s", hist)
	}
}

// promScalar evaluates expr in the story's Prometheus: the first sample's
// value ("" when none) and the raw answer.
func promScalar(t *testing.T, expr string) (string, string) {
	t.Helper()
	out, err := httpGet("http://" + promAddr + "/api/v1/query?query=" + url.QueryEscape(expr))
	if err != nil {
		return "", fmt.Sprintf("%s: %v %s", expr, err, out)
	}
	var ans struct {
		Data struct {
			Result []struct {
				Value []any `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(out), &ans); err != nil || len(ans.Data.Result) == 0 || len(ans.Data.Result[0].Value) != 2 {
		return "", expr + ": " + out
	}
	v, _ := ans.Data.Result[0].Value[1].(string)
	return v, expr + ": " + out
}

// heatDiagnose: what Prometheus holds of the node plugin and the exports,
// and what the node plugin serves now.
func heatDiagnose(t *testing.T) string {
	var b strings.Builder
	for _, q := range []string{
		`up`,
		`couchestor_csi_export_metrics_up`,
		`couchestor_ecvolume_write_ops_total`,
		`couchestor_ecvolume_read_ops_total`,
		`sum by (volume) (rate(couchestor_ecvolume_read_ops_total[30s]) + rate(couchestor_ecvolume_write_ops_total[30s]))`,
	} {
		_, out := promScalar(t, q)
		fmt.Fprintf(&b, "\nprometheus %s\n", out)
	}
	for _, line := range strings.Split(strings.TrimSpace(csiNodeTargets(t)), "\n") {
		fmt.Fprintf(&b, "\ncsi node targets: %s\n", line)
	}
	var groups []struct {
		Targets []string `json:"targets"`
	}
	_ = json.Unmarshal([]byte(csiNodeTargets(t)), &groups)
	for _, g := range groups {
		for _, tg := range g.Targets {
			out, err := httpGet("http://" + tg + "/metrics")
			fmt.Fprintf(&b, "\nGET http://%s/metrics: %v\n%s\n", tg, err, out)
		}
	}
	out, _ := kubectl(t, "", "-n", csiNodeNS, "logs", "-l", "app.kubernetes.io/component=csi-node", "--all-containers", "--tail=80", "--prefix")
	fmt.Fprintf(&b, "\ncsi node logs:\n%s", out)
	return b.String()
}
