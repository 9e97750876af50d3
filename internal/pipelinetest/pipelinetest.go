// Package pipelinetest starts the whole pipeline in-process for a test:
// embedded NATS with the pipeline's streams, the ThingSpace simulator over
// real HTTP, the real callback-ingest and the real dispatcher, the
// dispatcher's callback URL pointing at the ingest. Options change each
// part; helpers publish commands and read status events as a consumer of
// the contract would.
package pipelinetest

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/callback"
	"github.com/esim-pipeline/thingspace-esim/internal/command"
	"github.com/esim-pipeline/thingspace-esim/internal/config"
	"github.com/esim-pipeline/thingspace-esim/internal/dispatch"
	"github.com/esim-pipeline/thingspace-esim/internal/natstest"
	"github.com/esim-pipeline/thingspace-esim/internal/simulator"
	"github.com/esim-pipeline/thingspace-esim/internal/status"
)

// Account and SmsrOid are the values the stack's commands usually carry.
const (
	Account = "0000123456-00001"
	SmsrOid = "1.3.6.1.4.1.31746.1.500.200.101.5"
)

// Stack is a running pipeline. Everything it started stops at the test's
// cleanup.
type Stack struct {
	t      testing.TB
	NATS   *natstest.Server
	NC     *nats.Conn
	JS     jetstream.JetStream
	Sim    *simulator.Server
	SimURL string
	Ingest callback.Addrs
}

type options struct {
	services bool
	sim      simulator.Config
	ingest   []func(*callback.Config)
	disp     []func(*dispatch.Config)
}

// Option changes what Start starts.
type Option func(*options)

// NATSOnly starts embedded NATS with the pipeline's streams and nothing
// else.
func NATSOnly() Option { return func(o *options) { o.services = false } }

// WithSimulator configures the simulator (default: no rate limit, seed 7).
func WithSimulator(cfg simulator.Config) Option { return func(o *options) { o.sim = cfg } }

// WithIngest changes the ingest's configuration before it starts.
func WithIngest(f func(*callback.Config)) Option {
	return func(o *options) { o.ingest = append(o.ingest, f) }
}

// WithDispatcher changes the dispatcher's configuration before it starts.
func WithDispatcher(f func(*dispatch.Config)) Option {
	return func(o *options) { o.disp = append(o.disp, f) }
}

// Start starts the stack and waits until both services are ready.
func Start(t testing.TB, opts ...Option) *Stack {
	t.Helper()
	o := options{services: true, sim: simulator.Config{Faults: simulator.Faults{RatePerMinute: -1}, Seed: 7}}
	for _, opt := range opts {
		opt(&o)
	}
	ns := natstest.Run(t)
	nc, js := ns.JetStream()
	require.NoError(t, broker.Ensure(context.Background(), js, broker.StreamSettings{}))
	s := &Stack{t: t, NATS: ns, NC: nc, JS: js}
	if !o.services {
		return s
	}
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	o.sim.Logger = log
	sim, err := simulator.New(o.sim)
	require.NoError(t, err)
	sim.Start()
	hs := httptest.NewServer(sim.Handler())
	t.Cleanup(func() { hs.Close(); sim.Close() })
	s.Sim, s.SimURL = sim, hs.URL

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })

	icfg := callback.Config{
		NATS: config.NATS{URL: ns.URL()}, ListenAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0",
		CorrelationGrace: 30 * time.Second, RetryDelay: 50 * time.Millisecond, Workers: 8,
		StoreTimeout: 5 * time.Second, ShutdownGrace: 5 * time.Second,
	}
	for _, f := range o.ingest {
		f(&icfg)
	}
	ready := make(chan callback.Addrs, 1)
	ingestDone := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		ingestDone <- callback.Run(ctx, icfg, log, callback.OnReady(func(a callback.Addrs) { ready <- a }))
	}()
	select {
	case s.Ingest = <-ready:
	case err := <-ingestDone:
		t.Fatalf("callback-ingest stopped at start: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("callback-ingest not ready within 30s")
	}

	dcfg := dispatch.Config{
		NATS:         config.NATS{URL: ns.URL()},
		BaseURL:      hs.URL,
		ClientID:     simulator.DemoClientID,
		ClientSecret: config.NewSecret(simulator.DemoClientSecret),
		Username:     simulator.DemoUsername,
		Password:     config.NewSecret(simulator.DemoPassword),
		BatchMaxWait: 50 * time.Millisecond,
		MetricsAddr:  "127.0.0.1:0",
		AckWait:      10 * time.Second,
		CallbackURL:  "http://" + s.Ingest.Callback + "/callbacks",
	}
	for _, f := range o.disp {
		f(&dcfg)
	}
	started := make(chan struct{})
	svc, err := dispatch.New(dcfg, log, dispatch.WithStarted(func(string) { close(started) }))
	require.NoError(t, err)
	dispDone := make(chan error, 1)
	wg.Add(1)
	go func() { defer wg.Done(); dispDone <- svc.Run(ctx) }()
	select {
	case <-started:
	case err := <-dispDone:
		t.Fatalf("dispatcher stopped at start: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("dispatcher not ready within 30s")
	}
	return s
}

// Publish stores a command for action and returns its stream sequence.
func (s *Stack) Publish(action command.Action, body string) uint64 {
	s.t.Helper()
	ack, err := s.JS.Publish(context.Background(), action.Subject(), []byte(body))
	require.NoError(s.t, err)
	return ack.Sequence
}

// Until reads the status events on subjects matching filter, in stream
// order, until done says the events so far are enough, and returns them;
// it fails the test when within passes first.
func (s *Stack) Until(filter string, done func([]Event) bool, within time.Duration) []Event {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	c, err := s.JS.OrderedConsumer(ctx, broker.StatusStream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}})
	require.NoError(s.t, err)
	var out []Event
	for !done(out) {
		wait := time.Until(deadline(ctx))
		if wait <= 0 {
			require.FailNowf(s.t, "status events", "the events on %s are not there within %s; got %v", filter, within, out)
		}
		m, err := c.Next(jetstream.FetchMaxWait(wait))
		if err != nil {
			require.FailNowf(s.t, "status events", "the events on %s are not there within %s (%v); got %v", filter, within, err, out)
		}
		var ev status.Event
		require.NoError(s.t, json.Unmarshal(m.Data(), &ev), string(m.Data()))
		out = append(out, Event{Subject: m.Subject(), Event: ev})
	}
	return out
}

// FinalOf is a done function for Until: every one of keys (the last token
// of a subject) has a final event. It reads each event once.
func FinalOf(keys ...string) func([]Event) bool {
	want := make(map[string]bool, len(keys))
	for _, k := range keys {
		want[k] = true
	}
	seen := 0
	return func(evs []Event) bool {
		for _, e := range evs[seen:] {
			if e.Final {
				delete(want, lastToken(e.Subject))
			}
		}
		seen = len(evs)
		return len(want) == 0
	}
}

func lastToken(subject string) string {
	for i := len(subject) - 1; i >= 0; i-- {
		if subject[i] == '.' {
			return subject[i+1:]
		}
	}
	return subject
}

func deadline(ctx context.Context) time.Time {
	d, _ := ctx.Deadline()
	return d
}

// Event is a status event and the subject it was stored on.
type Event struct {
	Subject string
	status.Event
}

// String is what a failing assertion prints of it.
func (e Event) String() string {
	return e.Subject + " " + string(e.Status) + " " + e.Device.String()
}
