package ratelimit

import (
	"context"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Limiter hands out permission for ThingSpace calls.
type Limiter interface {
	// Wait blocks until one call may be made, or ctx ends.
	Wait(ctx context.Context) error
	// Throttled tells the limiter ThingSpace answered 429: no call before
	// retryAfter has passed, and a lower rate for a while.
	Throttled(retryAfter time.Duration)
	// Succeeded tells the limiter a call went through.
	Succeeded()
}

// Local is a Limiter for one process.
type Local struct {
	max   rate.Limit
	lim   *rate.Limiter
	mu    sync.Mutex
	until time.Time
	now   func() time.Time
}

// NewLocal allows perSecond calls a second with the given burst.
func NewLocal(perSecond float64, burst int) *Local {
	if burst < 1 {
		burst = 1
	}
	l := rate.Limit(perSecond)
	if perSecond <= 0 {
		l = rate.Inf
	}
	return &Local{max: l, lim: rate.NewLimiter(l, burst), now: time.Now}
}

// Wait implements Limiter.
func (l *Local) Wait(ctx context.Context) error {
	for {
		l.mu.Lock()
		pause := l.until.Sub(l.now())
		l.mu.Unlock()
		if pause <= 0 {
			break
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
	return l.lim.Wait(ctx)
}

// Throttled implements Limiter.
func (l *Local) Throttled(retryAfter time.Duration) {
	if retryAfter <= 0 {
		retryAfter = time.Second
	}
	if retryAfter > 5*time.Minute {
		retryAfter = 5 * time.Minute
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if u := l.now().Add(retryAfter); u.After(l.until) {
		l.until = u
	}
	if l.max != rate.Inf {
		cur := l.lim.Limit() / 2
		if floor := l.max / 16; cur < floor {
			cur = floor
		}
		l.lim.SetLimit(cur)
	}
}

// Succeeded implements Limiter: each success earns back a tenth of the
// configured rate, never above it.
func (l *Local) Succeeded() {
	if l.max == rate.Inf {
		return
	}
	cur := l.lim.Limit()
	if cur >= l.max {
		return
	}
	cur += l.max / 10
	if cur > l.max {
		cur = l.max
	}
	l.lim.SetLimit(cur)
}

// Limit is the rate in force, calls per second.
func (l *Local) Limit() float64 { return float64(l.lim.Limit()) }
