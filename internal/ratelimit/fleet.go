package ratelimit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// Bucket is the key-value bucket that holds the fleet's token buckets.
const Bucket = "thingspace_rate"

// FleetConfig configures a Fleet limiter.
type FleetConfig struct {
	// PerSecond is the budget of the whole fleet, calls per second, per
	// scope. Zero means unlimited.
	PerSecond float64
	// Burst is how many calls may go at once above the rate (default 1).
	Burst int
	// OpTimeout bounds one key-value operation (default 2s); a slower one is
	// tried again, and no call goes before it succeeds.
	OpTimeout time.Duration
	// ClockEvery is how often the limiter reads the server's clock
	// (default 2s).
	ClockEvery time.Duration
	// Replicas of the bucket (default 1).
	Replicas int
	Log      zerolog.Logger
	// Clock is this host's clock (default time.Now). The limiter counts in
	// the server's time, measured against it; a test sets a skewed one.
	Clock func() time.Time
}

func (c *FleetConfig) setDefaults() {
	if c.Burst < 1 {
		c.Burst = 1
	}
	if c.OpTimeout <= 0 {
		c.OpTimeout = 2 * time.Second
	}
	if c.ClockEvery <= 0 {
		c.ClockEvery = 2 * time.Second
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
}

// Fleet is a Limiter shared by every dispatcher: a token bucket per scope
// kept in a JetStream key-value bucket and updated with compare-and-set, so
// the fleet together never exceeds PerSecond.
//
// Its rules: time is the server's (a bucket's last refill is the server's
// timestamp of the entry that stored it; the present is this host's clock
// corrected by its measured offset from the server's, so a host whose
// clock runs ahead neither starves the others nor ends a 429 pause early);
// a token exists only once it is stored, so a member that cannot reach
// NATS makes no call until it can (a call it made then could not be
// recorded either); and the token is taken for the scope of the call that
// follows it.
type Fleet struct {
	cfg    FleetConfig
	js     jetstream.JetStream
	kv     jetstream.KeyValue
	offset atomic.Int64 // server clock minus this host's, ns
}

// state is one scope's bucket, as stored. Its refill time is the entry's
// server timestamp.
type state struct {
	Tokens float64 `json:"tokens"`
	Until  int64   `json:"until"`  // server unix ns: no call before this (a 429's Retry-After)
	Factor float64 `json:"factor"` // share of PerSecond in force after 429s (1/16..1)
}

// NewFleet creates or binds the bucket, reads the server's clock, and keeps
// reading it until ctx ends.
func NewFleet(ctx context.Context, js jetstream.JetStream, cfg FleetConfig) (*Fleet, error) {
	cfg.setDefaults()
	bucket := jetstream.KeyValueConfig{
		Bucket:      Bucket,
		Description: "ThingSpace call budget shared by the dispatchers",
		History:     1,
		Replicas:    max(cfg.Replicas, 1),
		Storage:     jetstream.FileStorage,
	}
	// A create first: on a fresh cluster an update of a bucket that does
	// not exist yet waits out its timeout before the create (nats.go's
	// CreateOrUpdate order).
	kv, err := js.CreateKeyValue(ctx, bucket)
	if errors.Is(err, jetstream.ErrBucketExists) {
		kv, err = js.UpdateKeyValue(ctx, bucket)
	}
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", Bucket, err)
	}
	f := &Fleet{cfg: cfg, js: js, kv: kv}
	if err := f.readClock(ctx); err != nil {
		return nil, fmt.Errorf("bucket %s: server clock: %w", Bucket, err)
	}
	go f.keepClock(ctx)
	return f, nil
}

// readClock measures the server's clock against this host's: the server
// stamps a stream info with its time, taken halfway through the round trip.
func (f *Fleet) readClock(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, f.cfg.OpTimeout)
	defer cancel()
	st, err := f.js.Stream(ctx, "KV_"+Bucket)
	if err != nil {
		return err
	}
	sent := f.cfg.Clock()
	info, err := st.Info(ctx)
	if err != nil {
		return err
	}
	back := f.cfg.Clock()
	if info.TimeStamp.IsZero() {
		return errors.New("the server stamps no time on stream info")
	}
	mid := sent.Add(back.Sub(sent) / 2)
	f.offset.Store(int64(info.TimeStamp.Sub(mid)))
	return nil
}

func (f *Fleet) keepClock(ctx context.Context) {
	t := time.NewTicker(f.cfg.ClockEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := f.readClock(ctx); err != nil && ctx.Err() == nil {
				f.cfg.Log.Debug().Err(err).Msg("rate limit: server clock not read; the last offset stays")
			}
		}
	}
}

