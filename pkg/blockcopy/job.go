package blockcopy

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/utils/ptr"
)

// Where the Job's container sees the two claims.
const (
	SourceDevicePath = "/dev/couchestor-source"
	TargetDevicePath = "/dev/couchestor-target"
	// JobBackoffLimit: a rerun resumes (only missing extents are
	// written), so a couple of retries are cheap; more would hide a
	// failing device.
	JobBackoffLimit = 2
	// ContainerName is the Job container's name (its termination
	// message is the Report).
	ContainerName = "volume-copy"
)

// JobSpec is what a copy Job needs.
type JobSpec struct {
	Namespace, Name string
	Image           string
	// ImagePullPolicy defaults to IfNotPresent.
	ImagePullPolicy corev1.PullPolicy
	// SourceClaim (attached read-only) and TargetClaim are raw-block
	// (volumeMode: Block) PVCs of Namespace.
	SourceClaim, TargetClaim string
	ExtentSize               int64
	MaxBytesPerSecond        int64
	// ActiveDeadline bounds the whole Job, retries included.
	ActiveDeadline time.Duration
	Owner          *metav1.OwnerReference
	Labels         map[string]string
	// RunAsUser is the uid of the copy, RunAsGroup its gid, and
	// SupplementalGroups extra gids. Which uid can open the device nodes
	// depends on the node (README "Converting cold volumes: the copy"):
	// the container runtime gives a raw-block volume's device node the
	// host node's owner and mode unless containerd's
	// device_ownership_from_security_context is on (then RunAsUser and
	// RunAsGroup own it). A host without udev has root:root 0600 devices,
	// so only uid 0 opens them: the zero value, root with every capability
	// dropped, works on every node. Where devices are root:disk 0660
	// (udev), a non-root uid with SupplementalGroups [6] does; with
	// device_ownership_from_security_context, any non-root uid.
	RunAsUser, RunAsGroup int64
	SupplementalGroups    []int64
}

// BuildJob is the batch/v1 Job that copies SourceClaim onto TargetClaim
// with `couchestor volume-copy`, least privileged: no service account
// token, no capabilities, no privilege escalation, RuntimeDefault seccomp,
// a read-only root filesystem, the source device read-only.
func BuildJob(s JobSpec) (*batchv1.Job, error) {
	if err := s.validate(); err != nil {
		return nil, err
	}
	pull := s.ImagePullPolicy
	if pull == "" {
		pull = corev1.PullIfNotPresent
	}
	labels := map[string]string{}
	for k, v := range s.Labels {
		labels[k] = v
	}
	labels["app.kubernetes.io/name"] = "couchestor"
	labels["app.kubernetes.io/component"] = "volume-copy"
	// Three extents of buffers at most, plus the Go runtime.
	mem := resource.NewQuantity(64<<20+4*s.ExtentSize, resource.BinarySI)
	job := &batchv1.Job{
		TypeMeta:   metav1.TypeMeta{APIVersion: "batch/v1", Kind: "Job"},
		ObjectMeta: metav1.ObjectMeta{Namespace: s.Namespace, Name: s.Name, Labels: labels},
		Spec: batchv1.JobSpec{
			Parallelism:           ptr.To[int32](1),
			Completions:           ptr.To[int32](1),
			BackoffLimit:          ptr.To[int32](JobBackoffLimit),
			ActiveDeadlineSeconds: ptr.To(int64(s.ActiveDeadline / time.Second)),
			// A node drain or preemption is not the copy's failure.
			PodFailurePolicy: &batchv1.PodFailurePolicy{Rules: []batchv1.PodFailurePolicyRule{{
				Action:          batchv1.PodFailurePolicyActionIgnore,
				OnPodConditions: []batchv1.PodFailurePolicyOnPodConditionsPattern{{Type: corev1.DisruptionTarget, Status: corev1.ConditionTrue}},
			}}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					RestartPolicy:                corev1.RestartPolicyNever,
					AutomountServiceAccountToken: ptr.To(false),
					EnableServiceLinks:           ptr.To(false),
					SecurityContext: &corev1.PodSecurityContext{
						RunAsUser:          ptr.To(s.RunAsUser),
						RunAsGroup:         ptr.To(s.RunAsGroup),
						RunAsNonRoot:       ptr.To(s.RunAsUser != 0),
						SupplementalGroups: s.SupplementalGroups,
						SeccompProfile:     &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
					},
					Containers: []corev1.Container{{
						Name:            ContainerName,
						Image:           s.Image,
						ImagePullPolicy: pull,
						Args: []string{"volume-copy",
							"--source=" + SourceDevicePath, "--target=" + TargetDevicePath,
							"--extent-size=" + strconv.FormatInt(s.ExtentSize, 10),
							"--max-bytes-per-second=" + strconv.FormatInt(s.MaxBytesPerSecond, 10),
							"--result-file=/dev/termination-log"},
						VolumeDevices: []corev1.VolumeDevice{
							{Name: "source", DevicePath: SourceDevicePath},
							{Name: "target", DevicePath: TargetDevicePath},
						},
						TerminationMessagePath:   "/dev/termination-log",
						TerminationMessagePolicy: corev1.TerminationMessageReadFile,
						Resources: corev1.ResourceRequirements{
							Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: *mem},
							Limits:   corev1.ResourceList{corev1.ResourceMemory: *mem},
						},
						SecurityContext: &corev1.SecurityContext{
							Privileged:               ptr.To(false),
							AllowPrivilegeEscalation: ptr.To(false),
							ReadOnlyRootFilesystem:   ptr.To(true),
							Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
						},
					}},
					Volumes: []corev1.Volume{
						// readOnly: the kubelet gives the container the
						// source device with cgroup permission "r" only.
						{Name: "source", VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: s.SourceClaim, ReadOnly: true}}},
						{Name: "target", VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: s.TargetClaim}}},
					},
				},
			},
		},
	}
	if s.Owner != nil {
		job.OwnerReferences = []metav1.OwnerReference{*s.Owner}
	}
	return job, nil
}

