package conversion

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/billyronks/couchestor/pkg/blockcopy"
)

// DefaultRetain is how long a converted volume's source is kept before it
// is deleted: a week, long enough to notice a problem
// over a weekend, short enough that the space comes back.
const DefaultRetain = 7 * 24 * time.Hour

// DefaultBandwidth limits each copy to 100 MiB/s: a background job beside
// production I/O on the same pools (a tenth of an NVMe, most of an HDD's
// sequential rate).
const DefaultBandwidth = 100 << 20

// Options are the operator flags of conversions.
type Options struct {
	Enabled           bool
	Retain            time.Duration
	Image             string
	MaxBytesPerSecond int64
	ExtentSize        int64
	CopyDeadline      time.Duration
	RunAsUser         int64
	DeviceGroup       int64
}

// BindFlags registers the flags on fs.
func (o *Options) BindFlags(fs *flag.FlagSet) {
	fs.BoolVar(&o.Enabled, "ec-conversion", true, "Convert cold volumes of StoragePolicies with spec.ecPolicyRef to erasure coding. false: qualifying volumes are only reported (condition ErasureCoding).")
	fs.DurationVar(&o.Retain, "ec-conversion-retain", DefaultRetain, "How long a converted volume's source PV and Mayastor volume are kept after the PVC is rebound, then deleted.")
	fs.StringVar(&o.Image, "ec-conversion-image", os.Getenv("COUCHESTOR_IMAGE"), "Image of the copy Job (the operator's own image; default $COUCHESTOR_IMAGE). Empty: conversions cannot run and the ErasureCoding condition says so.")
	fs.Int64Var(&o.MaxBytesPerSecond, "ec-conversion-bandwidth", DefaultBandwidth, "Most bytes per second each copy Job reads from the source (copy and verify pass each). 0: unlimited.")
	fs.Int64Var(&o.ExtentSize, "ec-conversion-extent-size", blockcopy.DefaultExtentSize, "Bytes per checksummed extent of the copy.")
	fs.Int64Var(&o.RunAsUser, "ec-conversion-run-as-user", 0, "uid of the copy Job. 0 (root with every capability dropped) opens raw-block device nodes owned root:root 0600, which is what a node without udev gives and what containerd passes through by default; it is refused in a namespace that enforces Pod Security \"restricted\" (config/default's), where a non-root uid is needed together with --ec-conversion-device-group or containerd's device_ownership_from_security_context.")
	fs.Int64Var(&o.DeviceGroup, "ec-conversion-device-group", -1, "Supplemental gid of the copy Job that may open the nodes' block devices (6, disk, where udev makes them root:disk 0660). -1: none.")
	fs.DurationVar(&o.CopyDeadline, "ec-conversion-copy-deadline", 24*time.Hour, "Longest a copy Job may run (all its pod retries) before it counts as a failed attempt.")
}

// Validate checks the flags.
func (o *Options) Validate() error {
	switch {
	case o.Retain < 0:
		return fmt.Errorf("--ec-conversion-retain=%v: must not be negative", o.Retain)
	case o.MaxBytesPerSecond < 0:
		return fmt.Errorf("--ec-conversion-bandwidth=%d: must be >= 0 (0 is unlimited)", o.MaxBytesPerSecond)
	case o.RunAsUser < 0:
		return fmt.Errorf("--ec-conversion-run-as-user=%d: must be >= 0", o.RunAsUser)
	case o.DeviceGroup < -1:
		return fmt.Errorf("--ec-conversion-device-group=%d: must be a gid >= 0, or -1 for none", o.DeviceGroup)
	case o.CopyDeadline < time.Minute:
		return fmt.Errorf("--ec-conversion-copy-deadline=%v: must be at least 1m", o.CopyDeadline)
	}
	if err := blockcopy.ValidateExtentSize(o.ExtentSize); err != nil {
		return fmt.Errorf("--ec-conversion-extent-size=%d: %w", o.ExtentSize, err)
	}
	return nil
}

// Copier is the production copier of these options.
func (o *Options) Copier() JobCopier {
	j := JobCopier{Image: o.Image, ExtentSize: o.ExtentSize, MaxBytesPerSecond: o.MaxBytesPerSecond, Deadline: o.CopyDeadline, RunAsUser: o.RunAsUser}
	if o.DeviceGroup >= 0 {
		j.SupplementalGroups = []int64{o.DeviceGroup}
	}
	return j
}
