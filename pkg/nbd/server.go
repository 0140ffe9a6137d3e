package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"
)

// Export is one named device a Server offers.
type Export struct {
	// Name is what clients ask for (NBD_OPT_GO, NBD_OPT_EXPORT_NAME). The
	// first export of a Server is also the default export (the empty name).
	Name string
	// Description is shown by NBD_OPT_LIST and NBD_INFO_DESCRIPTION.
	Description string
	Backend     Backend
	// ReadOnly advertises NBD_FLAG_READ_ONLY and refuses writes with EPERM.
	ReadOnly bool
	// Answered, when set, is called once for every command answered with
	// success (errno 0), after its reply was handed to the connection:
	// cmd is the command (CmdRead, CmdWrite, CmdFlush, CmdTrim,
	// CmdWriteZeroes) and length its length in bytes. Refused and failed
	// commands are not reported. It runs on the request's goroutine and
	// must be fast and safe for concurrent use (the export's counters).
	Answered func(cmd uint16, length uint32)
}

// Server serves Exports over NBD. Set its fields before Serve; it is safe to
// serve several listeners with one Server.
type Server struct {
	Exports []Export
	// MaxInFlight bounds the requests of one connection executing at once
	// (0 means 64). The next request is not read while the bound is reached,
	// which back-pressures the client through TCP.
	MaxInFlight int
	// MaxPayload is the largest READ or WRITE served, advertised as the
	// maximum block size (0 means DefaultMaxPayload).
	MaxPayload int
	// HandshakeTimeout bounds the whole option haggling of a connection
	// (0 means one minute).
	HandshakeTimeout time.Duration
	// MaxConns bounds the connections served at once (0 means
	// DefaultMaxConns). A connection past it is refused during negotiation
	// with NBD_REP_ERR_POLICY and a message naming the limit.
	MaxConns int
	// MaxBufferedBytes bounds the READ and WRITE payload bytes held by all
	// connections together (0 means DefaultMaxBufferedBytes); it must be at
	// least MaxPayload. A request waits for room before its buffer is
	// allocated, which back-pressures the clients through TCP.
	MaxBufferedBytes int64
	// IdleTimeout closes a connection that sends no request for that long
	// (0: never — the kernel's NBD client sends nothing while its device is
	// idle, and closing it would fail the device).
	IdleTimeout time.Duration
	// IOTimeout bounds receiving the rest of a request once its first byte
	// arrived (header and WRITE payload) and sending each reply; a client
	// slower than that is disconnected (0 means one minute).
	IOTimeout time.Duration
	// DrainTimeout bounds how long requests in flight when Serve's context
	// ends may still run (0 means 30 seconds); then their context is
	// cancelled, so a write waiting for room in a full journal fails (EIO,
	// never acknowledged) instead of holding the shutdown forever.
	DrainTimeout time.Duration
	// Logf receives connection errors; nil discards them.
	Logf func(format string, args ...any)

	once    sync.Once
	buffers *semaphore.Weighted
	conns   atomic.Int64 // connections being served, refused ones included
}

func (s *Server) maxInFlight() int {
	if s.MaxInFlight > 0 {
		return s.MaxInFlight
	}
	return 64
}

// DefaultMaxConns and DefaultMaxBufferedBytes are the bounds a Server
// applies when its fields are zero.
const (
	DefaultMaxConns         = 64
	DefaultMaxBufferedBytes = 512 << 20
)

func (s *Server) maxConns() int {
	if s.MaxConns > 0 {
		return s.MaxConns
	}
	return DefaultMaxConns
}

func (s *Server) ioTimeout() time.Duration {
	if s.IOTimeout > 0 {
		return s.IOTimeout
	}
	return time.Minute
}

func (s *Server) drainTimeout() time.Duration {
	if s.DrainTimeout > 0 {
		return s.DrainTimeout
	}
	return 30 * time.Second
}

// budget is the server-wide payload semaphore, made on first use.
func (s *Server) budget() *semaphore.Weighted {
	s.once.Do(func() {
		n := s.MaxBufferedBytes
		if n <= 0 {
			n = DefaultMaxBufferedBytes
		}
		s.buffers = semaphore.NewWeighted(n)
	})
	return s.buffers
}

