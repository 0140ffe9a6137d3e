package blockcopy

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// directAlign is the alignment of O_DIRECT buffers and offsets: a multiple
// of every logical block size in use (512 and 4096).
const directAlign = 4096

// directLengthAlign is the length granularity tried with O_DIRECT; a length
// that is not a multiple of the device's logical block size is refused with
// EINVAL and read or written through the buffered descriptor instead.
const directLengthAlign = 512

// device is one side of a copy: a buffered descriptor (sizes, sync, the
// fallback) and, where the kernel allows it, an O_DIRECT one.
type device struct {
	path     string
	buffered *os.File
	direct   *os.File // nil where O_DIRECT is refused
	size     int64
	info     os.FileInfo
	// directFailed is set once O_DIRECT refused an I/O: later ones go
	// buffered (with fadvise) without trying again.
	directFailed bool
}

func openDevice(path string, write bool) (*device, error) {
	flag := os.O_RDONLY
	if write {
		flag = os.O_RDWR
	}
	// Never O_CREAT or O_TRUNC: a missing target is an error, not a new file.
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, err
	}
	d := &device{path: path, buffered: f}
	if d.info, err = f.Stat(); err != nil {
		f.Close()
		return nil, err
	}
	if m := d.info.Mode(); !m.IsRegular() && (m&os.ModeDevice == 0 || m&os.ModeCharDevice != 0) {
		f.Close()
		return nil, fmt.Errorf("%s is a %v, not a block device or a regular file", path, m.Type())
	}
	// Seek to the end gives a block device's size as well as a file's.
	if d.size, err = f.Seek(0, io.SeekEnd); err != nil {
		f.Close()
		return nil, fmt.Errorf("size of %s: %w", path, err)
	}
	if df, err := os.OpenFile(path, flag|syscall.O_DIRECT, 0); err == nil {
		d.direct = df
	}
	return d, nil
}

func (d *device) Close() error {
	var err error
	if d.direct != nil {
		err = d.direct.Close()
	}
	return errors.Join(err, d.buffered.Close())
}

// sameAs reports whether two opened paths are the same device or file.
func (d *device) sameAs(o *device) bool {
	a, ok1 := d.info.Sys().(*syscall.Stat_t)
	b, ok2 := o.info.Sys().(*syscall.Stat_t)
	if !ok1 || !ok2 {
		return os.SameFile(d.info, o.info)
	}
	if d.info.Mode()&os.ModeDevice != 0 && o.info.Mode()&os.ModeDevice != 0 {
		return a.Rdev == b.Rdev
	}
	return os.SameFile(d.info, o.info)
}

// readAt fills p from off; a short read (the device ended) is an error
// naming the byte counts. uncached drops cached pages of the range first
// when the read cannot bypass the cache.
func (d *device) readAt(p []byte, off int64, uncached bool) (direct bool, err error) {
	if f := d.directFile(len(p)); f != nil {
		n, err := f.ReadAt(p, off)
		if !errors.Is(err, syscall.EINVAL) {
			return true, shortIO("read", d.path, n, len(p), err)
		}
		d.directFailed = true
	}
	if uncached {
		// Advice only: it drops the clean pages of the range, which is
		// all a flushed range has.
		_ = unix.Fadvise(int(d.buffered.Fd()), off, int64(len(p)), unix.FADV_DONTNEED)
	}
	n, err := d.buffered.ReadAt(p, off)
	return false, shortIO("read", d.path, n, len(p), err)
}

func (d *device) writeAt(p []byte, off int64) error {
	if f := d.directFile(len(p)); f != nil {
		n, err := f.WriteAt(p, off)
		if !errors.Is(err, syscall.EINVAL) {
			return shortIO("write", d.path, n, len(p), err)
		}
		d.directFailed = true
	}
	n, err := d.buffered.WriteAt(p, off)
	return shortIO("write", d.path, n, len(p), err)
}

func (d *device) directFile(n int) *os.File {
	if d.direct == nil || d.directFailed || n%directLengthAlign != 0 {
		return nil
	}
	return d.direct
}

// sync flushes the device: fsync of either descriptor flushes the inode
// (or the block device) and the device's write cache.
func (d *device) sync() error {
	if err := d.buffered.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", d.path, err)
	}
	return nil
}

func shortIO(op, path string, n, want int, err error) error {
	if n == want {
		return nil
	}
	if err == nil || err == io.EOF {
		return fmt.Errorf("short %s of %s: %d of %d bytes", op, path, n, want)
	}
	return fmt.Errorf("%s %s: %d of %d bytes: %w", op, path, n, want, err)
}

// alignedBuffer is n bytes starting at a directAlign boundary.
func alignedBuffer(n int64) []byte {
	b := make([]byte, n+directAlign)
	skip := 0
	if r := int(uintptr(unsafe.Pointer(&b[0])) % directAlign); r != 0 {
		skip = directAlign - r
	}
	return b[skip : skip+int(n) : skip+int(n)]
}
