package conversion

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

func testRecord() *Record {
	r := &Record{Direction: ToErasureCoded, Policy: "p", MaxConcurrent: 1, Step: StepPreparing, StartedAt: time.Unix(1e9, 0).UTC(),
		FromTier: TierCold, ToTier: TierErasureCoded, Source: "pvc-1", SourceHandle: "h", SizeBytes: 1 << 20,
		SourceReclaimPolicy: corev1.PersistentVolumeReclaimDelete,
		Claim:               Claim{Namespace: "apps", Name: "data", UID: "u", AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}, VolumeMode: corev1.PersistentVolumeFilesystem, StorageClassName: "mayastor", Request: resource.MustParse("1Mi")},
		ECPolicy:            "rs", Target: "ec-pvc-1", Retain: "168h0m0s"}
	r.ID = ConversionID(r.Source, r.StartedAt)
	return r
}

func TestRecordRoundTripsAndRefusesWhatItCannotRead(t *testing.T) {
	r := testRecord()
	raw, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	back, err := Parse(raw)
	if err != nil || back.ID != r.ID || back.Claim.Request.Cmp(r.Claim.Request) != 0 || !back.StartedAt.Equal(r.StartedAt) {
		t.Fatalf("round trip: %v %+v", err, back)
	}
	for _, c := range []struct{ raw, in string }{
		{strings.Replace(raw, `"step":"Preparing"`, `"step":"Teleporting"`, 1), `step "Teleporting"`},
		{strings.Replace(raw, `"sizeBytes":1048576`, `"sizeBytes":0`, 1), "sizeBytes 0"},
		{strings.Replace(raw, `{`, `{"surprise":1,`, 1), `unknown field "surprise"`},
		{strings.Replace(raw, `"ecPolicy":"rs",`, ``, 1), "ecPolicy is empty"},
		{strings.Replace(raw, `"retain":"168h0m0s"`, `"retain":"a week"`, 1), `retain "a week"`},
		{"not json", "annotation storage.billyronks.io/ec-conversion"},
	} {
		if _, err := Parse(c.raw); err == nil || !strings.Contains(err.Error(), c.in) {
			t.Errorf("Parse(%.60s…): %v, want an error containing %q", c.raw, err, c.in)
		}
	}
}

func TestConversionIDsAreShortAndDistinct(t *testing.T) {
	a := ConversionID("pvc-1", time.Unix(1, 0))
	if len(a) > 20 || a == ConversionID("pvc-1", time.Unix(2, 0)) || a == ConversionID("pvc-2", time.Unix(1, 0)) || a != ConversionID("pvc-1", time.Unix(1, 0)) {
		t.Fatalf("IDs: %s", a)
	}
	// The Job name is a pod label value: at most 63 characters.
	if r := testRecord(); len(r.JobName()) > 63 {
		t.Fatal(r.JobName())
	}
}

func TestRecreatedClaimKeepsIdentityAndDropsBinding(t *testing.T) {
	pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "data", UID: "u1",
		Labels:      map[string]string{"app": "db"},
		Annotations: map[string]string{"team": "x", "pv.kubernetes.io/bind-completed": "yes", "volume.kubernetes.io/selected-node": "n1"}},
		Spec: corev1.PersistentVolumeClaimSpec{AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOncePod}, VolumeMode: ptr.To(corev1.PersistentVolumeBlock),
			StorageClassName: ptr.To("mayastor"), VolumeName: "pvc-old",
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("10Gi")}}}}
	got := RecreatedClaim(ClaimOf(pvc), "ec-pvc-old")
	if got.Name != "data" || got.Namespace != "apps" || got.UID != "" || got.Labels["app"] != "db" || got.Annotations["team"] != "x" ||
		len(got.Annotations) != 1 || got.Spec.VolumeName != "ec-pvc-old" || *got.Spec.VolumeMode != corev1.PersistentVolumeBlock ||
		*got.Spec.StorageClassName != "mayastor" || got.Spec.AccessModes[0] != corev1.ReadWriteOncePod || got.Spec.Resources.Requests.Storage().String() != "10Gi" {
		t.Fatalf("recreated claim: %+v", got)
	}
}

func TestAliasAndFinalPVs(t *testing.T) {
	r := testRecord()
	src := &corev1.CSIPersistentVolumeSource{Driver: "io.openebs.csi-mayastor", VolumeHandle: "h", FSType: "xfs"}
	a := r.AliasPV(r.SourceAlias(), src, nil, r.SizeBytes, "ns", r.SourceClaim())
	if *a.Spec.VolumeMode != corev1.PersistentVolumeBlock || a.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimRetain ||
		a.Spec.CSI.VolumeHandle != "h" || a.Spec.ClaimRef.Name != r.SourceClaim() || a.Spec.StorageClassName != "" || a.Labels[LabelConversion] != r.ID {
		t.Fatalf("alias: %+v", a.Spec)
	}
	f := r.FinalPV(r.ECSource("xfs"), nil, "mayastor")
	if f.Name != "ec-pvc-1" || *f.Spec.VolumeMode != corev1.PersistentVolumeFilesystem || f.Spec.CSI.Driver != "ec.csi.storage.billyronks.io" ||
		f.Spec.CSI.VolumeAttributes["erasureCodingPolicy"] != "rs" || f.Spec.ClaimRef.Name != "data" || f.Spec.ClaimRef.UID != "" ||
		f.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimRetain || f.Annotations[AnnotationOriginalStorageClass] != "mayastor" {
		t.Fatalf("final: %+v", f)
	}
}

func TestCopyResultVerified(t *testing.T) {
	ok := CopyResult{SizeBytes: 10, SourceDigest: "a", TargetDigest: "a"}
	if err := ok.Verified(10); err != nil {
		t.Fatal(err)
	}
	for _, c := range []CopyResult{{SizeBytes: 9, SourceDigest: "a", TargetDigest: "a"}, {SizeBytes: 10, SourceDigest: "a", TargetDigest: "b"}, {SizeBytes: 10}} {
		if c.Verified(10) == nil {
			t.Errorf("%+v verified", c)
		}
	}
}
