package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// A client announcing a 4 GiB write gets EINVAL at once and is disconnected:
// the server neither allocates the payload nor waits to read it.
func TestHugeWriteRefusedBeforeAllocation(t *testing.T) {
	s, be := memServer(t, 1<<20)
	c := dial(t, startServer(t, s))
	_ = c.c.SetDeadline(time.Now().Add(10 * time.Second))
	c.greet(flagCFixedNewstyle | flagCNoZeroes)
	c.goExport("vol")

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	c.request(CmdWrite, 0, 7, 0, ^uint32(0), bytes.Repeat([]byte{0xab}, 4096)) // 4 GiB - 1 announced, 4 KiB sent
	if errno, h := c.readReply(); errno != EINVAL || h != 7 {
		t.Fatalf("4 GiB write: errno %d handle %d, want EINVAL handle 7", errno, h)
	}
	c.expectClosed()
	runtime.ReadMemStats(&after)
	d := after.TotalAlloc - before.TotalAlloc
	if d > 1<<20 {
		t.Fatalf("refusing a 4 GiB write allocated %d bytes", d)
	}
	t.Logf("refusing a 4 GiB write: %d bytes allocated in the process meanwhile", d)
	got := make([]byte, 4096)
	if err := be.ReadAt(context.Background(), got, 0); err != nil || !bytes.Equal(got, make([]byte, 4096)) {
		t.Fatalf("the refused write changed the export (err %v)", err)
	}
}

// The connection past MaxConns is told why with NBD_REP_ERR_POLICY; once a
// connection closes, a new one is served.
func TestConnectionCapRefusesClearly(t *testing.T) {
	s, _ := memServer(t, 1<<20)
	s.MaxConns = 2
	addr := startServer(t, s)
	var open []*client
	for i := 0; i < 2; i++ {
		c := dial(t, addr)
		c.greet(flagCFixedNewstyle | flagCNoZeroes)
		c.goExport("vol")
		open = append(open, c)
	}
	c := dial(t, addr)
	c.greet(flagCFixedNewstyle | flagCNoZeroes)
	c.sendOpt(OptGo, infoData("vol"))
	r := c.readOptReply()
	if r.typ != RepErrPolicy || !strings.Contains(string(r.data), "the limit is 2") {
		t.Fatalf("third connection: reply %#x %q, want NBD_REP_ERR_POLICY naming the limit 2", r.typ, r.data)
	}
	c.expectClosed()

	open[0].request(CmdDisc, 0, 1, 0, 0, nil)
	open[0].expectClosed()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c := dial(t, addr)
		c.greet(flagCFixedNewstyle | flagCNoZeroes)
		c.sendOpt(OptGo, infoData("vol"))
		r := c.readOptReply()
		if r.typ == repInfo {
			break
		}
		c.c.Close()
		if time.Now().After(deadline) {
			t.Fatalf("a connection slot never came back: %#x %q", r.typ, r.data)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The survivor still works.
	open[1].request(CmdRead, 0, 2, 0, 512, nil)
	if errno, _ := open[1].readReply(); errno != 0 {
		t.Fatalf("read on an admitted connection: errno %d", errno)
	}
	open[1].read(512)
}

// An idle connection is closed after IdleTimeout; one inside a request is
// closed after IOTimeout.
func TestIdleAndStalledConnectionsClosed(t *testing.T) {
	s, _ := memServer(t, 1<<20)
	s.IdleTimeout = time.Second
	s.IOTimeout = 200 * time.Millisecond
	var logs atomic.Value
	logs.Store("")
	s.Logf = func(f string, a ...any) {
		logs.Store(logs.Load().(string) + "\n" + sprintf(f, a...))
	}
	addr := startServer(t, s)

	idle := dial(t, addr)
	_ = idle.c.SetDeadline(time.Now().Add(10 * time.Second))
	idle.greet(flagCFixedNewstyle | flagCNoZeroes)
	idle.goExport("vol")
	// Busy for longer than the idle timeout (gaps far below it): requests
	// keep it open.
	for i := 0; i < 12; i++ {
		idle.request(CmdRead, 0, uint64(i), 0, 512, nil)
		if errno, _ := idle.readReply(); errno != 0 {
			t.Fatalf("read %d: errno %d", i, errno)
		}
		idle.read(512)
		time.Sleep(100 * time.Millisecond)
	}
	idle.expectClosed()

	stalled := dial(t, addr)
	_ = stalled.c.SetDeadline(time.Now().Add(10 * time.Second))
	stalled.greet(flagCFixedNewstyle | flagCNoZeroes)
	stalled.goExport("vol")
	var h [28]byte
	binary.BigEndian.PutUint32(h[:], magicRequest)
	binary.BigEndian.PutUint16(h[6:], CmdWrite)
	binary.BigEndian.PutUint32(h[24:], 4096)
	stalled.write(h[:]) // the payload never follows
	stalled.expectClosed()

	waitFor(t, func() bool {
		l := logs.Load().(string)
		return strings.Contains(l, "idle timeout") && strings.Contains(l, "not received within 200ms")
	})
}

// MaxBufferedBytes bounds the payload held by in-flight requests: with room
// for two, a third waits until one finishes.
func TestBufferBudgetBoundsInFlightPayload(t *testing.T) {
	mem, _ := NewMemoryBackend(1 << 20)
	be := &countingBackend{MemoryBackend: mem, release: make(chan struct{})}
	s := &Server{Exports: []Export{{Name: "vol", Backend: be}}, MaxPayload: 64 << 10, MaxBufferedBytes: 128 << 10}
	c := dial(t, startServer(t, s))
	c.greet(flagCFixedNewstyle | flagCNoZeroes)
	c.goExport("vol")
	for i := 0; i < 4; i++ {
		c.request(CmdWrite, 0, uint64(i), uint64(i)*(64<<10), 64<<10, make([]byte, 64<<10))
	}
	waitFor(t, func() bool { return be.inside.Load() == 2 })
	time.Sleep(100 * time.Millisecond) // give a third request the chance to (wrongly) start
	if n := be.peak.Load(); n != 2 {
		t.Fatalf("%d writes in the backend at once, want 2 (budget of two payloads)", n)
	}
	close(be.release)
	for i := 0; i < 4; i++ {
		if errno, _ := c.readReply(); errno != 0 {
			t.Fatalf("write: errno %d", errno)
		}
	}
}

type countingBackend struct {
	*MemoryBackend
	release      chan struct{}
	inside, peak atomic.Int64
}

func (b *countingBackend) WriteAt(ctx context.Context, p []byte, off int64) error {
	n := b.inside.Add(1)
	for {
		old := b.peak.Load()
		if n <= old || b.peak.CompareAndSwap(old, n) {
			break
		}
	}
	<-b.release
	b.inside.Add(-1)
	return b.MemoryBackend.WriteAt(ctx, p, off)
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func sprintf(f string, a ...any) string { return fmt.Sprintf(f, a...) }
