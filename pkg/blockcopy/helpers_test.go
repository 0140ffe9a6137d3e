package blockcopy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const mib = 1 << 20

// randomBytes is n deterministic bytes of a seed.
func randomBytes(n int64, seed uint64) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 7})
	_, _ = r.Read(b)
	return b
}

func writeFile(t testing.TB, path string, b []byte) string {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// blankFile is a sparse file of size zero bytes.
func blankFile(t testing.TB, path string, size int64) string {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return path
}

// loopDevice attaches a loop device over file (root and /dev/loop-control
// needed: skipped loudly otherwise) and detaches it at the end.
func loopDevice(t testing.TB, file string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED: loop devices need root")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skipf("SKIPPED: no /dev/loop-control: %v", err)
	}
	out, err := exec.Command("losetup", "-f", "--show", file).CombinedOutput()
	if err != nil {
		t.Skipf("SKIPPED: losetup -f --show %s: %v %s", file, err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v %s", dev, err, out)
		}
	})
	return dev
}

// side makes one side of a copy from its bytes (nil: blank) on a backing
// kind: "file" (ext4 here, O_DIRECT), "tmpfs" (no O_DIRECT) or "loop".
func side(t testing.TB, kind, name string, b []byte, size int64) string {
	t.Helper()
	dir := t.TempDir()
	if kind == "tmpfs" {
		if _, err := os.Stat("/dev/shm"); err != nil {
			t.Skip("SKIPPED: no /dev/shm (tmpfs)")
		}
		d, err := os.MkdirTemp("/dev/shm", "blockcopy-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
		dir = d
	}
	p := filepath.Join(dir, name)
	if b != nil {
		writeFile(t, p, b)
	} else {
		blankFile(t, p, size)
	}
	if kind == "loop" {
		return loopDevice(t, p)
	}
	return p
}

func readAll(t testing.TB, path string, n int64) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := io.ReadFull(f, b); err != nil {
		t.Fatal(err)
	}
	return b
}

func writeAt(t testing.TB, path string, b []byte, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

func sameBytes(t testing.TB, what string, want, got []byte) {
	t.Helper()
	if !bytes.Equal(want, got) {
		t.Fatalf("%s: bytes differ (sha256 %x, want %x)", what, sha256.Sum256(got), sha256.Sum256(want))
	}
}

// fakeClock advances only when slept on.
type fakeClock struct {
	mu    sync.Mutex
	now   time.Time
	slept time.Duration
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Date(2026, 12, 4, 0, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	c.slept += d
	return nil
}
