package shardserver

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
)

// DataDirAction is what PrepareDataDir does to a data directory.
type DataDirAction int

const (
	// DataDirReady: already owned by the server's uid:gid; left as it is.
	DataDirReady DataDirAction = iota
	// DataDirHandOver: an empty root-owned directory (what the kubelet's
	// hostPath DirectoryOrCreate makes, 0755 root:root): chmod 0700, then
	// chown to the server's uid:gid.
	DataDirHandOver
)

// DataDirDecision decides what to do with a data directory owned by
// owner:group, given whether it is empty, for a server running as uid:gid.
// Only an empty root-owned directory is handed over: one with content, or one
// owned by anybody else, is an operator's directory and is refused, never
// taken (the error names the directory, its owner and the rule).
func DataDirDecision(dir string, isDir bool, owner, group uint32, empty bool, uid, gid uint32) (DataDirAction, error) {
	switch {
	case !isDir:
		return 0, fmt.Errorf("data directory %s: not a directory", dir)
	case uid == 0:
		return 0, fmt.Errorf("data directory %s: --uid 0: the shard server must not run as root", dir)
	case owner == uid && group == gid:
		return DataDirReady, nil
	case owner == 0 && empty:
		return DataDirHandOver, nil
	case owner == 0:
		return 0, fmt.Errorf("data directory %s is owned by root and not empty: refusing to hand it to uid %d (only an empty directory, as the kubelet creates it, is handed over; chown it yourself if it is this pool's shard store)", dir, uid)
	default:
		return 0, fmt.Errorf("data directory %s is owned by %d:%d, not by the shard server's %d:%d nor root: refusing to take it", dir, owner, group, uid, gid)
	}
}

// PrepareDataDir makes dir usable by a shard server running as uid:gid
// (`couchestor shard-server-init`, the data-plane chart's init container on
// HostPath storage: the kubelet creates a hostPath directory as root 0755
// and applies no fsGroup to it). It needs CAP_CHOWN and nothing else: chmod
// runs while root still owns the directory, chown last. It never recurses
// and never follows a symlink.
func PrepareDataDir(dir string, uid, gid uint32) (DataDirAction, error) {
	fi, err := os.Lstat(dir)
	if err != nil {
		return 0, fmt.Errorf("data directory: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, fmt.Errorf("data directory %s: no owner information", dir)
	}
	empty := false
	// Only a root-owned directory's content matters. The server's own
	// directory is 0700: root with CAP_CHOWN alone (no CAP_DAC_READ_SEARCH)
	// may not open it, and a pod restart must find it Ready, not fail.
	if fi.IsDir() && st.Uid == 0 {
		if empty, err = isEmptyDir(dir); err != nil {
			return 0, fmt.Errorf("data directory %s: %w", dir, err)
		}
	}
	act, err := DataDirDecision(dir, fi.IsDir(), st.Uid, st.Gid, empty, uid, gid)
	if err != nil || act == DataDirReady {
		return act, err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return 0, fmt.Errorf("data directory %s: %w", dir, err)
	}
	if err := os.Lchown(dir, int(uid), int(gid)); err != nil {
		return 0, fmt.Errorf("data directory %s: hand over to %d:%d: %w", dir, uid, gid, err)
	}
	return act, nil
}

func isEmptyDir(dir string) (bool, error) {
	f, err := os.Open(dir)
	if err != nil {
		return false, err
	}
	defer f.Close()
	_, err = f.Readdirnames(1)
	if errors.Is(err, io.EOF) {
		return true, nil
	}
	return false, err
}
