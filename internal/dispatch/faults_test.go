package dispatch_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/dispatch"
	"github.com/esim-pipeline/thingspace-esim/internal/simulator"
	"github.com/esim-pipeline/thingspace-esim/internal/status"
)

// The tests of this file each reproduce one fault of issue 19 that the
// dispatcher once had; each failed on the code of that time.

// answer writes a ThingSpace error body.
func answer(w http.ResponseWriter, code int, body string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(body))
}

// outcomeFor waits until device n has a final event or an accepted one.
func (e *env) outcomeFor(n int, within time.Duration) status.Event {
	e.t.Helper()
	var got status.Event
	require.Eventually(e.t, func() bool {
		for _, ev := range e.snapshot() {
			if ev.Device.ICCID == iccid(n) && (ev.Final || ev.Status == status.Accepted) {
				got = ev
				return true
			}
		}
		return false
	}, within, 20*time.Millisecond, "device %d never got an outcome", n)
	return got
}

// sentOptions lists, per ICCID, the smsrOid of each successful call that
// carried it, in call order: which command reached ThingSpace when.
func (e *env) sentOptions() map[string][]string {
	out := map[string][]string{}
	for _, c := range e.sim.Calls() {
		if c.Status != 200 || !strings.Contains(c.Path, "/profile/actions/") {
			continue
		}
		var b struct {
			SmsrOid string `json:"smsrOid"`
		}
		_ = json.Unmarshal(c.Body, &b)
		for _, ids := range c.Devices {
			for _, id := range ids {
				if id.Kind == "iccid" {
					out[id.ID] = append(out[id.ID], b.SmsrOid)
				}
			}
		}
	}
	return out
}

func (e *env) deadLetters() []jetstream.RawStreamMsg {
	e.t.Helper()
	ctx := context.Background()
	st, err := e.js.Stream(ctx, broker.DeadLetterStream)
	require.NoError(e.t, err)
	info, err := st.Info(ctx)
	require.NoError(e.t, err)
	var out []jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		if m, err := st.GetMsg(ctx, seq); err == nil {
			out = append(out, *m)
		}
	}
	return out
}

// Issue 19.2: nats-server drops a message naked on its last delivery; a
// stop that handed back a held command on its last delivery lost it.
func TestACommandOnItsLastDeliveryIsNeverLostAtAStop(t *testing.T) {
	t.Parallel()
	e := newEnv(t, simulator.Faults{})
	e.watch()
	slow := e.config(func(c *dispatch.Config) {
		c.MaxDeliver = 2
		c.BatchMaxWait = 20 * time.Second // the command waits in its batch until the stop
		c.AckWait = time.Minute
	})
	require.NoError(t, e.start(slow)()) // creates the consumer
	ctx := context.Background()
	e.publish("enable", enableBody("last-delivery", 1), "")

	// Its first delivery goes to "someone else", who hands it back.
	cons, err := e.js.Consumer(ctx, broker.CommandStream, broker.DispatcherConsumer)
	require.NoError(t, err)
	got, err := cons.Fetch(1, jetstream.FetchPriorityGroup(dispatch.PriorityGroup), jetstream.FetchMaxWait(10*time.Second))
	require.NoError(t, err)
	for m := range got.Messages() {
		require.NoError(t, m.Nak())
	}
	st, err := e.js.Stream(ctx, broker.CommandStream)
	require.NoError(t, err)
	require.NoError(t, st.UnpinConsumer(ctx, broker.DispatcherConsumer, dispatch.PriorityGroup))

	// The second delivery, the last one allowed, is held when the stop comes.
	stop := e.start(slow)
	require.Eventually(t, func() bool {
		info, err := cons.Info(ctx)
		return err == nil && info.NumAckPending == 1 && info.NumRedelivered == 1
	}, 20*time.Second, 20*time.Millisecond)
	require.NoError(t, stop())

	e.start(e.config(func(c *dispatch.Config) { c.MaxDeliver = 2 }))
	ev := e.outcomeFor(1, 30*time.Second)
	t.Logf("the command ended %s", ev.Status)
	if ev.Status == status.Failed {
		require.Eventually(t, func() bool { return len(e.deadLetters()) == 1 }, 10*time.Second, 20*time.Millisecond,
			"a command that ran out of deliveries is dead-lettered")
	}
}

