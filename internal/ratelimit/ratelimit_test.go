package ratelimit_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/natstest"
	"github.com/esim-pipeline/thingspace-esim/internal/ratelimit"
)

func TestLocalPausesOnThrottleAndHalvesItsRate(t *testing.T) {
	l := ratelimit.NewLocal(10, 1)
	l.Throttled("a", 300*time.Millisecond)
	require.InDelta(t, 5, l.Limit("a"), 0.001)
	require.InDelta(t, 10, l.Limit("b"), 0.001, "scopes are apart")
	start := time.Now()
	require.NoError(t, l.Wait(context.Background(), "a"))
	require.GreaterOrEqual(t, time.Since(start), 250*time.Millisecond, "no call before Retry-After")
	for range 10 {
		l.Succeeded("a")
	}
	require.InDelta(t, 10, l.Limit("a"), 0.001, "successes earn the rate back, never above it")
}

// busiest runs the members taking tokens as fast as they may for d and
// returns the most tokens taken within any one second, all of them, and
// each member's.
func busiest(t *testing.T, members []*ratelimit.Fleet, d time.Duration) (most, all int, each []int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var mu sync.Mutex
	var at []time.Time
	each = make([]int, len(members))
	var wg sync.WaitGroup
	for i, m := range members {
		wg.Go(func() {
			for m.Wait(ctx, "fleet") == nil {
				mu.Lock()
				at = append(at, time.Now())
				each[i]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	slices.SortFunc(at, func(a, b time.Time) int { return a.Compare(b) })
	for i := range at {
		j := i
		for j < len(at) && at[j].Sub(at[i]) < time.Second {
			j++
		}
		most = max(most, j-i)
	}
	return most, len(at), each
}

// fleet starts one member per JetStream context, on clocks skewed by skew
// (none where skew is shorter).
func fleet(t *testing.T, perSecond float64, jss []jetstream.JetStream, skew ...time.Duration) []*ratelimit.Fleet {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	var out []*ratelimit.Fleet
	for i, js := range jss {
		cfg := ratelimit.FleetConfig{PerSecond: perSecond, Burst: 1, ClockEvery: 200 * time.Millisecond}
		if i < len(skew) {
			d := skew[i]
			cfg.Clock = func() time.Time { return time.Now().Add(d) }
		}
		f, err := ratelimit.NewFleet(ctx, js, cfg)
		require.NoError(t, err)
		out = append(out, f)
	}
	return out
}

func TestFleetMembersShareOneBudget(t *testing.T) {
	ns := natstest.Run(t)
	_, js := ns.JetStream()
	most, all, _ := busiest(t, fleet(t, 20, []jetstream.JetStream{js, js, js}), 2*time.Second)
	// 20 a second for 2 seconds, plus the burst: never the 3 x 40 that
	// three separate limiters would allow.
	require.LessOrEqual(t, all, 41+1)
	require.LessOrEqual(t, most, 20+1)
	require.GreaterOrEqual(t, all, 25, "the budget is used, not starved by conflicts")
}

// Issue 19.10: a member whose clock ran 2 s ahead took the whole budget
// and saw a 429 pause end 2 s early.
func TestAFleetMemberWhoseClockRunsAheadNeitherStarvesTheOthersNorEndsAPauseEarly(t *testing.T) {
	ns := natstest.Run(t)
	_, js := ns.JetStream()
	members := fleet(t, 10, []jetstream.JetStream{js, js}, 2*time.Second)
	most, all, each := busiest(t, members, 4*time.Second)
	t.Logf("busiest second %d, %d in 4 s, by member %v", most, all, each)
	require.LessOrEqual(t, most, 10+1, "10 a second and the burst of 1")
	require.GreaterOrEqual(t, all, 25, "the budget is used")
	for i, n := range each {
		require.GreaterOrEqual(t, n, all/4, "member %d is not starved", i)
	}

	// A 429 seen by the member on time pauses the one ahead as long.
	members[1].Throttled("fleet", 3*time.Second)
	start := time.Now()
	require.NoError(t, members[0].Wait(context.Background(), "fleet"))
	require.GreaterOrEqual(t, time.Since(start), 2500*time.Millisecond, "the pause does not end early on the clock ahead")
}

// Issue 19.10: a member whose NATS answered slowly fell back to a local
// share on top of what the others drew from the shared bucket.
func TestAFleetMemberWithSlowNATSDoesNotExceedTheBudget(t *testing.T) {
	ns := natstest.Run(t)
	_, js := ns.JetStream()
	proxy := natstest.NewProxy(t, ns.URL())
	members := fleet(t, 10, []jetstream.JetStream{js, proxy.JetStream()})
	proxy.Slow(700)
	most, all, each := busiest(t, members, 4*time.Second)
	t.Logf("busiest second %d, %d in 4 s, by member %v", most, all, each)
	require.LessOrEqual(t, most, 10+1, "10 a second and the burst of 1")
	require.GreaterOrEqual(t, all, 25, "the budget is used")
}

func TestAFleetMemberMakesNoCallWhileNATSIsAwayAndGoesOnWhenItIsBack(t *testing.T) {
	ns := natstest.Run(t)
	_, js := ns.JetStream()
	members := fleet(t, 20, []jetstream.JetStream{js, js})
	ns.Shutdown()
	_, all, _ := busiest(t, members, time.Second)
	require.LessOrEqual(t, all, 0, "no token without the bucket: a call now could not be recorded either")
	ns.Start()
	_, all, _ = busiest(t, members, 2*time.Second)
	require.GreaterOrEqual(t, all, 10, "calls go on once NATS is back")
}
