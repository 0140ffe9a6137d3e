package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/zeebo/xxh3"
)

// Kind says what a record carries.
type Kind uint8

const (
	// KindWrite carries volume data for an LBA range.
	KindWrite Kind = 1
	// KindEpoch marks the start of a writer's epoch (written on Open); it
	// makes the newest writer's log win over an older writer's unacknowledged tail.
	KindEpoch Kind = 2
)

// LBASize is the size of one logical block (geometry.LBASize).
const LBASize = 512

// Record is one journal entry.
type Record struct {
	Seq   uint64 // strictly increasing, assigned by the Journal
	Epoch uint64 // the epoch of the writer that assigned Seq
	Kind  Kind
	LBA   uint64 // first LBA written (KindWrite)
	Data  []byte // a multiple of LBASize bytes (KindWrite)
}

// On disk: magic(4) seq(8) epoch(8) kind(1) pad(3) lba(8) len(4) data xxh3(8),
// little endian; the checksum covers header and data, so a torn or partly
// written record never verifies.
const (
	recordMagic   = 0x314a5343 // "CSJ1"
	headerSize    = 36
	trailerSize   = 8
	recordOverhad = headerSize + trailerSize
)

// encodedSize is the bytes a record takes in a log.
func (r *Record) encodedSize() int64 { return int64(recordOverhad + len(r.Data)) }

func appendRecord(dst []byte, r *Record) []byte {
	start := len(dst)
	var h [headerSize]byte
	binary.LittleEndian.PutUint32(h[0:], recordMagic)
	binary.LittleEndian.PutUint64(h[4:], r.Seq)
	binary.LittleEndian.PutUint64(h[12:], r.Epoch)
	h[20] = byte(r.Kind)
	binary.LittleEndian.PutUint64(h[24:], r.LBA)
	binary.LittleEndian.PutUint32(h[32:], uint32(len(r.Data)))
	dst = append(dst, h[:]...)
	dst = append(dst, r.Data...)
	return binary.LittleEndian.AppendUint64(dst, xxh3.Hash(dst[start:]))
}

var errTorn = errors.New("journal: torn or corrupt record")

// decodeRecord parses the record at the start of b and returns its encoded
// length, or errTorn when b does not start with a complete, verified record.
func decodeRecord(b []byte) (Record, int, error) {
	if len(b) < recordOverhad || binary.LittleEndian.Uint32(b) != recordMagic {
		return Record{}, 0, errTorn
	}
	n := int(binary.LittleEndian.Uint32(b[32:]))
	if n > len(b)-recordOverhad {
		return Record{}, 0, errTorn
	}
	end := headerSize + n
	if xxh3.Hash(b[:end]) != binary.LittleEndian.Uint64(b[end:]) {
		return Record{}, 0, errTorn
	}
	r := Record{
		Seq:   binary.LittleEndian.Uint64(b[4:]),
		Epoch: binary.LittleEndian.Uint64(b[12:]),
		Kind:  Kind(b[20]),
		LBA:   binary.LittleEndian.Uint64(b[24:]),
		Data:  b[headerSize:end:end],
	}
	if err := r.checkGeometry(); err != nil {
		return Record{}, 0, fmt.Errorf("%w: seq %d: %w", errTorn, r.Seq, err)
	}
	return r, end + trailerSize, nil
}

// maxRecordLBA bounds the end of a write's LBA range, so that its byte
// offset (LBA*512) fits an int64 and LBA+len/512 cannot wrap.
const maxRecordLBA = math.MaxInt64 / LBASize

// checkGeometry is the shape every record must have, whatever its checksum
// says: replay and destage trust it.
func (r *Record) checkGeometry() error {
	switch r.Kind {
	case KindWrite:
		n := uint64(len(r.Data))
		if n == 0 || n%LBASize != 0 {
			return fmt.Errorf("a write record carries %d data bytes, not a non-empty multiple of %d", n, LBASize)
		}
		if r.LBA > maxRecordLBA-n/LBASize {
			return fmt.Errorf("a write record at LBA %d (+%d LBAs) ends past LBA %d", r.LBA, n/LBASize, uint64(maxRecordLBA))
		}
	case KindEpoch:
		if len(r.Data) != 0 || r.LBA != 0 {
			return fmt.Errorf("an epoch record carries LBA %d and %d data bytes, want none", r.LBA, len(r.Data))
		}
	default:
		return fmt.Errorf("unknown kind %d", r.Kind)
	}
	return nil
}
