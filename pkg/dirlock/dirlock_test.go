package dirlock

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
)

func TestSecondHolderRefusedUntilClose(t *testing.T) {
	dir := t.TempDir()
	l, err := Acquire(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Acquire(dir); !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), dir) {
		t.Fatalf("second open: %v, want ErrLocked naming %s", err, dir)
	}
	// Another process is refused too.
	if os.Getenv("DIRLOCK_CHILD") == "" {
		cmd := exec.Command(os.Args[0], "-test.run=TestChildProcess", "-test.count=1")
		cmd.Env = append(os.Environ(), "DIRLOCK_CHILD="+dir)
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "child refused") {
			t.Fatalf("child process: %v\n%s", err, out)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l2, err := Acquire(dir)
	if err != nil {
		t.Fatalf("after Close: %v", err)
	}
	l2.Close()
}

// TestChildProcess runs only as the child of the test above.
func TestChildProcess(t *testing.T) {
	dir := os.Getenv("DIRLOCK_CHILD")
	if dir == "" {
		return
	}
	if _, err := Acquire(dir); errors.Is(err, ErrLocked) {
		println("child refused")
		return
	}
	t.Fatal("the child process got the lock its parent holds")
}
