package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// startServer serves exports on a loopback listener until the test ends.
func startServer(t *testing.T, s *Server) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Serve did not return after cancel")
		}
	})
	return l.Addr().String()
}

func memServer(t *testing.T, size int64) (*Server, *MemoryBackend) {
	be, err := NewMemoryBackend(size)
	if err != nil {
		t.Fatal(err)
	}
	return &Server{Exports: []Export{{Name: "vol", Description: "test volume", Backend: be}}}, be
}

// client is a minimal NBD client speaking the wire format directly, so the
// tests can also send what real clients never would.
type client struct {
	t *testing.T
	c net.Conn
}

func dial(t *testing.T, addr string) *client {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { c.Close() })
	return &client{t: t, c: c}
}

func (c *client) read(n int) []byte {
	c.t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(c.c, b); err != nil {
		c.t.Fatalf("read %d bytes: %v", n, err)
	}
	return b
}

func (c *client) write(b []byte) {
	c.t.Helper()
	if _, err := c.c.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// greet reads the greeting and sends the client flags.
func (c *client) greet(flags uint32) {
	c.t.Helper()
	g := c.read(18)
	if binary.BigEndian.Uint64(g) != magicNBD || binary.BigEndian.Uint64(g[8:]) != magicIHaveOpt {
		c.t.Fatalf("greeting magic %x", g[:16])
	}
	if hf := binary.BigEndian.Uint16(g[16:]); hf != flagFixedNewstyle|flagNoZeroes {
		c.t.Fatalf("handshake flags %#x, want fixed newstyle + no zeroes", hf)
	}
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], flags)
	c.write(b[:])
}

func (c *client) sendOpt(opt uint32, data []byte) {
	c.t.Helper()
	b := make([]byte, 16, 16+len(data))
	binary.BigEndian.PutUint64(b, magicIHaveOpt)
	binary.BigEndian.PutUint32(b[8:], opt)
	binary.BigEndian.PutUint32(b[12:], uint32(len(data)))
	c.write(append(b, data...))
}

type optReply struct {
	opt, typ uint32
	data     []byte
}

func (c *client) readOptReply() optReply {
	c.t.Helper()
	h := c.read(20)
	if m := binary.BigEndian.Uint64(h); m != magicOptReply {
		c.t.Fatalf("option reply magic %#x", m)
	}
	r := optReply{opt: binary.BigEndian.Uint32(h[8:]), typ: binary.BigEndian.Uint32(h[12:])}
	r.data = c.read(int(binary.BigEndian.Uint32(h[16:])))
	return r
}

