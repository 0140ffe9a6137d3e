package conversion

import (
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/billyronks/couchestor/pkg/migration"
	"github.com/billyronks/couchestor/pkg/tiering"
)

// Verdict codes of Eligible: stable, short, for the ErasureCoding condition.
const (
	CodeConvert       = "Convert"
	CodeNotCold       = "NotCold"
	CodeTooSmall      = "TooSmall"
	CodeExcluded      = "Excluded"
	CodeNoClaim       = "NoClaim"
	CodeAccessMode    = "AccessMode"
	CodeResidency     = "Residency"
	CodeInUse         = "InUse"
	CodeConverting    = "Converting"
	CodeMigrating     = "Migrating"
	CodeSizeAlignment = "SizeNotAligned"
	CodeBadAnnotation = "BadAnnotation"
	CodeNameTooLong   = "NameTooLong"
)

// Volume is what Eligible needs to know about one volume beyond its tier
// decision.
type Volume struct {
	// PV is the PersistentVolume; its annotations carry the cooldown and the
	// opt-outs.
	PV *corev1.PersistentVolume
	// Claim is the PVC bound to it (nil: none).
	Claim *corev1.PersistentVolumeClaim
	// UsedBy are the pods (namespace/name) that use the claim and have not
	// ended.
	UsedBy []string
	// SizeBytes is the volume's size (Mayastor's, else the PV's capacity).
	SizeBytes int64
}

// Rules are the policy's conversion settings.
type Rules struct {
	MinSizeBytes int64
	// Residency is how long a volume must have been left alone (since its
	// last migration) before it converts: the policy's cooldownPeriod.
	Residency time.Duration
}

// Verdict says whether a volume converts now (Code CodeConvert), must wait
// (Wait: it qualifies but something temporary holds it, e.g. a pod uses it),
// or does not qualify (Code says why).
type Verdict struct {
	Code   string
	Wait   bool
	Reason string
}

// Convert says whether the verdict is to convert now.
func (v Verdict) Convert() bool { return v.Code == CodeConvert }

// maxSourceName keeps the ECVolume name ("ec-" + source PV) and the names
// derived from it (Leases) within 253 characters.
const maxSourceName = 200

// Eligible decides whether a replicated volume, whose tier decision is d,
// converts to erasure coding now. It is pure: every input is passed in.
func Eligible(d tiering.Decision, v Volume, r Rules, now time.Time) Verdict {
	no := func(code, format string, a ...any) Verdict {
		return Verdict{Code: code, Reason: fmt.Sprintf(format, a...)}
	}
	wait := func(code, format string, a ...any) Verdict {
		return Verdict{Code: code, Wait: true, Reason: fmt.Sprintf(format, a...)}
	}
	ann := v.PV.Annotations
	switch {
	case ann[AnnotationConversion] != "":
		return no(CodeConverting, "a conversion is in progress or its source is retained")
	case ann[tiering.AnnotationExclude] == "true" || ann[AnnotationExcludeFromConversion] == "true":
		return no(CodeExcluded, "excluded by annotation on the PV")
	case v.Claim != nil && (v.Claim.Annotations[tiering.AnnotationExclude] == "true" || v.Claim.Annotations[AnnotationExcludeFromConversion] == "true"):
		return no(CodeExcluded, "excluded by annotation on the PVC")
	case ann[migration.AnnotationMigration] != "":
		return no(CodeMigrating, "a tier migration is in progress")
	}
	// Cold, and deciding to stay cold: not a volume on its way elsewhere, and
	// its IOPS known (or pinned cold).
	if d.From != tiering.Cold || d.Code != tiering.CodeOnTier || (!d.IOPSKnown && !d.Pinned) {
		return no(CodeNotCold, "not a cold volume that stays cold (%s on %s: %s)", d.Code, d.From, d.Reason)
	}
	if v.SizeBytes < r.MinSizeBytes {
		return no(CodeTooSmall, "%d bytes, below ecMinVolumeSizeBytes %d", v.SizeBytes, r.MinSizeBytes)
	}
	if v.SizeBytes%512 != 0 {
		return no(CodeSizeAlignment, "%d bytes is not a multiple of 512 (an ECVolume's LBA size)", v.SizeBytes)
	}
	if len(v.PV.Name) > maxSourceName {
		return no(CodeNameTooLong, "PV name is %d characters, more than the %d a conversion can derive names from", len(v.PV.Name), maxSourceName)
	}
	if v.Claim == nil || v.Claim.Status.Phase != corev1.ClaimBound || v.Claim.Spec.VolumeName != v.PV.Name {
		return no(CodeNoClaim, "no PVC is bound to it (a conversion keeps a PVC's identity; an unclaimed volume has none)")
	}
	for _, m := range v.Claim.Spec.AccessModes {
		if m != corev1.ReadWriteOnce && m != corev1.ReadWriteOncePod {
			return no(CodeAccessMode, "PVC access mode %s: erasure-coded volumes have one writer (ReadWriteOnce, ReadWriteOncePod)", m)
		}
	}
	until, err := tiering.Cooldown(ann, r.Residency)
	if err != nil {
		return no(CodeBadAnnotation, "%v", err)
	}
	if now.Before(until) {
		return wait(CodeResidency, "migrated recently: converts after %s (cooldownPeriod since the last migration)", until.UTC().Format(time.RFC3339))
	}
	if len(v.UsedBy) > 0 {
		return wait(CodeInUse, "in use by pod %s: Kubernetes cannot swap a volume under a running pod; converts when no pod uses it", strings.Join(v.UsedBy, ", "))
	}
	return Verdict{Code: CodeConvert, Reason: "cold, unused, at least ecMinVolumeSizeBytes"}
}

// PodsUsing returns the pods (namespace/name) of pods that use the claim
// and have not ended.
func PodsUsing(claim *corev1.PersistentVolumeClaim, pods []corev1.Pod) []string {
	var out []string
	for i := range pods {
		p := &pods[i]
		if p.Namespace != claim.Namespace || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		for _, vol := range p.Spec.Volumes {
			if vol.PersistentVolumeClaim != nil && vol.PersistentVolumeClaim.ClaimName == claim.Name {
				out = append(out, p.Namespace+"/"+p.Name)
				break
			}
		}
	}
	return out
}