func (s JobSpec) validate() error {
	var errs []string
	add := func(field, value, rule string) { errs = append(errs, fmt.Sprintf("%s %q: %s", field, value, rule)) }
	for _, f := range []struct{ field, value string }{{"namespace", s.Namespace}, {"name", s.Name}} {
		// A Job's name is also its pods' job-name label: a DNS label.
		if msgs := validation.IsDNS1123Label(f.value); len(msgs) > 0 {
			add(f.field, f.value, strings.Join(msgs, "; "))
		}
	}
	for _, f := range []struct{ field, value string }{{"source claim", s.SourceClaim}, {"target claim", s.TargetClaim}} {
		if msgs := validation.IsDNS1123Subdomain(f.value); len(msgs) > 0 {
			add(f.field, f.value, strings.Join(msgs, "; "))
		}
	}
	if s.SourceClaim != "" && s.SourceClaim == s.TargetClaim {
		add("target claim", s.TargetClaim, "must differ from the source claim")
	}
	if strings.TrimSpace(s.Image) == "" {
		add("image", s.Image, "must not be empty")
	}
	if err := ValidateExtentSize(s.ExtentSize); err != nil {
		add("extent size", strconv.FormatInt(s.ExtentSize, 10), err.Error())
	}
	if s.MaxBytesPerSecond < 0 {
		add("max bytes per second", strconv.FormatInt(s.MaxBytesPerSecond, 10), "must be >= 0 (0 is unlimited)")
	}
	if s.ActiveDeadline < time.Second {
		add("active deadline", s.ActiveDeadline.String(), "must be at least 1s")
	}
	if s.RunAsUser < 0 || s.RunAsGroup < 0 {
		add("runAsUser/runAsGroup", fmt.Sprintf("%d/%d", s.RunAsUser, s.RunAsGroup), "must be >= 0")
	}
	if len(errs) > 0 {
		return fmt.Errorf("volume-copy Job %s/%s: %s", s.Namespace, s.Name, strings.Join(errs, "; "))
	}
	return nil
}
