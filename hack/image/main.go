// Command image builds CoucheStor's container image as an OCI image archive
// without a Docker engine (`make image`): an empty base, one layer with the
// static operator binary, /etc/passwd and /etc/group naming the non-root user
// 65532, a world-writable /tmp and the host's CA bundle (for https
// Prometheus), entrypoint /couchestor, user 65532:65532, platform linux/amd64
// (or --arch). The archive is a tar of an OCI image layout, the format
// `skopeo copy oci-archive:...` and `podman load` read.
//
// A tools module of its own so go-containerregistry stays out of the
// operator's go.mod.
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

const (
	uid = 65532
	// caBundle is where Debian keeps the system CA bundle; Go reads the same path.
	caBundle = "/etc/ssl/certs/ca-certificates.crt"
)

// epoch stamps every file and the config, so equal inputs give equal layers.
var epoch = time.Unix(0, 0).UTC()

func main() {
	root := flag.String("root", "../..", "Repository root (the operator's main package).")
	out := flag.String("out", "couchestor-image.tar", "Path of the OCI image archive to write.")
	arch := flag.String("arch", "amd64", "GOARCH of the image.")
	ref := flag.String("tag", "", "Image reference to record (default: image in hack/bundlegen/release.yaml).")
	dir := flag.String("rootfs", "", "Pack this directory tree as the image's only layer instead of building the operator (hack/csi-node-image.sh, the CSI sidecars of hack/cluster.sh); needs --tag and --entrypoint.")
	entry := flag.String("entrypoint", "", "With --rootfs: the entrypoint, a path inside the tree.")
	user := flag.String("user", "", "With --rootfs: the image's user (uid:gid; empty: root).")
	title := flag.String("title", "", "With --rootfs: the org.opencontainers.image.title label.")
	flag.Parse()
	var err error
	if *dir != "" {
		err = pack(*dir, *out, *arch, *ref, *entry, *user, *title)
	} else {
		err = run(*root, *out, *arch, *ref)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "image: %v\n", err)
		os.Exit(1)
	}
}

func run(root, out, arch, ref string) error {
	root, err := filepath.Abs(root)
	if err != nil {
		return err
	}
	if ref == "" {
		if ref, err = releaseImage(root); err != nil {
			return err
		}
	}
	tmp, err := os.MkdirTemp("", "couchestor-image-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	bin := filepath.Join(tmp, "couchestor")
	build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w -buildid=", "-o", bin, ".")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("build the static binary: %w", err)
	}
	layerTar, err := rootfs(bin)
	if err != nil {
		return err
	}
	cfg := v1.Config{
		Entrypoint: []string{"/couchestor"},
		User:       fmt.Sprintf("%d:%d", uid, uid),
		Env:        []string{"HOME=/tmp", "SSL_CERT_FILE=" + caBundle},
	}
	return write(layerTar, cfg, "hack/image: static couchestor binary", "couchestor", out, arch, ref)
}

// write packs one layer with cfg as an OCI image archive at out.
func write(layerTar []byte, cfg v1.Config, createdBy, title, out, arch, ref string) error {
	tmp, err := os.MkdirTemp("", "couchestor-image-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return fmt.Errorf("layer: %w", err)
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{Layer: layer, History: v1.History{CreatedBy: createdBy, Created: v1.Time{Time: epoch}}})
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	cf.Created = v1.Time{Time: epoch}
	cf.Config.Entrypoint = cfg.Entrypoint
	cf.Config.User = cfg.User
	cf.Config.WorkingDir = "/"
	cf.Config.Env = cfg.Env
	cf.Config.Labels = map[string]string{
		"org.opencontainers.image.title":    title,
		"org.opencontainers.image.source":   "https://github.com/billyronks/couchestor",
		"org.opencontainers.image.ref.name": ref,
	}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return err
	}

	dir := filepath.Join(tmp, "layout")
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": ref})); err != nil {
		return fmt.Errorf("write OCI layout: %w", err)
	}
	if err := tarDir(dir, out); err != nil {
		return err
	}
	d, _ := img.Digest()
	fmt.Printf("%s %s %s\n", out, ref, d)
	return nil
}