// Issue 19.3: a command whose call failed was handed back whole; its device
// already sent in another call went again on the redelivery, behind a
// later command of that device.
func TestACommandWhoseCallFailsDoesNotComeBackBehindALaterOne(t *testing.T) {
	t.Parallel()
	e := newEnv(t, simulator.Faults{})
	e.watch()
	var failed atomic.Bool
	e.intercept(func(w http.ResponseWriter, r *http.Request, body []byte) bool {
		if isAction(r) && strings.Contains(string(body), iccid(1)) && failed.CompareAndSwap(false, true) {
			answer(w, http.StatusInternalServerError, `{"errorCode":"DeviceService.REQUEST_FAILED.UnexpectedError","errorMessage":"try later"}`)
			return true
		}
		return false
	})
	first := enableSmsrBody("first", "1.1", devicesOf(1, 2))
	later := enableSmsrBody("later", "2.2", devicesOf(2))
	e.publish("enable", first, "")
	e.publish("enable", later, "")
	e.start(e.config(func(c *dispatch.Config) {
		c.BatchMaxDevices = 1
		c.MaxAttempts = 1
		c.MaxDeliver = 100
	}))
	e.outcomeFor(1, 30*time.Second)
	require.Eventually(t, func() bool { return e.unacked() == 0 }, 30*time.Second, 20*time.Millisecond)
	require.Equal(t, []string{"1.1", "2.2"}, e.sentOptions()[iccid(2)], "device 2: the first command, then the later one, once each")
}

// Issue 19.4: a stop during a deadline check made the cancelled request
// status call read as a refusal, and every open device timed out.
func TestAStopDuringADeadlineCheckWritesNoTimedOut(t *testing.T) {
	t.Parallel()
	e := newEnv(t, simulator.Faults{})
	e.watch()
	asked := make(chan struct{}, 1)
	e.intercept(func(w http.ResponseWriter, r *http.Request, body []byte) bool {
		if !strings.Contains(r.URL.Path, "/requests/") {
			return false
		}
		select {
		case asked <- struct{}{}:
		default:
		}
		<-r.Context().Done() // ThingSpace does not answer before the stop
		return true
	})
	stop := e.start(e.config(func(c *dispatch.Config) { c.CallbackDeadline = time.Second }))
	e.publish("enable", enableBody("deadline", 1, 2, 3), "")
	e.waitCount(status.Accepted, 3, 20*time.Second)
	select {
	case <-asked:
	case <-time.After(30 * time.Second):
		t.Fatal("the deadline was never checked")
	}
	require.NoError(t, stop())
	require.Never(t, func() bool { return e.count(status.TimedOut) > 0 }, 2*time.Second, 50*time.Millisecond,
		"a stop is not ThingSpace's answer: nothing times out")
}

// Issue 19.5: a failed callback registration was the batch's result: a 5xx
// cost its commands a delivery, a 400 rejected every device.
func TestACallbackRegistrationErrorIsRetriedAndCostsNoDelivery(t *testing.T) {
	t.Parallel()
	e := newEnv(t, simulator.Faults{})
	e.watch()
	var refused atomic.Int32
	e.intercept(func(w http.ResponseWriter, r *http.Request, body []byte) bool {
		if r.Method == http.MethodPost && strings.Contains(r.URL.Path, "/callbacks/") && refused.Add(1) <= 2 {
			answer(w, http.StatusServiceUnavailable, `{"errorCode":"REQUEST_FAILED.UnexpectedError","errorMessage":"busy"}`)
			return true
		}
		return false
	})
	e.start(e.config(func(c *dispatch.Config) { c.CallbackURL = "https://ingest.example.com/callbacks" }))
	e.publish("enable", enableBody("register", 1), "")
	require.Equal(t, status.Accepted, e.outcomeFor(1, 30*time.Second).Status)
	require.Eventually(t, func() bool { return e.unacked() == 0 }, 10*time.Second, 20*time.Millisecond)
	cons, err := e.js.Consumer(context.Background(), broker.CommandStream, broker.DispatcherConsumer)
	require.NoError(t, err)
	info, err := cons.Info(context.Background())
	require.NoError(t, err)
	require.Equal(t, uint64(1), info.Delivered.Consumer, "the command was delivered once")
	require.Len(t, e.sim.Listeners("0000123456-00001"), 1, "the listener got registered in the end")
}