func (s *Server) maxPayload() int {
	if s.MaxPayload > 0 {
		return s.MaxPayload
	}
	return DefaultMaxPayload
}

func (s *Server) logf(format string, args ...any) {
	if s.Logf != nil {
		s.Logf(format, args...)
	}
}

func (s *Server) validate() error {
	if len(s.Exports) == 0 {
		return errors.New("nbd server: no exports")
	}
	if s.MaxBufferedBytes > 0 && s.MaxBufferedBytes < int64(s.maxPayload()) {
		return fmt.Errorf("nbd server: MaxBufferedBytes %d must be at least MaxPayload %d (one request's buffer)", s.MaxBufferedBytes, s.maxPayload())
	}
	seen := map[string]bool{}
	for i, e := range s.Exports {
		if e.Backend == nil {
			return fmt.Errorf("nbd server: export %d (%q) has no Backend", i, e.Name)
		}
		if len(e.Name) > maxStringLength || len(e.Description) > maxStringLength {
			return fmt.Errorf("nbd server: export %d name or description longer than %d bytes", i, maxStringLength)
		}
		if seen[e.Name] {
			return fmt.Errorf("nbd server: export name %q used twice", e.Name)
		}
		seen[e.Name] = true
	}
	return nil
}

// Serve accepts connections on l until ctx ends, then closes l, lets every
// connection finish its in-flight requests and returns nil. It returns an
// error if accepting fails for another reason.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	if err := s.validate(); err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { _ = l.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("nbd: accept on %s: %w", l.Addr(), err)
		}
		n := s.conns.Add(1)
		if n > int64(2*s.maxConns()) {
			// Far past the limit: not even a refusal message.
			s.conns.Add(-1)
			s.logf("nbd: connection from %s closed: %d connections open, limit %d", c.RemoteAddr(), n-1, s.maxConns())
			_ = c.Close()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer s.conns.Add(-1)
			var err error
			if n > int64(s.maxConns()) {
				err = s.refuse(c)
			} else {
				err = s.ServeConn(ctx, c)
			}
			if err != nil {
				s.logf("nbd: connection from %s: %v", c.RemoteAddr(), err)
			}
		}()
	}
}

// ServeConn runs the protocol on one connection and closes it. It returns
// nil when the client disconnected cleanly (NBD_OPT_ABORT, NBD_CMD_DISC, or
// closing the socket between requests) or ctx ended.
func (s *Server) ServeConn(ctx context.Context, nc net.Conn) error {
	defer nc.Close()
	if err := s.validate(); err != nil {
		return err
	}
	c := &conn{
		srv: s,
		nc:  nc,
		br:  bufio.NewReaderSize(nc, 256<<10),
		bw:  bufio.NewWriterSize(nc, 256<<10),
	}
	// Ending ctx makes the blocked read return: negotiation fails, the
	// request loop stops reading and drains.
	stop := context.AfterFunc(ctx, c.stopReading)
	defer stop()

	timeout := s.HandshakeTimeout
	if timeout <= 0 {
		timeout = time.Minute
	}
	_ = nc.SetDeadline(time.Now().Add(timeout))
	exp, err := c.negotiate()
	if err != nil {
		if ctx.Err() != nil || errors.Is(err, errAborted) {
			return nil
		}
		return fmt.Errorf("negotiation: %w", err)
	}
	_ = nc.SetWriteDeadline(time.Time{})
	c.readDeadline(0)
	if ctx.Err() != nil {
		return nil
	}
	err = c.transmit(ctx, exp)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

var errAborted = errors.New("client aborted the negotiation")

// refuse answers a connection past MaxConns: the greeting, then
// NBD_REP_ERR_POLICY with a message naming the limit to the first option
// (NBD_OPT_EXPORT_NAME cannot carry an error: it is just closed), then close.
func (s *Server) refuse(nc net.Conn) error {
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(min(s.ioTimeout(), 10*time.Second)))
	c := &conn{srv: s, nc: nc, br: bufio.NewReaderSize(nc, 64)}
	msg := fmt.Sprintf("server busy: %d connections already open, the limit is %d (--nbd-max-connections)", s.maxConns(), s.maxConns())
	var hello [18]byte
	binary.BigEndian.PutUint64(hello[0:], magicNBD)
	binary.BigEndian.PutUint64(hello[8:], magicIHaveOpt)
	binary.BigEndian.PutUint16(hello[16:], flagFixedNewstyle|flagNoZeroes)
	var cf [4]byte
	var hdr [16]byte
	if _, err := nc.Write(hello[:]); err != nil {
		return fmt.Errorf("refused (%s): %w", msg, err)
	}
	if _, err := io.ReadFull(c.br, cf[:]); err != nil {
		return fmt.Errorf("refused (%s): %w", msg, err)
	}
	if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
		return fmt.Errorf("refused (%s): %w", msg, err)
	}
	opt, length := binary.BigEndian.Uint32(hdr[8:]), binary.BigEndian.Uint32(hdr[12:])
	if opt != OptExportName && length <= maxOptionDataLength {
		if _, err := io.CopyN(io.Discard, c.br, int64(length)); err == nil {
			_ = c.optReply(opt, RepErrPolicy, []byte(msg))
		}
	}
	return fmt.Errorf("refused: %s", msg)
}

