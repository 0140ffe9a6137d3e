package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// The codec exports the on-disk record encoding (record.go) so a remote
// Store can ship records in the same self-verifying form it is stored in:
// a record torn or corrupted on the wire fails its checksum like one torn on
// disk. It adds no format of its own.

// ErrCorruptRecord is matched (errors.Is) when bytes do not hold a complete,
// verified record.
var ErrCorruptRecord = errTorn

// EncodedSize is the number of bytes rec takes encoded.
func EncodedSize(rec *Record) int64 { return rec.encodedSize() }

// AppendEncoded appends rec's encoding (header, data, checksum) to dst.
func AppendEncoded(dst []byte, rec *Record) []byte { return appendRecord(dst, rec) }

// DecodeRecord parses the record at the start of b and returns it with its
// encoded length. rec.Data aliases b.
func DecodeRecord(b []byte) (Record, int, error) { return decodeRecord(b) }

// ReadRecord reads one encoded record from r into *buf (grown as needed) and
// returns it verified; rec.Data aliases *buf until the next call. It returns
// io.EOF when r ends cleanly before a record, and an error matching
// ErrCorruptRecord for a record that does not verify, is cut short, or
// carries more than maxData data bytes (a bound against hostile lengths).
func ReadRecord(r io.Reader, buf *[]byte, maxData int) (Record, error) {
	if cap(*buf) < recordOverhad {
		*buf = make([]byte, recordOverhad, 64<<10)
	}
	b := (*buf)[:headerSize]
	if _, err := io.ReadFull(r, b); err != nil {
		if errors.Is(err, io.EOF) {
			return Record{}, io.EOF
		}
		return Record{}, fmt.Errorf("%w: header: %w", errTorn, err)
	}
	if binary.LittleEndian.Uint32(b) != recordMagic {
		return Record{}, fmt.Errorf("%w: bad magic %#x", errTorn, binary.LittleEndian.Uint32(b))
	}
	n := int(binary.LittleEndian.Uint32(b[32:]))
	if n > maxData {
		return Record{}, fmt.Errorf("%w: %d data bytes exceed the limit of %d", errTorn, n, maxData)
	}
	total := recordOverhad + n
	if cap(*buf) < total {
		nb := make([]byte, total)
		copy(nb, b)
		*buf = nb
	}
	b = (*buf)[:total]
	if _, err := io.ReadFull(r, b[headerSize:]); err != nil {
		return Record{}, fmt.Errorf("%w: body of %d bytes: %w", errTorn, n, err)
	}
	rec, _, err := decodeRecord(b)
	return rec, err
}