func TestARefusedRegistrationDoesNotRejectTheDevices(t *testing.T) {
	t.Parallel()
	e := newEnv(t, simulator.Faults{})
	e.watch()
	e.intercept(func(w http.ResponseWriter, r *http.Request, body []byte) bool {
		if r.Method == http.MethodPost && strings.Contains(r.URL.Path, "/callbacks/") {
			answer(w, http.StatusBadRequest, `{"errorCode":"DeviceService.INPUT_INVALID.Url.Invalid","errorMessage":"port not allowed"}`)
			return true
		}
		return false
	})
	e.start(e.config(func(c *dispatch.Config) { c.CallbackURL = "https://ingest.example.com:1234/callbacks" }))
	e.publish("enable", enableBody("refused-url", 1, 2), "")
	require.Equal(t, status.Accepted, e.outcomeFor(1, 30*time.Second).Status, "the call goes without a listener")
	require.Equal(t, status.Accepted, e.outcomeFor(2, 30*time.Second).Status)
	require.Zero(t, e.count(status.Rejected))
}

// Issue 19.6: an account-level refusal was taken for a device one and the
// batch was bisected down to single devices.
func TestAnAccountRefusalIsOneCallNotABisection(t *testing.T) {
	t.Parallel()
	e := newEnv(t, simulator.Faults{})
	e.watch()
	var calls atomic.Int32
	e.intercept(func(w http.ResponseWriter, r *http.Request, body []byte) bool {
		if !isAction(r) {
			return false
		}
		calls.Add(1)
		answer(w, http.StatusBadRequest, `{"errorCode":"DeviceService.INPUT_INVALID.Device.Account.Invalid","errorMessage":"Account is invalid"}`)
		return true
	})
	ns := make([]int, 64)
	for i := range ns {
		ns[i] = i
	}
	e.start(e.config(nil))
	e.publish("enable", enableBody("bad-account", ns...), "")
	e.waitCount(status.Rejected, 64, 30*time.Second)
	for _, ev := range e.snapshot() {
		require.Equal(t, "INPUT_INVALID.Device.Account.Invalid", ev.Reason.Code, "the code without its service prefix")
	}
	require.Equal(t, int32(1), calls.Load(), "one call: the refusal is the account's, the same for every device")
}

// Issue 19.7: a 5xx's Retry-After was obeyed whatever it said.
func TestARetryAfterOnA5xxIsCapped(t *testing.T) {
	t.Parallel()
	e := newEnv(t, simulator.Faults{})
	e.watch()
	var once atomic.Bool
	e.intercept(func(w http.ResponseWriter, r *http.Request, body []byte) bool {
		if isAction(r) && once.CompareAndSwap(false, true) {
			w.Header().Set("Retry-After", "3600")
			answer(w, http.StatusServiceUnavailable, `{"errorCode":"REQUEST_FAILED.UnexpectedError","errorMessage":"maintenance"}`)
			return true
		}
		return false
	})
	e.start(e.config(nil))
	e.publish("enable", enableBody("retry-after", 1), "")
	require.Equal(t, status.Accepted, e.outcomeFor(1, 45*time.Second).Status, "the hour-long Retry-After is capped")
}

