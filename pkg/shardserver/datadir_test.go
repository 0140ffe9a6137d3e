package shardserver

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"unsafe"
)

func TestDataDirDecision(t *testing.T) {
	const uid, gid = 65532, 65532
	for _, tc := range []struct {
		name         string
		isDir, empty bool
		owner, group uint32
		uid          uint32
		want         DataDirAction
		err          string
	}{
		{name: "ours already", isDir: true, empty: true, owner: uid, group: gid, uid: uid, want: DataDirReady},
		{name: "ours with content", isDir: true, owner: uid, group: gid, uid: uid, want: DataDirReady},
		{name: "kubelet's empty root dir", isDir: true, empty: true, owner: 0, group: 0, uid: uid, want: DataDirHandOver},
		{name: "root dir with content", isDir: true, owner: 0, group: 0, uid: uid, err: "owned by root and not empty"},
		{name: "someone else's", isDir: true, empty: true, owner: 1000, group: 1000, uid: uid, err: "owned by 1000:1000"},
		{name: "our uid, other group", isDir: true, empty: true, owner: uid, group: 0, uid: uid, err: "owned by 65532:0"},
		{name: "a file", isDir: false, owner: 0, group: 0, uid: uid, err: "not a directory"},
		{name: "server as root", isDir: true, empty: true, owner: 0, group: 0, uid: 0, err: "must not run as root"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DataDirDecision("/data", tc.isDir, tc.owner, tc.group, tc.empty, tc.uid, gid)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), "/data") {
					t.Fatalf("err %v, want one naming /data and %q", err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %v %v, want %v", got, err, tc.want)
			}
		})
	}
}

// TestPrepareDataDir hands a real empty root-owned directory over (chown
// needs root: run as root, as the chart's init container does).
func TestPrepareDataDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root")
	}
	base := t.TempDir()
	dir := filepath.Join(base, "pool")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	act, err := PrepareDataDir(dir, 65532, 65532)
	if err != nil || act != DataDirHandOver {
		t.Fatalf("PrepareDataDir: %v %v", act, err)
	}
	fi, _ := os.Lstat(dir)
	st := fi.Sys().(*syscall.Stat_t)
	if st.Uid != 65532 || st.Gid != 65532 || fi.Mode().Perm() != 0o700 {
		t.Fatalf("after hand-over: %d:%d %v", st.Uid, st.Gid, fi.Mode().Perm())
	}
	// Second run (a pod restart): nothing to do, content untouched.
	if err := os.WriteFile(filepath.Join(dir, "x"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if act, err := PrepareDataDir(dir, 65532, 65532); err != nil || act != DataDirReady {
		t.Fatalf("second run: %v %v", act, err)
	}
	// A root-owned directory with content is refused.
	other := filepath.Join(base, "other")
	os.Mkdir(other, 0o755)
	os.WriteFile(filepath.Join(other, "y"), nil, 0o600)
	if _, err := PrepareDataDir(other, 65532, 65532); err == nil {
		t.Fatal("a root directory with content was taken")
	}
	// A symlink is not followed.
	link := filepath.Join(base, "link")
	os.Symlink(other, link)
	if _, err := PrepareDataDir(link, 65532, 65532); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("symlink: %v", err)
	}
}

// TestPrepareDataDirRestartWithOnlyChown is the init container's second run
// (a shard-server pod restarted): root with CAP_CHOWN as its only effective
// capability finds the directory it handed over (65532:65532, 0700, with
// content) and must leave it Ready. Opening it to see whether it is empty
// fails there with EACCES (no CAP_DAC_READ_SEARCH); tests/cluster's
// LeaderFailover step found the pod crash-looping on that.
func TestPrepareDataDirRestartWithOnlyChown(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root")
	}
	dir := filepath.Join(t.TempDir(), "pool")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if act, err := PrepareDataDir(dir, 65532, 65532); err != nil || act != DataDirHandOver {
		t.Fatalf("first run: %v %v", act, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "x"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	type result struct {
		act DataDirAction
		err error
	}
	done := make(chan result, 1)
	go func() {
		// Capabilities are per thread: this one keeps only CAP_CHOWN
		// effective and is never unlocked, so it ends with the goroutine.
		runtime.LockOSThread()
		if err := onlyChownEffective(); err != nil {
			done <- result{err: err}
			return
		}
		if f, err := os.Open(dir); err == nil {
			f.Close()
			done <- result{err: os.ErrInvalid} // the capability drop did not take
			return
		}
		act, err := PrepareDataDir(dir, 65532, 65532)
		done <- result{act, err}
	}()
	r := <-done
	if r.err == os.ErrInvalid {
		t.Fatal("the directory could still be opened after dropping CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH: the test proves nothing")
	}
	if r.err != nil || r.act != DataDirReady {
		t.Fatalf("restart with only CAP_CHOWN: %v %v, want DataDirReady", r.act, r.err)
	}
}

// onlyChownEffective sets the calling thread's effective capabilities to
// CAP_CHOWN (permitted ones unchanged).
func onlyChownEffective() error {
	hdr := struct {
		version uint32
		pid     int32
	}{version: 0x20080522} // _LINUX_CAPABILITY_VERSION_3
	var data [2]struct{ effective, permitted, inheritable uint32 }
	if _, _, e := syscall.RawSyscall(syscall.SYS_CAPGET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0); e != 0 {
		return e
	}
	data[0].effective, data[1].effective = 1<<0, 0 // CAP_CHOWN
	if _, _, e := syscall.RawSyscall(syscall.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0); e != 0 {
		return e
	}
	return nil
}
