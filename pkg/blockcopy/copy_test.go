package blockcopy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const es = 4 * mib

// TestCopyAndVerify: a source with a short last extent and one all-zero
// extent is copied onto a blank, larger target: every extent but the zero
// one is written, the bytes are the source's, the target's tail past the
// source is untouched, and verification reads the device directly. A second run writes nothing and proves the
// same digest.
func TestCopyAndVerify(t *testing.T) {
	for _, tc := range []struct{ kind, reads string }{{"file", "direct"}, {"loop", "direct"}} {
		t.Run(tc.kind, func(t *testing.T) {
			size := int64(10*es + 8192)
			src := randomBytes(size, 1)
			clear(src[3*es : 4*es]) // extent 3 is all zeros
			tail := bytes.Repeat([]byte{0xab}, 64<<10)
			tgtBytes := append(make([]byte, size), tail...)
			source := side(t, tc.kind, "source", src, 0)
			target := side(t, tc.kind, "target", tgtBytes, 0)

			res, err := Copy(context.Background(), source, target, Options{ExtentSize: es})
			if err != nil {
				t.Fatal(err)
			}
			want := Result{SizeBytes: size, ExtentSizeBytes: es, Extents: 11, ExtentsWritten: 10, ExtentsSkipped: 1, BytesWritten: size - es, Verified: true, VerifyReads: tc.reads}
			if res.SizeBytes != want.SizeBytes || res.Extents != want.Extents || res.ExtentsWritten != want.ExtentsWritten ||
				res.ExtentsSkipped != want.ExtentsSkipped || res.BytesWritten != want.BytesWritten || !res.Verified || res.VerifyReads != tc.reads {
				t.Fatalf("result %+v, want %+v", res, want)
			}
			if res.SourceDigest != res.TargetDigest || !strings.HasPrefix(res.SourceDigest, "xxh3-128:") {
				t.Fatalf("digests %q / %q", res.SourceDigest, res.TargetDigest)
			}
			got := readAll(t, target, size+int64(len(tail)))
			sameBytes(t, "target", src, got[:size])
			sameBytes(t, "target past the source's size", tail, got[size:])

			again, err := Copy(context.Background(), source, target, Options{ExtentSize: es})
			if err != nil {
				t.Fatal(err)
			}
			if again.ExtentsWritten != 0 || again.ExtentsSkipped != 11 || again.BytesWritten != 0 || again.SourceDigest != res.SourceDigest {
				t.Fatalf("second run %+v, want nothing written and digest %s", again, res.SourceDigest)
			}
			// A different source has a different digest.
			other := side(t, "file", "other", randomBytes(size, 2), 0)
			v, err := Verify(context.Background(), other, other+"-copy", Options{ExtentSize: es})
			if err == nil {
				t.Fatalf("verify against a missing target succeeded: %+v", v)
			}
			blankFile(t, other+"-copy", size)
			r2, err := Copy(context.Background(), other, other+"-copy", Options{ExtentSize: es})
			if err != nil || r2.SourceDigest == res.SourceDigest {
				t.Fatalf("another source: %v, digest %s (first %s)", err, r2.SourceDigest, res.SourceDigest)
			}
		})
	}
}

// TestVerifyNamesCorruptedExtent: a byte of the target changed after the
// copy makes Verify fail naming that extent and its offset; Copy then
// rewrites that one extent only.
func TestVerifyNamesCorruptedExtent(t *testing.T) {
	for _, kind := range []string{"file", "loop"} {
		t.Run(kind, func(t *testing.T) {
			size := int64(8 * es)
			src := randomBytes(size, 3)
			source, target := side(t, kind, "source", src, 0), side(t, kind, "target", nil, size)
			if _, err := Copy(context.Background(), source, target, Options{ExtentSize: es}); err != nil {
				t.Fatal(err)
			}
			writeAt(t, target, []byte{^src[5*es+1234]}, 5*es+1234)
			_, err := Verify(context.Background(), source, target, Options{ExtentSize: es})
			var ee *ExtentError
			if !errors.As(err, &ee) || ee.Index != 5 || ee.Offset != 5*es || ee.Phase != PhaseVerify || !errors.Is(err, ErrMismatch) {
				t.Fatalf("verify of a corrupted target: %v, want a mismatch at extent 5", err)
			}
			if want := fmt.Sprintf("verify: extent 5 (byte offset %d): checksum mismatch: target checksum", 5*es); !strings.HasPrefix(err.Error(), want) {
				t.Fatalf("error %q, want it to start %q", err, want)
			}
			res, err := Copy(context.Background(), source, target, Options{ExtentSize: es})
			if err != nil || res.ExtentsWritten != 1 || res.ExtentsSkipped != 7 {
				t.Fatalf("repair: %v %+v, want extent 5 rewritten alone", err, res)
			}
		})
	}
}

