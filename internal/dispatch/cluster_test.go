package dispatch_test

import (
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/dispatch"
	"github.com/esim-pipeline/thingspace-esim/internal/natstest"
	"github.com/esim-pipeline/thingspace-esim/internal/pipelinetest"
	"github.com/esim-pipeline/thingspace-esim/internal/simulator"
	"github.com/esim-pipeline/thingspace-esim/internal/status"
)

// TestAFleetOnAClusterBehavesAsOne runs three dispatchers against a
// three-node JetStream cluster with R3 streams, one of them on a clock 2 s
// ahead and one whose NATS answers 50 ms late: the fleet keeps the shared
// rate in every second, every command is accepted once, one device's
// actions keep their order, and stopping one NATS node and the active
// dispatcher mid-run loses nothing.
func TestAFleetOnAClusterBehavesAsOne(t *testing.T) {
	if testing.Short() {
		t.Skip("three-node cluster")
	}
	cluster := natstest.RunCluster(t, 3)
	// The watcher and the producer talk to the third node, which stays up.
	e := newEnv(t, simulator.Faults{}, pipelinetest.OnNATS(cluster.Servers[2]), pipelinetest.WithStreamReplicas(3),
		pipelinetest.WithSimulator(simulator.Config{Faults: simulator.Faults{RatePerMinute: -1}, Seed: 3, HistoryLimit: 100000}))
	e.watch()

	const rate = 10
	cfg := e.config(func(c *dispatch.Config) {
		c.NATS.URL = cluster.URL()
		c.Rate = rate
		c.RateShared = true
		c.BatchMaxDevices = 50
		c.BatchMaxWait = 100 * time.Millisecond
		c.AckWait = 5 * time.Second
		c.PinnedTTL = 6 * time.Second
	})
	var stops []func() error
	var svcs []*dispatch.Service
	slow := natstest.NewProxy(t, cluster.Servers[2].URL())
	slow.Slow(50)
	for i := range 3 {
		c, opts := cfg, []dispatch.Option(nil)
		switch i {
		case 1:
			opts = append(opts, dispatch.WithClock(func() time.Time { return time.Now().Add(2 * time.Second) }))
		case 2:
			c.NATS.URL = slow.URL()
		}
		stop, svc := e.startService(c, opts...)
		stops = append(stops, stop)
		svcs = append(svcs, svc)
	}

	const singles, ordered = 2000, 100
	steps := []string{"disable", "enable", "disable"}
	for i := range singles {
		id := "single-" + strconv.Itoa(i)
		e.publish("enable", enableBody(id, 1000+i), id)
	}
	for si, action := range steps {
		for d := range ordered {
			id := "ordered-" + strconv.Itoa(si) + "-" + strconv.Itoa(d)
			e.publish(action, enableBody(id, d), id)
		}
	}
	total := singles + ordered*len(steps)

	e.waitCount(status.Accepted, total/4, 60*time.Second)
	// Mid-run: one NATS node and the active dispatcher go away.
	cluster.Servers[0].Shutdown()
	active := -1
	for i, svc := range svcs {
		if svc.Stats().Batches > 0 {
			active = i
		}
	}
	require.NotEqual(t, -1, active, "one dispatcher is active")
	require.NoError(t, stops[active]())

	e.waitCount(status.Accepted, total, 3*time.Minute)

	accepted := map[string]int{}
	for _, ev := range e.snapshot() {
		if ev.Status == status.Accepted {
			accepted[ev.CommandID]++
		}
	}
	require.Len(t, accepted, total, "every command accepted")
	for id, n := range accepted {
		require.Equal(t, 1, n, "command %s accepted once", id)
	}

	perSecond := map[int64]int{}
	seen := map[string][]string{}
	for _, c := range e.sim.Calls() {
		if !strings.Contains(c.Path, "/profile/actions/") {
			continue
		}
		perSecond[c.At.Unix()]++
		if c.Status != 200 {
			continue
		}
		for _, ids := range c.Devices {
			for _, id := range ids {
				if id.Kind == "iccid" {
					seen[id.ID] = append(seen[id.ID], c.Action)
				}
			}
		}
	}
	for sec, n := range perSecond {
		require.LessOrEqual(t, n, rate+1, "second %d: %d calls for a fleet budget of %d/s", sec, n, rate)
	}
	twice := 0
	for d := range ordered {
		// The call in flight at the stop may be made again (its outcome
		// not stored yet): a step repeated at once, never one out of order.
		got := slices.Compact(slices.Clone(seen[iccid(d)]))
		if !slices.Equal(steps, got) {
			for _, c := range e.sim.Calls() {
				for _, ids := range c.Devices {
					for _, id := range ids {
						if id.ID == iccid(d) {
							t.Logf("call %s %s %d %s", c.At.Format("15:04:05.000"), c.Action, c.Status, c.RequestID)
						}
					}
				}
			}
			for _, ev := range e.snapshot() {
				if ev.Device.ICCID == iccid(d) {
					t.Logf("event %s %s %s %s", ev.OccurredAt.Format("15:04:05.000"), ev.Status, ev.CommandID, ev.RequestID)
				}
			}
		}
		require.Equal(t, steps, got, "device %d keeps its order (calls %v)", d, seen[iccid(d)])
		if len(seen[iccid(d)]) > len(got) {
			twice++
		}
	}
	for i := range singles {
		if len(seen[iccid(1000+i)]) > 1 {
			twice++
		}
	}
	t.Logf("fleet of 3 on 3 nodes: %d commands, %d calls, %d devices sent twice after the stops", total, len(e.sim.Calls()), twice)
	require.LessOrEqual(t, twice, cfg.BatchMaxDevices, "at most the batch in flight at a stop is sent again")
}
