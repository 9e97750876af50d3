package reliability_test

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/pipelinetest"
	"github.com/esim-pipeline/thingspace-esim/internal/simulator"
	"github.com/esim-pipeline/thingspace-esim/internal/stack"
)

// pipeline is one NATS server process, the simulator, an ingest and a
// dispatcher, with the test's view of the status stream.
type pipeline struct {
	nats   *pipelinetest.NATSProcess
	sim    *stack.Simulator
	ingest *pipelinetest.Service
	disp   *pipelinetest.Service
	events *tally
}

func startPipeline(t *testing.T, simCfg simulator.Config, ingestEnv, dispEnv map[string]string) *pipeline {
	t.Helper()
	p := &pipeline{nats: bins.StartNATS(t)}
	_, js := connect(t, p.nats.URL())
	ensureStreams(t, js, 1)
	p.sim = startSim(t, simCfg)
	p.ingest = newIngest(t, p.nats.URL(), ingestEnv)
	p.ingest.Start()
	p.disp = newDispatcher(t, p.nats.URL(), p.sim.URL, p.ingest.CallbackURL(), dispEnv)
	p.events = watchEvents(t, js, false)
	// A device without its final event may be a callback ThingSpace gave up
	// on (the ingest away for all its attempts) or one lost inside: the
	// simulator's counts tell which.
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("simulator at the end: %+v", p.sim.Stats())
		}
	})
	return p
}

