package storage

import (
	"sync"
	"sync/atomic"
)

// progressReportStep is the least progress between two Progress calls.
const progressReportStep = 4 << 20

// progress aggregates bytes sent by parallel part uploads and reports them
// to PutOptions.Progress, serialized and rate-limited.
type progress struct {
	total int64
	fn    func(done, total int64)
	done  atomic.Int64

	mu           sync.Mutex
	lastReported int64
}

func newProgress(total int64, fn func(done, total int64)) *progress {
	return &progress{total: total, fn: fn, lastReported: -1}
}

// add records n more bytes sent (negative when a failed part is rolled back).
func (p *progress) add(n int64) {
	if p == nil || n == 0 {
		return
	}
	done := p.done.Add(n)
	if p.fn == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if d := done - p.lastReported; d >= progressReportStep || d <= -progressReportStep || (done == p.total && p.lastReported != done) {
		p.lastReported = done
		p.fn(done, p.total)
	}
}

// finish reports the final count if it was not reported yet.
func (p *progress) finish() {
	if p == nil || p.fn == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if done := p.done.Load(); done != p.lastReported {
		p.lastReported = done
		p.fn(done, p.total)
	}
}

// countingReader counts bytes read into a progress and remembers how many
// it counted, so a failed attempt can be rolled back.
type countingReader struct {
	r interface{ Read([]byte) (int, error) }
	p *progress
	n int64
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += int64(n)
	c.p.add(int64(n))
	return n, err
}

// rollback un-counts what this reader counted.
func (c *countingReader) rollback() {
	c.p.add(-c.n)
	c.n = 0
}
