package blockcopy

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/zeebo/xxh3"
)

const (
	// DefaultExtentSize is the extent of `couchestor volume-copy`: large
	// enough that per-extent overhead (syscalls, a checksum, a progress
	// call) is noise, small enough that a rerun after a kill redoes little.
	DefaultExtentSize = 4 << 20
	// ExtentAlign is the granularity of an extent size: O_DIRECT needs
	// offsets aligned to the logical block size (512 or 4096).
	ExtentAlign = 4096
	// MaxExtentSize bounds the buffers (three extents are held at once).
	MaxExtentSize = 256 << 20
)

// Phases of a copy, as Progress and ExtentError name them.
const (
	PhaseCopy   = "copy"
	PhaseVerify = "verify"
)

// Options tune a copy or a verification.
type Options struct {
	// ExtentSize is the unit of checksums, comparisons and writes: a
	// positive multiple of ExtentAlign, at most MaxExtentSize.
	ExtentSize int64
	// MaxBytesPerSecond limits each pass to that many source bytes per
	// second; 0 is unlimited.
	MaxBytesPerSecond int64
	// Clock measures the duration and paces the limit (nil: RealClock).
	Clock Clock
	// Progress, when set, is called after every extent of each pass.
	Progress func(Progress)
}

// Progress is where a pass stands.
type Progress struct {
	Phase          string
	ExtentsDone    int64
	Extents        int64
	ExtentsWritten int64
	ExtentsSkipped int64
	BytesDone      int64
	SizeBytes      int64
}

// Result is what a copy did and what it proved. Its JSON is the Job's
// termination message (Report).
type Result struct {
	SizeBytes       int64 `json:"sizeBytes"`
	ExtentSizeBytes int64 `json:"extentSizeBytes"`
	Extents         int64 `json:"extents"`
	ExtentsWritten  int64 `json:"extentsWritten"`
	ExtentsSkipped  int64 `json:"extentsSkipped"`
	BytesWritten    int64 `json:"bytesWritten"`
	// SourceDigest and TargetDigest are xxh3-128 over the extents'
	// xxh3-128 checksums in order ("xxh3-128:<hex>"), of the bytes read in
	// the verify pass; equal when Verified.
	SourceDigest string `json:"sourceDigest"`
	TargetDigest string `json:"targetDigest"`
	Verified     bool   `json:"verified"`
	// VerifyReads is "direct" when every verify read bypassed the page
	// cache with O_DIRECT, "fadvise" when some fell back to a buffered
	// read after posix_fadvise(DONTNEED).
	VerifyReads     string        `json:"verifyReads,omitempty"`
	Duration        time.Duration `json:"-"`
	DurationSeconds float64       `json:"durationSeconds"`
}

// ExtentError is a failure at one extent.
type ExtentError struct {
	Phase  string
	Index  int64
	Offset int64
	Err    error
}

func (e *ExtentError) Error() string {
	return fmt.Sprintf("%s: extent %d (byte offset %d): %v", e.Phase, e.Index, e.Offset, e.Err)
}

func (e *ExtentError) Unwrap() error { return e.Err }

// ErrMismatch is wrapped by an ExtentError whose two sides differ.
var ErrMismatch = errors.New("checksum mismatch")

// ValidateExtentSize checks an extent size against the rule.
func ValidateExtentSize(n int64) error {
	if n <= 0 || n%ExtentAlign != 0 || n > MaxExtentSize {
		return fmt.Errorf("%d bytes: must be a positive multiple of %d bytes, at most %d", n, ExtentAlign, MaxExtentSize)
	}
	return nil
}

func (o *Options) check() error {
	if err := ValidateExtentSize(o.ExtentSize); err != nil {
		return fmt.Errorf("extent size %w", err)
	}
	if o.MaxBytesPerSecond < 0 {
		return fmt.Errorf("max bytes per second %d: must be >= 0 (0 is unlimited)", o.MaxBytesPerSecond)
	}
	if o.Clock == nil {
		o.Clock = RealClock{}
	}
	return nil
}

// Copy copies source onto target (which must exist and be at least as
// large), flushes it and verifies both sides. An extent already equal on
// the target is not rewritten, so a rerun after an interruption finishes
// the copy. The Result is filled as far as the copy got, on error too.
func Copy(ctx context.Context, source, target string, o Options) (Result, error) {
	return run(ctx, source, target, o, true)
}

// Verify reads every extent of both sides and compares their checksums,
// writing nothing.
func Verify(ctx context.Context, source, target string, o Options) (Result, error) {
	return run(ctx, source, target, o, false)
}

func run(ctx context.Context, source, target string, o Options, write bool) (res Result, err error) {
	res.ExtentSizeBytes = o.ExtentSize
	if err := o.check(); err != nil {
		return res, err
	}
	start := o.Clock.Now()
	defer func() { res.setDuration(o.Clock.Now().Sub(start)) }()
	src, tgt, err := openPair(source, target, write)
	if err != nil {
		return res, err
	}
	defer src.Close()
	defer tgt.Close()
	res.SizeBytes = src.size
	res.Extents = extents(src.size, o.ExtentSize)
	var sums []xxh3.Uint128
	if write {
		if sums, err = copyPass(ctx, src, tgt, o, &res); err != nil {
			return res, err
		}
		if err := tgt.sync(); err != nil {
			return res, err
		}
	}
	return res, verifyPass(ctx, src, tgt, o, sums, &res)
}

func (r *Result) setDuration(d time.Duration) {
	r.Duration = d
	r.DurationSeconds = float64(d.Round(time.Millisecond)) / float64(time.Second)
}

func extents(size, extent int64) int64 { return (size + extent - 1) / extent }

