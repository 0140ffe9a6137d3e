// Package dirlock keeps two processes (or two opens in one process) from
// using one data directory at once: an exclusive flock(2) on the directory
// itself (no lock file to trip over), held while the directory is in use and
// released by Close or by the process's death (the kernel drops it, so a
// crash leaves no stale lock).
package dirlock

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Lock is a held directory lock.
type Lock struct{ f *os.File }

// ErrLocked is matched (errors.Is) when another holder has the directory.
var ErrLocked = errors.New("directory is in use")

// Acquire locks dir (which must exist) without waiting.
func Acquire(dir string) (*Lock, error) {
	p, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s is held (flock) by another process or open; two must never share this directory", ErrLocked, p)
		}
		return nil, fmt.Errorf("lock %s: flock: %w", p, err)
	}
	return &Lock{f: f}, nil
}

// Close releases the lock. It is safe on a nil Lock.
func (l *Lock) Close() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close() // closing the last descriptor drops the flock
	l.f = nil
	return err
}
