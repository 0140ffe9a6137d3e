package nbd_test

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// wireClient is a small synchronous NBD client (fixed newstyle, NBD_OPT_GO,
// simple replies): the crash test needs to know exactly which writes were
// acknowledged, which no command-line client reports.
type wireClient struct {
	c      net.Conn
	br     *bufio.Reader
	handle uint64
}

func dialWire(addr, export string) (*wireClient, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	w := &wireClient{c: c, br: bufio.NewReader(c)}
	if err := w.negotiate(export); err != nil {
		c.Close()
		return nil, err
	}
	return w, nil
}

func (w *wireClient) negotiate(export string) error {
	hello := make([]byte, 18)
	if _, err := io.ReadFull(w.br, hello); err != nil {
		return err
	}
	if _, err := w.c.Write([]byte{0, 0, 0, 3}); err != nil { // fixed newstyle + no zeroes
		return err
	}
	opt := binary.BigEndian.AppendUint64(nil, 0x49484156454F5054)
	opt = binary.BigEndian.AppendUint32(opt, 7) // NBD_OPT_GO
	opt = binary.BigEndian.AppendUint32(opt, uint32(4+len(export)+2))
	opt = binary.BigEndian.AppendUint32(opt, uint32(len(export)))
	opt = append(opt, export...)
	opt = binary.BigEndian.AppendUint16(opt, 0)
	if _, err := w.c.Write(opt); err != nil {
		return err
	}
	for {
		h := make([]byte, 20)
		if _, err := io.ReadFull(w.br, h); err != nil {
			return err
		}
		typ, n := binary.BigEndian.Uint32(h[12:]), binary.BigEndian.Uint32(h[16:])
		if _, err := io.CopyN(io.Discard, w.br, int64(n)); err != nil {
			return err
		}
		switch {
		case typ == 1: // NBD_REP_ACK
			return nil
		case typ&(1<<31) != 0:
			return fmt.Errorf("NBD_OPT_GO refused: reply type %#x", typ)
		}
	}
}

func (w *wireClient) do(typ uint16, off uint64, length uint32, data []byte, out []byte) error {
	w.handle++
	req := binary.BigEndian.AppendUint32(nil, 0x25609513)
	req = binary.BigEndian.AppendUint16(req, 0)
	req = binary.BigEndian.AppendUint16(req, typ)
	req = binary.BigEndian.AppendUint64(req, w.handle)
	req = binary.BigEndian.AppendUint64(req, off)
	req = binary.BigEndian.AppendUint32(req, length)
	if _, err := w.c.Write(append(req, data...)); err != nil {
		return err
	}
	h := make([]byte, 16)
	if _, err := io.ReadFull(w.br, h); err != nil {
		return err
	}
	if binary.BigEndian.Uint64(h[8:]) != w.handle {
		return fmt.Errorf("reply handle %d, want %d", binary.BigEndian.Uint64(h[8:]), w.handle)
	}
	if e := binary.BigEndian.Uint32(h[4:]); e != 0 {
		return fmt.Errorf("NBD error %d", e)
	}
	if out != nil {
		_, err := io.ReadFull(w.br, out)
		return err
	}
	return nil
}

func (w *wireClient) write(off uint64, data []byte) error {
	return w.do(1, off, uint32(len(data)), data, nil)
}

func (w *wireClient) read(off uint64, out []byte) error {
	return w.do(0, off, uint32(len(out)), nil, out)
}

func (w *wireClient) close() {
	_ = w.do(2, 0, 0, nil, nil) // NBD_CMD_DISC has no reply: the read fails, as expected
	w.c.Close()
}

const (
	crashBlock  = 64 << 10
	crashBlocks = 512 // 32 MiB export
)

// blockContent is a block stamped with its number and a sequence number in
// every 16 bytes, so a torn or misplaced write is visible.
func blockContent(block, seq uint64) []byte {
	b := make([]byte, crashBlock)
	for i := 0; i < crashBlock; i += 16 {
		binary.LittleEndian.PutUint64(b[i:], block)
		binary.LittleEndian.PutUint64(b[i+8:], seq)
	}
	return b
}

