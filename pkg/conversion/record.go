package conversion

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/types"

	"github.com/billyronks/couchestor/pkg/tiering"
)

// Annotations and labels of a conversion.
const (
	// AnnotationConversion on the source PV holds the JSON Record of the
	// conversion in progress (written before every step).
	AnnotationConversion = tiering.AnnotationConversion
	// AnnotationExcludeFromConversion ("true") on a PV or its PVC forbids
	// converting it while tiering still moves it (exclude-from-tiering
	// forbids both).
	AnnotationExcludeFromConversion = "storage.billyronks.io/exclude-from-ec-conversion"
	// AnnotationConvertedFrom on a conversion's target PV names the source
	// PV; AnnotationOriginalStorageClass the StorageClass the volume was
	// provisioned from before it was erasure-coded (heat-up provisions its
	// replicated volume from it).
	AnnotationConvertedFrom        = "storage.billyronks.io/converted-from"
	AnnotationOriginalStorageClass = "storage.billyronks.io/original-storage-class"
	// AnnotationUndoConversion ("true") on a PVC asks to undo its
	// conversion to erasure coding while the source is retained: the
	// ECVolume's current bytes are copied back onto the retained source PV
	// and the PVC is rebound to it (Converter, UndoReconciler).
	AnnotationUndoConversion = "storage.billyronks.io/undo-conversion"
	// LabelConversion marks every object a conversion creates (temporary
	// PVCs, block aliases, the copy Job) with the conversion's ID.
	LabelConversion = "storage.billyronks.io/conversion"
)

// Direction of a conversion.
type Direction string

const (
	// ToErasureCoded: a replicated Mayastor volume becomes an ECVolume.
	ToErasureCoded Direction = "ToErasureCoded"
	// ToReplicated: an erasure-coded volume becomes a replicated one again
	// (heat-up: a new volume of its original StorageClass; undo: the
	// retained source of the earlier conversion).
	ToReplicated Direction = "ToReplicated"
)

// Tier names in history: a conversion is cold → erasure-coded, and back.
const (
	TierErasureCoded = "erasure-coded"
	TierCold         = string(tiering.Cold)
)

// Step is where a conversion is. Each is recorded before it is acted on and
// every action of a step is idempotent, so a restarted operator repeats the
// step it finds.
type Step string

const (
	// StepPreparing: the source's reclaim policy is set to Retain and the
	// target is created (ECVolume, or a provisioned replicated volume).
	StepPreparing Step = "Preparing"
	// StepReleasingClaim: the user's PVC is deleted (it must be unused) so
	// that no pod can write the source during the copy.
	StepReleasingClaim Step = "ReleasingClaim"
	// StepCopying: block aliases and temporary PVCs of both volumes exist in
	// the operator's namespace and the copy Job runs.
	StepCopying Step = "Copying"
	// StepRebinding: the copy is verified; temporaries are deleted and the
	// user's PVC recreated, bound to the target.
	StepRebinding Step = "Rebinding"
	// StepRetaining: done; the source is retained until RetainUntil
	// (undo possible), then deleted.
	StepRetaining Step = "Retaining"
	// StepDeletingSource: retention over; the source PV (and its volume,
	// per its reclaim policy) is being deleted.
	StepDeletingSource Step = "DeletingSource"
	// StepRollingBack: the conversion failed before the PVC was rebound to
	// the target: the PVC is recreated bound to the source, the target
	// removed.
	StepRollingBack Step = "RollingBack"
)

var steps = map[Step]bool{StepPreparing: true, StepReleasingClaim: true, StepCopying: true, StepRebinding: true,
	StepRetaining: true, StepDeletingSource: true, StepRollingBack: true}

// Claim is the user's PVC as it was when the conversion started: what the
// recreated PVC keeps.
type Claim struct {
	Namespace        string                              `json:"namespace"`
	Name             string                              `json:"name"`
	UID              types.UID                           `json:"uid"`
	Labels           map[string]string                   `json:"labels,omitempty"`
	Annotations      map[string]string                   `json:"annotations,omitempty"`
	AccessModes      []corev1.PersistentVolumeAccessMode `json:"accessModes"`
	VolumeMode       corev1.PersistentVolumeMode         `json:"volumeMode"`
	StorageClassName string                              `json:"storageClassName"`
	Request          resource.Quantity                   `json:"request"`
}

// CopyResult is what the copy Job reports (its termination message).
type CopyResult struct {
	SizeBytes    int64   `json:"sizeBytes"`
	BytesWritten int64   `json:"bytesWritten"`
	SourceDigest string  `json:"sourceDigest"`
	TargetDigest string  `json:"targetDigest"`
	Seconds      float64 `json:"seconds"`
}

// Verified says whether the result proves the target holds the source's
// bytes: every extent read back from both sides, digests equal, the whole
// size covered.
func (c CopyResult) Verified(size int64) error {
	switch {
	case c.SizeBytes != size:
		return fmt.Errorf("copy covered %d bytes, the volume has %d", c.SizeBytes, size)
	case c.SourceDigest == "" || c.TargetDigest == "":
		return errors.New("copy result has no digest of both sides")
	case c.SourceDigest != c.TargetDigest:
		return fmt.Errorf("target digest %s differs from source digest %s", c.TargetDigest, c.SourceDigest)
	}
	return nil
}

