package ratelimit

import (
	"context"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Limiter hands out permission for ThingSpace calls. Scope names the
// budget a call draws on: an account, or one name for the whole fleet.
type Limiter interface {
	// Wait blocks until one call may be made under scope, or ctx ends.
	Wait(ctx context.Context, scope string) error
	// Throttled tells the limiter ThingSpace answered 429: no call under
	// scope before retryAfter has passed, and a lower rate for a while.
	Throttled(scope string, retryAfter time.Duration)
	// Succeeded tells the limiter a call under scope went through.
	Succeeded(scope string)
}

// Local is a Limiter for one process: one token bucket per scope.
type Local struct {
	perSecond float64
	burst     int
	mu        sync.Mutex
	scopes    map[string]*bucket
	now       func() time.Time
}

type bucket struct {
	max   rate.Limit
	lim   *rate.Limiter
	until time.Time
}

// NewLocal allows perSecond calls a second (0: unlimited) with the given
// burst, in each scope.
func NewLocal(perSecond float64, burst int) *Local {
	if burst < 1 {
		burst = 1
	}
	return &Local{perSecond: perSecond, burst: burst, scopes: map[string]*bucket{}, now: time.Now}
}

func (l *Local) bucket(scope string) *bucket {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.scopes[scope]
	if b == nil {
		lim := rate.Limit(l.perSecond)
		if l.perSecond <= 0 {
			lim = rate.Inf
		}
		b = &bucket{max: lim, lim: rate.NewLimiter(lim, l.burst)}
		l.scopes[scope] = b
	}
	return b
}

// Wait implements Limiter.
func (l *Local) Wait(ctx context.Context, scope string) error {
	b := l.bucket(scope)
	for {
		l.mu.Lock()
		pause := b.until.Sub(l.now())
		l.mu.Unlock()
		if pause <= 0 {
			break
		}
		if err := sleep(ctx, pause); err != nil {
			return err
		}
	}
	return b.lim.Wait(ctx)
}

// Throttled implements Limiter.
func (l *Local) Throttled(scope string, retryAfter time.Duration) {
	retryAfter = clampPause(retryAfter)
	b := l.bucket(scope)
	l.mu.Lock()
	defer l.mu.Unlock()
	if u := l.now().Add(retryAfter); u.After(b.until) {
		b.until = u
	}
	if b.max != rate.Inf {
		cur := b.lim.Limit() / 2
		if floor := b.max / 16; cur < floor {
			cur = floor
		}
		b.lim.SetLimit(cur)
	}
}

// Succeeded implements Limiter: each success earns back a tenth of the
// configured rate, never above it.
func (l *Local) Succeeded(scope string) {
	b := l.bucket(scope)
	if b.max == rate.Inf {
		return
	}
	cur := b.lim.Limit()
	if cur >= b.max {
		return
	}
	cur += b.max / 10
	if cur > b.max {
		cur = b.max
	}
	b.lim.SetLimit(cur)
}

// Limit is the rate in force under scope, calls per second.
func (l *Local) Limit(scope string) float64 { return float64(l.bucket(scope).lim.Limit()) }

func clampPause(d time.Duration) time.Duration {
	if d <= 0 {
		return time.Second
	}
	if d > 5*time.Minute {
		return 5 * time.Minute
	}
	return d
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