// TestKilledMidCopyConverges: a child process copying is SIGKILLed after 3
// extents plus half of the fourth (a torn write); a rerun writes only the
// 5 remaining extents (the torn one included) and verifies.
func TestKilledMidCopyConverges(t *testing.T) {
	for _, kind := range []string{"file", "loop"} {
		t.Run(kind, func(t *testing.T) {
			const k = 3
			size := int64(8 * es)
			src := randomBytes(size, 5)
			source, target := side(t, kind, "source", src, 0), side(t, kind, "target", nil, size)
			cmd := exec.Command(os.Args[0], "-test.run=^TestHelperCopyChild$", "-test.v")
			cmd.Env = append(os.Environ(), "BLOCKCOPY_CHILD="+source+","+target+","+strconv.Itoa(k))
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			cmd.Stderr = os.Stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			lines := bufio.NewScanner(out)
			torn := false
			for !torn && lines.Scan() {
				torn = strings.HasPrefix(lines.Text(), "torn ")
			}
			if !torn {
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
				t.Fatal("the child ended before tearing an extent")
			}
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			if err := cmd.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
				t.Fatalf("child: %v, want killed", err)
			}
			got := readAll(t, target, size)
			sameBytes(t, "extents the child wrote", src[:k*es], got[:k*es])
			if bytes.Equal(got[k*es:(k+1)*es], src[k*es:(k+1)*es]) || !bytes.Equal(got[k*es:k*es+es/2], src[k*es:k*es+es/2]) {
				t.Fatal("extent 3 is not torn (half written) after the kill: the test proves nothing")
			}
			res, err := Copy(context.Background(), source, target, Options{ExtentSize: es})
			if err != nil {
				t.Fatal(err)
			}
			if res.ExtentsWritten != 8-k || res.ExtentsSkipped != k || !res.Verified {
				t.Fatalf("rerun %+v, want %d written, %d skipped, verified", res, 8-k, k)
			}
			sameBytes(t, "target after the rerun", src, readAll(t, target, size))
		})
	}
}

// TestHelperCopyChild is the copy TestKilledMidCopyConverges kills: after
// extent K-1 it writes half of extent K, says so and waits to be killed.
func TestHelperCopyChild(t *testing.T) {
	env := os.Getenv("BLOCKCOPY_CHILD")
	if env == "" {
		t.Skip("the child of TestKilledMidCopyConverges")
	}
	parts := strings.Split(env, ",")
	source, target := parts[0], parts[1]
	k, _ := strconv.ParseInt(parts[2], 10, 64)
	_, err := Copy(context.Background(), source, target, Options{ExtentSize: es, Progress: func(p Progress) {
		if p.Phase != PhaseCopy || p.ExtentsDone != k {
			return
		}
		half := readAll(t, source, (k+1)*es)[k*es : k*es+es/2]
		writeAt(t, target, half, k*es)
		fmt.Printf("torn %d\n", k)
		os.Stdout.Sync()
		select {} // until SIGKILL
	}})
	t.Fatalf("the child's copy returned: %v", err)
}

