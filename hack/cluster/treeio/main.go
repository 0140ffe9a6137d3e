// Command treeio is the workload of tests/cluster's CSI steps (a static Go
// binary packed as an image by hack/cluster.sh csi-images, since the cluster
// pulls nothing): it writes a tree of files, or a raw device's bytes, and
// prints each one's sha256 so that a later pod's reading can be compared.
//
//	treeio write DIR SEED      write 48 files in nested directories (1 B–384 KiB, from SEED), fsync, print "sha256  path"
//	treeio read DIR            print "sha256  path" of every regular file under DIR, in name order
//	treeio write-block DEV N SEED  write N bytes from SEED at offset 0, fsync, print "sha256  DEV N"
//	treeio read-block DEV N    print "sha256  DEV N" of the first N bytes
//	treeio statfs DIR          print the filesystem's total bytes
//	treeio hold DIR            keep DIR in use until SIGTERM (a pod holding its volume)
//	treeio churn DIR           until SIGTERM, rewrite and fsync DIR/.churn (4 KiB) in a loop (a busy pod: IOPS at its export), then remove it
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"syscall"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "treeio: %v\n", err)
		os.Exit(1)
	}
}

func seeded(seed string) *rand.ChaCha8 {
	var s [32]byte
	copy(s[:], seed)
	return rand.NewChaCha8(s)
}

func run(args []string) error {
	if len(args) < 2 {
		return fmt.Errorf("usage: treeio write|read|write-block|read-block|statfs|hold ARGS")
	}
	switch args[0] {
	case "write":
		if len(args) != 3 {
			return fmt.Errorf("usage: treeio write DIR SEED")
		}
		return writeTree(args[1], args[2])
	case "read":
		return readTree(args[1])
	case "write-block", "read-block":
		if len(args) < 3 {
			return fmt.Errorf("usage: treeio %s DEV N [SEED]", args[0])
		}
		n, err := strconv.ParseInt(args[2], 10, 64)
		if err != nil || n <= 0 {
			return fmt.Errorf("N=%q: want a positive byte count", args[2])
		}
		if args[0] == "write-block" {
			if len(args) != 4 {
				return fmt.Errorf("usage: treeio write-block DEV N SEED")
			}
			return writeBlock(args[1], n, args[3])
		}
		return readBlock(args[1], n)
	case "statfs":
		var st syscall.Statfs_t
		if err := syscall.Statfs(args[1], &st); err != nil {
			return err
		}
		fmt.Println(uint64(st.Blocks) * uint64(st.Bsize))
		return nil
	case "churn":
		return churn(args[1])
	case "hold":
		f, err := os.Open(args[1])
		if err != nil {
			return err
		}
		defer f.Close()
		fmt.Println("holding", args[1])
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
		return nil
	}
	return fmt.Errorf("unknown command %q", args[0])
}

func writeTree(dir, seed string) error {
	r := rand.New(seeded(seed))
	for i := range 48 {
		p := filepath.Join(dir, fmt.Sprintf("d%d", i%4), fmt.Sprintf("e%d", i%3), fmt.Sprintf("f%02d.bin", i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		b := make([]byte, 1+r.IntN(384<<10))
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		f, err := os.Create(p)
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
	}
	// The directories too, then print what is on disk.
	if err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		return f.Sync()
	}); err != nil {
		return err
	}
	return readTree(dir)
}

func readTree(dir string) error {
	var paths []string
	if err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			paths = append(paths, p)
		}
		return nil
	}); err != nil {
		return err
	}
	sort.Strings(paths)
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		h := sha256.New()
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fmt.Printf("%s  %s\n", hex.EncodeToString(h.Sum(nil)), rel)
	}
	fmt.Printf("files %d\n", len(paths))
	return nil
}

func writeBlock(dev string, n int64, seed string) error {
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	r := seeded(seed)
	if _, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(r, n)); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	fmt.Printf("%s  %s %d\n", hex.EncodeToString(h.Sum(nil)), dev, n)
	return f.Close()
}

func readBlock(dev string, n int64) error {
	f, err := os.Open(dev)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyN(h, f, n); err != nil {
		return err
	}
	fmt.Printf("%s  %s %d\n", hex.EncodeToString(h.Sum(nil)), dev, n)
	return nil
}

// churn rewrites one 4 KiB file with fsync until SIGTERM, then removes it
// (and fsyncs the directory), so the tree reads as before.
func churn(dir string) error {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	p := filepath.Join(dir, ".churn")
	f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	b := make([]byte, 4096)
	fmt.Println("churning", p)
	n := 0
	for {
		select {
		case <-sig:
			f.Close()
			if err := os.Remove(p); err != nil {
				return err
			}
			d, err := os.Open(dir)
			if err != nil {
				return err
			}
			defer d.Close()
			if err := d.Sync(); err != nil {
				return err
			}
			fmt.Println("churned", n)
			return nil
		default:
		}
		b[n%len(b)]++
		if _, err := f.WriteAt(b, 0); err != nil {
			return err
		}
		if err := f.Sync(); err != nil {
			return err
		}
		n++
	}
}
