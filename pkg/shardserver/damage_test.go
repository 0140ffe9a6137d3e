package shardserver

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
)

// A damaged record in the middle of alloc.log (valid records after it) stops
// the store with the file and offset; it is never truncated away, which
// would free the extents logged after it and hand them out again.
func TestAllocLogDamageInTheMiddleRefused(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStore(dir, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	p := randBytes(4096, 1)
	for i := 0; i < 3; i++ {
		if _, err := s.Write(header("v", int64(i), 0, 1, p), p); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	logPath := filepath.Join(dir, allocLogName)
	raw, err := os.ReadFile(logPath)
	if err != nil || len(raw) != 3*logRecLen {
		t.Fatalf("alloc.log: %d bytes, %v", len(raw), err)
	}
	damaged := append([]byte(nil), raw...)
	damaged[logRecLen+5] ^= 0xff // the second of three records
	if err := os.WriteFile(logPath, damaged, 0o640); err != nil {
		t.Fatal(err)
	}
	_, err = OpenStore(dir, 1<<20)
	if err == nil || !strings.Contains(err.Error(), logPath) || !strings.Contains(err.Error(), "byte 29") {
		t.Fatalf("open with a damaged middle record: %v; want an error naming %s and byte 29", err, logPath)
	}
	if got, _ := os.ReadFile(logPath); string(got) != string(damaged) {
		t.Fatal("the damaged log was rewritten")
	}

	// The same damage in the last record is a torn tail: dropped, the
	// records before it kept.
	damaged = append([]byte(nil), raw...)
	damaged[2*logRecLen+5] ^= 0xff
	if err := os.WriteFile(logPath, damaged, 0o640); err != nil {
		t.Fatal(err)
	}
	s2, err := OpenStore(dir, 1<<20)
	if err != nil {
		t.Fatalf("open with a torn last record: %v", err)
	}
	defer s2.Close()
	if sp := s2.Space(); sp.Shards != 2 {
		t.Fatalf("after a torn tail: %+v, want the 2 shards logged before it", sp)
	}
}

// failingSync makes Sync fail while armed, like a disk reporting a write error.
type failingSync struct {
	storeFile
	fail *atomic.Bool
}

func (f failingSync) Sync() error {
	if f.fail.Load() {
		return syscall.EIO
	}
	return f.storeFile.Sync()
}

// After an fsync error nothing is acknowledged any more, even when a later
// fsync succeeds (Linux reports a lost write-back once, then forgets it), and
// /healthz reports the store broken.
func TestStoreAcknowledgesNothingAfterAnFsyncError(t *testing.T) {
	for _, which := range []string{"data", "log"} {
		t.Run(which, func(t *testing.T) {
			srv := limitedServer(t, DefaultLimits())
			s := srv.store
			var fail atomic.Bool
			if which == "data" {
				s.data = failingSync{s.data, &fail}
			} else {
				s.log = failingSync{s.log, &fail}
			}
			p := randBytes(4096, 3)
			if _, err := s.Write(header("v", 0, 0, 1, p), p); err != nil {
				t.Fatal(err)
			}
			fail.Store(true)
			if _, err := s.Write(header("v", 1, 0, 1, p), p); !errors.Is(err, syscall.EIO) {
				t.Fatalf("write with a failing fsync: %v, want EIO", err)
			}
			fail.Store(false)
			if _, err := s.Write(header("v", 2, 0, 1, p), p); err == nil {
				t.Fatal("a write was acknowledged after an fsync error")
			}
			if err := s.Free(0, Expect{"v", 0, 0, 1}); err == nil {
				t.Fatal("a free was acknowledged after an fsync error")
			}
			w := httptest.NewRecorder()
			srv.ServeHTTP(w, httptest.NewRequest("GET", "/healthz", nil))
			if w.Code != http.StatusServiceUnavailable || !strings.Contains(w.Body.String(), "fsync") {
				t.Fatalf("/healthz after an fsync error: %d %q, want 503 naming the fsync", w.Code, w.Body)
			}
		})
	}
}

// A data directory is held by one store at a time (flock): a second
// shard-server process (or open) on it is refused until the first closes.
func TestStoreLocksItsDataDirectory(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStore(dir, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenStore(dir, 1<<20); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second open of %s: %v, want it refused as in use", dir, err)
	}
	s.Close()
	s2, err := OpenStore(dir, 1<<20)
	if err != nil {
		t.Fatalf("open after Close: %v", err)
	}
	s2.Close()
}
