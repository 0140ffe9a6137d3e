package blockcopy

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const benchSize = 256 * mib

// benchFiles: a random source and a target on the same disk (the test's
// temporary directory), neither in the page cache.
func benchFiles(b *testing.B) (string, string) {
	dir := b.TempDir()
	src := writeFile(b, filepath.Join(dir, "source"), randomBytes(benchSize, 10))
	return src, filepath.Join(dir, "target")
}

func dropCache(b *testing.B, paths ...string) {
	for _, p := range paths {
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			b.Fatal(err)
		}
		f.Sync()
		unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
		f.Close()
	}
}

// BenchmarkCopy: blockcopy.Copy onto a blank target (read both sides,
// write, fsync, verify both sides).
func BenchmarkCopy(b *testing.B) {
	src, tgt := benchFiles(b)
	b.SetBytes(benchSize)
	for b.Loop() {
		b.StopTimer()
		os.Remove(tgt)
		blankFile(b, tgt, benchSize)
		dropCache(b, src, tgt)
		b.StartTimer()
		if _, err := Copy(context.Background(), src, tgt, Options{ExtentSize: DefaultExtentSize}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkIOCopyAnchor: what `dd conv=fsync` does, io.Copy then fsync.
func BenchmarkIOCopyAnchor(b *testing.B) {
	src, tgt := benchFiles(b)
	b.SetBytes(benchSize)
	for b.Loop() {
		b.StopTimer()
		os.Remove(tgt)
		blankFile(b, tgt, benchSize)
		dropCache(b, src, tgt)
		b.StartTimer()
		s, _ := os.Open(src)
		t, _ := os.OpenFile(tgt, os.O_WRONLY, 0)
		if _, err := io.Copy(t, s); err != nil {
			b.Fatal(err)
		}
		if err := t.Sync(); err != nil {
			b.Fatal(err)
		}
		s.Close()
		t.Close()
	}
}

// BenchmarkCopyLimited: at 64 MiB/s each pass (copy, verify) takes
// (size - one extent)/limit; limit-ratio is the achieved per-pass rate over
// the limit (1.00 = honoured exactly).
func BenchmarkCopyLimited(b *testing.B) {
	const limit = 64 * mib
	src, tgt := benchFiles(b)
	size := int64(128 * mib)
	if err := os.Truncate(src, size); err != nil {
		b.Fatal(err)
	}
	var ratio float64
	for b.Loop() {
		b.StopTimer()
		os.Remove(tgt)
		blankFile(b, tgt, size)
		b.StartTimer()
		start := time.Now()
		if _, err := Copy(context.Background(), src, tgt, Options{ExtentSize: DefaultExtentSize, MaxBytesPerSecond: limit}); err != nil {
			b.Fatal(err)
		}
		ratio = float64(2*(size-DefaultExtentSize)) / time.Since(start).Seconds() / limit
	}
	b.ReportMetric(ratio, "limit-ratio")
}
