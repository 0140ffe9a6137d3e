// Package volumecopy is `couchestor volume-copy`: it wires flags, progress
// logs and the termination message around pkg/blockcopy.Copy, the Job that
// pkg/blockcopy.BuildJob describes. main.go dispatches to Command by name.
package volumecopy

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/billyronks/couchestor/pkg/blockcopy"
)

// Command is `couchestor volume-copy --source DEV --target DEV [flags]`.
// The outcome (Result, or the error) goes to --result-file as a
// blockcopy.Report; any failure is also the returned error (exit 1).
func Command(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("volume-copy", flag.ContinueOnError)
	source := fs.String("source", "", "Source block device or file (opened read-only). Required.")
	target := fs.String("target", "", "Target block device or file, at least the source's size; it must exist (never created). Required.")
	extent := fs.Int64("extent-size", blockcopy.DefaultExtentSize, fmt.Sprintf("Bytes per extent (unit of checksums, comparisons and writes): a positive multiple of %d, at most %d.", blockcopy.ExtentAlign, blockcopy.MaxExtentSize))
	bps := fs.Int64("max-bytes-per-second", 0, "Most source bytes per second read by each pass (copy, then verify); 0 is unlimited.")
	resultFile := fs.String("result-file", "/dev/termination-log", fmt.Sprintf("Where the outcome goes as compact JSON (at most %d bytes): the container's termination message.", blockcopy.MaxReportBytes))
	every := fs.Duration("progress-interval", 10*time.Second, "How often progress is logged (at least 1s).")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return report(*resultFile, blockcopy.Result{}, err)
	}
	var err error
	switch {
	case fs.NArg() > 0:
		err = fmt.Errorf("unexpected arguments %q: every setting is a flag", fs.Args())
	case *source == "":
		err = errors.New("--source is required")
	case *target == "":
		err = errors.New("--target is required")
	case blockcopy.ValidateExtentSize(*extent) != nil:
		err = fmt.Errorf("--extent-size=%d: %v", *extent, blockcopy.ValidateExtentSize(*extent))
	case *bps < 0:
		err = fmt.Errorf("--max-bytes-per-second=%d: must be >= 0 (0 is unlimited)", *bps)
	case *every < time.Second:
		err = fmt.Errorf("--progress-interval=%v: must be at least 1s", *every)
	}
	if err != nil {
		return report(*resultFile, blockcopy.Result{ExtentSizeBytes: *extent}, err)
	}
	// Who opens what: the device nodes' owner and mode as the container
	// sees them decide which uid the Job needs (pkg/blockcopy.JobSpec).
	groups, _ := os.Getgroups()
	log.Printf("volume-copy: running as uid %d gid %d groups %v", os.Getuid(), os.Getgid(), groups)
	for _, p := range []string{*source, *target} {
		log.Printf("volume-copy: %s", describe(p))
	}
	res, err := blockcopy.Copy(ctx, *source, *target, blockcopy.Options{
		ExtentSize: *extent, MaxBytesPerSecond: *bps, Progress: progressLog(*every)})
	if err == nil {
		log.Printf("volume-copy: done: %d extents, %d written, %d skipped (already equal), %d bytes written, verified (%s reads), digest %s, %.1fs",
			res.Extents, res.ExtentsWritten, res.ExtentsSkipped, res.BytesWritten, res.VerifyReads, res.SourceDigest, res.DurationSeconds)
	}
	return report(*resultFile, res, err)
}

func report(path string, res blockcopy.Result, err error) error {
	if path == "" {
		return errors.Join(err, errors.New("--result-file must not be empty"))
	}
	if werr := os.WriteFile(path, blockcopy.EncodeReport(res, err), 0o644); werr != nil {
		return errors.Join(err, fmt.Errorf("write the result to %s: %w", path, werr))
	}
	return err
}

func describe(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return err.Error()
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Sprintf("%s: %v", path, fi.Mode())
	}
	kind := "file"
	if fi.Mode()&os.ModeDevice != 0 {
		kind = fmt.Sprintf("block device %d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	}
	return fmt.Sprintf("%s: %s, owner %d:%d, mode %04o", path, kind, st.Uid, st.Gid, fi.Mode().Perm())
}

// progressLog logs where a pass stands at most every interval, and at the
// end of each pass.
func progressLog(every time.Duration) func(blockcopy.Progress) {
	var last, phaseStart time.Time
	phase := ""
	return func(p blockcopy.Progress) {
		now := time.Now()
		if p.Phase != phase {
			phase, phaseStart, last = p.Phase, now, now
		}
		if now.Sub(last) < every && p.ExtentsDone != p.Extents {
			return
		}
		last = now
		rate := float64(p.BytesDone) / max(now.Sub(phaseStart).Seconds(), 1e-3) / (1 << 20)
		log.Printf("volume-copy: %s %d/%d extents (%.1f%%), %d written, %d skipped, %.1f MiB/s",
			p.Phase, p.ExtentsDone, p.Extents, 100*float64(p.ExtentsDone)/float64(p.Extents), p.ExtentsWritten, p.ExtentsSkipped, rate)
	}
}
