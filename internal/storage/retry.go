package storage

import (
	"context"
	"math/rand/v2"
	"time"
)

// RetryPolicy is an exponential backoff with full jitter for transient
// errors (network failures, 5xx, SlowDown). Errors that retrying cannot fix
// (wrong credentials, missing bucket, bad digest) are returned at once.
type RetryPolicy struct {
	// Attempts is the total number of tries, at least 1. Default 5.
	Attempts int
	// Initial is the first backoff. Default 500ms.
	Initial time.Duration
	// Max caps one backoff. Default 8s.
	Max time.Duration
}

// DefaultRetryPolicy is used when S3Options.Retry is zero.
var DefaultRetryPolicy = RetryPolicy{Attempts: 5, Initial: 500 * time.Millisecond, Max: 8 * time.Second}

func (p RetryPolicy) withDefaults() RetryPolicy {
	if p.Attempts <= 0 {
		p.Attempts = DefaultRetryPolicy.Attempts
	}
	if p.Initial <= 0 {
		p.Initial = DefaultRetryPolicy.Initial
	}
	if p.Max <= 0 {
		p.Max = DefaultRetryPolicy.Max
	}
	return p
}

// backoff is the wait before try number attempt+1 (attempt counts from 1).
func (p RetryPolicy) backoff(attempt int) time.Duration {
	d := p.Initial << (attempt - 1)
	if d > p.Max || d <= 0 {
		d = p.Max
	}
	// Full jitter between d/2 and d keeps parallel parts from retrying in step.
	return d/2 + rand.N(d/2+1)
}

// do runs fn until it succeeds, fails with a non-transient error, the
// attempts run out or ctx ends. fn gets the attempt number, from 1.
func (p RetryPolicy) do(ctx context.Context, fn func(attempt int) error) error {
	p = p.withDefaults()
	var err error
	for attempt := 1; ; attempt++ {
		if err = fn(attempt); err == nil || !transient(err) || attempt >= p.Attempts {
			return err
		}
		t := time.NewTimer(p.backoff(attempt))
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}
