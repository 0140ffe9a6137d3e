package cache

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// TestDiskBindingDropsEntriesOfAnotherBinding: entries are kept across Opens
// only while the directory's binding is the one asked for or one KeepBinding
// accepts; any other binding (or none, entries of unknown origin) removes
// them all before the cache serves, and the directory is bound anew.
func TestDiskBindingDropsEntriesOfAnotherBinding(t *testing.T) {
	dir := t.TempDir()
	open := func(binding string, keep func(string) bool) *DiskCache {
		t.Helper()
		d, err := OpenDiskCache(DiskConfig{Dir: dir, CapacityBytes: 1 << 20, Binding: binding, KeepBinding: keep})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	old := []byte("bytes of the old volume")
	unbound, err := OpenDiskCache(DiskConfig{Dir: dir, CapacityBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if err := unbound.Put(key(1), old); err != nil {
		t.Fatal(err)
	}
	_ = unbound.Close()

	for _, step := range []struct {
		binding string
		keep    func(string) bool
		want    bool // the entry survives
	}{
		{"uid a epoch 1", nil, false}, // written without a binding: unknown origin
		{"uid a epoch 1", nil, true},  // the same binding again
		{"uid a epoch 2", func(s string) bool { return s == "uid a epoch 1" }, true},
		{"uid a epoch 4", func(s string) bool { return s == "uid a epoch 3" }, false}, // a gap: another writer
		{"uid b epoch 5", func(s string) bool { return s == "uid b epoch 4" }, false}, // another volume
	} {
		d := open(step.binding, step.keep)
		e, ok := d.Get(key(1))
		if ok != step.want || ok && !bytes.Equal(e.Data, old) {
			t.Fatalf("binding %q: entry found=%v, want %v", step.binding, ok, step.want)
		}
		if !step.want && d.Len() != 0 {
			t.Fatalf("binding %q: %d entries left", step.binding, d.Len())
		}
		if b, err := os.ReadFile(filepath.Join(dir, bindingFile)); err != nil || string(b) != step.binding {
			t.Fatalf("binding file holds %q (%v), want %q", b, err, step.binding)
		}
		if !ok {
			if err := d.Put(key(1), old); err != nil {
				t.Fatal(err)
			}
		}
		_ = d.Close()
	}
}