type conn struct {
	srv *Server
	nc  net.Conn
	br  *bufio.Reader

	wmu     sync.Mutex
	bw      *bufio.Writer
	werr    error
	waiting atomic.Int32 // replies waiting for wmu: the last one flushes

	dmu     sync.Mutex
	stopped bool // reading stopped for good: deadlines are not moved any more
}

// readDeadline sets the read deadline d from now (0: none), unless reading
// was stopped.
func (c *conn) readDeadline(d time.Duration) {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	if c.stopped {
		return
	}
	var t time.Time
	if d > 0 {
		t = time.Now().Add(d)
	}
	_ = c.nc.SetReadDeadline(t)
}

// stopReading makes the blocked and every later read return at once.
func (c *conn) stopReading() {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	c.stopped = true
	_ = c.nc.SetReadDeadline(time.Now())
}

// ---- negotiation ----

func (c *conn) negotiate() (*Export, error) {
	var hello [18]byte
	binary.BigEndian.PutUint64(hello[0:], magicNBD)
	binary.BigEndian.PutUint64(hello[8:], magicIHaveOpt)
	binary.BigEndian.PutUint16(hello[16:], flagFixedNewstyle|flagNoZeroes)
	if _, err := c.nc.Write(hello[:]); err != nil {
		return nil, fmt.Errorf("send greeting: %w", err)
	}
	var cf [4]byte
	if _, err := io.ReadFull(c.br, cf[:]); err != nil {
		return nil, fmt.Errorf("read client flags: %w", err)
	}
	clientFlags := binary.BigEndian.Uint32(cf[:])
	if clientFlags&^(flagCFixedNewstyle|flagCNoZeroes) != 0 {
		return nil, fmt.Errorf("client flags %#x carry unknown bits (only %#x known): closing as the protocol requires", clientFlags, flagCFixedNewstyle|flagCNoZeroes)
	}
	fixed := clientFlags&flagCFixedNewstyle != 0
	noZeroes := clientFlags&flagCNoZeroes != 0

	for {
		var hdr [16]byte
		if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
			return nil, fmt.Errorf("read option header: %w", err)
		}
		if m := binary.BigEndian.Uint64(hdr[0:]); m != magicIHaveOpt {
			return nil, fmt.Errorf("option magic %#x, want %#x (IHAVEOPT)", m, magicIHaveOpt)
		}
		opt := binary.BigEndian.Uint32(hdr[8:])
		length := binary.BigEndian.Uint32(hdr[12:])
		if !fixed && opt != OptExportName {
			return nil, fmt.Errorf("option %d from a client without fixed newstyle: only NBD_OPT_EXPORT_NAME is allowed", opt)
		}
		if length > maxOptionDataLength {
			if _, err := io.CopyN(io.Discard, c.br, int64(length)); err != nil {
				return nil, fmt.Errorf("skip option %d data: %w", opt, err)
			}
			if opt == OptExportName {
				return nil, fmt.Errorf("NBD_OPT_EXPORT_NAME with a %d-byte name (max %d)", length, maxStringLength)
			}
			code := RepErrInvalid
			if !knownOption(opt) {
				code = RepErrUnsup
			}
			if err := c.optReply(opt, code, []byte(fmt.Sprintf("option data of %d bytes is too long", length))); err != nil {
				return nil, err
			}
			continue
		}
		data := make([]byte, length)
		if _, err := io.ReadFull(c.br, data); err != nil {
			return nil, fmt.Errorf("read option %d data: %w", opt, err)
		}
		exp, done, err := c.option(opt, data, noZeroes)
		if err != nil || done {
			return exp, err
		}
	}
}

