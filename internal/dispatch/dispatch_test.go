package dispatch_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/dispatch"
	"github.com/esim-pipeline/thingspace-esim/internal/simulator"
	"github.com/esim-pipeline/thingspace-esim/internal/status"
)

// The seeds' example bodies, as a producer would paste them (placeholders
// of the deactivate and suspend pages replaced by real-looking digits).
var seedCommands = map[string]string{
	"enable": `{"devices":[{"deviceIds":[{"kind":"eid","id":"666456789123456789123456784008"},{"kind":"iccid","id":"89148000000840784259"}]}],
 "accountName":"1223334444-00001","smsrOid": "1.3.6.1.4.1.31746.1.500.200.101.5"}`,
	"delete": `{"devices":[{"deviceIds":[{"kind":"eid","id":"666456789123456789123456784009"},{"kind":"iccid","id":"89148000000840784260"}]}],
 "accountName":"1223334444-00001","smsrOid": "1.3.6.1.4.1.31746.1.500.200.101.5"}`,
	"deactivate": `{"devices":[{"deviceIds":[{"kind":"eid","id":"89049032000000000000000000000011"},{"kind":"iccid","id":"89148000000840784261"},{"kind":"imei","id":"356938035643809"}]}],
 "accountName":"0000123456-00001","servicePlan":"service plan name","etfWaiver":false,"reasonCode":"FF"}`,
	"suspend": `{"devices":[{"deviceIds":[{"kind":"iccid","id":"89148000000840784262"}]}],
 "accountName":"0000123456-00001","servicePlan":"service plan name"}`,
}

func TestSeedCommandsReachThingSpaceAsDocumented(t *testing.T) {
	e := newEnv(t, simulator.Faults{})
	e.watch()
	e.start(e.config(nil))
	for action, body := range seedCommands {
		e.publish(action, []byte(body), "seed-"+action)
	}
	e.waitCount(status.Accepted, len(seedCommands), 20*time.Second)

	paths := map[string]string{}
	bodies := map[string]map[string]any{}
	for _, c := range e.sim.Calls() {
		if c.Action != "" && c.Status == 200 {
			paths[c.Action] = c.Path
			var b map[string]any
			require.NoError(t, json.Unmarshal(c.Body, &b))
			bodies[c.Action] = b
		}
	}
	require.Equal(t, "/api/m2m/v1/devices/profile/actions/profile_suspend", paths["suspend"])
	require.Equal(t, "/api/m2m/v1/devices/profile/actions/enable", paths["enable"])
	for action, body := range seedCommands {
		var want map[string]any
		require.NoError(t, json.Unmarshal([]byte(body), &want))
		require.Equal(t, want, bodies[action], "ThingSpace gets the %s body as the page documents it", action)
	}
	for _, ev := range e.snapshot() {
		require.Equal(t, "seed-"+ev.Action, ev.CommandID, "the Nats-Msg-Id names the command")
		require.NotEmpty(t, ev.RequestID)
		require.False(t, ev.Final)
	}
	require.Eventually(t, func() bool { return e.unacked() == 0 }, 10*time.Second, 20*time.Millisecond)
}

func TestBatchesRespectTheRate(t *testing.T) {
	if testing.Short() {
		t.Skip("10,000 commands")
	}
	e := newEnv(t, simulator.Faults{})
	e.watch()
	const n = 10000
	for i := range n {
		e.publish("enable", enableBody("c"+strconv.Itoa(i), i), "")
	}
	e.start(e.config(func(c *dispatch.Config) {
		c.Rate = 5
		c.BatchMaxDevices = 1000
		c.BatchMaxWait = time.Second // the race detector slows the intake: let batches fill
	}))
	e.waitCount(status.Accepted, n, 60*time.Second)

	calls := 0
	perSecond := map[int64]int{}
	for _, c := range e.sim.Calls() {
		if c.Action == "enable" {
			calls++
			perSecond[c.At.Unix()]++
		}
	}
	require.LessOrEqual(t, calls, 12, "10,000 devices in batches of 1,000 take about 10 calls")
	require.GreaterOrEqual(t, calls, 10)
	for sec, k := range perSecond {
		require.LessOrEqual(t, k, 5+1, "second %d saw %d calls at 5/s (burst 1)", sec, k)
	}
	require.Eventually(t, func() bool { return e.unacked() == 0 }, 10*time.Second, 20*time.Millisecond)
}

