package conversion

import (
	"errors"
	"fmt"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/billyronks/couchestor/pkg/blockcopy"
)

// JobCopier is the production Copier: pkg/blockcopy's Job (`couchestor
// volume-copy` in the project's image) and its termination-message report.
type JobCopier struct {
	Image             string
	PullPolicy        corev1.PullPolicy
	ExtentSize        int64
	MaxBytesPerSecond int64
	// Deadline bounds one copy Job (all its pod retries).
	Deadline time.Duration
	// RunAsUser and SupplementalGroups: who opens the device nodes (see
	// blockcopy.JobSpec).
	RunAsUser          int64
	SupplementalGroups []int64
}

// Job is the copy Job of the conversion.
func (j JobCopier) Job(ns, name string, rec *Record, srcClaim, dstClaim string) (*batchv1.Job, error) {
	return blockcopy.BuildJob(blockcopy.JobSpec{
		Namespace: ns, Name: name, Image: j.Image, ImagePullPolicy: j.PullPolicy,
		SourceClaim: srcClaim, TargetClaim: dstClaim,
		ExtentSize: j.ExtentSize, MaxBytesPerSecond: j.MaxBytesPerSecond, ActiveDeadline: j.Deadline,
		Labels:    map[string]string{LabelConversion: rec.ID},
		RunAsUser: j.RunAsUser, RunAsGroup: j.RunAsUser, SupplementalGroups: j.SupplementalGroups,
	})
}

// Result reads the copy's report; a failed or unverified copy is an error.
func (JobCopier) Result(message string) (CopyResult, error) {
	if message == "" {
		return CopyResult{}, errors.New("the copy pod left no termination message")
	}
	r, err := blockcopy.DecodeReport([]byte(message))
	if err != nil {
		return CopyResult{}, err
	}
	if !r.OK {
		return CopyResult{}, fmt.Errorf("copy failed: %s", r.Error)
	}
	if !r.Result.Verified {
		return CopyResult{}, errors.New("copy reports success but not a verified target")
	}
	return CopyResult{SizeBytes: r.Result.SizeBytes, BytesWritten: r.Result.BytesWritten,
		SourceDigest: r.Result.SourceDigest, TargetDigest: r.Result.TargetDigest, Seconds: r.Result.DurationSeconds}, nil
}
