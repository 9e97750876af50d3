package reliability_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/simulator"
)

// TestDispatcherKilledAtScaleRecoversQuickly is issue 19's scene: 50,000
// one-device enables, THINGSPACE_RATE=10, 1,000-device batches, callbacks
// on; SIGKILL of the dispatcher once about 9,500 devices were accepted, a
// new one started at once, with the production ACK_WAIT and PINNED_TTL.
// Every device ends final, the next ThingSpace call comes within 10 s of
// the kill and every device is final within ACK_WAIT + 20 s; the figures
// also give the devices submitted a second after recovery against before
// (goal 0.9, reported, not asserted).
func TestDispatcherKilledAtScaleRecoversQuickly(t *testing.T) {
	if testing.Short() {
		t.Skip("50,000 commands")
	}
	const n, batch = 50_000, 1000
	const ackWait = 30 * time.Second
	p := startPipeline(t, simulator.Config{
		ResendInterval: time.Second,
		Faults:         simulator.Faults{Latency: 20 * time.Millisecond, RatePerMinute: -1, CallbackDelay: 50 * time.Millisecond},
	}, nil, map[string]string{
		"THINGSPACE_RATE": "10", "BATCH_MAX_DEVICES": fmt.Sprint(batch), "BATCH_MAX_WAIT": "200ms",
		"ACK_WAIT": ackWait.String(), "PINNED_TTL": "5s",
	})
	_, js := connect(t, p.nats.URL())
	ids := publishCommands(t, js, 11, n)

	p.disp.Start()
	require.Eventually(t, func() bool { return p.events.countAccepted() >= 9500 }, 2*time.Minute, time.Millisecond)
	p.disp.Kill()
	killedAt := time.Now()
	atKill := p.events.countAccepted()
	p.disp.Start()
	waitFinal(t, p.events, ids, ackWait+2*time.Minute)
	allFinal := time.Since(killedAt)

	calls := actionCalls(p.sim.Calls())
	require.NotEmpty(t, calls)
	var before, after []simulator.Call
	for _, c := range calls {
		if c.At.Before(killedAt) {
			before = append(before, c)
		} else {
			after = append(after, c)
		}
	}
	require.NotEmpty(t, after, "calls after the kill")
	nextCall := after[0].At.Sub(killedAt)
	rateBefore := devicesPerSecond(before)
	// After: from the first call after the kill over as long a spell as
	// before (3 s at least, for a steadier figure), while the backlog lasts
	// (the commands the dead one held come back only after its ack wait).
	span := max(before[len(before)-1].At.Sub(before[0].At), 3*time.Second)
	var spell []simulator.Call
	for _, c := range after {
		if c.At.Sub(after[0].At) <= span {
			spell = append(spell, c)
		}
	}
	rateAfter := devicesPerSecond(spell)
	subs := submissions(p.sim.Calls())
	twice := 0
	for _, id := range ids {
		require.GreaterOrEqual(t, subs[id], 1, "device %s never reached ThingSpace", id)
		if subs[id] > 1 {
			twice++
		}
	}
	t.Logf("FIGURE dispatcher kill -9 at scale: %d commands, %d devices accepted before the kill; next ThingSpace call %s after the kill "+
		"(goal 10s); every device final %s after the kill (goal %s); %.0f devices/s before, %.0f after (%.2fx, goal 0.9); %d devices sent twice",
		n, atKill, nextCall.Round(time.Millisecond), allFinal.Round(time.Millisecond), ackWait+20*time.Second,
		rateBefore, rateAfter, rateAfter/rateBefore, twice)
	require.LessOrEqual(t, nextCall, 10*time.Second, "the next call within 10 s of the kill")
	require.LessOrEqual(t, allFinal, ackWait+20*time.Second, "every device final within ACK_WAIT + 20 s")
	// The rates are figures, not assertions: on a shared machine a second's
	// rate moves with everything else running (the guide: speed is for
	// make bench). The times above are the design's (PINNED_TTL, ACK_WAIT).
	checkCallbacks(t, p.sim, p.events)
}

// actionCalls are the accepted profile-action calls, in time order.
func actionCalls(calls []simulator.Call) []simulator.Call {
	var out []simulator.Call
	for _, c := range calls {
		if c.Action != "" && c.Status == http.StatusOK {
			out = append(out, c)
		}
	}
	slices.SortFunc(out, func(a, b simulator.Call) int { return a.At.Compare(b.At) })
	return out
}

