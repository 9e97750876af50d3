package ratelimit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// Bucket is the key-value bucket that holds the fleet's token buckets and
// the members' heartbeats.
const Bucket = "thingspace_rate"

// FleetConfig configures a Fleet limiter.
type FleetConfig struct {
	// PerSecond is the budget of the whole fleet, calls per second, per
	// scope. Zero means unlimited.
	PerSecond float64
	// Burst is how many calls may go at once above the rate (default 1).
	Burst int
	// Member names this process among the fleet (a unique id).
	Member string
	// OpTimeout bounds one key-value operation; slower than that, the
	// limiter degrades to its local share (default 500ms).
	OpTimeout time.Duration
	// Heartbeat is how often the member says it is alive (default 2s);
	// members not heard of for 5 heartbeats are gone.
	Heartbeat time.Duration
	// Replicas of the bucket (default 1).
	Replicas int
	Log      zerolog.Logger
}

// Fleet is a Limiter shared by every dispatcher: a token bucket per scope
// kept in a JetStream key-value bucket and updated with compare-and-set, so
// the fleet together never exceeds PerSecond. When NATS does not answer
// within OpTimeout, each member falls back to a local bucket of
// PerSecond divided by the members it last saw alive: never above the
// budget, at the cost of leaving some of it unused.
type Fleet struct {
	cfg     FleetConfig
	kv      jetstream.KeyValue
	local   atomic.Pointer[Local] // the fallback: PerSecond / members
	members atomic.Int64
	now     func() time.Time
}

// state is one scope's bucket, as stored.
type state struct {
	Tokens float64 `json:"tokens"`
	At     int64   `json:"at"`     // unix nanoseconds of the last update
	Until  int64   `json:"until"`  // no call before this (a 429's Retry-After)
	Factor float64 `json:"factor"` // share of PerSecond in force after 429s (1/16..1)
}

// NewFleet creates or binds the bucket and starts the heartbeat, which ends
// with ctx.
func NewFleet(ctx context.Context, js jetstream.JetStream, cfg FleetConfig) (*Fleet, error) {
	if cfg.Burst < 1 {
		cfg.Burst = 1
	}
	if cfg.OpTimeout <= 0 {
		cfg.OpTimeout = 500 * time.Millisecond
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = 2 * time.Second
	}
	if cfg.Member == "" {
		return nil, errors.New("ratelimit: fleet member needs a name")
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      Bucket,
		Description: "ThingSpace call budget shared by the dispatchers, and their heartbeats",
		History:     1,
		Replicas:    max(cfg.Replicas, 1),
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", Bucket, err)
	}
	f := &Fleet{cfg: cfg, kv: kv, now: time.Now}
	f.local.Store(NewLocal(cfg.PerSecond, 1))
	f.members.Store(1)
	f.beat(ctx)
	go f.heartbeat(ctx)
	return f, nil
}

func memberKey(id string) string { return "member." + sanitize(id) }
func scopeKey(s string) string   { return "scope." + sanitize(s) }

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			return r
		}
		return '_'
	}, s)
}

func (f *Fleet) heartbeat(ctx context.Context) {
	t := time.NewTicker(f.cfg.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			dctx, cancel := context.WithTimeout(context.Background(), f.cfg.OpTimeout)
			_ = f.kv.Delete(dctx, memberKey(f.cfg.Member))
			cancel()
			return
		case <-t.C:
			f.beat(ctx)
		}
	}
}

// beat records this member and counts the live ones.
func (f *Fleet) beat(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, f.cfg.OpTimeout)
	defer cancel()
	now := f.now()
	if _, err := f.kv.Put(ctx, memberKey(f.cfg.Member), []byte(strconv.FormatInt(now.UnixNano(), 10))); err != nil {
		return
	}
	keys, err := f.kv.ListKeysFiltered(ctx, "member.>")
	if err != nil {
		return
	}
	alive := int64(0)
	for k := range keys.Keys() {
		e, err := f.kv.Get(ctx, k)
		if err != nil {
			continue
		}
		ns, err := strconv.ParseInt(string(e.Value()), 10, 64)
		if err != nil {
			continue
		}
		if now.Sub(time.Unix(0, ns)) <= 5*f.cfg.Heartbeat {
			alive++
		}
	}
	if alive < 1 {
		alive = 1
	}
	if alive != f.members.Load() {
		f.members.Store(alive)
		f.local.Store(NewLocal(f.cfg.PerSecond/float64(alive), 1))
		f.cfg.Log.Info().Int64("members", alive).Msg("rate limit fleet changed")
	}
}

// Members is the number of live members last counted.
func (f *Fleet) Members() int { return int(f.members.Load()) }

// Wait implements Limiter.
func (f *Fleet) Wait(ctx context.Context, scope string) error {
	if f.cfg.PerSecond <= 0 {
		return ctx.Err()
	}
	key := scopeKey(scope)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		wait, err := f.take(ctx, key)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			// NATS is slow or away: the local share never exceeds the budget.
			f.cfg.Log.Debug().Err(err).Msg("rate limit: using the local share")
			return f.local.Load().Wait(ctx, scope)
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
	rate := f.cfg.PerSecond * st.Factor
	elapsed := now.Sub(time.Unix(0, st.At)).Seconds()
	if elapsed < 0 {
		elapsed = 0 // another member's clock runs ahead
	}
	st.Tokens = math.Min(float64(f.cfg.Burst), st.Tokens+elapsed*rate)
	st.At = now.UnixNano()
	if st.Tokens < 1 {
		return time.Duration((1 - st.Tokens) / rate * float64(time.Second)), nil
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

func (f *Fleet) load(ctx context.Context, key string) (state, uint64, error) {
	e, err := f.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		st := state{Tokens: float64(f.cfg.Burst), At: f.now().UnixNano(), Factor: 1}
		b, _ := json.Marshal(st)
		rev, err := f.kv.Create(ctx, key, b)
		if err != nil && !isConflict(err) && !errors.Is(err, jetstream.ErrKeyExists) {
			return state{}, 0, err
		}
		if err != nil {
			return f.load(ctx, key)
		}
		return st, rev, nil
	}
	if err != nil {
		return state{}, 0, err
	}
	var st state
	if err := json.Unmarshal(e.Value(), &st); err != nil || st.Factor <= 0 {
		st = state{Tokens: 0, At: f.now().UnixNano(), Factor: 1}
	}
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
	f.local.Load().Throttled(scope, retryAfter)
	f.update(scope, func(st *state) {
		if u := f.now().Add(retryAfter).UnixNano(); u > st.Until {
			st.Until = u
		}
		st.Factor = math.Max(st.Factor/2, 1.0/16)
	})
}

// Succeeded implements Limiter: the fleet earns back a tenth of its rate.
func (f *Fleet) Succeeded(scope string) {
	f.local.Load().Succeeded(scope)
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
