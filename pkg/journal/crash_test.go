package journal

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	crashDirEnv  = "JOURNAL_CRASH_DIR"
	crashModeEnv = "JOURNAL_CRASH_MODE"
	crashWriters = 2
	crashSlots   = 64
)

// fileSink is a volume image file; stripes are plain ranges of it here (the
// real sink re-encodes erasure-coded stripes). It reports "MID" to stdout
// halfway through a stripe, before anything is fsynced, so the parent can
// kill the process mid-destage.
type fileSink struct {
	f   *os.File
	out func(string)
}

func (s *fileSink) WriteStripe(_ context.Context, _ int64, ext []Extent) error {
	for i, e := range ext {
		if _, err := s.f.WriteAt(e.Data, int64(e.LBA)*LBASize); err != nil {
			return err
		}
		if i == len(ext)/2 {
			s.out("MID\n")
			time.Sleep(time.Millisecond)
		}
	}
	return s.f.Sync()
}

func crashLBA(w, i int) uint64 { return uint64(w*100000 + (i%crashSlots)*8) }

// TestCrashChild is the process the crash tests kill. It does nothing unless
// re-executed by them.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashDirEnv)
	if dir == "" {
		t.Skip("helper process for TestCrash*; runs only when re-executed by them")
	}
	mode := os.Getenv(crashModeEnv)
	size := int64(32 << 20)
	if mode == "destage" {
		size = 256 << 10
	}
	var outMu sync.Mutex
	out := func(s string) {
		outMu.Lock()
		os.Stdout.WriteString(s)
		outMu.Unlock()
	}
	j := openJournal(t, dir, 3, size)
	ctx := context.Background()
	if mode == "destage" {
		img, err := os.OpenFile(filepath.Join(dir, "volume.img"), os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		d, err := NewDestager(j, &fileSink{f: img, out: out}, DestagerConfig{StripeSizeBytes: 65536, ThresholdPercent: 30, Interval: 5 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		go d.Run(ctx)
	}
	var wg sync.WaitGroup
	for w := 0; w < crashWriters; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				lba := crashLBA(w, i)
				if _, err := j.Append(ctx, lba, block(lba, i, 8)); err != nil {
					out(fmt.Sprintf("ERR %v\n", err))
					return
				}
				out(fmt.Sprintf("ACK %d %d\n", w, i))
			}
		}()
	}
	wg.Wait()
	select {} // only SIGKILL ends this process
}

func runCrash(t *testing.T, mode string) {
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashDirEnv+"="+dir, crashModeEnv+"="+mode)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	acked := map[[2]int]int{} // (writer, slot) -> newest acknowledged i
	acks, mids := 0, 0
	sc := bufio.NewScanner(stdout)
	deadline := time.AfterFunc(2*time.Minute, func() { cmd.Process.Kill() })
	defer deadline.Stop()
	for sc.Scan() {
		line := sc.Text()
		var w, i int
		switch {
		case line == "MID":
			mids++
		case func() bool { _, err := fmt.Sscanf(line, "ACK %d %d", &w, &i); return err == nil }():
			acked[[2]int{w, i % crashSlots}] = i
			acks++
		default:
			t.Fatalf("child: %s", line)
		}
		if acks >= 3000 && (mode != "destage" || line == "MID" && mids >= 3) {
			// SIGKILL: no deferred code, no flush — as a crash.
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	cmd.Wait()
	if acks < 3000 {
		t.Fatalf("child stopped after %d acknowledgements", acks)
	}
	if mode == "destage" && mids < 3 {
		t.Fatalf("child never destaged (%d MID)", mids)
	}

	j := openJournal(t, dir, 3, 64<<20)
	defer j.Close()
	imgBytes, _ := os.ReadFile(filepath.Join(dir, "volume.img"))
	img := func(l uint64) []byte {
		b := make([]byte, LBASize)
		if off := int(l) * LBASize; off < len(imgBytes) {
			copy(b, imgBytes[off:])
		}
		return b
	}
	for key, i := range acked {
		lba := crashLBA(key[0], i)
		got := readThrough(t, j, img, lba, 8)
		// The newest acknowledged write, or the one write after it that was
		// in flight when the process died; never a torn mix.
		if !bytes.Equal(got, block(lba, i, 8)) && !bytes.Equal(got, block(lba, i+crashSlots, 8)) {
			t.Fatalf("writer %d LBA %d: acknowledged write %d does not read back", key[0], lba, i)
		}
	}
	t.Logf("%s: %d acknowledged writes, %d destage midpoints seen, all read back", mode, acks, mids)
}

// TestCrashBetweenAppendAndAck kills the writer while appends are in flight.
func TestCrashBetweenAppendAndAck(t *testing.T) { runCrash(t, "append") }

// TestCrashMidDestage kills the writer in the middle of writing a stripe.
func TestCrashMidDestage(t *testing.T) { runCrash(t, "destage") }
