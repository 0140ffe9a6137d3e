package csi

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Rules of the driver that need no API server, no mount and no process: the
// gRPC handlers call them, the table tests in rules_test.go prove them.

// ParamPolicy is the StorageClass parameter naming the ErasureCodingPolicy of
// every volume the class provisions.
const ParamPolicy = "erasureCodingPolicy"

// AnnotationCSIName records, on an ECVolume the driver created, the CSI
// volume name it was created for (CreateVolume's idempotency key).
const AnnotationCSIName = "ec.csi.storage.billyronks.io/name"

// LabelManaged marks ECVolumes the driver created; ListVolumes lists only them.
const LabelManaged = "ec.csi.storage.billyronks.io/managed"

const (
	lbaBytes        = 512
	defaultSize     = 1 << 30 // a request without capacity_range
	sizeGranularity = 1 << 20 // sizes are rounded up to whole MiB when the limit allows
)

// VolumeName maps a CSI volume name (any UTF-8 of up to 128 bytes) to the
// name of its ECVolume: the name itself when it is a valid, lower-case DNS
// subdomain (external-provisioner's pvc-<uuid> always is), else "csi-" and a
// hash of it, so two names never share a volume (the annotation guards
// against a hash collision).
func VolumeName(csiName string) string {
	if len(validation.IsDNS1123Subdomain(csiName)) == 0 && len(csiName) <= 200 {
		return csiName
	}
	sum := sha256.Sum256([]byte(csiName))
	return "csi-" + hex.EncodeToString(sum[:20])
}

// VolumeSize chooses the ECVolume size for a capacity range: the required
// bytes (1 GiB when neither bound is set) rounded up to a whole MiB, or to
// the next multiple of 512 (the LBA size) when a MiB would pass the limit.
func VolumeSize(r *csipb.CapacityRange) (int64, error) {
	req, lim := r.GetRequiredBytes(), r.GetLimitBytes()
	if req < 0 || lim < 0 {
		return 0, fmt.Errorf("capacity_range required_bytes %d and limit_bytes %d must not be negative", req, lim)
	}
	if lim != 0 && req > lim {
		return 0, fmt.Errorf("capacity_range required_bytes %d exceeds limit_bytes %d", req, lim)
	}
	if req == 0 {
		req = defaultSize
		if lim != 0 && lim < req {
			req = lim
		}
	}
	size := roundUp(req, sizeGranularity)
	if lim != 0 && size > lim {
		size = roundUp(req, lbaBytes)
	}
	if lim != 0 && size > lim {
		return 0, fmt.Errorf("capacity_range limit_bytes %d leaves no multiple of %d (the LBA size) at or above required_bytes %d", lim, lbaBytes, r.GetRequiredBytes())
	}
	return size, nil
}

func roundUp(n, m int64) int64 {
	if r := n % m; r != 0 {
		return n + m - r
	}
	return n
}

// SizeFits reports whether an existing volume of size bytes satisfies the
// capacity range (CreateVolume's idempotency rule, ControllerExpandVolume's
// no-op rule).
func SizeFits(size int64, r *csipb.CapacityRange) bool {
	if size < r.GetRequiredBytes() {
		return false
	}
	return r.GetLimitBytes() == 0 || size <= r.GetLimitBytes()
}

// PolicyParameter returns the erasureCodingPolicy parameter and refuses
// parameters the driver does not know (external-provisioner's
// csi.storage.k8s.io/ ones are allowed and ignored).
func PolicyParameter(params map[string]string) (string, error) {
	var unknown []string
	for k := range params {
		if k != ParamPolicy && !strings.HasPrefix(k, "csi.storage.k8s.io/") {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return "", fmt.Errorf("StorageClass parameters %q are unknown: the only parameter is %s", unknown, ParamPolicy)
	}
	p := params[ParamPolicy]
	if p == "" {
		return "", fmt.Errorf("StorageClass parameter %s is required: it names the ErasureCodingPolicy the volume's stripes are written under", ParamPolicy)
	}
	return p, nil
}

// Access modes. A volume has exactly one writer at a time: its export holds
// the volume's writer Lease (pkg/fence) on one node, and ext4 and xfs are
// not cluster filesystems. So every single-node mode is served (several pods
// on that one node share one mounted filesystem, which one kernel keeps
// coherent) and every multi-node mode is refused, readers included: a reader
// on a second node would need a second export, and a second export of a
// volume waits for (or fences) the first.
var supportedModes = map[csipb.VolumeCapability_AccessMode_Mode]bool{
	csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER:        true,
	csipb.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY:   true,
	csipb.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER: true,
	csipb.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER:  true,
}

// Filesystems NodeStageVolume formats and mounts (default ext4).
var supportedFs = map[string]bool{"": true, "ext4": true, "xfs": true}

// CheckCapability returns why the driver cannot serve a volume capability,
// or nil.
func CheckCapability(c *csipb.VolumeCapability) error {
	if c == nil {
		return fmt.Errorf("volume capability is missing")
	}
	mode := c.GetAccessMode().GetMode()
	if !supportedModes[mode] {
		return fmt.Errorf("access mode %s is not supported: a volume has one writer, its export on one node (SINGLE_NODE_* modes only)", mode)
	}
	switch {
	case c.GetBlock() != nil:
	case c.GetMount() != nil:
		if fs := c.GetMount().GetFsType(); !supportedFs[fs] {
			return fmt.Errorf("fs_type %q is not supported: ext4 (the default) or xfs", fs)
		}
	default:
		return fmt.Errorf("access type is missing: block or mount")
	}
	return nil
}

// CheckCapabilities checks each capability.
func CheckCapabilities(cs []*csipb.VolumeCapability) error {
	if len(cs) == 0 {
		return fmt.Errorf("volume_capabilities are missing")
	}
	for _, c := range cs {
		if err := CheckCapability(c); err != nil {
			return err
		}
	}
	return nil
}

// PlaceableBytes is the largest volume size (data bytes) that policy k+m
// can still write onto pools with the given free bytes: each stripe puts its
// k+m shards (each a k-th of the stripe's data) on k+m distinct pools, so a
// pool contributes at most one shard of each stripe. With x the bytes each
// stripe-set takes on a pool, the most that fits is the largest x with
// Σ min(free_i, x) ≥ (k+m)·x; the data it holds is k·x.
func PlaceableBytes(free []int64, k, m int) int64 {
	n := k + m
	if k <= 0 || m < 0 || len(free) < n {
		return 0
	}
	f := append([]int64(nil), free...)
	sort.Slice(f, func(i, j int) bool { return f[i] > f[j] })
	// With the pools sorted by free space descending, the optimum caps the
	// first j pools at x and takes the rest whole: x = rest/(n-j) where
	// rest is the free space of pools j.., valid when x <= f[j-1] (all of
	// pools 0..j-1 reach the cap) and x >= f[j] (pool j is not capped).
	var rest int64
	for _, v := range f {
		if v > 0 {
			rest += v
		}
	}
	for j := 0; j < n; j++ {
		x := rest / int64(n-j)
		if (j == 0 || x <= f[j-1]) && x >= f[j] {
			return x * int64(k)
		}
		rest -= max(f[j], 0)
	}
	// Every pool of the first n caps: x is the n-th largest.
	return max(f[n-1], 0) * int64(k)
}