// blockState is what the client knows about one block: the last
// acknowledged sequence number, and the one in flight when the server died
// (which may or may not have landed).
type blockState struct {
	acked, inflight uint64
}

// burst writes random blocks from several connections until the server
// dies, recording every acknowledgement. seq numbers are unique across
// bursts. It returns the number of acknowledged writes.
func burst(t *testing.T, addr string, state []blockState, seq *atomic.Uint64, killAfter int64, kill func()) int64 {
	t.Helper()
	const workers = 8
	var acked atomic.Int64
	var once sync.Once
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		c, err := dialWire(addr, exportNm)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.c.Close()
			rng := rand.New(rand.NewPCG(uint64(w), seq.Load()))
			for {
				// Worker w owns the blocks b with b%workers == w: one write in flight per block.
				b := uint64(rng.IntN(crashBlocks/workers)*workers + w)
				s := seq.Add(1)
				state[b].inflight = s
				if err := c.write(b*crashBlock, blockContent(b, s)); err != nil {
					return // the server died: this write's fate is unknown
				}
				state[b].acked, state[b].inflight = s, 0
				if acked.Add(1) == killAfter {
					once.Do(kill)
				}
			}
		}()
	}
	wg.Wait()
	return acked.Load()
}

// verify reads every block and checks it holds its last acknowledged write,
// or the write that was in flight at the kill; never a torn or older one.
func verify(t *testing.T, addr string, state []blockState) {
	t.Helper()
	verifyExport(t, addr, exportNm, state)
}

// verifyExport is verify for the export named export.
func verifyExport(t *testing.T, addr, export string, state []blockState) {
	t.Helper()
	c, err := dialWire(addr, export)
	if err != nil {
		t.Fatalf("dial after restart: %v", err)
	}
	defer c.close()
	buf := make([]byte, crashBlock)
	landed := 0
	for b := range state {
		if err := c.read(uint64(b)*crashBlock, buf); err != nil {
			t.Fatalf("read block %d after restart: %v", b, err)
		}
		blk, s := binary.LittleEndian.Uint64(buf), binary.LittleEndian.Uint64(buf[8:])
		for i := 0; i < crashBlock; i += 16 {
			if binary.LittleEndian.Uint64(buf[i:]) != blk || binary.LittleEndian.Uint64(buf[i+8:]) != s {
				t.Fatalf("block %d is torn at byte %d", b, i)
			}
		}
		st := state[b]
		switch {
		case s == st.acked && (s == 0 || blk == uint64(b)):
		case st.inflight != 0 && s == st.inflight && blk == uint64(b):
			landed++
			st.acked = s // the unacknowledged write landed: it is now the newest
		default:
			t.Fatalf("block %d holds (block %d, seq %d); last acknowledged seq %d, in flight %d", b, blk, s, st.acked, st.inflight)
		}
		state[b] = blockState{acked: st.acked}
	}
	t.Logf("verified %d blocks; %d unacknowledged in-flight writes had landed", len(state), landed)
}

// TestCrashDuringWriteBurstAndDestage SIGKILLs the export while several
// connections write and the destager runs (a 4 MiB journal over a 32 MiB
// volume destages continuously), restarts it on the same journal and stripe
// files, and checks every acknowledged write. The second round kills the
// restarted server while it is still destaging the replayed journal.
func TestCrashDuringWriteBurstAndDestage(t *testing.T) {
	dir := t.TempDir()
	opts := serverOpts{backend: "volume", stripe: "file", dir: dir, size: crashBlocks * crashBlock, journalBytes: 4 << 20}
	state := make([]blockState, crashBlocks)
	var seq atomic.Uint64
	for round, killAfter := range []int64{1500, 40} {
		s := startServer(t, opts)
		if round > 0 {
			verify(t, s.addr, state)
		}
		n := burst(t, s.addr, state, &seq, killAfter, s.kill)
		if n < killAfter {
			t.Fatalf("round %d: only %d writes acknowledged before the server died", round, n)
		}
		t.Logf("round %d: %d writes acknowledged, then SIGKILL", round, n)
	}
	s := startServer(t, opts)
	verify(t, s.addr, state)
}