func knownOption(opt uint32) bool {
	switch opt {
	case OptExportName, OptAbort, OptList, OptInfo, OptGo:
		return true
	}
	return false
}

// option handles one option. done means transmission starts with exp.
func (c *conn) option(opt uint32, data []byte, noZeroes bool) (exp *Export, done bool, err error) {
	switch opt {
	case OptExportName:
		exp := c.lookup(string(data))
		if exp == nil {
			// NBD_OPT_EXPORT_NAME cannot carry an error: the protocol says close.
			return nil, false, fmt.Errorf("NBD_OPT_EXPORT_NAME: no export named %q", data)
		}
		reply := make([]byte, 10, 10+124)
		binary.BigEndian.PutUint64(reply[0:], uint64(exp.Backend.Size()))
		binary.BigEndian.PutUint16(reply[8:], c.transmissionFlags(exp))
		if !noZeroes {
			reply = reply[:10+124]
		}
		if _, err := c.nc.Write(reply); err != nil {
			return nil, false, fmt.Errorf("reply to NBD_OPT_EXPORT_NAME: %w", err)
		}
		return exp, true, nil

	case OptAbort:
		// Best effort: the client may already have closed.
		_ = c.optReply(opt, repAck, nil)
		return nil, false, errAborted

	case OptList:
		if len(data) != 0 {
			return nil, false, c.optReply(opt, RepErrInvalid, []byte("NBD_OPT_LIST takes no data"))
		}
		for i := range c.srv.Exports {
			e := &c.srv.Exports[i]
			p := make([]byte, 4, 4+len(e.Name)+len(e.Description))
			binary.BigEndian.PutUint32(p, uint32(len(e.Name)))
			p = append(append(p, e.Name...), e.Description...)
			if err := c.optReply(opt, repServer, p); err != nil {
				return nil, false, err
			}
		}
		return nil, false, c.optReply(opt, repAck, nil)

	case OptInfo, OptGo:
		name, infos, ok := parseInfoRequest(data)
		if !ok {
			return nil, false, c.optReply(opt, RepErrInvalid, []byte("malformed NBD_OPT_INFO/NBD_OPT_GO data"))
		}
		exp := c.lookup(name)
		if exp == nil {
			return nil, false, c.optReply(opt, RepErrUnknown, []byte(fmt.Sprintf("no export named %q", name)))
		}
		if err := c.sendInfo(opt, exp, infos); err != nil {
			return nil, false, err
		}
		if err := c.optReply(opt, repAck, nil); err != nil {
			return nil, false, err
		}
		return exp, opt == OptGo, nil

	case OptStructuredReply:
		return nil, false, c.optReply(opt, RepErrUnsup, []byte("structured replies are not supported; simple replies only"))
	case OptStartTLS:
		return nil, false, c.optReply(opt, RepErrUnsup, []byte("TLS is not supported by this server"))
	default:
		return nil, false, c.optReply(opt, RepErrUnsup, []byte(fmt.Sprintf("option %d is not supported", opt)))
	}
}

// parseInfoRequest decodes NBD_OPT_INFO/GO data: u32 name length, name, u16
// number of information requests, u16 each.
func parseInfoRequest(data []byte) (name string, infos []uint16, ok bool) {
	if len(data) < 6 {
		return "", nil, false
	}
	n := binary.BigEndian.Uint32(data)
	if uint64(n) > uint64(len(data)-6) {
		return "", nil, false
	}
	name = string(data[4 : 4+n])
	rest := data[4+n:]
	count := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if len(rest) != 2*count {
		return "", nil, false
	}
	for i := 0; i < count; i++ {
		infos = append(infos, binary.BigEndian.Uint16(rest[2*i:]))
	}
	return name, infos, true
}

