package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// nbdClient is the smallest NBD client the demo needs to write and read an
// ECVolume export without external packages: fixed newstyle negotiation with
// NBD_OPT_GO, then one READ, WRITE or FLUSH at a time (simple replies), and
// NBD_CMD_DISC to leave. It follows doc/proto.md of NetworkBlockDevice/nbd;
// the tests drive the server with the standard clients (qemu-io, nbdcopy).
type nbdClient struct {
	conn   net.Conn
	size   uint64
	flags  uint16
	handle uint64
}

// NBD wire constants (big endian on the wire).
const (
	nbdMagic          = 0x4e42444d41474943 // "NBDMAGIC"
	nbdIHaveOpt       = 0x49484156454F5054 // "IHAVEOPT"
	nbdOptReplyMagic  = 0x3e889045565a9
	nbdRequestMagic   = 0x25609513
	nbdSimpleReply    = 0x67446698
	nbdFlagFixedNew   = 1 << 0
	nbdFlagNoZeroes   = 1 << 1
	nbdOptGo          = 7
	nbdRepAck         = 1
	nbdRepInfo        = 3
	nbdRepFlagError   = 1 << 31
	nbdInfoExport     = 0
	nbdCmdRead        = 0
	nbdCmdWrite       = 1
	nbdCmdDisc        = 2
	nbdCmdFlush       = 3
	nbdTransFlagFlush = 1 << 2
)

// dialNBD connects to addr and opens export name with NBD_OPT_GO.
func dialNBD(ctx context.Context, addr, name string) (*nbdClient, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("nbd: dial %s: %w", addr, err)
	}
	c := &nbdClient{conn: conn}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if err := c.negotiate(name); err != nil {
		conn.Close()
		return nil, fmt.Errorf("nbd: negotiate export %q at %s: %w", name, addr, err)
	}
	_ = conn.SetDeadline(time.Time{})
	return c, nil
}