// Record is the persisted state of one conversion (AnnotationConversion on
// the source PV). It holds everything needed to resume without the policy.
type Record struct {
	ID        string    `json:"id"`
	Direction Direction `json:"direction"`
	Policy    string    `json:"policy"`
	// MaxConcurrent is the policy's maxConcurrentMigrations at the start.
	MaxConcurrent int32     `json:"maxConcurrent"`
	Step          Step      `json:"step"`
	StartedAt     time.Time `json:"startedAt"`
	TriggerIOPS   float64   `json:"triggerIOPS"`
	FromTier      string    `json:"fromTier"`
	ToTier        string    `json:"toTier"`

	// Source is the PV that carries the record; SourceHandle its CSI volume
	// handle (the engine's slot key); SizeBytes its size.
	Source       string `json:"source"`
	SourceHandle string `json:"sourceHandle"`
	SizeBytes    int64  `json:"sizeBytes"`
	// SourceReclaimPolicy is the source PV's reclaim policy before the
	// conversion set it to Retain.
	SourceReclaimPolicy corev1.PersistentVolumeReclaimPolicy `json:"sourceReclaimPolicy"`
	Claim               Claim                                `json:"claim"`

	// Target: ECPolicy and Target (the ECVolume and final PV name) for
	// ToErasureCoded; TargetStorageClass (heat-up, a new volume) or
	// TargetPV (undo, the retained source of the conversion being undone)
	// for ToReplicated. Target is the final PV's name in every case.
	ECPolicy           string `json:"ecPolicy,omitempty"`
	TargetStorageClass string `json:"targetStorageClass,omitempty"`
	Undo               bool   `json:"undo,omitempty"`
	Target             string `json:"target"`

	CopyAttempts int         `json:"copyAttempts,omitempty"`
	Copy         *CopyResult `json:"copy,omitempty"`
	// Retain is how long the source is kept after the rebind.
	Retain      string    `json:"retain"`
	RebindAt    time.Time `json:"rebindAt,omitzero"`
	RetainUntil time.Time `json:"retainUntil,omitzero"`
	Failure     string    `json:"failure,omitempty"`
	// UndoneBy, on a retained conversion to erasure coding, is the ID of
	// the undo that copies the ECVolume back onto this source: while it is
	// set the retention never ends (the source is the undo's target).
	UndoneBy string `json:"undoneBy,omitempty"`
}

// ConversionID names a conversion's temporary objects: short (it is in Job
// and label values), unique per source and start.
func ConversionID(source string, started time.Time) string {
	h := sha256.Sum256([]byte(source + "\x00" + started.UTC().Format(time.RFC3339Nano)))
	return "cv-" + hex.EncodeToString(h[:6])
}

// Names of the temporary objects of a conversion (all in the operator's
// namespace, except the aliases, which are PVs).
func (r *Record) SourceClaim() string { return r.ID + "-src" }
func (r *Record) TargetClaim() string { return r.ID + "-dst" }
func (r *Record) SourceAlias() string { return r.ID + "-src" }
func (r *Record) TargetAlias() string { return r.ID + "-dst" }
func (r *Record) JobName() string     { return r.ID + "-copy" }

// Parse reads a record strictly: unknown fields, a missing field or an
// unknown step are errors naming it (never read as zero).
func Parse(raw string) (*Record, error) {
	dec := json.NewDecoder(bytes.NewReader([]byte(raw)))
	dec.DisallowUnknownFields()
	var r Record
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("annotation %s: %w", AnnotationConversion, err)
	}
	if err := r.validate(); err != nil {
		return nil, fmt.Errorf("annotation %s: %w", AnnotationConversion, err)
	}
	return &r, nil
}

func (r *Record) validate() error {
	switch {
	case r.ID == "":
		return errors.New("id is empty")
	case r.Direction != ToErasureCoded && r.Direction != ToReplicated:
		return fmt.Errorf("direction %q: must be %s or %s", r.Direction, ToErasureCoded, ToReplicated)
	case !steps[r.Step]:
		return fmt.Errorf("step %q is not a known step", r.Step)
	case r.Source == "" || r.SourceHandle == "":
		return errors.New("source and sourceHandle must be set")
	case r.SizeBytes <= 0:
		return fmt.Errorf("sizeBytes %d: must be positive", r.SizeBytes)
	case r.Claim.Namespace == "" || r.Claim.Name == "" || r.Claim.UID == "":
		return errors.New("claim namespace, name and uid must be set")
	case r.Target == "":
		return errors.New("target is empty")
	case r.Direction == ToErasureCoded && r.ECPolicy == "":
		return errors.New("ecPolicy is empty for a conversion to erasure coding")
	case r.Direction == ToReplicated && !r.Undo && r.TargetStorageClass == "":
		return errors.New("targetStorageClass is empty for a heat-up")
	case r.Direction == ToErasureCoded && r.Undo:
		return errors.New("undo is set on a conversion to erasure coding (only a conversion back to replicated undoes)")
	case r.Direction == ToReplicated && r.UndoneBy != "":
		return fmt.Errorf("undoneBy %q is set on a conversion back to replicated (only a retained conversion to erasure coding is undone)", r.UndoneBy)
	case r.Target == r.Source:
		return fmt.Errorf("target %q is the source", r.Target)
	case r.MaxConcurrent < 1:
		return fmt.Errorf("maxConcurrent %d: must be > 0", r.MaxConcurrent)
	case r.StartedAt.IsZero():
		return errors.New("startedAt is not set")
	}
	if _, err := time.ParseDuration(r.Retain); err != nil {
		return fmt.Errorf("retain %q: %w", r.Retain, err)
	}
	return nil
}

// Marshal renders the record for the annotation.
func (r *Record) Marshal() (string, error) {
	if err := r.validate(); err != nil {
		return "", err
	}
	b, err := json.Marshal(r)
	return string(b), err
}
