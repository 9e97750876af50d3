package ratelimit_test

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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

// calls runs n members taking tokens as fast as they may for d and returns
// how many they took in all.
func calls(t *testing.T, members []*ratelimit.Fleet, d time.Duration) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var n atomic.Int64
	var wg sync.WaitGroup
	for _, m := range members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for m.Wait(ctx, "fleet") == nil {
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	return n.Load()
}

func TestFleetMembersShareOneBudget(t *testing.T) {
	ns := natstest.Run(t)
	_, js := ns.JetStream()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	var fleet []*ratelimit.Fleet
	for i := range 3 {
		f, err := ratelimit.NewFleet(ctx, js, ratelimit.FleetConfig{
			PerSecond: 20, Burst: 1, Member: "m" + strconv.Itoa(i), Heartbeat: 100 * time.Millisecond,
		})
		require.NoError(t, err)
		fleet = append(fleet, f)
	}
	require.Eventually(t, func() bool { return fleet[0].Members() == 3 }, 5*time.Second, 20*time.Millisecond)

	got := calls(t, fleet, 2*time.Second)
	// 20 a second for 2 seconds, plus the burst: never the 3 x 40 that
	// three separate limiters would allow.
	require.LessOrEqual(t, got, int64(41+1))
	require.GreaterOrEqual(t, got, int64(25), "the budget is used, not starved by conflicts")
}

func TestFleetFallsBackToItsLocalShareWhenNATSIsAway(t *testing.T) {
	ns := natstest.Run(t)
	_, js := ns.JetStream()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	var fleet []*ratelimit.Fleet
	for i := range 2 {
		f, err := ratelimit.NewFleet(ctx, js, ratelimit.FleetConfig{
			PerSecond: 20, Burst: 1, Member: "m" + strconv.Itoa(i), Heartbeat: 100 * time.Millisecond,
			OpTimeout: 100 * time.Millisecond,
		})
		require.NoError(t, err)
		fleet = append(fleet, f)
	}
	require.Eventually(t, func() bool { return fleet[0].Members() == 2 && fleet[1].Members() == 2 }, 5*time.Second, 20*time.Millisecond)
	ns.Shutdown()

	got := calls(t, fleet, 2*time.Second)
	// Each member falls back to 20/2 a second: together still within 20/s.
	require.LessOrEqual(t, got, int64(41+2))
	require.GreaterOrEqual(t, got, int64(10), "calls go on while NATS is away")
}