func infoData(name string, infos ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

// goExport negotiates NBD_OPT_GO and returns size and transmission flags.
func (c *client) goExport(name string) (uint64, uint16) {
	c.t.Helper()
	c.sendOpt(OptGo, infoData(name, infoName))
	var size uint64
	var flags uint16
	gotExport := false
	for {
		r := c.readOptReply()
		if r.opt != OptGo {
			c.t.Fatalf("reply to option %d, want %d", r.opt, OptGo)
		}
		switch r.typ {
		case repAck:
			if !gotExport {
				c.t.Fatal("NBD_REP_ACK before NBD_INFO_EXPORT")
			}
			return size, flags
		case repInfo:
			if binary.BigEndian.Uint16(r.data) == infoExport {
				if len(r.data) != 12 {
					c.t.Fatalf("NBD_INFO_EXPORT length %d, want 12", len(r.data))
				}
				size, flags, gotExport = binary.BigEndian.Uint64(r.data[2:]), binary.BigEndian.Uint16(r.data[10:]), true
			}
		default:
			c.t.Fatalf("NBD_OPT_GO reply type %#x (%s)", r.typ, r.data)
		}
	}
}

func (c *client) request(typ, flags uint16, handle, off uint64, length uint32, data []byte) {
	c.t.Helper()
	b := make([]byte, 28, 28+len(data))
	binary.BigEndian.PutUint32(b, magicRequest)
	binary.BigEndian.PutUint16(b[4:], flags)
	binary.BigEndian.PutUint16(b[6:], typ)
	binary.BigEndian.PutUint64(b[8:], handle)
	binary.BigEndian.PutUint64(b[16:], off)
	binary.BigEndian.PutUint32(b[24:], length)
	c.write(append(b, data...))
}

// readReply reads a simple reply header: error and handle.
func (c *client) readReply() (errno uint32, handle uint64) {
	c.t.Helper()
	h := c.read(16)
	if m := binary.BigEndian.Uint32(h); m != magicSimpleRep {
		c.t.Fatalf("reply magic %#x", m)
	}
	return binary.BigEndian.Uint32(h[4:]), binary.BigEndian.Uint64(h[8:])
}

// expectClosed asserts the server closed the connection.
func (c *client) expectClosed() {
	c.t.Helper()
	b := make([]byte, 1)
	if _, err := c.c.Read(b); err == nil {
		c.t.Fatal("server kept the connection open")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		c.t.Fatal("server kept the connection open (read timed out)")
	}
}

func TestGoReportsSizeFlagsAndBlockSize(t *testing.T) {
	s, _ := memServer(t, 1<<20)
	c := dial(t, startServer(t, s))
	c.greet(flagCFixedNewstyle | flagCNoZeroes)
	c.sendOpt(OptInfo, infoData("vol", infoName, infoDescription, infoBlockSize))
	got := map[uint16][]byte{}
	for {
		r := c.readOptReply()
		if r.typ == repAck {
			break
		}
		if r.typ != repInfo {
			t.Fatalf("reply type %#x", r.typ)
		}
		got[binary.BigEndian.Uint16(r.data)] = r.data[2:]
	}
	exp := got[infoExport]
	if len(exp) != 10 || binary.BigEndian.Uint64(exp) != 1<<20 {
		t.Fatalf("NBD_INFO_EXPORT %x, want size 1 MiB", exp)
	}
	want := FlagHasFlags | FlagSendFlush | FlagSendFUA | FlagSendTrim | FlagSendWriteZeroes | FlagCanMultiConn
	if f := binary.BigEndian.Uint16(exp[8:]); f != want {
		t.Fatalf("transmission flags %#x, want %#x", f, want)
	}
	if string(got[infoName]) != "vol" || string(got[infoDescription]) != "test volume" {
		t.Fatalf("name %q description %q", got[infoName], got[infoDescription])
	}
	bs := got[infoBlockSize]
	if len(bs) != 12 || binary.BigEndian.Uint32(bs) != 1 || binary.BigEndian.Uint32(bs[4:]) != 4096 || binary.BigEndian.Uint32(bs[8:]) != DefaultMaxPayload {
		t.Fatalf("block size %x", bs)
	}
	// NBD_OPT_INFO stays in negotiation: NBD_OPT_GO with the default name follows.
	if size, _ := c.goExport(""); size != 1<<20 {
		t.Fatalf("size %d", size)
	}
	c.request(CmdRead, 0, 7, 0, 512, nil)
	if errno, h := c.readReply(); errno != 0 || h != 7 {
		t.Fatalf("read: errno %d handle %d", errno, h)
	}
	if !bytes.Equal(c.read(512), make([]byte, 512)) {
		t.Fatal("fresh export does not read as zeros")
	}
}

func TestNegotiationErrors(t *testing.T) {
	s, _ := memServer(t, 1<<20)
	addr := startServer(t, s)

	t.Run("unknown option, structured reply and TLS are refused, then GO works", func(t *testing.T) {
		c := dial(t, addr)
		c.greet(flagCFixedNewstyle)
		for _, opt := range []uint32{999, OptStructuredReply, OptStartTLS, OptSetMetaContext, OptExtendedHeaders} {
			c.sendOpt(opt, []byte("xyz"))
			if r := c.readOptReply(); r.opt != opt || r.typ != RepErrUnsup {
				t.Fatalf("option %d: reply %d type %#x, want NBD_REP_ERR_UNSUP", opt, r.opt, r.typ)
			}
		}
		c.goExport("vol")
	})
	t.Run("unknown export gets NBD_REP_ERR_UNKNOWN", func(t *testing.T) {
		c := dial(t, addr)
		c.greet(flagCFixedNewstyle)
		c.sendOpt(OptGo, infoData("nope"))
		if r := c.readOptReply(); r.typ != RepErrUnknown || !bytes.Contains(r.data, []byte("nope")) {
			t.Fatalf("reply type %#x %q", r.typ, r.data)
		}
	})
	t.Run("malformed GO gets NBD_REP_ERR_INVALID", func(t *testing.T) {
		c := dial(t, addr)
		c.greet(flagCFixedNewstyle)
		bad := infoData("vol", infoName)
		c.sendOpt(OptGo, bad[:len(bad)-1])
		if r := c.readOptReply(); r.typ != RepErrInvalid {
			t.Fatalf("reply type %#x", r.typ)
		}
		c.sendOpt(OptGo, []byte{0, 0, 0, 200, 0, 0}) // name longer than the data
		if r := c.readOptReply(); r.typ != RepErrInvalid {
			t.Fatalf("reply type %#x", r.typ)
		}
		c.sendOpt(OptList, []byte{1})
		if r := c.readOptReply(); r.typ != RepErrInvalid {
			t.Fatalf("LIST with data: reply type %#x", r.typ)
		}
	})
	t.Run("LIST names every export", func(t *testing.T) {
		c := dial(t, addr)
		c.greet(flagCFixedNewstyle)
		c.sendOpt(OptList, nil)
		r := c.readOptReply()
		if r.typ != repServer || binary.BigEndian.Uint32(r.data) != 3 || string(r.data[4:7]) != "vol" {
			t.Fatalf("reply type %#x data %q", r.typ, r.data)
		}
		if r := c.readOptReply(); r.typ != repAck {
			t.Fatalf("after the list: %#x", r.typ)
		}
	})
	t.Run("ABORT is acknowledged and the connection closed", func(t *testing.T) {
		c := dial(t, addr)
		c.greet(flagCFixedNewstyle)
		c.sendOpt(OptAbort, nil)
		if r := c.readOptReply(); r.typ != repAck {
			t.Fatalf("reply type %#x", r.typ)
		}
		c.expectClosed()
	})
	t.Run("bad option magic closes", func(t *testing.T) {
		c := dial(t, addr)
		c.greet(flagCFixedNewstyle)
		c.write(bytes.Repeat([]byte{0x42}, 16))
		c.expectClosed()
	})
	t.Run("unknown client flags close", func(t *testing.T) {
		c := dial(t, addr)
		c.greet(flagCFixedNewstyle | 1<<5)
		c.expectClosed()
	})
	t.Run("non-fixed client may only send EXPORT_NAME", func(t *testing.T) {
		c := dial(t, addr)
		c.greet(0)
		c.sendOpt(OptList, nil)
		c.expectClosed()
	})
	t.Run("EXPORT_NAME of an unknown export closes", func(t *testing.T) {
		c := dial(t, addr)
		c.greet(flagCFixedNewstyle)
		c.sendOpt(OptExportName, []byte("nope"))
		c.expectClosed()
	})
	t.Run("EXPORT_NAME with and without zeroes", func(t *testing.T) {
		for _, noZeroes := range []bool{false, true} {
			c := dial(t, addr)
			flags := uint32(0)
			if noZeroes {
				flags = flagCNoZeroes
			}
			c.greet(flags) // a non-fixed client: EXPORT_NAME is allowed
			c.sendOpt(OptExportName, []byte("vol"))
			b := c.read(10)
			if binary.BigEndian.Uint64(b) != 1<<20 {
				t.Fatalf("size %d", binary.BigEndian.Uint64(b))
			}
			if !noZeroes && !bytes.Equal(c.read(124), make([]byte, 124)) {
				t.Fatal("124 reserved bytes are not zero")
			}
			// The next bytes are a reply to our first request, proving the padding length.
			c.request(CmdFlush, 0, 99, 0, 0, nil)
			if errno, h := c.readReply(); errno != 0 || h != 99 {
				t.Fatalf("flush: errno %d handle %d", errno, h)
			}
		}
	})
}

func TestTransmissionErrors(t *testing.T) {
	const size = 1 << 20
	s, _ := memServer(t, size)
	s.Exports = append(s.Exports, Export{Name: "ro", Backend: s.Exports[0].Backend, ReadOnly: true})
	s.MaxPayload = 64 << 10
	addr := startServer(t, s)

	c := dial(t, addr)
	c.greet(flagCFixedNewstyle | flagCNoZeroes)
	c.goExport("vol")
	cases := []struct {
		name       string
		typ, flags uint16
		off        uint64
		length     uint32
		payload    bool
		want       uint32
	}{
		{"read past the end", CmdRead, 0, size - 512, 1024, false, EINVAL},
		{"read at a huge offset (no overflow)", CmdRead, 0, ^uint64(0) - 10, 512, false, EINVAL},
		{"read above the maximum block size", CmdRead, 0, 0, 64<<10 + 1, false, EINVAL},
		{"write past the end", CmdWrite, 0, size - 512, 1024, true, ENOSPC},
		{"write-zeroes past the end", CmdWriteZeroes, 0, size, 1, false, ENOSPC},
		{"trim past the end", CmdTrim, 0, size, 4096, false, EINVAL},
		{"unknown command", 42, 0, 0, 0, false, EINVAL},
		{"block status without negotiation", CmdBlockStatus, 0, 0, 512, false, EINVAL},
		{"unknown flag", CmdRead, 1 << 7, 0, 512, false, EINVAL},
		{"NO_HOLE on a write", CmdWrite, CmdFlagNoHole, 0, 512, true, EINVAL},
	}
	for i, tc := range cases {
		var data []byte
		if tc.payload {
			data = bytes.Repeat([]byte{0xee}, int(tc.length))
		}
		c.request(tc.typ, tc.flags, uint64(100+i), tc.off, tc.length, data)
		errno, h := c.readReply()
		if errno != tc.want || h != uint64(100+i) {
			t.Errorf("%s: errno %d handle %d, want %d handle %d", tc.name, errno, h, tc.want, 100+i)
		}
	}
	// The refused payloads were skipped, not interpreted as requests, and
	// nothing was written: the connection still works and reads zeros.
	c.request(CmdRead, 0, 1, size-1024, 1024, nil)
	if errno, _ := c.readReply(); errno != 0 {
		t.Fatalf("read after errors: errno %d", errno)
	}
	if !bytes.Equal(c.read(1024), make([]byte, 1024)) {
		t.Fatal("a refused write changed the export")
	}
	// A bad request magic is a hard disconnect.
	c.write(bytes.Repeat([]byte{1}, 28))
	c.expectClosed()

	ro := dial(t, addr)
	ro.greet(flagCFixedNewstyle | flagCNoZeroes)
	if _, flags := ro.goExport("ro"); flags&FlagReadOnly == 0 {
		t.Fatalf("read-only export flags %#x lack NBD_FLAG_READ_ONLY", flags)
	}
	ro.request(CmdWrite, 0, 5, 0, 512, make([]byte, 512))
	if errno, _ := ro.readReply(); errno != EPERM {
		t.Fatalf("write to read-only export: errno %d, want EPERM", errno)
	}
}

func TestReadWriteZeroesTrimRoundTrip(t *testing.T) {
	s, _ := memServer(t, 8<<20)
	c := dial(t, startServer(t, s))
	c.greet(flagCFixedNewstyle | flagCNoZeroes)
	c.goExport("vol")

	pattern := make([]byte, 3<<20)
	for i := range pattern {
		pattern[i] = byte(i*7 + i>>11)
	}
	const off = 1<<20 - 333 // crosses the backend's chunks, unaligned
	c.request(CmdWrite, 0, 1, off, uint32(len(pattern)), pattern)
	if errno, _ := c.readReply(); errno != 0 {
		t.Fatalf("write errno %d", errno)
	}
	c.request(CmdWriteZeroes, CmdFlagNoHole, 2, off+4096, 10000, nil)
	if errno, _ := c.readReply(); errno != 0 {
		t.Fatalf("write zeroes errno %d", errno)
	}
	want := bytes.Clone(pattern)
	clear(want[4096 : 4096+10000])
	c.request(CmdRead, 0, 3, off, uint32(len(want)), nil)
	if errno, _ := c.readReply(); errno != 0 {
		t.Fatalf("read errno %d", errno)
	}
	if !bytes.Equal(c.read(len(want)), want) {
		t.Fatal("read back differs from what was written")
	}
	c.request(CmdTrim, CmdFlagFUA, 4, 0, 1<<20, nil)
	if errno, _ := c.readReply(); errno != 0 {
		t.Fatalf("trim errno %d", errno)
	}
	c.request(CmdDisc, 0, 5, 0, 0, nil)
	c.expectClosed()
}

// scriptedBackend lets a test hold requests, fail them and count flushes.
type scriptedBackend struct {
	*MemoryBackend
	gate     chan struct{} // reads at offset 0 wait for it
	writeErr error
	flushes  atomic.Int64
	mu       sync.Mutex
	events   []string // writes and flushes in the order the backend saw them
}

func (b *scriptedBackend) ReadAt(ctx context.Context, p []byte, off int64) error {
	if off == 0 && b.gate != nil {
		<-b.gate
	}
	return b.MemoryBackend.ReadAt(ctx, p, off)
}

func (b *scriptedBackend) WriteAt(ctx context.Context, p []byte, off int64) error {
	if b.writeErr != nil {
		return b.writeErr
	}
	b.mu.Lock()
	b.events = append(b.events, fmt.Sprintf("write %d", off))
	b.mu.Unlock()
	return b.MemoryBackend.WriteAt(ctx, p, off)
}

func (b *scriptedBackend) Flush(context.Context) error {
	b.flushes.Add(1)
	b.mu.Lock()
	b.events = append(b.events, "flush")
	b.mu.Unlock()
	return nil
}

func TestConcurrentRequestsReplyOutOfOrderWithTheirHandles(t *testing.T) {
	mem, _ := NewMemoryBackend(1 << 20)
	be := &scriptedBackend{MemoryBackend: mem, gate: make(chan struct{})}
	c := dial(t, startServer(t, &Server{Exports: []Export{{Name: "vol", Backend: be}}}))
	c.greet(flagCFixedNewstyle | flagCNoZeroes)
	c.goExport("vol")

	c.request(CmdRead, 0, 0xA, 0, 4096, nil) // held by the gate
	c.request(CmdWrite, 0, 0xB, 8192, 4, []byte("abcd"))
	if errno, h := c.readReply(); errno != 0 || h != 0xB {
		t.Fatalf("first reply: errno %d handle %#x, want the write (0xB) while the read is held", errno, h)
	}
	close(be.gate)
	if errno, h := c.readReply(); errno != 0 || h != 0xA {
		t.Fatalf("second reply: errno %d handle %#x, want the read (0xA)", errno, h)
	}
	c.read(4096)
}

func TestFUAFlushesBeforeReplyAndBackendErrorsMap(t *testing.T) {
	mem, _ := NewMemoryBackend(1 << 20)
	be := &scriptedBackend{MemoryBackend: mem}
	c := dial(t, startServer(t, &Server{Exports: []Export{{Name: "vol", Backend: be}}}))
	c.greet(flagCFixedNewstyle | flagCNoZeroes)
	c.goExport("vol")

	c.request(CmdWrite, 0, 1, 0, 512, make([]byte, 512))
	if errno, _ := c.readReply(); errno != 0 || be.flushes.Load() != 0 {
		t.Fatalf("plain write: errno %d, flushes %d (want 0)", errno, be.flushes.Load())
	}
	c.request(CmdWrite, CmdFlagFUA, 2, 512, 512, make([]byte, 512))
	if errno, _ := c.readReply(); errno != 0 || be.flushes.Load() != 1 {
		t.Fatalf("FUA write: errno %d, flushes %d at reply time (want 1)", errno, be.flushes.Load())
	}
	be.mu.Lock()
	if got := fmt.Sprint(be.events); got != "[write 0 write 512 flush]" {
		t.Fatalf("backend events %s", got)
	}
	be.mu.Unlock()
	c.request(CmdFlush, 0, 3, 0, 0, nil)
	if errno, _ := c.readReply(); errno != 0 || be.flushes.Load() != 2 {
		t.Fatalf("flush: errno %d flushes %d", errno, be.flushes.Load())
	}

	for _, tc := range []struct {
		err  error
		want uint32
	}{
		{errors.New("disk on fire"), EIO},
		{fmt.Errorf("journal: %w", ErrNoSpace), ENOSPC},
		{fmt.Errorf("write: %w", syscall.ENOSPC), ENOSPC},
		{fmt.Errorf("alloc: %w", syscall.ENOMEM), ENOMEM},
	} {
		be.writeErr = tc.err
		c.request(CmdWrite, 0, 9, 0, 512, make([]byte, 512))
		if errno, h := c.readReply(); errno != tc.want || h != 9 {
			t.Errorf("backend error %v: errno %d, want %d", tc.err, errno, tc.want)
		}
	}
}

func TestDisconnectWaitsForInFlightReplies(t *testing.T) {
	mem, _ := NewMemoryBackend(1 << 20)
	be := &scriptedBackend{MemoryBackend: mem, gate: make(chan struct{})}
	c := dial(t, startServer(t, &Server{Exports: []Export{{Name: "vol", Backend: be}}}))
	c.greet(flagCFixedNewstyle | flagCNoZeroes)
	c.goExport("vol")
	c.request(CmdRead, 0, 77, 0, 512, nil)
	c.request(CmdDisc, 0, 78, 0, 0, nil)
	time.AfterFunc(50*time.Millisecond, func() { close(be.gate) })
	if errno, h := c.readReply(); errno != 0 || h != 77 {
		t.Fatalf("in-flight read after DISC: errno %d handle %d", errno, h)
	}
	c.read(512)
	c.expectClosed()
}

func TestServeShutdownLetsInFlightFinish(t *testing.T) {
	mem, _ := NewMemoryBackend(1 << 20)
	be := &scriptedBackend{MemoryBackend: mem, gate: make(chan struct{})}
	s := &Server{Exports: []Export{{Name: "vol", Backend: be}}}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()
	c := dial(t, l.Addr().String())
	c.greet(flagCFixedNewstyle | flagCNoZeroes)
	c.goExport("vol")
	c.request(CmdRead, 0, 5, 0, 512, nil)
	// Make sure the request is in flight before shutting down.
	c.request(CmdWrite, 0, 6, 4096, 1, []byte{1})
	if _, h := c.readReply(); h != 6 {
		t.Fatalf("handle %d", h)
	}
	cancel()
	select {
	case <-done:
		t.Fatal("Serve returned while a request was still in flight")
	case <-time.After(100 * time.Millisecond):
	}
	close(be.gate)
	if errno, h := c.readReply(); errno != 0 || h != 5 {
		t.Fatalf("in-flight read at shutdown: errno %d handle %d", errno, h)
	}
	c.read(512)
	c.expectClosed()
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
}

// blockingBackend's writes wait until their context ends, as a write
// waiting for room in a full journal does while destaging fails.
type blockingBackend struct {
	*MemoryBackend
	started chan struct{}
}

func (b *blockingBackend) WriteAt(ctx context.Context, p []byte, off int64) error {
	b.started <- struct{}{}
	<-ctx.Done()
	return ctx.Err()
}

// A shutdown (SIGTERM) with a write stuck in the backend ends within
// DrainTimeout: the write fails with an error, never acknowledged. Before
// DrainTimeout, Serve waited for it forever.
func TestServeShutdownBoundsAStuckWrite(t *testing.T) {
	mem, _ := NewMemoryBackend(1 << 20)
	be := &blockingBackend{MemoryBackend: mem, started: make(chan struct{}, 1)}
	s := &Server{Exports: []Export{{Name: "vol", Backend: be}}, DrainTimeout: 200 * time.Millisecond}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()
	c := dial(t, l.Addr().String())
	c.greet(flagCFixedNewstyle | flagCNoZeroes)
	c.goExport("vol")
	c.request(CmdWrite, 0, 7, 0, 512, make([]byte, 512))
	<-be.started
	cancel()
	if errno, h := c.readReply(); errno == 0 || h != 7 {
		t.Fatalf("stuck write at shutdown: errno %d handle %d, want an error", errno, h)
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Serve still waiting for a stuck write 30s after shutdown")
	}
}

// Answered sees every command answered with success, with its length, and
// neither refused nor failed ones (the export's op counters rest on it).
func TestAnsweredReportsOnlySuccessfulCommands(t *testing.T) {
	be, err := NewMemoryBackend(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[uint16][]uint32{}
	s := &Server{Exports: []Export{{Name: "vol", Backend: be, Answered: func(cmd uint16, n uint32) {
		mu.Lock()
		seen[cmd] = append(seen[cmd], n)
		mu.Unlock()
	}}}}
	c := dial(t, startServer(t, s))
	c.greet(flagCFixedNewstyle | flagCNoZeroes)
	c.goExport("vol")
	c.request(CmdWrite, 0, 1, 0, 4096, make([]byte, 4096))
	if errno, _ := c.readReply(); errno != 0 {
		t.Fatalf("write errno %d", errno)
	}
	c.request(CmdRead, 0, 2, 512, 1024, nil)
	if errno, _ := c.readReply(); errno != 0 {
		t.Fatalf("read errno %d", errno)
	}
	c.read(1024)
	c.request(CmdWriteZeroes, 0, 3, 0, 8192, nil)
	if errno, _ := c.readReply(); errno != 0 {
		t.Fatalf("write zeroes errno %d", errno)
	}
	c.request(CmdFlush, 0, 4, 0, 0, nil)
	if errno, _ := c.readReply(); errno != 0 {
		t.Fatalf("flush errno %d", errno)
	}
	// Refused: out of range.
	c.request(CmdRead, 0, 5, 1<<20, 4096, nil)
	if errno, _ := c.readReply(); errno == 0 {
		t.Fatal("out-of-range read answered with success")
	}
	c.request(CmdWrite, 0, 6, 1<<20, 512, make([]byte, 512))
	if errno, _ := c.readReply(); errno == 0 {
		t.Fatal("out-of-range write answered with success")
	}
	c.request(CmdDisc, 0, 7, 0, 0, nil)
	c.expectClosed()
	mu.Lock()
	defer mu.Unlock()
	want := map[uint16][]uint32{CmdWrite: {4096}, CmdRead: {1024}, CmdWriteZeroes: {8192}, CmdFlush: {0}}
	if fmt.Sprint(seen) != fmt.Sprint(want) {
		t.Errorf("answered %v, want %v", seen, want)
	}
}