func (c *conn) sendInfo(opt uint32, exp *Export, requested []uint16) error {
	var p [14]byte
	binary.BigEndian.PutUint16(p[0:], infoExport)
	binary.BigEndian.PutUint64(p[2:], uint64(exp.Backend.Size()))
	binary.BigEndian.PutUint16(p[10:], c.transmissionFlags(exp))
	if err := c.optReply(opt, repInfo, p[:12]); err != nil {
		return err
	}
	// Block sizes: any alignment works (minimum 1), 4 KiB is preferred, and
	// requests above MaxPayload are refused. Sent unasked too: it only tells
	// the client the limits it must respect anyway.
	binary.BigEndian.PutUint16(p[0:], infoBlockSize)
	binary.BigEndian.PutUint32(p[2:], 1)
	binary.BigEndian.PutUint32(p[6:], 4096)
	binary.BigEndian.PutUint32(p[10:], uint32(c.srv.maxPayload()))
	if err := c.optReply(opt, repInfo, p[:14]); err != nil {
		return err
	}
	for _, r := range requested {
		var s string
		switch r {
		case infoName:
			s = exp.Name
		case infoDescription:
			if exp.Description == "" {
				continue
			}
			s = exp.Description
		default:
			continue // unknown or already sent: the client must cope with omissions
		}
		b := make([]byte, 2, 2+len(s))
		binary.BigEndian.PutUint16(b, r)
		if err := c.optReply(opt, repInfo, append(b, s...)); err != nil {
			return err
		}
	}
	return nil
}

func (c *conn) optReply(opt, typ uint32, data []byte) error {
	b := make([]byte, 20, 20+len(data))
	binary.BigEndian.PutUint64(b[0:], magicOptReply)
	binary.BigEndian.PutUint32(b[8:], opt)
	binary.BigEndian.PutUint32(b[12:], typ)
	binary.BigEndian.PutUint32(b[16:], uint32(len(data)))
	if _, err := c.nc.Write(append(b, data...)); err != nil {
		return fmt.Errorf("reply to option %d: %w", opt, err)
	}
	return nil
}

func (c *conn) lookup(name string) *Export {
	if name == "" {
		return &c.srv.Exports[0]
	}
	for i := range c.srv.Exports {
		if c.srv.Exports[i].Name == name {
			return &c.srv.Exports[i]
		}
	}
	return nil
}

func (c *conn) transmissionFlags(e *Export) uint16 {
	f := FlagHasFlags | FlagSendFlush | FlagSendFUA | FlagSendTrim | FlagSendWriteZeroes | FlagCanMultiConn
	if e.ReadOnly {
		f |= FlagReadOnly
	}
	return f
}

// ---- transmission ----

type request struct {
	flags  uint16
	typ    uint16
	handle uint64
	off    uint64
	length uint32
	data   *[]byte // WRITE payload, pooled
}