func (c *nbdClient) negotiate(name string) error {
	var hello [18]byte
	if _, err := io.ReadFull(c.conn, hello[:]); err != nil {
		return fmt.Errorf("read greeting: %w", err)
	}
	if binary.BigEndian.Uint64(hello[0:]) != nbdMagic || binary.BigEndian.Uint64(hello[8:]) != nbdIHaveOpt {
		return errors.New("not a newstyle NBD server")
	}
	srvFlags := binary.BigEndian.Uint16(hello[16:])
	if srvFlags&nbdFlagFixedNew == 0 {
		return errors.New("server does not speak fixed newstyle")
	}
	cflags := uint32(nbdFlagFixedNew)
	if srvFlags&nbdFlagNoZeroes != 0 {
		cflags |= nbdFlagNoZeroes
	}
	// Option NBD_OPT_GO: name length, name, no information requests
	// (NBD_INFO_EXPORT is always sent).
	data := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	data = append(data, name...)
	data = binary.BigEndian.AppendUint16(data, 0)
	msg := binary.BigEndian.AppendUint32(nil, cflags)
	msg = binary.BigEndian.AppendUint64(msg, nbdIHaveOpt)
	msg = binary.BigEndian.AppendUint32(msg, nbdOptGo)
	msg = binary.BigEndian.AppendUint32(msg, uint32(len(data)))
	msg = append(msg, data...)
	if _, err := c.conn.Write(msg); err != nil {
		return fmt.Errorf("send NBD_OPT_GO: %w", err)
	}
	gotInfo := false
	for {
		var h [20]byte
		if _, err := io.ReadFull(c.conn, h[:]); err != nil {
			return fmt.Errorf("read option reply: %w", err)
		}
		if binary.BigEndian.Uint64(h[0:]) != nbdOptReplyMagic {
			return errors.New("bad option reply magic")
		}
		typ, n := binary.BigEndian.Uint32(h[12:]), binary.BigEndian.Uint32(h[16:])
		if n > 64<<10 {
			return fmt.Errorf("option reply of %d bytes is too long", n)
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(c.conn, body); err != nil {
			return fmt.Errorf("read option reply body: %w", err)
		}
		switch {
		case typ&nbdRepFlagError != 0:
			return fmt.Errorf("server refused NBD_OPT_GO (reply type %#x): %s", typ, body)
		case typ == nbdRepInfo && len(body) >= 12 && binary.BigEndian.Uint16(body) == nbdInfoExport:
			c.size, c.flags = binary.BigEndian.Uint64(body[2:]), binary.BigEndian.Uint16(body[10:])
			gotInfo = true
		case typ == nbdRepAck:
			if !gotInfo {
				return errors.New("server acknowledged NBD_OPT_GO without NBD_INFO_EXPORT")
			}
			return nil
		}
	}
}

// request sends one command and reads its simple reply; for a READ the
// payload lands in buf.
func (c *nbdClient) request(ctx context.Context, typ uint16, off uint64, length uint32, payload, buf []byte) error {
	if dl, ok := ctx.Deadline(); ok {
		_ = c.conn.SetDeadline(dl)
		defer c.conn.SetDeadline(time.Time{})
	}
	c.handle++
	req := make([]byte, 28, 28+len(payload))
	binary.BigEndian.PutUint32(req[0:], nbdRequestMagic)
	binary.BigEndian.PutUint16(req[6:], typ)
	binary.BigEndian.PutUint64(req[8:], c.handle)
	binary.BigEndian.PutUint64(req[16:], off)
	binary.BigEndian.PutUint32(req[24:], length)
	req = append(req, payload...)
	if _, err := c.conn.Write(req); err != nil {
		return err
	}
	var rep [16]byte
	if _, err := io.ReadFull(c.conn, rep[:]); err != nil {
		return fmt.Errorf("read reply: %w", err)
	}
	if binary.BigEndian.Uint32(rep[0:]) != nbdSimpleReply {
		return errors.New("bad reply magic (structured replies were not negotiated)")
	}
	if h := binary.BigEndian.Uint64(rep[8:]); h != c.handle {
		return fmt.Errorf("reply for handle %d, want %d", h, c.handle)
	}
	if e := binary.BigEndian.Uint32(rep[4:]); e != 0 {
		return fmt.Errorf("server error %d", e)
	}
	if typ == nbdCmdRead {
		if _, err := io.ReadFull(c.conn, buf[:length]); err != nil {
			return fmt.Errorf("read payload: %w", err)
		}
	}
	return nil
}

// chunk bounds one READ or WRITE (servers must accept 32 MiB; 1 MiB is polite).
const nbdChunk = 1 << 20

// WriteAt writes p at off in chunks.
func (c *nbdClient) WriteAt(ctx context.Context, p []byte, off int64) error {
	for done := 0; done < len(p); {
		n := min(nbdChunk, len(p)-done)
		if err := c.request(ctx, nbdCmdWrite, uint64(off)+uint64(done), uint32(n), p[done:done+n], nil); err != nil {
			return fmt.Errorf("nbd: write %d bytes at %d: %w", n, off+int64(done), err)
		}
		done += n
	}
	return nil
}

// ReadAt fills p from off in chunks.
func (c *nbdClient) ReadAt(ctx context.Context, p []byte, off int64) error {
	for done := 0; done < len(p); {
		n := min(nbdChunk, len(p)-done)
		if err := c.request(ctx, nbdCmdRead, uint64(off)+uint64(done), uint32(n), nil, p[done:done+n]); err != nil {
			return fmt.Errorf("nbd: read %d bytes at %d: %w", n, off+int64(done), err)
		}
		done += n
	}
	return nil
}

// Flush asks the server to make every acknowledged write durable.
func (c *nbdClient) Flush(ctx context.Context) error {
	if c.flags&nbdTransFlagFlush == 0 {
		return nil
	}
	if err := c.request(ctx, nbdCmdFlush, 0, 0, nil, nil); err != nil {
		return fmt.Errorf("nbd: flush: %w", err)
	}
	return nil
}

// Close sends NBD_CMD_DISC (which has no reply) and closes the connection.
func (c *nbdClient) Close() error {
	req := make([]byte, 28)
	binary.BigEndian.PutUint32(req[0:], nbdRequestMagic)
	binary.BigEndian.PutUint16(req[6:], nbdCmdDisc)
	c.handle++
	binary.BigEndian.PutUint64(req[8:], c.handle)
	_ = c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, _ = c.conn.Write(req)
	return c.conn.Close()
}