// openPair opens the source read-only and the target read-write (read-only
// to verify) and checks them
// against each other.
func openPair(source, target string, writeTarget bool) (*device, *device, error) {
	if source == "" || target == "" {
		return nil, nil, fmt.Errorf("source %q and target %q: both paths are required", source, target)
	}
	src, err := openDevice(source, false)
	if err != nil {
		return nil, nil, fmt.Errorf("open source: %w", err)
	}
	tgt, err := openDevice(target, writeTarget)
	if err != nil {
		src.Close()
		return nil, nil, fmt.Errorf("open target: %w", err)
	}
	fail := func(err error) (*device, *device, error) {
		src.Close()
		tgt.Close()
		return nil, nil, err
	}
	switch {
	case src.sameAs(tgt):
		return fail(fmt.Errorf("source %s and target %s are the same device: refusing to copy a volume onto itself", source, target))
	case src.size == 0:
		return fail(fmt.Errorf("source %s is empty (0 bytes): nothing to copy", source))
	case tgt.size < src.size:
		return fail(fmt.Errorf("target %s is %d bytes, smaller than source %s of %d bytes: the target must be at least the source's size", target, tgt.size, source, src.size))
	}
	return src, tgt, nil
}

// copyPass writes every extent whose target bytes differ from the source's
// and returns the source checksums it saw.
func copyPass(ctx context.Context, src, tgt *device, o Options, res *Result) ([]xxh3.Uint128, error) {
	th := newThrottle(o.MaxBytesPerSecond, o.ExtentSize, o.Clock)
	sbuf, tbuf := alignedBuffer(o.ExtentSize), alignedBuffer(o.ExtentSize)
	sums := make([]xxh3.Uint128, 0, res.Extents)
	for i := int64(0); i < res.Extents; i++ {
		off := i * o.ExtentSize
		n := min(o.ExtentSize, src.size-off)
		s, t := sbuf[:n], tbuf[:n]
		fail := func(err error) ([]xxh3.Uint128, error) {
			return sums, &ExtentError{Phase: PhaseCopy, Index: i, Offset: off, Err: err}
		}
		if err := th.wait(ctx, n); err != nil {
			return fail(err)
		}
		if _, err := src.readAt(s, off, false); err != nil {
			return fail(err)
		}
		if _, err := tgt.readAt(t, off, false); err != nil {
			return fail(err)
		}
		sums = append(sums, xxh3.Hash128(s))
		// Equal bytes, not equal checksums: stronger, and cheaper than a
		// second hash.
		if bytes.Equal(s, t) {
			res.ExtentsSkipped++
		} else {
			if err := tgt.writeAt(s, off); err != nil {
				return fail(err)
			}
			res.ExtentsWritten++
			res.BytesWritten += n
		}
		if o.Progress != nil {
			o.Progress(Progress{Phase: PhaseCopy, ExtentsDone: i + 1, Extents: res.Extents,
				ExtentsWritten: res.ExtentsWritten, ExtentsSkipped: res.ExtentsSkipped, BytesDone: off + n, SizeBytes: src.size})
		}
	}
	return sums, nil
}

// verifyPass reads both sides again, uncached, and compares checksums (and
// the source's with those of the copy pass, when given).
func verifyPass(ctx context.Context, src, tgt *device, o Options, copied []xxh3.Uint128, res *Result) error {
	th := newThrottle(o.MaxBytesPerSecond, o.ExtentSize, o.Clock)
	sbuf, tbuf := alignedBuffer(o.ExtentSize), alignedBuffer(o.ExtentSize)
	sd, td := xxh3.New(), xxh3.New()
	direct := true
	for i := int64(0); i < res.Extents; i++ {
		off := i * o.ExtentSize
		n := min(o.ExtentSize, src.size-off)
		s, t := sbuf[:n], tbuf[:n]
		fail := func(err error) error {
			return &ExtentError{Phase: PhaseVerify, Index: i, Offset: off, Err: err}
		}
		if err := th.wait(ctx, n); err != nil {
			return fail(err)
		}
		d1, err := src.readAt(s, off, true)
		if err != nil {
			return fail(err)
		}
		d2, err := tgt.readAt(t, off, true)
		if err != nil {
			return fail(err)
		}
		direct = direct && d1 && d2
		ss, ts := xxh3.Hash128(s), xxh3.Hash128(t)
		if copied != nil && ss != copied[i] {
			return fail(fmt.Errorf("%w: the source changed during the copy (checksum %s when copied, %s now): is something writing to it?", ErrMismatch, hexSum(copied[i]), hexSum(ss)))
		}
		if ss != ts {
			return fail(fmt.Errorf("%w: target checksum %s differs from the source's %s", ErrMismatch, hexSum(ts), hexSum(ss)))
		}
		sb, tb := ss.Bytes(), ts.Bytes()
		sd.Write(sb[:])
		td.Write(tb[:])
		if o.Progress != nil {
			o.Progress(Progress{Phase: PhaseVerify, ExtentsDone: i + 1, Extents: res.Extents,
				ExtentsWritten: res.ExtentsWritten, ExtentsSkipped: res.ExtentsSkipped, BytesDone: off + n, SizeBytes: src.size})
		}
	}
	res.SourceDigest, res.TargetDigest = "xxh3-128:"+hexSum(sd.Sum128()), "xxh3-128:"+hexSum(td.Sum128())
	res.Verified = res.SourceDigest == res.TargetDigest
	res.VerifyReads = "fadvise"
	if direct {
		res.VerifyReads = "direct"
	}
	return nil
}

func hexSum(u xxh3.Uint128) string {
	b := u.Bytes()
	return hex.EncodeToString(b[:])
}