func (c *conn) transmit(ctx context.Context, exp *Export) error {
	sem := make(chan struct{}, c.srv.maxInFlight())
	budget := c.srv.budget()
	// In-flight requests finish after ctx ends, for at most DrainTimeout.
	exec, cancelExec := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelExec()
	stopDrain := context.AfterFunc(ctx, func() { time.AfterFunc(c.srv.drainTimeout(), cancelExec) })
	defer stopDrain()
	var inflight sync.WaitGroup
	defer func() {
		inflight.Wait()
		c.wmu.Lock()
		if c.werr == nil {
			c.werr = c.bw.Flush()
		}
		c.wmu.Unlock()
	}()
	idle, iot := c.srv.IdleTimeout, c.srv.ioTimeout()
	var hdr [requestHeaderLen]byte
	for {
		// Between requests the connection may idle (IdleTimeout); once a
		// request started, the rest of it must follow within IOTimeout.
		if c.br.Buffered() == 0 {
			c.readDeadline(idle)
			if _, err := c.br.Peek(1); err != nil {
				if errors.Is(err, io.EOF) {
					return nil // the client closed between requests
				}
				if idle > 0 && errors.Is(err, os.ErrDeadlineExceeded) && ctx.Err() == nil {
					return fmt.Errorf("no request for %v (the idle timeout, --nbd-idle-timeout): closing", idle)
				}
				return fmt.Errorf("read request: %w", err)
			}
		}
		c.readDeadline(iot)
		if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
			return c.readErr("request header", err)
		}
		if m := binary.BigEndian.Uint32(hdr[0:]); m != magicRequest {
			return fmt.Errorf("request magic %#x, want %#x: closing", m, magicRequest)
		}
		r := request{
			flags:  binary.BigEndian.Uint16(hdr[4:]),
			typ:    binary.BigEndian.Uint16(hdr[6:]),
			handle: binary.BigEndian.Uint64(hdr[8:]),
			off:    binary.BigEndian.Uint64(hdr[16:]),
			length: binary.BigEndian.Uint32(hdr[24:]),
		}
		if r.typ == CmdDisc {
			return nil
		}
		errno := c.check(exp, &r)
		if r.typ == CmdWrite && errno != 0 && int64(r.length) > int64(c.srv.maxPayload()) {
			// Skipping the payload would mean reading up to 4 GiB the
			// client should never have sent: refuse and disconnect.
			c.reply(r.handle, errno, nil)
			return fmt.Errorf("write of %d bytes exceeds the maximum payload of %d bytes (advertised as the maximum block size): refused without reading it, closing", r.length, c.srv.maxPayload())
		}
		held := int64(0)
		if errno == 0 && (r.typ == CmdRead || r.typ == CmdWrite) && r.length > 0 {
			// Room in the server-wide budget before the buffer exists.
			held = int64(r.length)
			if err := budget.Acquire(ctx, held); err != nil {
				return nil // shutting down
			}
		}
		if r.typ == CmdWrite {
			if errno != 0 {
				if _, err := io.CopyN(io.Discard, c.br, int64(r.length)); err != nil {
					return c.readErr("refused write payload", err)
				}
			} else {
				r.data = getBuf(int(r.length))
				if _, err := io.ReadFull(c.br, *r.data); err != nil {
					putBuf(r.data)
					budget.Release(held)
					return c.readErr("write payload", err)
				}
			}
		}
		if errno != 0 {
			c.reply(r.handle, errno, nil)
			continue
		}
		sem <- struct{}{}
		inflight.Add(1)
		go func() {
			defer func() { budget.Release(held); <-sem; inflight.Done() }()
			c.execute(exec, exp, &r)
		}()
	}
}

var ioReadFull = io.ReadFull

// readErr describes a failed read inside a request.
func (c *conn) readErr(what string, err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("%s not received within %v (--nbd-io-timeout): closing", what, c.srv.ioTimeout())
	}
	return fmt.Errorf("read %s: %w", what, err)
}

// check validates a request against the export; nonzero is the error to reply.
func (c *conn) check(exp *Export, r *request) uint32 {
	size := uint64(exp.Backend.Size())
	inRange := r.off <= size && uint64(r.length) <= size-r.off
	switch r.typ {
	case CmdRead, CmdWrite, CmdTrim, CmdWriteZeroes:
		allowed := CmdFlagFUA
		if r.typ == CmdWriteZeroes {
			allowed |= CmdFlagNoHole
		}
		if r.flags&^allowed != 0 {
			return EINVAL
		}
		if exp.ReadOnly && r.typ != CmdRead {
			return EPERM
		}
		if (r.typ == CmdRead || r.typ == CmdWrite) && int64(r.length) > int64(c.srv.maxPayload()) {
			return EINVAL
		}
		if !inRange {
			if r.typ == CmdWrite || r.typ == CmdWriteZeroes {
				return ENOSPC
			}
			return EINVAL
		}
		return 0
	case CmdFlush:
		if r.flags&^CmdFlagFUA != 0 {
			return EINVAL
		}
		return 0
	default: // NBD_CMD_CACHE, NBD_CMD_BLOCK_STATUS (not advertised) and unknown commands
		return EINVAL
	}
}

