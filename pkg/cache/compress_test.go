package cache

import (
	"bytes"
	"testing"
)

func TestCompressionRoundTrip(t *testing.T) {
	text := textBytes("x", 64<<10)
	for _, codec := range []Codec{CodecLZ4, CodecZstd} {
		t.Run(codec.String(), func(t *testing.T) {
			c := Compression{Codec: codec}
			payload, got, err := c.encode(text)
			if err != nil {
				t.Fatal(err)
			}
			if got != codec {
				t.Fatalf("compressible data stored as %v, want %v", got, codec)
			}
			if len(payload) >= len(text) {
				t.Fatalf("compressed %d bytes into %d", len(text), len(payload))
			}
			out, err := decode(payload, got, len(text))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out, text) {
				t.Fatal("round trip changed the data")
			}
			// A damaged payload is an error, never data.
			bad := bytes.Clone(payload)
			bad[len(bad)/2] ^= 0xff
			bad = bad[:len(bad)-3]
			if out, err := decode(bad, got, len(text)); err == nil && bytes.Equal(out, text) {
				t.Fatal("damaged payload decoded to the original")
			} else if err == nil {
				t.Fatalf("damaged payload decoded without error to %d bytes", len(out))
			}
		})
	}
}

func TestCompressionKeptOnlyWhenSmaller(t *testing.T) {
	noise := randomBytes(1, 64<<10)
	for _, codec := range []Codec{CodecLZ4, CodecZstd} {
		payload, got, err := Compression{Codec: codec}.encode(noise)
		if err != nil {
			t.Fatal(err)
		}
		if got != CodecNone || !bytes.Equal(payload, noise) {
			t.Fatalf("%v: incompressible data stored as %v (%d bytes), want raw", codec, got, len(payload))
		}
	}
}

func TestCompressionMinSize(t *testing.T) {
	small := textBytes("s", 300)
	if _, got, _ := (Compression{Codec: CodecZstd}).encode(small); got != CodecNone {
		t.Fatalf("300 bytes under the default minimum were compressed with %v", got)
	}
	if _, got, _ := (Compression{Codec: CodecZstd, MinSize: 100}).encode(small); got != CodecZstd {
		t.Fatalf("300 bytes over MinSize 100 stored as %v, want zstd", got)
	}
	if err := (Compression{Codec: 9}).validate(); err == nil {
		t.Fatal("unknown codec accepted")
	}
}
