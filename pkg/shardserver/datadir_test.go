package shardserver

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
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
