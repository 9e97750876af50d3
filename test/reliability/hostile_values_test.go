package reliability_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/pipelinetest"
	"github.com/esim-pipeline/thingspace-esim/internal/simulator"
)

// natsClients lists the client connections nats-server holds, by name, as
// its monitoring endpoint shows them: a connection that dropped and came
// back has a new id.
func natsClients(t *testing.T, n *pipelinetest.NATSProcess) map[string][]uint64 {
	t.Helper()
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(n.MonitorURL() + "/connz?limit=1024")
	require.NoError(t, err)
	defer resp.Body.Close()
	var cz struct {
		Connections []struct {
			Cid  uint64 `json:"cid"`
			Name string `json:"name"`
		} `json:"connections"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&cz))
	out := map[string][]uint64{}
	for _, c := range cz.Connections {
		out[c.Name] = append(out[c.Name], c.Cid)
	}
	for _, ids := range out {
		sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	}
	return out
}

// hostileValues are the values no subject token, KV key or header may be
// built from unchecked: 5,000 characters with what NATS gives a meaning to.
var hostileValues = map[string]string{
	"dots":         strings.Repeat("a.", 2500),
	"wildcards":    strings.Repeat("*>", 2500),
	"spaces":       strings.Repeat("a ", 2500),
	"nul":          strings.Repeat("a\x00", 2500),
	"all_of_them":  strings.Repeat(".*> \x00", 1000),
	"long_digits":  strings.Repeat("7", 5000),
	"crlf_headers": strings.Repeat("a\r\nNats-Msg-Id: x\r\n", 250),
}

// TestHostileValuesCostNoConnection sends the ingest callbacks and the
// dispatcher commands whose requestIds, device ids, commandIds and account
// names are 5,000 characters of dots, wildcards, spaces and NULs. Each
// callback is answered 400 and dead-lettered; each command's devices are
// rejected (or the command dead-lettered); both services keep the NATS
// connections they started with; and a valid command sent after each
// hostile input still reaches its final event within seconds.
func TestHostileValuesCostNoConnection(t *testing.T) {
	ns := bins.StartNATS(t)
	_, js := connect(t, ns.URL())
	ensureStreams(t, js, 1)
	s := startSim(t, simulator.Config{Faults: simulator.Faults{RatePerMinute: -1, CallbackDelay: 20 * time.Millisecond}})
	ing := newIngest(t, ns.URL(), nil)
	ing.Start()
	d := newDispatcher(t, ns.URL(), s.URL, ing.CallbackURL(), map[string]string{"BATCH_MAX_WAIT": "50ms"})
	d.Start()
	events := watchEvents(t, js, true)
	before := natsClients(t, ns)
	for _, name := range []string{"callback-ingest", "callback-ingest-fanout", "esim-dispatcher"} {
		require.Len(t, before[name], 1, "the %s connection", name)
	}

	valid := 0
	validTraffic := func(t *testing.T) {
		t.Helper()
		valid++
		start := time.Now()
		ids := publishFor(t, js, account, 900+valid, 1)
		waitFinal(t, events, ids, 20*time.Second)
		require.Less(t, time.Since(start), 15*time.Second)
	}
	validTraffic(t)

	c := &http.Client{Timeout: 10 * time.Second}
	dead := func() uint64 { return streamMsgs(t, js, broker.DeadLetterStream) }
	names := make([]string, 0, len(hostileValues))
	for n := range hostileValues {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		v := hostileValues[name]
		for _, cb := range []struct{ what, body string }{
			{"request_id", fmt.Sprintf(`{"requestId":%q,"status":"Success","deviceIds":[{"kind":"iccid","id":"89148000000000000001"}]}`, v)},
			{"iccid", fmt.Sprintf(`{"requestId":"hostile-iccid","status":"Success","deviceIds":[{"kind":"iccid","id":%q}]}`, v)},
			{"eid", fmt.Sprintf(`{"requestId":"hostile-eid","status":"Failed","deviceIds":[{"kind":"eid","id":%q}]}`, v)},
		} {
			t.Run("callback_"+cb.what+"_"+name, func(t *testing.T) {
				dl := dead()
				require.Equal(t, http.StatusBadRequest, postCallback(c, ing.CallbackURL(), []byte(cb.body)))
				require.Equal(t, dl+1, dead(), "one dead letter")
			})
		}
		for _, cmd := range []struct{ what, body string }{
			{"command_id", string(enableCommand(v, account, 950, len(name)))},
			{"account_name", string(enableCommand("hostile-account-"+name, v, 951, len(name)))},
			{"device_id", fmt.Sprintf(`{"commandId":"hostile-device-%s","accountName":%q,"smsrOid":%q,"devices":[{"deviceIds":[{"kind":"eid","id":%q},{"kind":"iccid","id":%q}]}]}`,
				name, account, smsrOid, eid(952, len(name)), v)},
		} {
			t.Run("command_"+cmd.what+"_"+name, func(t *testing.T) {
				dl := dead()
				_, err := js.Publish(context.Background(), "thingspace.profile.commands.enable", []byte(cmd.body))
				require.NoError(t, err)
				// Its device is rejected, or the command is kept as a dead letter.
				dev := ""
				switch cmd.what {
				case "command_id":
					dev = iccid(950, len(name))
				case "account_name":
					dev = iccid(951, len(name))
				}
				require.Eventually(t, func() bool {
					if dead() > dl {
						return true
					}
					if dev == "" {
						return events.ofCommand("hostile-device-"+name) > 0
					}
					return len(events.missingFinal([]string{dev})) == 0
				}, 20*time.Second, 50*time.Millisecond, "the hostile command never came to an end")
				if cmd.what == "account_name" && dead() == dl {
					require.Positive(t, events.statusOf(dev, "rejected"), "an account name of %s is rejected", name)
				}
			})
		}
		validTraffic(t)
	}
	// A message id header of 5,000 characters, and a Callback-Batch header
	// claiming a billion callbacks on the raw subject.
	m := nats.NewMsg("thingspace.profile.commands.enable")
	m.Header.Set(nats.MsgIdHdr, hostileValues["all_of_them"])
	m.Data = enableCommand("hostile-msg-id", account, 953, 1)
	_, err := js.PublishMsg(context.Background(), m)
	require.NoError(t, err)
	waitFinal(t, events, []string{iccid(953, 1)}, 20*time.Second)
	raw := nats.NewMsg(broker.CallbackSubject)
	raw.Header.Set("Callback-Batch", "1000000000")
	raw.Data = []byte{1, 'x', 1, 'y', 2, '{', '}'}
	dl := dead()
	_, err = js.PublishMsg(context.Background(), raw)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return dead() > dl }, 20*time.Second, 50*time.Millisecond, "the batch is dead-lettered")
	validTraffic(t)

	after := natsClients(t, ns)
	for _, name := range []string{"callback-ingest", "callback-ingest-fanout", "esim-dispatcher"} {
		require.Equal(t, before[name], after[name], "the %s connection dropped: a new client id", name)
	}
	for _, p := range []*pipelinetest.Process{ing.Process, d.Process} {
		require.NotContains(t, p.Log(), "nats disconnected", p.Name)
		require.NotContains(t, p.Log(), "nats reconnected", p.Name)
		require.NotContains(t, p.Log(), "maximum control line", p.Name)
	}
	require.False(t, ing.Exited() || d.Exited(), "a service died")
	t.Logf("FIGURE hostile values: %d hostile callbacks answered 400, %d hostile commands ended, %d valid commands final in between; "+
		"connections kept: ingest %v, fan-out %v, dispatcher %v",
		3*len(names), 3*len(names)+1, valid, after["callback-ingest"], after["callback-ingest-fanout"], after["esim-dispatcher"])
}

// ofCommand counts the events of one commandId (the tally must keep events).
func (tl *tally) ofCommand(id string) int {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	n := 0
	for _, ev := range tl.events {
		if ev.CommandID == id {
			n++
		}
	}
	return n
}

// statusOf counts a device's events of one status.
func (tl *tally) statusOf(dev, st string) int {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	return tl.statuses[dev][st]
}