// checkCallbacks asserts that every callback the ingest answered 2xx
// became its event, and that no fact became two events.
func checkCallbacks(t *testing.T, s *stack.Simulator, tl *tally) (answered, unanswered int) {
	t.Helper()
	require.Eventually(t, func() bool { return s.Stats().CallbacksPending == 0 }, time.Minute, 50*time.Millisecond,
		"the simulator still has callbacks to send")
	// The fan-out runs behind the intake (and a callback whose requestId
	// record was never written waits CORRELATION_GRACE): poll.
	var missing []string
	deadline := time.Now().Add(time.Minute)
	for {
		answered, unanswered, missing = 0, 0, nil
		for _, d := range s.Deliveries() {
			switch {
			case d.Withheld || d.URL == "":
			case d.Answered:
				answered++
				if !tl.hasFact(d.RequestID, d.Device, eventStatus(d.Status)) {
					missing = append(missing, fmt.Sprintf("%s/%s/%s (answered %d)", d.RequestID, d.Device, d.Status, d.HTTPStatus))
				}
			default:
				unanswered++
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond) // polling interval
	}
	require.Empty(t, missing, "callbacks answered 2xx without their event")
	require.Empty(t, tl.duplicateFacts(), "one callback fact, one event")
	require.Zero(t, s.Stats().CallbacksAbandoned, "no callback may run out of attempts")
	return answered, unanswered
}

// TestDispatcherKilledUnderLoad kills the dispatcher with SIGKILL while
// thousands of one-device commands are in flight, restarts it, and checks
// that every device still ends succeeded, counting the devices ThingSpace
// was sent twice.
func TestDispatcherKilledUnderLoad(t *testing.T) {
	const n, batch, maxAckPending = 5000, 200, 600
	p := startPipeline(t, simulator.Config{
		ResendInterval: time.Second,
		Faults:         simulator.Faults{Latency: 20 * time.Millisecond, RatePerMinute: -1, CallbackDelay: 50 * time.Millisecond},
	}, nil, map[string]string{"BATCH_MAX_DEVICES": fmt.Sprint(batch), "MAX_HELD_COMMANDS": fmt.Sprint(maxAckPending)})
	_, js := connect(t, p.nats.URL())
	ids := publishCommands(t, js, 1, n)

	p.disp.Start()
	require.Eventually(t, func() bool { return p.sim.Stats().ActionAccepted >= 5 }, time.Minute, 2*time.Millisecond)
	p.disp.Kill()
	killedAt := time.Now()
	atKill := p.sim.Stats()
	acceptedEvents := p.events.countAccepted()
	require.Less(t, int(atKill.DevicesAccept), n, "the kill came too late: everything was submitted")

	p.disp.Start()
	restarted := time.Since(killedAt)
	waitFinal(t, p.events, ids, 3*time.Minute)
	recovered := time.Since(killedAt)

	subs := submissions(p.sim.Calls())
	twice := 0
	for _, id := range ids {
		require.GreaterOrEqual(t, subs[id], 1, "device %s never reached ThingSpace", id)
		if subs[id] > 1 {
			twice++
		}
	}
	p.events.mu.Lock()
	for _, id := range ids {
		require.GreaterOrEqual(t, p.events.statuses[id]["succeeded"], 1, "device %s did not succeed", id)
	}
	p.events.mu.Unlock()
	checkCallbacks(t, p.sim, p.events)
	// A device can only be sent twice if its command was held, not yet
	// acknowledged, when the process died: at most MAX_HELD_COMMANDS.
	require.LessOrEqual(t, twice, maxAckPending, "devices submitted twice")
	t.Logf("FIGURE dispatcher kill -9: %d commands, %d devices accepted by ThingSpace before the kill (%d accepted events stored); "+
		"devices submitted twice: %d (bound %d = MAX_HELD_COMMANDS); restart ready after %s; every device final %s after the kill",
		n, atKill.DevicesAccept, acceptedEvents, twice, maxAckPending, restarted.Round(time.Millisecond), recovered.Round(time.Millisecond))
}

// TestIngestKilledUnderCallbackLoad kills the callback-ingest with SIGKILL
// while callbacks pour in and restarts it on the same port: every callback
// answered 200 becomes its event, and those cut off are resent by ThingSpace
// and also become exactly one event.
func TestIngestKilledUnderCallbackLoad(t *testing.T) {
	const n = 4000
	p := startPipeline(t, simulator.Config{
		ResendInterval: time.Second,
		Faults:         simulator.Faults{RatePerMinute: -1, CallbackDelay: 100 * time.Millisecond},
	}, nil, map[string]string{"BATCH_MAX_DEVICES": "500"})
	_, js := connect(t, p.nats.URL())
	ids := publishCommands(t, js, 2, n)
	p.disp.Start()

	require.Eventually(t, func() bool { return p.sim.Stats().CallbacksAnswered >= 800 }, time.Minute, 2*time.Millisecond)
	p.ingest.Kill()
	killedAt := time.Now()
	answeredAtKill := p.sim.Stats().CallbacksAnswered
	p.ingest.Start()
	down := time.Since(killedAt)

	waitFinal(t, p.events, ids, 3*time.Minute)
	recovered := time.Since(killedAt)
	answered, unanswered := checkCallbacks(t, p.sim, p.events)
	require.Positive(t, unanswered, "the kill cut no callback off: the test did not bite")
	st := p.sim.Stats()
	t.Logf("FIGURE callback-ingest kill -9: %d callbacks answered before the kill; %d attempts cut off or refused, resent; "+
		"%d answered in all (%d sent), 0 lost, 0 duplicate events; ingest down %s; every device final %s after the kill",
		answeredAtKill, unanswered, answered, st.CallbacksSent, down.Round(time.Millisecond), recovered.Round(time.Millisecond))
}

// TestNATSKilledUnderLoad kills nats-server with SIGKILL under command and
// callback load and restarts it on the same port and store: the services
// reconnect by themselves, the ingest answers 503 (never 200) while NATS
// is away, and nothing acknowledged is lost.
func TestNATSKilledUnderLoad(t *testing.T) {
	const n = 3000
	p := startPipeline(t, simulator.Config{
		ResendInterval: 2 * time.Second,
		Faults:         simulator.Faults{RatePerMinute: -1, Latency: 20 * time.Millisecond, CallbackDelay: 100 * time.Millisecond},
	}, nil, map[string]string{"BATCH_MAX_DEVICES": "100", "THINGSPACE_RATE": "10"})
	_, js := connect(t, p.nats.URL())
	ids := publishCommands(t, js, 3, n)
	p.disp.Start()

	require.Eventually(t, func() bool { return p.sim.Stats().CallbacksAnswered >= 500 }, time.Minute, 2*time.Millisecond)
	p.nats.Kill()
	killedAt := time.Now()
	atKill := p.sim.Stats()

	// While NATS is away, probe the ingest with well-formed callbacks: a
	// 200 now would be a lie, as nothing can store them.
	codes := map[int]int{}
	c := &http.Client{Timeout: 5 * time.Second}
	for i := 0; i < 200 && time.Since(killedAt) < 2*time.Second; i++ {
		body := fmt.Sprintf(`{"requestId":"probe-%d","status":"Success","deviceIds":[{"kind":"iccid","id":"8914800999%010d"}]}`, i, i)
		codes[postCallback(c, p.ingest.CallbackURL(), []byte(body))]++
		time.Sleep(10 * time.Millisecond) // pacing of the probes
	}
	p.nats.Start()
	restartedAt := time.Now()
	p.ingest.WaitReady(time.Minute)
	ingestBack := time.Since(restartedAt)
	p.disp.WaitReady(time.Minute)
	dispBack := time.Since(restartedAt)

	require.NotEmpty(t, codes)
	require.Equal(t, map[int]int{http.StatusServiceUnavailable: sum(codes)}, codes, "answers while NATS was down")

	waitFinal(t, p.events, ids, 3*time.Minute)
	recovered := time.Since(killedAt)
	answered, unanswered := checkCallbacks(t, p.sim, p.events)
	require.False(t, p.ingest.Exited() || p.disp.Exited(), "a service exited")
	twice := 0
	for _, k := range submissions(p.sim.Calls()) {
		if k > 1 {
			twice++
		}
	}
	// Only commands held un-acked (MAX_HELD_COMMANDS: 3 batches of 100) can
	// have gone to ThingSpace before their outcome was stored.
	require.LessOrEqual(t, twice, 300, "devices submitted twice")
	t.Logf("FIGURE nats-server kill -9: %d devices accepted and %d callbacks answered before the kill; "+
		"%d probes during the outage all answered 503; ingest ready %s and dispatcher ready %s after the restart; "+
		"%d callback attempts refused and resent, %d answered, 0 lost; %d devices submitted twice; every command final %s after the kill",
		atKill.DevicesAccept, atKill.CallbacksAnswered, sum(codes), ingestBack.Round(time.Millisecond),
		dispBack.Round(time.Millisecond), unanswered, answered, twice, recovered.Round(time.Millisecond))
}

func sum(m map[int]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}