func TestOneDeviceOrderHoldsAcrossBatches(t *testing.T) {
	e := newEnv(t, simulator.Faults{})
	e.watch()
	const devices = 200
	steps := []string{"disable", "enable", "disable"}
	for si, action := range steps {
		for d := range devices {
			e.publish(action, enableBody("s"+strconv.Itoa(si)+"-"+strconv.Itoa(d), d), "")
		}
	}
	e.start(e.config(func(c *dispatch.Config) { c.BatchMaxDevices = 37 }))
	e.waitCount(status.Accepted, devices*len(steps), 30*time.Second)

	seen := map[string][]string{}
	for _, c := range e.sim.Calls() {
		if c.Action == "" || c.Status != 200 {
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
	require.Len(t, seen, devices)
	for dev, got := range seen {
		require.Equal(t, steps, got, "device %s", dev)
	}
}

func TestOneInvalidDeviceIsRejectedAlone(t *testing.T) {
	e := newEnv(t, simulator.Faults{})
	e.watch()
	e.start(e.config(nil))
	devs := devicesOf(1, 2, 3)
	devs[1].ICCID = "89148000000ABC84259"
	body := enableSmsrBody("three", testSmsr, devs)
	e.publish("enable", body, "")
	e.waitCount(status.Accepted, 2, 10*time.Second)
	e.waitCount(status.Rejected, 1, 10*time.Second)
	for _, ev := range e.snapshot() {
		if ev.Status == status.Rejected {
			require.Equal(t, "three", ev.CommandID)
			require.True(t, ev.Final)
			require.NotNil(t, ev.Reason)
			require.Contains(t, ev.Reason.Message, "iccid")
		}
	}
	require.Eventually(t, func() bool { return e.unacked() == 0 }, 10*time.Second, 20*time.Millisecond)
}

func TestADeviceThingSpaceRefusesIsRejectedAndTheBatchGoesOn(t *testing.T) {
	bad := iccid(42)
	e := newEnv(t, simulator.Faults{RejectDevices: []string{bad}})
	e.watch()
	ns := make([]int, 100)
	for i := range ns {
		ns[i] = i
	}
	e.publish("enable", enableBody("hundred", ns...), "")
	e.start(e.config(nil))
	e.waitCount(status.Accepted, 99, 20*time.Second)
	e.waitCount(status.Rejected, 1, 20*time.Second)
	for _, ev := range e.snapshot() {
		if ev.Status == status.Rejected {
			require.Equal(t, bad, ev.Device.ICCID)
			require.Contains(t, ev.Reason.Code, "Device.Identifier.Invalid")
		}
	}
	require.Eventually(t, func() bool { return e.unacked() == 0 }, 10*time.Second, 20*time.Millisecond)
}

func TestStormsOf429And5xxLoseNothing(t *testing.T) {
	e := newEnv(t, simulator.Faults{ErrorShare: 0.4, RatePerMinute: 3})
	e.watch()
	const n = 300
	for i := range n {
		e.publish("enable", enableBody("storm"+strconv.Itoa(i), i), "")
	}
	e.start(e.config(func(c *dispatch.Config) {
		c.Rate = 20 // far above the simulator's 3 a minute: 429s follow
		c.Burst = 5
		c.BatchMaxDevices = 10
		c.MaxAttempts = 20
	}))
	throttled := func() bool {
		for _, c := range e.sim.Calls() {
			if c.Status == 429 {
				return true
			}
		}
		return false
	}
	require.Eventually(t, throttled, 20*time.Second, 20*time.Millisecond)
	// The storm of 429s passes; the 5xx storm goes on.
	require.NoError(t, e.sim.SetFaults(simulator.Faults{ErrorShare: 0.4, RatePerMinute: -1}))
	e.waitCount(status.Accepted, n, 90*time.Second)
	require.Zero(t, e.count(status.Rejected))
	require.Zero(t, e.count(status.Failed))
	codes := map[int]int{}
	for _, c := range e.sim.Calls() {
		if strings.Contains(c.Path, "/profile/actions/") {
			codes[c.Status]++
		}
	}
	require.Positive(t, codes[429], "the storm had 429s")
	require.Positive(t, codes[500], "the storm had 5xx")
	require.Eventually(t, func() bool { return e.unacked() == 0 }, 10*time.Second, 20*time.Millisecond)
}

func TestAStoppedDispatcherHandsItsWorkToTheNext(t *testing.T) {
	e := newEnv(t, simulator.Faults{Latency: 50 * time.Millisecond})
	e.watch()
	const n = 2000
	for i := range n {
		e.publish("enable", enableBody("h"+strconv.Itoa(i), i), "")
	}
	cfg := e.config(func(c *dispatch.Config) {
		c.Rate = 10
		c.BatchMaxDevices = 100
	})
	stop := e.start(cfg)
	e.waitCount(status.Accepted, 300, 30*time.Second)
	require.NoError(t, stop(), "a stop in the middle returns cleanly")
	e.start(cfg)
	e.waitCount(status.Accepted, n, 60*time.Second)

	submitted := map[string]int{}
	for _, c := range e.sim.Calls() {
		if c.Action == "enable" && c.Status == 200 {
			for _, ids := range c.Devices {
				for _, id := range ids {
					if id.Kind == "iccid" {
						submitted[id.ID]++
					}
				}
			}
		}
	}
	twice := 0
	for _, k := range submitted {
		if k > 1 {
			twice++
		}
	}
	require.Len(t, submitted, n)
	t.Logf("devices submitted twice after a graceful stop: %d of %d", twice, n)
	require.Zero(t, twice, "a graceful stop finishes or hands back; nothing is sent twice")
	accepted := map[string]bool{}
	for _, ev := range e.snapshot() {
		if ev.Status == status.Accepted {
			accepted[ev.CommandID] = true
		}
	}
	require.Len(t, accepted, n, "every command ends accepted")
}

// A call that fails is tried again in place; the commands behind it that
// name the same devices must not reach ThingSpace first (the contract: one
// device's commands in publish order).
func TestADeviceKeepsItsOrderWhenItsCallsFailAndAreTriedAgain(t *testing.T) {
	e := newEnv(t, simulator.Faults{ErrorShare: 0.3})
	e.watch()
	steps := []string{"enable", "disable", "enable", "disable"}
	const devices = 8
	for si, action := range steps {
		for d := range devices {
			e.publish(action, enableBody(fmt.Sprintf("order-%d-%d", si, d), d), "")
		}
	}
	e.start(e.config(func(c *dispatch.Config) {
		c.BatchMaxDevices = 4
		c.RetryMaxWait = 200 * time.Millisecond
	}))
	e.waitCount(status.Accepted, len(steps)*devices, 2*time.Minute)

	seen := map[string][]string{}
	failed := 0
	for _, c := range e.sim.Calls() {
		if !strings.Contains(c.Path, "/profile/actions/") {
			continue
		}
		if c.Status != 200 {
			failed++
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
	require.Positive(t, failed, "some calls failed and were tried again")
	for d := range devices {
		require.Equal(t, steps, seen[iccid(d)], "device %d keeps its order", d)
	}
	require.Eventually(t, func() bool { return e.unacked() == 0 }, 10*time.Second, 20*time.Millisecond)
}

// A dispatcher that takes over while a command another one took is still
// out (not acknowledged, its ack wait not over: a dispatcher killed, or a
// hand-back lost with a NATS node) sends that device's later commands only
// after it; other devices do not wait.
func TestATakeoverSendsNothingBeforeTheCommandsStillOut(t *testing.T) {
	e := newEnv(t, simulator.Faults{})
	e.watch()
	cfg := e.config(func(c *dispatch.Config) { c.AckWait = 3 * time.Second })
	require.NoError(t, e.start(cfg)()) // creates the consumer, then leaves
	ctx := context.Background()

	// The "other dispatcher" takes the first command and vanishes with it.
	e.publish("enable", enableBody("out-enable", 1), "")
	cons, err := e.js.Consumer(ctx, broker.CommandStream, broker.DispatcherConsumer)
	require.NoError(t, err)
	got, err := cons.Fetch(1, jetstream.FetchPriorityGroup(dispatch.PriorityGroup), jetstream.FetchMaxWait(5*time.Second))
	require.NoError(t, err)
	n := 0
	for range got.Messages() {
		n++
	}
	require.Equal(t, 1, n)
	st, err := e.js.Stream(ctx, broker.CommandStream)
	require.NoError(t, err)
	require.NoError(t, st.UnpinConsumer(ctx, broker.DispatcherConsumer, dispatch.PriorityGroup))

	e.publish("disable", enableBody("later-disable", 1), "")
	e.publish("enable", enableBody("other-enable", 2), "")
	e.start(cfg)
	e.waitCount(status.Accepted, 3, 30*time.Second)

	seen := map[string][]string{}
	at := map[string]time.Time{}
	for _, c := range e.sim.Calls() {
		if c.Status != 200 || !strings.Contains(c.Path, "/profile/actions/") {
			continue
		}
		for _, ids := range c.Devices {
			for _, id := range ids {
				if id.Kind == "iccid" {
					seen[id.ID] = append(seen[id.ID], c.Action)
					if _, ok := at[id.ID]; !ok {
						at[id.ID] = c.At
					}
				}
			}
		}
	}
	require.Equal(t, []string{"enable", "disable"}, seen[iccid(1)], "device 1's disable waited for its enable")
	require.True(t, at[iccid(2)].Before(at[iccid(1)]), "device 2 did not wait for device 1's command")
	require.Eventually(t, func() bool { return e.unacked() == 0 }, 10*time.Second, 20*time.Millisecond)
}
