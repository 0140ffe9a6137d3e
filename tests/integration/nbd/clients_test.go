package nbd_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const exportSize = 256 << 20

// backends are the two exports every client test runs against.
var backends = []serverOpts{
	{backend: "memory", size: exportSize},
	{backend: "volume", stripe: "memory", size: exportSize},
}

func forEachBackend(t *testing.T, fn func(t *testing.T, s *server)) {
	for _, o := range backends {
		t.Run(o.backend, func(t *testing.T) {
			o.dir = t.TempDir()
			fn(t, startServer(t, o))
		})
	}
}

func TestNbdinfoShowsSizeAndFlags(t *testing.T) {
	need(t, "nbdinfo")
	forEachBackend(t, func(t *testing.T, s *server) {
		out := run(t, time.Minute, "nbdinfo", "--json", s.uri())
		var info struct {
			Protocol   string `json:"protocol"`
			Structured bool   `json:"structured"`
			Exports    []map[string]any
		}
		if err := json.Unmarshal([]byte(out), &info); err != nil {
			t.Fatalf("nbdinfo --json: %v\n%s", err, out)
		}
		if info.Protocol != "newstyle-fixed" || info.Structured || len(info.Exports) != 1 {
			t.Fatalf("protocol %q structured %v exports %d", info.Protocol, info.Structured, len(info.Exports))
		}
		e := info.Exports[0]
		want := map[string]any{
			"export-name": exportNm, "export-size": float64(exportSize), "is_read_only": false,
			"can_flush": true, "can_fua": true, "can_trim": true, "can_zero": true, "can_multi_conn": true,
			"block_size_minimum": float64(1), "block_size_preferred": float64(4096), "block_size_maximum": float64(32 << 20),
		}
		for k, v := range want {
			if e[k] != v {
				t.Errorf("nbdinfo %s = %v, want %v", k, e[k], v)
			}
		}
		list := run(t, time.Minute, "nbdinfo", "--list", "nbd://"+s.addr)
		if !strings.Contains(list, `export="vol"`) || !strings.Contains(list, "couchestor test export") {
			t.Errorf("nbdinfo --list does not show the export:\n%s", list)
		}
	})
}

func TestQemuIoRandomWritesVerified(t *testing.T) {
	need(t, "qemu-io")
	forEachBackend(t, func(t *testing.T, s *server) {
		rng := mrand.New(mrand.NewPCG(7, 11))
		type op struct {
			off, n  int64
			pattern byte
		}
		// Non-overlapping ranges (so the final content of each is known),
		// aligned and unaligned, small and up to 2 MiB, in random order.
		var ops []op
		var writes, reads []string
		for i := 0; i < 60; i++ {
			slot := int64(i) * (exportSize / 64)
			off := slot + rng.Int64N(1<<20)
			if i%3 == 0 {
				off -= off % 4096
			}
			n := 1 + rng.Int64N(2<<20)
			o := op{off, n, byte(1 + rng.IntN(254))}
			ops = append(ops, o)
		}
		rng.Shuffle(len(ops), func(i, j int) { ops[i], ops[j] = ops[j], ops[i] })
		for i, o := range ops {
			writes = append(writes, "-c", fmt.Sprintf("write -P 0x%02x %d %d", o.pattern, o.off, o.n))
			if i > 0 {
				reads = append(reads, "-c", fmt.Sprintf("read -P 0x%02x %d %d", o.pattern, o.off, o.n))
			}
			// The byte just past each range was never written: zeros.
			reads = append(reads, "-c", fmt.Sprintf("read -P 0 %d 1", o.off+o.n))
		}
		// The first range gets its middle third overwritten (unaligned), then
		// each third is checked.
		f := ops[0]
		third := max(1, f.n/3)
		writes = append(writes, "-c", fmt.Sprintf("write -P 0xee %d %d", f.off+third, third))
		reads = append(reads, "-c", fmt.Sprintf("read -P 0x%02x %d %d", f.pattern, f.off, third),
			"-c", fmt.Sprintf("read -P 0xee %d %d", f.off+third, third),
			"-c", fmt.Sprintf("read -P 0x%02x %d %d", f.pattern, f.off+2*third, f.n-2*third))
		args := append([]string{"-f", "raw"}, writes...)
		out := run(t, 5*time.Minute, "qemu-io", append(args, s.uri())...)
		if strings.Contains(out, "failed") || strings.Count(out, "wrote ") != len(writes)/2 {
			t.Fatalf("qemu-io writes:\n%s", out)
		}
		// Reads on a new connection, so nothing is served from the client's side.
		args = append([]string{"-f", "raw", "-r"}, reads...)
		out = run(t, 5*time.Minute, "qemu-io", append(args, s.uri())...)
		if strings.Contains(out, "Pattern verification failed") || strings.Contains(out, "failed") {
			t.Fatalf("qemu-io verification:\n%s", out)
		}
		if got, want := strings.Count(out, "read "), len(reads)/2; got != want {
			t.Fatalf("qemu-io completed %d reads, want %d:\n%s", got, want, out)
		}
	})
}

// randomImage writes n random bytes to a file and returns its path and sha256.
func randomImage(t *testing.T, n int) (string, [32]byte) {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "in.raw")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p, sha256.Sum256(b)
}

// prefixSum returns the sha256 of the first n bytes of file p and checks the
// rest is zeros (the export is larger than the image).
func prefixSum(t *testing.T, p string, n int) [32]byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != exportSize {
		t.Fatalf("%s has %d bytes, want the export's %d", p, len(b), exportSize)
	}
	if !bytes.Equal(b[n:], make([]byte, len(b)-n)) {
		t.Fatalf("%s: bytes past the image are not zero", p)
	}
	return sha256.Sum256(b[:n])
}

func TestQemuImgConvertInAndOut(t *testing.T) {
	need(t, "qemu-img")
	forEachBackend(t, func(t *testing.T, s *server) {
		const n = 48 << 20
		in, sum := randomImage(t, n)
		run(t, 5*time.Minute, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", in, s.uri())
		run(t, 5*time.Minute, "qemu-img", "compare", "-f", "raw", "-F", "raw", in, s.uri())
		out := filepath.Join(t.TempDir(), "out.raw")
		run(t, 5*time.Minute, "qemu-img", "convert", "-f", "raw", "-O", "raw", s.uri(), out)
		if got := prefixSum(t, out, n); got != sum {
			t.Fatalf("qemu-img round trip: sha256 %x, want %x", got, sum)
		}
	})
}

func TestNbdcopyRoundTrip(t *testing.T) {
	need(t, "nbdcopy")
	forEachBackend(t, func(t *testing.T, s *server) {
		const n = 40<<20 + 12345 // not a multiple of any block size
		in, sum := randomImage(t, n)
		run(t, 5*time.Minute, "nbdcopy", in, s.uri())
		out := filepath.Join(t.TempDir(), "out.raw")
		run(t, 5*time.Minute, "nbdcopy", s.uri(), out)
		if got := prefixSum(t, out, n); got != sum {
			t.Fatalf("nbdcopy round trip: sha256 %x, want %x", got, sum)
		}
	})
}