// rootfs is the image's only layer.
func rootfs(bin string) ([]byte, error) {
	exe, err := os.ReadFile(bin)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dir := func(name string, mode int64) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, ModTime: epoch, Format: tar.FormatPAX})
	}
	file := func(name string, mode int64, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data)), ModTime: epoch, Format: tar.FormatPAX}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	steps := []func() error{
		func() error { return dir("etc/", 0o755) },
		func() error {
			return file("etc/passwd", 0o644, fmt.Appendf(nil, "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/tmp:/sbin/nologin\n", uid, uid))
		},
		func() error { return file("etc/group", 0o644, fmt.Appendf(nil, "root:x:0:\nnonroot:x:%d:\n", uid)) },
		func() error { return dir("tmp/", 0o1777) },
		func() error { return file("couchestor", 0o755, exe) },
	}
	if ca, err := os.ReadFile(caBundle); err == nil {
		steps = append(steps,
			func() error { return dir("etc/ssl/", 0o755) },
			func() error { return dir("etc/ssl/certs/", 0o755) },
			func() error { return file("etc/ssl/certs/ca-certificates.crt", 0o644, ca) })
	} else if !os.IsNotExist(err) {
		return nil, err
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// tarDir writes dir's files into the tar archive out (an "OCI archive").
func tarDir(dir, out string) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		h, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		h.Name, h.ModTime = filepath.ToSlash(rel), epoch
		h.Uid, h.Gid, h.Uname, h.Gname = 0, 0, "", ""
		h.Mode = 0o644
		if d.IsDir() {
			h.Name += "/"
			h.Mode = 0o755
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		_, err = tw.Write(data)
		return err
	})
	if err == nil {
		err = tw.Close()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", out, err)
	}
	return nil
}

var imageLine = regexp.MustCompile(`(?m)^image:\s*(\S+)\s*$`)

func releaseImage(root string) (string, error) {
	raw, err := os.ReadFile(filepath.Join(root, "hack", "bundlegen", "release.yaml"))
	if err != nil {
		return "", err
	}
	m := imageLine.FindSubmatch(raw)
	if m == nil {
		return "", fmt.Errorf("hack/bundlegen/release.yaml: no image line")
	}
	return string(m[1]), nil
}

// pack writes the directory tree dir (files, directories, symlinks; modes
// kept, owned by root, mtimes zeroed, in name order) as an image.
func pack(dir, out, arch, ref, entry, user, title string) error {
	if ref == "" || entry == "" {
		return fmt.Errorf("--rootfs %s: --tag and --entrypoint are required", dir)
	}
	if fi, err := os.Stat(filepath.Join(dir, entry)); err != nil || fi.Mode()&0o111 == 0 {
		return fmt.Errorf("--entrypoint %s: not an executable file in %s (%v)", entry, dir, err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if info.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		h, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		h.Name, h.ModTime, h.AccessTime, h.ChangeTime = filepath.ToSlash(rel), epoch, time.Time{}, time.Time{}
		h.Uid, h.Gid, h.Uname, h.Gname, h.Format = 0, 0, "", "", tar.FormatPAX
		if d.IsDir() {
			h.Name += "/"
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if !info.Mode().IsRegular() {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		_, err = tw.Write(data)
		return err
	})
	if err == nil {
		err = tw.Close()
	}
	if err != nil {
		return fmt.Errorf("pack %s: %w", dir, err)
	}
	if title == "" {
		title = filepath.Base(entry)
	}
	cfg := v1.Config{Entrypoint: []string{entry}, User: user, Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}}
	return write(buf.Bytes(), cfg, "hack/image --rootfs: "+title, title, out, arch, ref)
}