// Issue 19.8: what the dispatcher holds was bounded in messages only; wide
// commands made it hold millions of devices.
func TestWhatIsHeldIsBoundedInDevices(t *testing.T) {
	t.Parallel()
	e := newEnv(t, simulator.Faults{})
	release := make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	e.intercept(func(w http.ResponseWriter, r *http.Request, body []byte) bool {
		if isAction(r) {
			select { // ThingSpace hangs: everything taken in stays held
			case <-release:
			case <-r.Context().Done():
			}
		}
		return false
	})
	require.NoError(t, broker.Ensure(context.Background(), e.js, broker.StreamSettings{}))
	const commands, wide = 20, 1000
	for c := range commands {
		ns := make([]int, wide)
		for i := range ns {
			ns[i] = c*wide + i
		}
		e.publish("enable", enableBody("wide-"+strconv.Itoa(c), ns...), "")
	}
	e.start(e.config(func(c *dispatch.Config) { c.BatchMaxDevices = wide }))
	cons, err := e.js.Consumer(context.Background(), broker.CommandStream, broker.DispatcherConsumer)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		info, err := cons.Info(context.Background())
		return err == nil && info.NumAckPending > 0
	}, 20*time.Second, 20*time.Millisecond)
	// Give the intake every chance to take more than it may.
	require.Never(t, func() bool {
		info, err := cons.Info(context.Background())
		return err == nil && info.NumAckPending > 4
	}, 3*time.Second, 50*time.Millisecond, "at most the default 3 batches' worth of devices (3,000) and one command more are held")
	once.Do(func() { close(release) })
}

// Issue 19.9: a stop with NATS away never ended: the outcome of the call in
// flight was stored "until the work context ends", which only the end of
// the stop cancelled.
func TestAStopWithNATSAwayStillEnds(t *testing.T) {
	t.Parallel()
	e := newEnv(t, simulator.Faults{})
	inCall := make(chan struct{}, 1)
	release := make(chan struct{})
	e.intercept(func(w http.ResponseWriter, r *http.Request, body []byte) bool {
		if isAction(r) {
			select {
			case inCall <- struct{}{}:
			default:
			}
			<-release
		}
		return false
	})
	stop := e.start(e.config(nil))
	e.publish("enable", enableBody("nats-away", 1), "")
	select {
	case <-inCall:
	case <-time.After(20 * time.Second):
		t.Fatal("no call")
	}
	e.ns.Shutdown()
	close(release)
	stopped := make(chan error, 1)
	go func() { stopped <- stop() }()
	select {
	case err := <-stopped:
		require.NoError(t, err)
	case <-time.After(45 * time.Second):
		t.Fatal("the stop did not end while NATS was away")
	}
}

// Issue 19.11: a final callback that found no record went to the unknown
// action's subject, and the deadline check then timed the device out on its
// action's subject although ThingSpace had said it succeeded.
func TestADeadlineDoesNotTimeOutADeviceWhoseCallbackFoundNoRecord(t *testing.T) {
	t.Parallel()
	e := newEnv(t, simulator.Faults{StuckShare: 1}) // the request status never settles it
	e.watch()
	e.start(e.config(func(c *dispatch.Config) { c.CallbackDeadline = 3 * time.Second }))
	e.publish("enable", enableBody("lost-record", 1), "")
	accepted := e.outcomeFor(1, 20*time.Second)
	require.Equal(t, status.Accepted, accepted.Status)
	// What the ingest stores for a callback whose record it did not find.
	lost := status.Event{EventID: "lost-1", RequestID: accepted.RequestID, Action: status.UnknownAction, AccountName: accepted.AccountName,
		Device: accepted.Device, Status: status.Succeeded, Final: true, OccurredAt: time.Now().UTC()}
	m := nats.NewMsg(lost.Subject())
	m.Data = lost.AppendJSON(nil)
	_, err := e.js.PublishMsg(context.Background(), m)
	require.NoError(t, err)
	require.Never(t, func() bool { return e.count(status.TimedOut) > 0 }, 8*time.Second, 50*time.Millisecond,
		"the device succeeded; the deadline leaves it alone")
}