// TestBandwidthLimitThroughInjectedClock: at 256 KiB/s with 64 KiB extents
// a 2 MiB copy takes 31 extents' worth of waiting per pass (the first
// extent is the bucket's burst): 7.75 s of clock for the copy and again for
// the verify, and at no point does a pass run ahead of the limit by more
// than one extent. Unlimited, the clock never moves.
func TestBandwidthLimitThroughInjectedClock(t *testing.T) {
	const extent, rate, size = 64 << 10, 256 << 10, 2 * mib
	source := writeFile(t, filepath.Join(t.TempDir(), "source"), randomBytes(size, 6))
	target := blankFile(t, filepath.Join(t.TempDir(), "target"), size)
	clock := newFakeClock()
	start := clock.Now()
	var passStart time.Time
	var ahead []string
	res, err := Copy(context.Background(), source, target, Options{ExtentSize: extent, MaxBytesPerSecond: rate, Clock: clock,
		Progress: func(p Progress) {
			if p.ExtentsDone == 1 {
				passStart = clock.Now()
			}
			allowed := float64(extent) + rate*clock.Now().Sub(passStart).Seconds()
			if float64(p.BytesDone) > allowed+1 {
				ahead = append(ahead, fmt.Sprintf("%s extent %d: %d bytes done, %0.f allowed", p.Phase, p.ExtentsDone, p.BytesDone, allowed))
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	if len(ahead) > 0 {
		t.Fatalf("ran ahead of %d B/s: %s", rate, strings.Join(ahead, "; "))
	}
	want := 2 * 31 * time.Second / 4
	if d := clock.Now().Sub(start); d < want-10*time.Millisecond || d > want+10*time.Millisecond || res.Duration != d {
		t.Fatalf("limited copy took %v of clock (result %v), want %v", d, res.Duration, want)
	}
	free := newFakeClock()
	if _, err := Copy(context.Background(), source, target, Options{ExtentSize: extent, Clock: free}); err != nil || free.slept != 0 {
		t.Fatalf("unlimited copy slept %v (%v)", free.slept, err)
	}
}

// TestCancelStopsTheCopy: a cancelled context stops the copy at the next
// extent, naming it; what was written stays written.
func TestCancelStopsTheCopy(t *testing.T) {
	size := int64(8 * es)
	source := writeFile(t, filepath.Join(t.TempDir(), "source"), randomBytes(size, 7))
	target := blankFile(t, filepath.Join(t.TempDir(), "target"), size)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	res, err := Copy(ctx, source, target, Options{ExtentSize: es, Progress: func(p Progress) {
		if p.ExtentsDone == 3 {
			cancel()
		}
	}})
	var ee *ExtentError
	if !errors.Is(err, context.Canceled) || !errors.As(err, &ee) || ee.Index != 3 || res.ExtentsWritten != 3 {
		t.Fatalf("cancelled copy: %v, %+v; want context.Canceled at extent 3 after 3 writes", err, res)
	}
}

// TestShortReadNamesExtent: a source that shrinks during the copy fails
// with a short read naming the extent, its offset and the byte counts.
func TestShortReadNamesExtent(t *testing.T) {
	size := int64(4 * es)
	source := writeFile(t, filepath.Join(t.TempDir(), "source"), randomBytes(size, 8))
	target := blankFile(t, filepath.Join(t.TempDir(), "target"), size)
	_, err := Copy(context.Background(), source, target, Options{ExtentSize: es, Progress: func(p Progress) {
		if p.ExtentsDone == 1 {
			if err := os.Truncate(source, 2*es+es/2); err != nil {
				t.Error(err)
			}
		}
	}})
	want := fmt.Sprintf("copy: extent 2 (byte offset %d): short read of %s: %d of %d bytes", 2*es, source, es/2, es)
	if err == nil || err.Error() != want {
		t.Fatalf("copy of a shrinking source: %v\nwant %s", err, want)
	}
}

// TestBadInputRefused: each bad input is refused before anything is
// written, with a message naming the value and the rule.
func TestBadInputRefused(t *testing.T) {
	dir := t.TempDir()
	src := writeFile(t, filepath.Join(dir, "source"), randomBytes(2*es, 9))
	small := blankFile(t, filepath.Join(dir, "small"), es)
	ok := blankFile(t, filepath.Join(dir, "target"), 2*es)
	empty := blankFile(t, filepath.Join(dir, "empty"), 0)
	link := filepath.Join(dir, "link")
	if err := os.Symlink(src, link); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing")
	for _, tc := range []struct {
		name, source, target string
		o                    Options
		want                 string
	}{
		{"extent 0", src, ok, Options{}, "extent size 0 bytes: must be a positive multiple of 4096 bytes, at most 268435456"},
		{"extent not aligned", src, ok, Options{ExtentSize: 1000}, "extent size 1000 bytes: must be a positive multiple of 4096"},
		{"extent 4097", src, ok, Options{ExtentSize: 4097}, "extent size 4097 bytes: must be a positive multiple of 4096"},
		{"extent too large", src, ok, Options{ExtentSize: MaxExtentSize + 4096}, "at most 268435456"},
		{"negative bandwidth", src, ok, Options{ExtentSize: es, MaxBytesPerSecond: -1}, "max bytes per second -1: must be >= 0"},
		{"target smaller", src, small, Options{ExtentSize: es}, fmt.Sprintf("target %s is %d bytes, smaller than source %s of %d bytes: the target must be at least the source's size", small, es, src, 2*es)},
		{"empty source", empty, ok, Options{ExtentSize: es}, "is empty (0 bytes): nothing to copy"},
		{"same file", src, link, Options{ExtentSize: es}, "are the same device: refusing to copy a volume onto itself"},
		{"missing target", src, missing, Options{ExtentSize: es}, "open target: open " + missing + ": no such file or directory"},
		{"directory source", dir, ok, Options{ExtentSize: es}, "is a d---------, not a block device or a regular file"},
		{"character device target", src, "/dev/null", Options{ExtentSize: es}, "/dev/null is a Dc---------, not a block device or a regular file"},
		{"no paths", "", "", Options{ExtentSize: es}, "both paths are required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := Copy(context.Background(), tc.source, tc.target, tc.o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
			if res.ExtentsWritten != 0 {
				t.Fatalf("refused input wrote %d extents", res.ExtentsWritten)
			}
		})
	}
	if _, err := os.Stat(missing); !os.IsNotExist(err) {
		t.Fatalf("a missing target was created: %v", err)
	}
	if got := readAll(t, ok, 2*es); !bytes.Equal(got, make([]byte, 2*es)) {
		t.Fatal("a refused copy wrote to the target")
	}
}