// now is the server's present time, as well as this host can tell.
func (f *Fleet) now() time.Time { return f.cfg.Clock().Add(time.Duration(f.offset.Load())) }

func scopeKey(s string) string { return "scope." + sanitize(s) }

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			return r
		}
		return '_'
	}, s)
}

// Wait implements Limiter.
func (f *Fleet) Wait(ctx context.Context, scope string) error {
	if f.cfg.PerSecond <= 0 {
		return ctx.Err()
	}
	key := scopeKey(scope)
	retry := 50 * time.Millisecond
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		wait, err := f.take(ctx, key)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			// No token without NATS: wait for it, never spend one it did not grant.
			f.cfg.Log.Debug().Err(err).Msg("rate limit: bucket not reached; waiting for it")
			wait = retry
			retry = min(2*retry, time.Second)
		} else {
			retry = 50 * time.Millisecond
		}
		if wait == 0 {
			return nil
		}
		if err := sleep(ctx, wait); err != nil {
			return err
		}
	}
}

// take tries to take one token: 0 when taken, else how long to wait before
// trying again.
func (f *Fleet) take(ctx context.Context, key string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, f.cfg.OpTimeout)
	defer cancel()
	st, rev, err := f.load(ctx, key)
	if err != nil {
		return 0, err
	}
	now := f.now()
	if until := time.Unix(0, st.Until); now.Before(until) {
		return until.Sub(now), nil
	}
	if st.Tokens < 1 {
		return time.Duration((1 - st.Tokens) / (f.cfg.PerSecond * st.Factor) * float64(time.Second)), nil
	}
	st.Tokens--
	if err := f.store(ctx, key, st, rev); err != nil {
		if isConflict(err) {
			return time.Millisecond, nil // another member took one: look again
		}
		return 0, err
	}
	return 0, nil
}

// load reads key's bucket, refilled up to now.
func (f *Fleet) load(ctx context.Context, key string) (state, uint64, error) {
	e, err := f.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		st := state{Tokens: float64(f.cfg.Burst), Factor: 1}
		b, _ := json.Marshal(st)
		rev, err := f.kv.Create(ctx, key, b)
		if errors.Is(err, jetstream.ErrKeyExists) || isConflict(err) {
			return f.load(ctx, key)
		}
		if err != nil {
			return state{}, 0, err
		}
		return st, rev, nil
	}
	if err != nil {
		return state{}, 0, err
	}
	var st state
	if err := json.Unmarshal(e.Value(), &st); err != nil || st.Factor <= 0 {
		st = state{Factor: 1}
	}
	elapsed := max(f.now().Sub(e.Created()).Seconds(), 0)
	st.Tokens = math.Min(float64(f.cfg.Burst), st.Tokens+elapsed*f.cfg.PerSecond*st.Factor)
	return st, e.Revision(), nil
}

func (f *Fleet) store(ctx context.Context, key string, st state, rev uint64) error {
	b, _ := json.Marshal(st)
	_, err := f.kv.Update(ctx, key, b, rev)
	return err
}

func isConflict(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}

// Throttled implements Limiter: every member pauses, and the fleet's rate
// halves (down to a sixteenth).
func (f *Fleet) Throttled(scope string, retryAfter time.Duration) {
	retryAfter = clampPause(retryAfter)
	f.update(scope, func(st *state) {
		if u := f.now().Add(retryAfter).UnixNano(); u > st.Until {
			st.Until = u
		}
		st.Factor = math.Max(st.Factor/2, 1.0/16)
	})
}

// Succeeded implements Limiter: the fleet earns back a tenth of its rate.
func (f *Fleet) Succeeded(scope string) {
	f.update(scope, func(st *state) {
		if st.Factor < 1 {
			st.Factor = math.Min(1, st.Factor+0.1)
		}
	})
}

// update applies change with compare-and-set, a few tries, best effort.
func (f *Fleet) update(scope string, change func(*state)) {
	if f.cfg.PerSecond <= 0 {
		return
	}
	key := scopeKey(scope)
	for range 5 {
		ctx, cancel := context.WithTimeout(context.Background(), f.cfg.OpTimeout)
		st, rev, err := f.load(ctx, key)
		if err != nil {
			cancel()
			return
		}
		before := st
		change(&st)
		if st == before {
			cancel()
			return
		}
		err = f.store(ctx, key, st, rev)
		cancel()
		if err == nil || !isConflict(err) {
			return
		}
	}
}
