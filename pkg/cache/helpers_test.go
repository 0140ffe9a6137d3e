package cache

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"
)

// fakeClock is an injected clock that only moves when told.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Unix(1_800_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// randomBytes is incompressible, deterministic data.
func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// textBytes is compressible, JSON-like data of n bytes tagged with tag.
func textBytes(tag string, n int) []byte {
	var buf bytes.Buffer
	for i := 0; buf.Len() < n; i++ {
		fmt.Fprintf(&buf, `{"tag":%q,"volume":"pvc-%04d","iops":%d,"tier":"warm"},`, tag, i%97, i*7%1000)
	}
	return buf.Bytes()[:n]
}

func key(i int) CacheKey { return CacheKey{Bucket: "b", Key: fmt.Sprintf("k%06d", i)} }
