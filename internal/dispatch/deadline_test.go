package dispatch_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/callback"
	"github.com/esim-pipeline/thingspace-esim/internal/dispatch"
	"github.com/esim-pipeline/thingspace-esim/internal/simulator"
	"github.com/esim-pipeline/thingspace-esim/internal/status"
)

// startIngest runs a callback-ingest on the env's NATS and returns its
// callback URL.
func (e *env) startIngest() string {
	e.t.Helper()
	return e.StartIngest(func(c *callback.Config) { c.CorrelationGrace = 5 * time.Second }).CallbackURL()
}

// TestLateCallbacksAreReconciledEvenAcrossARestart: devices whose final
// callback is lost end `succeeded` when the request status settles them;
// devices that never settle end `timed_out`; the dispatcher that accepted
// them is stopped before the deadline and another one reconciles them.
func TestLateCallbacksAreReconciledEvenAcrossARestart(t *testing.T) {
	e := newEnv(t, simulator.Faults{DropFinalShare: 0.2, StuckShare: 0.2, CallbackDelay: 10 * time.Millisecond})
	e.watch()
	cbURL := e.startIngest()
	cfg := e.config(func(c *dispatch.Config) {
		c.CallbackURL = cbURL
		c.CallbackDeadline = 3 * time.Second
	})
	const n = 100
	ns := make([]int, n)
	for i := range ns {
		ns[i] = i
	}
	e.publish("enable", enableBody("late", ns...), "")
	stop := e.start(cfg)
	e.waitCount(status.Accepted, n, 20*time.Second)
	require.NoError(t, stop(), "the dispatcher that holds the deadlines goes away")

	e.start(cfg)
	final := func() int {
		last := map[string]status.Event{}
		for _, ev := range e.snapshot() {
			last[ev.Device.ICCID] = ev
		}
		k := 0
		for _, ev := range last {
			if ev.Final {
				k++
			}
		}
		return k
	}
	require.Eventually(t, func() bool { return final() == n }, 60*time.Second, 50*time.Millisecond, "every device ends final")

	counts := map[status.Status]int{}
	for _, ev := range e.snapshot() {
		if ev.Final {
			counts[ev.Status]++
		}
	}
	withheld, stuck := 0, 0
	for _, d := range e.sim.Deliveries() {
		if d.Withheld {
			withheld++
		}
	}
	stuck = counts[status.TimedOut]
	t.Logf("final events: %v (final callbacks withheld by the simulator: %d)", counts, withheld)
	require.Positive(t, stuck, "stuck devices time out")
	require.Equal(t, n-stuck, counts[status.Succeeded], "the others succeed, by callback or by the request status")
	require.Positive(t, withheld, "some final callbacks were lost on purpose")
	for _, ev := range e.snapshot() {
		if ev.Status == status.TimedOut {
			require.Equal(t, "late", ev.CommandID)
			require.NotNil(t, ev.Reason)
		}
	}
}
