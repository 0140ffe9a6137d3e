package blockcopy

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func goodSpec() JobSpec {
	return JobSpec{Namespace: "apps", Name: "copy-pvc-1", Image: "ghcr.io/billyronks/couchestor:v0.1.0",
		SourceClaim: "data", TargetClaim: "data-ec", ExtentSize: DefaultExtentSize, MaxBytesPerSecond: 100 << 20,
		ActiveDeadline: 6 * time.Hour, Labels: map[string]string{"conversion": "c1"},
		Owner: &metav1.OwnerReference{APIVersion: "storage.billyronks.io/v1", Kind: "ECVolume", Name: "v1", UID: "u1"}}
}

// TestBuildJob: the Job attaches both claims as raw devices (the source
// read-only), runs volume-copy with the spec's settings, least privileged.
func TestBuildJob(t *testing.T) {
	j, err := BuildJob(goodSpec())
	if err != nil {
		t.Fatal(err)
	}
	p := j.Spec.Template.Spec
	c := p.Containers[0]
	for what, ok := range map[string]bool{
		"backoffLimit 2":           *j.Spec.BackoffLimit == 2,
		"activeDeadline 6h":        *j.Spec.ActiveDeadlineSeconds == 6*3600,
		"restartPolicy Never":      p.RestartPolicy == corev1.RestartPolicyNever,
		"no token":                 !*p.AutomountServiceAccountToken,
		"seccomp RuntimeDefault":   p.SecurityContext.SeccompProfile.Type == corev1.SeccompProfileTypeRuntimeDefault,
		"runAsUser 0 (default)":    *p.SecurityContext.RunAsUser == 0 && !*p.SecurityContext.RunAsNonRoot,
		"drop ALL":                 len(c.SecurityContext.Capabilities.Drop) == 1 && c.SecurityContext.Capabilities.Drop[0] == "ALL",
		"no escalation":            !*c.SecurityContext.AllowPrivilegeEscalation && !*c.SecurityContext.Privileged,
		"read-only root":           *c.SecurityContext.ReadOnlyRootFilesystem,
		"termination message File": c.TerminationMessagePolicy == corev1.TerminationMessageReadFile && c.TerminationMessagePath == "/dev/termination-log",
		"source read-only":         p.Volumes[0].PersistentVolumeClaim.ClaimName == "data" && p.Volumes[0].PersistentVolumeClaim.ReadOnly,
		"target read-write":        p.Volumes[1].PersistentVolumeClaim.ClaimName == "data-ec" && !p.Volumes[1].PersistentVolumeClaim.ReadOnly,
		"raw devices":              len(c.VolumeDevices) == 2 && len(c.VolumeMounts) == 0,
		"args":                     strings.Join(c.Args, " ") == "volume-copy --source=/dev/couchestor-source --target=/dev/couchestor-target --extent-size=4194304 --max-bytes-per-second=104857600 --result-file=/dev/termination-log",
		"owner":                    len(j.OwnerReferences) == 1 && j.OwnerReferences[0].Name == "v1",
		"labels":                   j.Labels["conversion"] == "c1" && j.Spec.Template.Labels["app.kubernetes.io/component"] == "volume-copy",
	} {
		if !ok {
			t.Errorf("%s: not so in %+v", what, j)
		}
	}
	s := goodSpec()
	s.RunAsUser, s.RunAsGroup, s.SupplementalGroups = 65532, 65532, []int64{6}
	j, _ = BuildJob(s)
	if sc := j.Spec.Template.Spec.SecurityContext; !*sc.RunAsNonRoot || *sc.RunAsUser != 65532 || sc.SupplementalGroups[0] != 6 {
		t.Errorf("non-root spec: %+v", sc)
	}
}

func TestBuildJobRefusesBadSpecs(t *testing.T) {
	for _, tc := range []struct {
		edit func(*JobSpec)
		want string
	}{
		{func(s *JobSpec) { s.Name = "Bad_Name" }, `name "Bad_Name"`},
		{func(s *JobSpec) { s.Namespace = "" }, `namespace ""`},
		{func(s *JobSpec) { s.TargetClaim = "data" }, `target claim "data": must differ from the source claim`},
		{func(s *JobSpec) { s.Image = "" }, `image "": must not be empty`},
		{func(s *JobSpec) { s.ExtentSize = 1000 }, `extent size "1000": 1000 bytes: must be a positive multiple of 4096`},
		{func(s *JobSpec) { s.MaxBytesPerSecond = -5 }, `max bytes per second "-5": must be >= 0`},
		{func(s *JobSpec) { s.ActiveDeadline = 0 }, `active deadline "0s": must be at least 1s`},
	} {
		s := goodSpec()
		tc.edit(&s)
		if _, err := BuildJob(s); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("got %v, want an error containing %q", err, tc.want)
		}
	}
}

// TestReportBounded: a report stays valid JSON under MaxReportBytes however
// long the error, keeping the error's start (the extent it names).
func TestReportBounded(t *testing.T) {
	long := errors.New("verify: extent 5 (byte offset 20971520): " + strings.Repeat("\"é<", 3000))
	b := EncodeReport(Result{SizeBytes: 1, Extents: 1}, long)
	r, err := DecodeReport(b)
	if len(b) > MaxReportBytes || err != nil || r.OK || !strings.HasPrefix(r.Error, "verify: extent 5 (byte offset 20971520)") {
		t.Fatalf("%d bytes, %v, %+v", len(b), err, r)
	}
	b = EncodeReport(Result{SizeBytes: 8, Verified: true, SourceDigest: "xxh3-128:00"}, nil)
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil || m["ok"] != true || m["error"] != nil {
		t.Fatalf("%s: %v", b, err)
	}
}
