package dispatch_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/command"
	"github.com/esim-pipeline/thingspace-esim/internal/device"
	"github.com/esim-pipeline/thingspace-esim/internal/dispatch"
	"github.com/esim-pipeline/thingspace-esim/internal/natstest"
	"github.com/esim-pipeline/thingspace-esim/internal/pipelinetest"
	"github.com/esim-pipeline/thingspace-esim/internal/simulator"
	"github.com/esim-pipeline/thingspace-esim/internal/status"
)

// env is one pipelinetest stack (NATS and the simulator, no services),
// shared by the dispatchers a test starts, and the status events seen.
type env struct {
	*pipelinetest.Stack
	t   *testing.T
	ns  *natstest.Server
	nc  *nats.Conn
	js  jetstream.JetStream
	sim *simulator.Server

	mu     sync.Mutex
	events []status.Event
	front  func(w http.ResponseWriter, r *http.Request, body []byte) bool
}

func newEnv(t *testing.T, faults simulator.Faults, opts ...pipelinetest.Option) *env {
	t.Helper()
	if faults.RatePerMinute == 0 {
		faults.RatePerMinute = -1
	}
	e := &env{t: t}
	e.Stack = pipelinetest.Start(t, append([]pipelinetest.Option{
		pipelinetest.WithSimulator(simulator.Config{Faults: faults, Seed: 7}),
		pipelinetest.WithFront(e.inFront),
		pipelinetest.WithoutIngest(), pipelinetest.WithoutDispatcher(),
	}, opts...)...)
	e.ns, e.nc, e.js, e.sim = e.NATS, e.NC, e.JS, e.Sim.Server
	return e
}

// inFront passes a request to the function intercept set, and to next
// unless it answered.
func (e *env) inFront(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.mu.Lock()
		front := e.front
		e.mu.Unlock()
		if front != nil {
			body, _ := io.ReadAll(r.Body)
			if front(w, r, body) {
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
		}
		next.ServeHTTP(w, r)
	})
}

// intercept puts f in front of the simulator: a request f answers (it
// returns true) never reaches it. ThingSpace is the one part a test may
// fake, and only where the simulator has no knob for the fault.
func (e *env) intercept(f func(w http.ResponseWriter, r *http.Request, body []byte) bool) {
	e.mu.Lock()
	e.front = f
	e.mu.Unlock()
}

// isAction reports a profile-action call.
func isAction(r *http.Request) bool { return strings.Contains(r.URL.Path, "/profile/actions/") }

// config is the stack's dispatcher configuration (no rate limit, no
// callback URL) changed by mut.
func (e *env) config(mut func(*dispatch.Config)) dispatch.Config { return e.DispatcherConfig(mut) }

// start runs a dispatcher until the returned stop is called; stop waits for
// Run to return and hands back its error.
func (e *env) start(cfg dispatch.Config) (stop func() error) {
	e.t.Helper()
	stop, _ = e.startService(cfg)
	return stop
}

// startService is start, also handing back the service.
func (e *env) startService(cfg dispatch.Config, opts ...dispatch.Option) (stop func() error, svc *dispatch.Service) {
	e.t.Helper()
	d := e.StartDispatcher(func(c *dispatch.Config) { *c = cfg }, opts...)
	return d.Stop, d.Service
}

// watch collects every status event from now on.
func (e *env) watch() {
	e.t.Helper()
	cons, err := e.js.OrderedConsumer(context.Background(), broker.StatusStream, jetstream.OrderedConsumerConfig{})
	require.NoError(e.t, err)
	cc, err := cons.Consume(func(m jetstream.Msg) {
		var ev status.Event
		if err := json.Unmarshal(m.Data(), &ev); err != nil {
			e.t.Errorf("undecodable event: %v", err)
			return
		}
		e.mu.Lock()
		e.events = append(e.events, ev)
		e.mu.Unlock()
	})
	require.NoError(e.t, err)
	e.t.Cleanup(cc.Stop)
}

func (e *env) snapshot() []status.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]status.Event(nil), e.events...)
}

// count counts events with status st.
func (e *env) count(st status.Status) int {
	n := 0
	for _, ev := range e.snapshot() {
		if ev.Status == st {
			n++
		}
	}
	return n
}

// waitCount waits until n events of st exist.
func (e *env) waitCount(st status.Status, n int, within time.Duration) {
	e.t.Helper()
	require.Eventually(e.t, func() bool { return e.count(st) >= n }, within, 20*time.Millisecond,
		"want %d %s events", n, st)
}

// publish sends a command body on the action's subject, with an optional
// Nats-Msg-Id.
func (e *env) publish(action string, body any, msgID string) {
	e.t.Helper()
	b, ok := body.([]byte)
	if !ok {
		var err error
		b, err = json.Marshal(body)
		require.NoError(e.t, err)
	}
	m := nats.NewMsg("thingspace.profile.commands." + action)
	m.Data = b
	if msgID != "" {
		m.Header.Set(nats.MsgIdHdr, msgID)
	}
	_, err := e.js.PublishMsg(context.Background(), m)
	// A slow cluster may answer after the client gave up: with a message
	// id, sending again is safe (the stream keeps one), as a producer would.
	for try := 0; msgID != "" && try < 3 && isTimeout(err); try++ {
		_, err = e.js.PublishMsg(context.Background(), m)
	}
	require.NoError(e.t, err)
}

func isTimeout(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout)
}

// pending counts commands in the command stream not yet acknowledged.
func (e *env) unacked() int {
	e.t.Helper()
	c, err := e.js.Consumer(context.Background(), broker.CommandStream, broker.DispatcherConsumer)
	require.NoError(e.t, err)
	info, err := c.Info(context.Background())
	require.NoError(e.t, err)
	return int(info.NumPending) + info.NumAckPending
}

func iccid(n int) string { return fmt.Sprintf("8914800000%010d", n) }
func eid(n int) string   { return fmt.Sprintf("8904903200%022d", n) }

const testSmsr = "1.3.6.1.4.1.31746.1.500.200.101.5"

// devicesOf are the devices numbered ns, with their EIDs and ICCIDs.
func devicesOf(ns ...int) []device.Set {
	out := make([]device.Set, len(ns))
	for i, n := range ns {
		out[i] = device.Set{EID: eid(n), ICCID: iccid(n)}
	}
	return out
}

// enableSmsrBody is an enable/disable/delete command of smsrOid smsr.
func enableSmsrBody(id, smsr string, devs []device.Set) []byte {
	b, err := command.Encode(command.Enable, id, "0000123456-00001", command.Options{SmsrOid: smsr}, devs)
	if err != nil {
		panic(err)
	}
	return b
}

// enableBody is an enable/disable/delete command for devices numbered ns.
func enableBody(id string, ns ...int) []byte { return enableSmsrBody(id, testSmsr, devicesOf(ns...)) }
