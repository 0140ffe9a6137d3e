package cache

import (
	"fmt"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
)

// Codec is a compression algorithm. Its numeric value is written into L2
// files: never renumber.
type Codec uint8

const (
	// CodecNone stores bytes as they are.
	CodecNone Codec = 0
	// CodecLZ4 is the LZ4 block format (github.com/pierrec/lz4/v4): fast, modest ratio.
	CodecLZ4 Codec = 1
	// CodecZstd is zstd (github.com/klauspost/compress/zstd): slower, better ratio.
	CodecZstd Codec = 2
)

func (c Codec) String() string {
	switch c {
	case CodecNone:
		return "none"
	case CodecLZ4:
		return "lz4"
	case CodecZstd:
		return "zstd"
	default:
		return fmt.Sprintf("codec(%d)", uint8(c))
	}
}

// DefaultMinCompressSize is the smallest value worth compressing by default:
// below it, codec framing eats most of the gain.
const DefaultMinCompressSize = 512

// Compression says how values are stored. The zero value stores raw bytes.
type Compression struct {
	// Codec to try. CodecNone disables compression.
	Codec Codec
	// MinSize is the smallest value (bytes) that is compressed; 0 means
	// DefaultMinCompressSize.
	MinSize int
}

func (c Compression) validate() error {
	switch c.Codec {
	case CodecNone, CodecLZ4, CodecZstd:
	default:
		return fmt.Errorf("compression codec %d is unknown: use CodecNone, CodecLZ4 or CodecZstd", uint8(c.Codec))
	}
	if c.MinSize < 0 {
		return fmt.Errorf("compression MinSize %d is negative: must be >= 0", c.MinSize)
	}
	return nil
}

// encode returns the storage form of data: compressed only when data is at
// least MinSize bytes and the compressed form is strictly smaller; otherwise
// the raw bytes (not copied) with CodecNone.
func (c Compression) encode(data []byte) (payload []byte, codec Codec, err error) {
	minSize := c.MinSize
	if minSize == 0 {
		minSize = DefaultMinCompressSize
	}
	if c.Codec == CodecNone || len(data) < minSize {
		return data, CodecNone, nil
	}
	var out []byte
	switch c.Codec {
	case CodecLZ4:
		comp := lz4Compressors.Get().(*lz4.Compressor)
		buf := make([]byte, lz4.CompressBlockBound(len(data)))
		n, cerr := comp.CompressBlock(data, buf)
		lz4Compressors.Put(comp)
		if cerr != nil {
			return nil, CodecNone, fmt.Errorf("lz4 compress %d bytes: %w", len(data), cerr)
		}
		if n == 0 { // incompressible
			return data, CodecNone, nil
		}
		out = buf[:n]
	case CodecZstd:
		enc, eerr := zstdEncoder()
		if eerr != nil {
			return nil, CodecNone, eerr
		}
		out = enc.EncodeAll(data, make([]byte, 0, len(data)))
	default:
		return nil, CodecNone, fmt.Errorf("compression codec %d is unknown", uint8(c.Codec))
	}
	if len(out) >= len(data) {
		return data, CodecNone, nil
	}
	return out, c.Codec, nil
}

// decode returns the original bytes of a stored payload. For CodecNone it
// returns payload itself. A result whose length differs from originalSize is
// an error (corruption), never returned as data.
func decode(payload []byte, codec Codec, originalSize int) ([]byte, error) {
	switch codec {
	case CodecNone:
		if len(payload) != originalSize {
			return nil, fmt.Errorf("raw payload has %d bytes, metadata says %d", len(payload), originalSize)
		}
		return payload, nil
	case CodecLZ4:
		out := make([]byte, originalSize)
		n, err := lz4.UncompressBlock(payload, out)
		if err != nil {
			return nil, fmt.Errorf("lz4 decompress: %w", err)
		}
		if n != originalSize {
			return nil, fmt.Errorf("lz4 decompressed %d bytes, metadata says %d", n, originalSize)
		}
		return out, nil
	case CodecZstd:
		dec, err := zstdDecoder()
		if err != nil {
			return nil, err
		}
		out, err := dec.DecodeAll(payload, make([]byte, 0, originalSize))
		if err != nil {
			return nil, fmt.Errorf("zstd decompress: %w", err)
		}
		if len(out) != originalSize {
			return nil, fmt.Errorf("zstd decompressed %d bytes, metadata says %d", len(out), originalSize)
		}
		return out, nil
	default:
		return nil, fmt.Errorf("stored codec %d is unknown", uint8(codec))
	}
}

var lz4Compressors = sync.Pool{New: func() any { return new(lz4.Compressor) }}

// zstd encoders and decoders are safe for concurrent EncodeAll/DecodeAll and
// costly to build, so one of each is shared by the process.
var (
	zstdEncoder = sync.OnceValues(func() (*zstd.Encoder, error) {
		e, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault))
		if err != nil {
			return nil, fmt.Errorf("create zstd encoder: %w", err)
		}
		return e, nil
	})
	zstdDecoder = sync.OnceValues(func() (*zstd.Decoder, error) {
		// The memory bound refuses a corrupt frame that claims a huge size.
		d, err := zstd.NewReader(nil, zstd.WithDecoderMaxMemory(1<<30))
		if err != nil {
			return nil, fmt.Errorf("create zstd decoder: %w", err)
		}
		return d, nil
	})
)