// devicesPerSecond is the devices of calls over the time they span (from
// the first call to the last, plus one call's share).
func devicesPerSecond(calls []simulator.Call) float64 {
	if len(calls) < 2 {
		return 0
	}
	devices := 0
	for _, c := range calls[:len(calls)-1] {
		devices += c.DeviceCount
	}
	return float64(devices) / calls[len(calls)-1].At.Sub(calls[0].At).Seconds()
}

// TestDispatcherKilledInTheMiddleOfEachDevicesSteps gives each of 300
// devices an enable, a disable and an enable again (told apart by their
// smsrOid), behind and among other traffic, and kills the dispatcher with
// SIGKILL in the middle: from ThingSpace's own record, each device saw its
// three commands in publish order (a command may repeat at once, when its
// outcome was not stored before the kill; it never comes back after a later
// one).
func TestDispatcherKilledInTheMiddleOfEachDevicesSteps(t *testing.T) {
	const devices = 300
	p := startPipeline(t, simulator.Config{
		ResendInterval: time.Second,
		Faults:         simulator.Faults{Latency: 20 * time.Millisecond, RatePerMinute: -1, CallbackDelay: 50 * time.Millisecond},
	}, nil, map[string]string{"BATCH_MAX_DEVICES": "40", "THINGSPACE_RATE": "20"})
	_, js := connect(t, p.nats.URL())
	steps := []struct{ action, oid string }{{"enable", "1.1.1"}, {"disable", "2.2.2"}, {"enable", "3.3.3"}}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var ids []string
	for si, st := range steps {
		ids = append(ids, publishFor(t, js, account, 20+si, 500)...) // traffic around each step
		for d := range devices {
			id := fmt.Sprintf("step-%d-%d", si, d)
			body := fmt.Sprintf(`{"commandId":%q,"accountName":%q,"smsrOid":%q,"devices":[{"deviceIds":[{"kind":"eid","id":%q},{"kind":"iccid","id":%q}]}]}`,
				id, account, st.oid, eid(30, d), iccid(30, d))
			m := nats.NewMsg("thingspace.profile.commands." + st.action)
			m.Data = []byte(body)
			m.Header.Set(nats.MsgIdHdr, id)
			_, err := js.PublishMsg(ctx, m)
			require.NoError(t, err)
		}
	}
	p.disp.Start()
	require.Eventually(t, func() bool { return p.events.countAccepted() >= 1200 }, time.Minute, time.Millisecond)
	p.disp.Kill()
	p.disp.Start()
	waitFinal(t, p.events, ids, 2*time.Minute)
	want := []string{steps[0].oid, steps[1].oid, steps[2].oid}
	require.Eventually(t, func() bool {
		seen := sentOids(p.sim.Calls())
		for d := range devices {
			if !slices.Equal(slices.Compact(slices.Clone(seen[iccid(30, d)])), want) {
				return false
			}
		}
		return true
	}, 2*time.Minute, 100*time.Millisecond, "every device's three steps reach ThingSpace")
	seen := sentOids(p.sim.Calls())
	repeated := 0
	for d := range devices {
		got := seen[iccid(30, d)]
		require.Equal(t, want, slices.Compact(slices.Clone(got)), "device %d: steps in publish order (calls %v)", d, got)
		if len(got) > len(want) {
			repeated++
		}
	}
	t.Logf("FIGURE dispatcher kill -9 among each device's enable, disable, enable: %d devices in order; %d saw a step repeated at once", devices, repeated)
}

// sentOids lists per ICCID the smsrOid of each accepted call that named
// it, in call order.
func sentOids(calls []simulator.Call) map[string][]string {
	out := map[string][]string{}
	for _, c := range actionCalls(calls) {
		var b struct {
			SmsrOid string `json:"smsrOid"`
		}
		_ = json.Unmarshal(c.Body, &b)
		for _, ids := range c.Devices {
			for _, id := range ids {
				if strings.EqualFold(id.Kind, "iccid") {
					out[id.ID] = append(out[id.ID], b.SmsrOid)
				}
			}
		}
	}
	return out
}
