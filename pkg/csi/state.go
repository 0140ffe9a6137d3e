package csi

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// VolumeState is what the node plugin records per staged volume in its
// state directory (<state-dir>/volumes/<volume>.json), written before each
// step it starts, so a plugin killed at any step finds, on its next call or
// start, what it meant to have and repairs from there. What actually runs
// (the export and nbdfuse processes, loop devices, mounts) is always read
// back from the system (/proc, losetup, mountinfo), never trusted from here.
type VolumeState struct {
	Volume      string `json:"volume"`
	StagingPath string `json:"stagingPath"`
	// Block is volumeMode Block: the device is attached but not formatted
	// or mounted at the staging path.
	Block      bool     `json:"block"`
	FsType     string   `json:"fsType,omitempty"`
	MountFlags []string `json:"mountFlags,omitempty"`
	// ExportAddr is the loopback host:port the volume's export listens on.
	ExportAddr string `json:"exportAddr"`
	// Attach is "nbdfuse" (nbdfuse and a loop device over its file) or
	// "kernel" (the kernel NBD client on NBDDevice).
	Attach    string `json:"attach"`
	NBDDevice string `json:"nbdDevice,omitempty"`
	// Staged is set once the staging path is ready; Unstaging once
	// NodeUnstageVolume began tearing down (a later NodeStageVolume then
	// finishes the teardown first).
	Staged    bool `json:"staged"`
	Unstaging bool `json:"unstaging,omitempty"`
	// Published maps each publish target path to whether it is read-only.
	Published map[string]bool `json:"published,omitempty"`
}

type stateDir struct{ root string }

func (s stateDir) volumesDir() string { return filepath.Join(s.root, "volumes") }

// VolumeDir holds a volume's working files: the nbdfuse mount point, the
// export's read cache, the process logs.
func (s stateDir) VolumeDir(volume string) string { return filepath.Join(s.root, "run", volume) }

func (s stateDir) path(volume string) string {
	return filepath.Join(s.volumesDir(), volume+".json")
}

// Load returns the volume's state, or nil when none is recorded.
func (s stateDir) Load(volume string) (*VolumeState, error) {
	b, err := os.ReadFile(s.path(volume))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state of volume %s: %w", volume, err)
	}
	var st VolumeState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("state of volume %s (%s) is corrupt: %w", volume, s.path(volume), err)
	}
	return &st, nil
}

// Save writes the state atomically (temp file, fsync, rename, fsync dir).
func (s stateDir) Save(st *VolumeState) error {
	if err := os.MkdirAll(s.volumesDir(), 0o700); err != nil {
		return err
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := s.path(st.Volume) + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, s.path(st.Volume)); err != nil {
		return fmt.Errorf("record state of volume %s: %w", st.Volume, err)
	}
	if d, err := os.Open(s.volumesDir()); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// Remove forgets the volume.
func (s stateDir) Remove(volume string) error {
	if err := os.Remove(s.path(volume)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return os.RemoveAll(s.VolumeDir(volume))
}

// List returns the volumes with recorded state.
func (s stateDir) List() ([]string, error) {
	ents, err := os.ReadDir(s.volumesDir())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if v, ok := strings.CutSuffix(e.Name(), ".json"); ok {
			out = append(out, v)
		}
	}
	sort.Strings(out)
	return out, nil
}
