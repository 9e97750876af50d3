package reliability_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/simulator"
)

// callCounts sums up the profile action calls the simulator recorded.
type callCounts struct {
	attempts, accepted, timedOut, dropped, throttled, serverErrors, authErrors int
}

func countCalls(calls []simulator.Call) callCounts {
	var c callCounts
	for _, x := range calls {
		if !strings.Contains(x.Path, "/devices/profile/actions/") {
			continue
		}
		c.attempts++
		switch {
		case x.Dropped:
			c.dropped++
		case x.Status == 0:
			c.timedOut++
		case x.Status == http.StatusOK:
			c.accepted++
		case x.Status == http.StatusTooManyRequests:
			c.throttled++
		case x.Status >= 500:
			c.serverErrors++
		case x.Status == http.StatusUnauthorized || strings.Contains(x.ErrorCode, "SessionToken"):
			c.authErrors++
		}
	}
	return c
}

// TestFaultStorms sends commands through one dispatcher while the simulator
// misbehaves in one way at a time. Each storm ends with every command
// accepted, every device sent to ThingSpace exactly once (none of these
// faults lets ThingSpace take a call it did not answer), and a number of
// calls below a bound that fits the storm.
func TestFaultStorms(t *testing.T) {
	const batch = 50
	p := &pipeline{nats: bins.StartNATS(t)}
	_, js := connect(t, p.nats.URL())
	ensureStreams(t, js, 1)
	s := startSim(t, simulator.Config{Faults: simulator.Faults{RatePerMinute: -1}})
	d := newDispatcher(t, p.nats.URL(), s.URL, "", map[string]string{
		"BATCH_MAX_DEVICES": fmt.Sprint(batch), "THINGSPACE_TIMEOUT": "400ms", "MAX_DELIVER": "100",
	})
	d.Start()
	events := watchEvents(t, js, false)

	type storm struct {
		name   string
		n      int
		faults simulator.Faults
		// calm, when set, clears the faults after this long.
		calm time.Duration
		// during runs while the storm lasts and returns how often it acted.
		during func(ctx context.Context) int
		check  func(t *testing.T, c callCounts, minimal, acted int, st simulator.Stats)
		// resent: a timed-out call may have been taken by ThingSpace all the
		// same, so its devices may go twice; bounded by the timed-out calls.
		resent bool
	}
	storms := []storm{
		{
			name: "slow_answers", n: 1000, faults: simulator.Faults{Latency: 150 * time.Millisecond},
			check: func(t *testing.T, c callCounts, minimal, _ int, _ simulator.Stats) {
				require.Equal(t, c.accepted, c.attempts, "a slow answer is not retried")
				require.LessOrEqual(t, c.accepted, minimal+5)
			},
		},
		{
			name: "server_errors_5xx", n: 1000, faults: simulator.Faults{ErrorShare: 0.3},
			check: func(t *testing.T, c callCounts, minimal, _ int, _ simulator.Stats) {
				require.Positive(t, c.serverErrors)
				require.LessOrEqual(t, c.attempts, 3*c.accepted+5, "30%% errors cost about 1.4 calls a batch")
			},
		},
		{
			name: "dropped_connections", n: 1000, faults: simulator.Faults{DropShare: 0.3},
			check: func(t *testing.T, c callCounts, minimal, _ int, _ simulator.Stats) {
				require.Positive(t, c.dropped)
				require.LessOrEqual(t, c.attempts, 3*c.accepted+5)
			},
		},
		{
			name: "timeouts_then_calm", n: 1000, faults: simulator.Faults{Latency: 800 * time.Millisecond}, calm: 3 * time.Second,
			resent: true,
			check: func(t *testing.T, c callCounts, minimal, _ int, _ simulator.Stats) {
				require.Positive(t, c.timedOut)
				// One sender, 400ms per timed-out try plus a growing back-off:
				// at most a handful of tries fit in the 3s storm.
				require.LessOrEqual(t, c.timedOut, 12)
				require.LessOrEqual(t, c.attempts-c.dropped, minimal+c.timedOut+5,
					"every call beyond the minimum is a timed-out one ThingSpace took all the same")
			},
		},
		{
			name: "expired_sessions_and_tokens", n: 2000,
			during: func(ctx context.Context) int {
				acted := 0
				tick := time.NewTicker(100 * time.Millisecond)
				defer tick.Stop()
				for i := 0; i < 1000; i++ {
					select {
					case <-ctx.Done():
						return acted
					case <-tick.C:
					}
					if i%2 == 0 {
						s.ExpireSessions()
					} else {
						s.ExpireTokens()
					}
					acted++
				}
				return acted
			},
			check: func(t *testing.T, c callCounts, minimal, acted int, st simulator.Stats) {
				require.Zero(t, st.LoginFailures, "never a failed login (five lock the account)")
				require.LessOrEqual(t, int(st.Logins), acted+1, "one login per expiry at most")
				require.LessOrEqual(t, c.authErrors, acted, "one refused call per expiry at most")
				require.LessOrEqual(t, c.attempts, c.accepted+acted)
			},
		},
		{
			name: "rate_limited_429", n: 3500, faults: simulator.Faults{RatePerMinute: 60},
			check: func(t *testing.T, c callCounts, minimal, _ int, _ simulator.Stats) {
				// 70 calls against a bucket of 60 refilled at one a second:
				// about ten must wait; Retry-After keeps the refusals few.
				require.Positive(t, c.throttled)
				require.LessOrEqual(t, c.throttled, 40)
				require.LessOrEqual(t, c.accepted, minimal+5)
			},
		},
	}
	for i, sc := range storms {
		t.Run(sc.name, func(t *testing.T) {
			acct := fmt.Sprintf("0000123456-%05d", 100+i)
			f := sc.faults
			if f.RatePerMinute == 0 {
				f.RatePerMinute = -1
			}
			require.NoError(t, s.SetFaults(f))
			s.ResetRecords()
			before := s.Stats()
			metrics := d.AdminURL() + "/metrics"
			const calls = "esim_dispatcher_thingspace_calls_total"
			errorsBefore := metricSum(t, metrics, calls, `code="error"`)
			start := time.Now()
			ids := publishFor(t, js, acct, 10+i, sc.n)

			ctx, cancel := context.WithCancel(context.Background())
			acted := make(chan int, 1)
			go func() {
				if sc.during == nil {
					acted <- 0
					return
				}
				acted <- sc.during(ctx)
			}()
			if sc.calm > 0 {
				time.Sleep(sc.calm) // the storm's length
				require.NoError(t, s.SetFaults(simulator.Faults{RatePerMinute: -1}))
			}
			require.Eventually(t, func() bool {
				events.mu.Lock()
				defer events.mu.Unlock()
				for _, id := range ids {
					if events.accepted[id] == 0 {
						return false
					}
				}
				return true
			}, 3*time.Minute, 100*time.Millisecond, "not every command was accepted")
			took := time.Since(start)
			cancel()
			n := <-acted
			require.NoError(t, s.SetFaults(simulator.Faults{RatePerMinute: -1}))

			subs := submissions(s.Calls())
			c := countCalls(s.Calls())
			// A call that timed out is recorded by the simulator as answered
			// (it answered, to nobody); the dispatcher counts it.
			c.timedOut = int(metricSum(t, metrics, calls, `code="error"`) - errorsBefore)
			twice := 0
			for _, id := range ids {
				require.GreaterOrEqual(t, subs[id], 1, "device %s never reached ThingSpace", id)
				if subs[id] > 1 {
					twice++
				}
			}
			if sc.resent {
				require.LessOrEqual(t, twice, c.timedOut*batch, "only the devices of timed-out calls may go twice")
			} else {
				require.Zero(t, twice, "devices sent to ThingSpace twice")
			}
			after := s.Stats()
			delta := simulator.Stats{Logins: after.Logins - before.Logins, LoginFailures: after.LoginFailures - before.LoginFailures}
			minimal := (sc.n + batch - 1) / batch
			sc.check(t, c, minimal, n, delta)
			require.False(t, d.Exited(), "the dispatcher exited")
			t.Logf("FIGURE storm %s: %d commands accepted in %s; %d action calls (%d accepted, minimum %d; %d 5xx, %d dropped, "+
				"%d transport errors (timeouts, resets), %d 429, %d auth); %d logins, %d expiries; %d devices sent twice",
				sc.name, sc.n, took.Round(time.Millisecond), c.attempts, c.accepted, minimal, c.serverErrors, c.dropped,
				c.timedOut, c.throttled, c.authErrors, delta.Logins, n, twice)
		})
	}
}