func (c *conn) execute(ctx context.Context, exp *Export, r *request) {
	be := exp.Backend
	off, n := int64(r.off), int64(r.length)
	var err error
	switch r.typ {
	case CmdRead:
		buf := getBuf(int(n))
		defer putBuf(buf)
		if n > 0 {
			err = be.ReadAt(ctx, *buf, off)
		}
		if err != nil {
			c.logf(r, err)
			c.reply(r.handle, errnoOf(err), nil)
		} else {
			c.reply(r.handle, 0, *buf)
			c.answered(exp, r)
		}
		return
	case CmdWrite:
		if n > 0 {
			err = be.WriteAt(ctx, *r.data, off)
		}
		putBuf(r.data)
	case CmdTrim:
		if n > 0 {
			err = be.Trim(ctx, off, n)
		}
	case CmdWriteZeroes:
		if n > 0 {
			err = be.WriteZeroes(ctx, off, n)
		}
	case CmdFlush:
		err = be.Flush(ctx)
	}
	if err == nil && r.flags&CmdFlagFUA != 0 && r.typ != CmdFlush {
		// FUA: the reply must not go out before this command's data is durable.
		err = be.Flush(ctx)
	}
	if err != nil {
		c.logf(r, err)
	}
	c.reply(r.handle, errnoOf(err), nil)
	if err == nil {
		c.answered(exp, r)
	}
}

// answered reports a command answered with success to the export's hook.
func (c *conn) answered(exp *Export, r *request) {
	if exp.Answered != nil {
		exp.Answered(r.typ, r.length)
	}
}

func (c *conn) logf(r *request, err error) {
	c.srv.logf("nbd: %s: command %d at %d+%d: %v", c.nc.RemoteAddr(), r.typ, r.off, r.length, err)
}

// reply writes one simple reply (and its data) whole. Replies are buffered;
// the last of the replies queued at a moment flushes them all.
func (c *conn) reply(handle uint64, errno uint32, data []byte) {
	var h [simpleReplyLen]byte
	binary.BigEndian.PutUint32(h[0:], magicSimpleRep)
	binary.BigEndian.PutUint32(h[4:], errno)
	binary.BigEndian.PutUint64(h[8:], handle)
	c.waiting.Add(1)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr == nil {
		// A client that stops reading replies is disconnected after
		// IOTimeout instead of holding its buffers forever.
		_ = c.nc.SetWriteDeadline(time.Now().Add(c.srv.ioTimeout()))
		_, c.werr = c.bw.Write(h[:])
		if c.werr == nil && errno == 0 && len(data) > 0 {
			if len(data) <= c.bw.Available() {
				_, c.werr = c.bw.Write(data)
			} else if c.werr = c.bw.Flush(); c.werr == nil {
				// Large payloads go straight to the socket instead of
				// through the buffer: one copy less.
				_, c.werr = c.nc.Write(data)
			}
		}
	}
	if c.waiting.Add(-1) == 0 && c.werr == nil {
		c.werr = c.bw.Flush()
	}
	if c.werr != nil {
		// The client is gone: stop reading too, so the connection winds down.
		c.stopReading()
	}
}

// ---- payload buffers ----

const minBufShift, maxBufShift = 12, 25 // 4 KiB .. 32 MiB

var bufPools [maxBufShift - minBufShift + 1]sync.Pool

func getBuf(n int) *[]byte {
	shift := minBufShift
	if n > 1<<minBufShift {
		shift = bits.Len(uint(n - 1))
	}
	if shift > maxBufShift {
		b := make([]byte, n)
		return &b
	}
	if v := bufPools[shift-minBufShift].Get(); v != nil {
		b := v.(*[]byte)
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, 1<<shift)
	return &b
}

func putBuf(b *[]byte) {
	if b == nil {
		return
	}
	c := cap(*b)
	shift := bits.Len(uint(c)) - 1
	if c != 1<<shift || shift < minBufShift || shift > maxBufShift {
		return
	}
	bufPools[shift-minBufShift].Put(b)
}
