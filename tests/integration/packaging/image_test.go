package packaging

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/billyronks/couchestor/tests/testenv"
)

// imageArchive is the archive `make image` wrote (COUCHESTOR_IMAGE_ARCHIVE),
// else one built now with hack/image (minutes: it compiles the operator).
func imageArchive(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("COUCHESTOR_IMAGE_ARCHIVE"); p != "" {
		return p
	}
	if testing.Short() {
		t.Skip("-short: building the image takes minutes; set COUCHESTOR_IMAGE_ARCHIVE to an archive from `make image`")
	}
	out := filepath.Join(t.TempDir(), "image.tar")
	cmd := exec.Command("go", "run", ".", "--root", testenv.Root(), "--out", out)
	cmd.Dir = filepath.Join(testenv.Root(), "hack", "image")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("hack/image: %v", err)
	}
	return out
}

type ociDescriptor struct {
	MediaType string `json:"mediaType"`
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
}

func TestImageArchive(t *testing.T) {
	archive := imageArchive(t)
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	files := map[string][]byte{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("read archive: %v", err)
		}
		if h.Typeflag == tar.TypeReg {
			if files[h.Name], err = io.ReadAll(tr); err != nil {
				t.Fatal(err)
			}
		}
	}
	var layoutFile struct {
		ImageLayoutVersion string `json:"imageLayoutVersion"`
	}
	if err := json.Unmarshal(files["oci-layout"], &layoutFile); err != nil || layoutFile.ImageLayoutVersion != "1.0.0" {
		t.Fatalf("not an OCI layout: oci-layout = %q", files["oci-layout"])
	}
	blob := func(d ociDescriptor) []byte {
		t.Helper()
		b, ok := files["blobs/sha256/"+strings.TrimPrefix(d.Digest, "sha256:")]
		if !ok {
			t.Fatalf("blob %s missing", d.Digest)
		}
		sum := sha256.Sum256(b)
		if "sha256:"+hex.EncodeToString(sum[:]) != d.Digest || int64(len(b)) != d.Size {
			t.Fatalf("blob %s: digest or size mismatch", d.Digest)
		}
		return b
	}
	var index struct {
		Manifests []ociDescriptor `json:"manifests"`
	}
	if err := json.Unmarshal(files["index.json"], &index); err != nil || len(index.Manifests) != 1 {
		t.Fatalf("index.json: %v %s", err, files["index.json"])
	}
	var manifest struct {
		Config ociDescriptor   `json:"config"`
		Layers []ociDescriptor `json:"layers"`
	}
	if err := json.Unmarshal(blob(index.Manifests[0]), &manifest); err != nil {
		t.Fatal(err)
	}
	var config struct {
		OS, Architecture string
		Config           struct {
			User       string   `json:"User"`
			Entrypoint []string `json:"Entrypoint"`
			Env        []string `json:"Env"`
		} `json:"config"`
	}
	if err := json.Unmarshal(blob(manifest.Config), &config); err != nil {
		t.Fatal(err)
	}
	if config.Config.User != "65532:65532" {
		t.Errorf("user %q, want 65532:65532 (non-root)", config.Config.User)
	}
	if strings.Join(config.Config.Entrypoint, " ") != "/couchestor" {
		t.Errorf("entrypoint %v", config.Config.Entrypoint)
	}
	if config.OS != "linux" {
		t.Errorf("os %q", config.OS)
	}
	if len(manifest.Layers) != 1 {
		t.Fatalf("%d layers, want 1 (empty base + one layer)", len(manifest.Layers))
	}
	zr, err := gzip.NewReader(bytes.NewReader(blob(manifest.Layers[0])))
	if err != nil {
		t.Fatal(err)
	}
	rootfs := map[string]*tar.Header{}
	var exe []byte
	lr := tar.NewReader(zr)
	for {
		h, err := lr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		rootfs[strings.TrimSuffix(h.Name, "/")] = h
		if h.Name == "couchestor" {
			if exe, err = io.ReadAll(lr); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, p := range []string{"couchestor", "etc/passwd", "etc/group", "tmp"} {
		if rootfs[p] == nil {
			t.Errorf("image lacks /%s", p)
		}
	}
	if h := rootfs["couchestor"]; h != nil && h.Mode&0o111 == 0 {
		t.Errorf("/couchestor mode %o is not executable", h.Mode)
	}
	if h := rootfs["tmp"]; h != nil && h.Mode&0o1777 != 0o1777 {
		t.Errorf("/tmp mode %o, want 1777", h.Mode)
	}
	if len(rootfs) > 10 {
		t.Errorf("%d entries in the root filesystem: not a minimal image", len(rootfs))
	}

	// The binary is static and runs.
	bin := filepath.Join(t.TempDir(), "couchestor")
	if err := os.WriteFile(bin, exe, 0o755); err != nil {
		t.Fatal(err)
	}
	ef, err := elf.Open(bin)
	if err != nil {
		t.Fatalf("not an ELF binary: %v", err)
	}
	for _, p := range ef.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the binary has a dynamic loader (PT_INTERP): not static")
		}
	}
	ef.Close()
	if config.Architecture != hostArch() {
		t.Skipf("image is %s, host is %s: cannot run it here", config.Architecture, hostArch())
	}
	out, err := exec.Command(bin, "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("couchestor --help: %v\n%s", err, out)
	}
	if !bytes.Contains(out, []byte("-leader-elect")) {
		t.Errorf("--help does not list the flags:\n%s", out)
	}
}
