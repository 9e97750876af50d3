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
	"io"
	"net/http"
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
	"github.com/esim-pipeline/thingspace-esim/internal/stack"
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
	t    testing.TB
	NATS *natstest.Server
	NC   *nats.Conn
	JS   jetstream.JetStream
	Sim  *stack.Simulator // nil with NATSOnly
	// Ingest and Dispatcher are the ones Start started (nil with NATSOnly
	// or without them).
	Ingest     *stack.Ingest
	Dispatcher *stack.Dispatcher
	log        zerolog.Logger
	opts       options
}

type options struct {
	sim, ingest, dispatcher bool
	simCfg                  simulator.Config
	front                   func(http.Handler) http.Handler
	ingestCfg               []func(*callback.Config)
	dispCfg                 []func(*dispatch.Config)
	nats                    *natstest.Server
	replicas                int
	logTo                   io.Writer
}

// Option changes what Start starts.
type Option func(*options)

// NATSOnly starts embedded NATS with the pipeline's streams and nothing
// else.
func NATSOnly() Option {
	return func(o *options) { o.sim, o.ingest, o.dispatcher = false, false, false }
}

// WithoutDispatcher starts no dispatcher (a test starts its own with
// StartDispatcher).
func WithoutDispatcher() Option { return func(o *options) { o.dispatcher = false } }

// WithoutIngest starts no callback-ingest; the dispatcher registers no
// callback URL.
func WithoutIngest() Option { return func(o *options) { o.ingest = false } }

// OnNATS runs the stack on a server the test started.
func OnNATS(ns *natstest.Server) Option { return func(o *options) { o.nats = ns } }

// WithStreamReplicas creates the streams with n replicas (on a cluster
// given with OnNATS), and the dispatchers with STREAM_REPLICAS n.
func WithStreamReplicas(n int) Option { return func(o *options) { o.replicas = n } }

// WithLog writes every part's log to w at debug level, instead of the
// test's log at warn.
func WithLog(w io.Writer) Option { return func(o *options) { o.logTo = w } }

// WithSimulator configures the simulator (default: no rate limit, seed 7).
func WithSimulator(cfg simulator.Config) Option { return func(o *options) { o.simCfg = cfg } }

// WithFront puts wrap in front of the simulator's handler: ThingSpace is the
// one part a test may fake, and only where the simulator has no knob.
func WithFront(wrap func(http.Handler) http.Handler) Option {
	return func(o *options) { o.front = wrap }
}

// WithIngest changes the ingest's configuration before it starts; it
// applies to every ingest the stack starts.
func WithIngest(f func(*callback.Config)) Option {
	return func(o *options) { o.ingestCfg = append(o.ingestCfg, f) }
}

// WithDispatcher changes the dispatcher's configuration before it starts;
// it applies to every dispatcher the stack starts.
func WithDispatcher(f func(*dispatch.Config)) Option {
	return func(o *options) { o.dispCfg = append(o.dispCfg, f) }
}

// Start starts the stack and waits until its parts are ready.
func Start(t testing.TB, opts ...Option) *Stack {
	t.Helper()
	o := options{sim: true, ingest: true, dispatcher: true,
		simCfg: simulator.Config{Faults: simulator.Faults{RatePerMinute: -1}, Seed: 7}}
	for _, opt := range opts {
		opt(&o)
	}
	ns := o.nats
	if ns == nil {
		ns = natstest.Run(t)
	}
	nc, js := ns.JetStream()
	require.NoError(t, broker.Ensure(context.Background(), js, broker.StreamSettings{Replicas: o.replicas}))
	s := &Stack{t: t, NATS: ns, NC: nc, JS: js, opts: o,
		log: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)}
	if o.logTo != nil {
		s.log = zerolog.New(o.logTo).Level(zerolog.DebugLevel)
	}
	if !o.sim {
		return s
	}
	cfg := o.simCfg
	cfg.Logger = s.log
	sim, err := stack.StartSimulator(cfg, "127.0.0.1:0", o.front)
	require.NoError(t, err)
	t.Cleanup(func() { _ = sim.Stop() })
	s.Sim = sim
	if o.ingest {
		s.Ingest = s.StartIngest(nil)
	}
	if o.dispatcher {
		s.Dispatcher = s.StartDispatcher(nil)
	}
	return s
}

// IngestConfig is the configuration StartIngest starts with: test
// settings, the stack's WithIngest changes, then mut's.
func (s *Stack) IngestConfig(mut func(*callback.Config)) callback.Config {
	cfg := callback.Config{
		NATS: config.NATS{URL: s.NATS.URL()}, ListenAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0",
		CorrelationGrace: 30 * time.Second, RetryDelay: 50 * time.Millisecond, Workers: 8,
		StoreTimeout: 5 * time.Second, ShutdownGrace: 5 * time.Second,
	}
	for _, f := range append(s.opts.ingestCfg, mut) {
		if f != nil {
			f(&cfg)
		}
	}
	return cfg
}

// StartIngest starts a callback-ingest of IngestConfig(mut); it stops at
// the test's cleanup, or at its Stop.
func (s *Stack) StartIngest(mut func(*callback.Config), opts ...callback.Option) *stack.Ingest {
	s.t.Helper()
	in, err := stack.StartIngest(s.IngestConfig(mut), s.log, opts...)
	require.NoError(s.t, err)
	s.t.Cleanup(func() { _ = in.Stop() })
	return in
}

// DispatcherConfig is the configuration StartDispatcher starts with: test
// settings (no rate limit, 50 ms batches, the simulator's demo
// credentials, the stack's ingest as callback URL), the stack's
// WithDispatcher changes, then mut's.
func (s *Stack) DispatcherConfig(mut func(*dispatch.Config)) dispatch.Config {
	cfg := dispatch.Config{
		NATS:           config.NATS{URL: s.NATS.URL()},
		ClientID:       simulator.DemoClientID,
		ClientSecret:   config.NewSecret(simulator.DemoClientSecret),
		Username:       simulator.DemoUsername,
		Password:       config.NewSecret(simulator.DemoPassword),
		BatchMaxWait:   50 * time.Millisecond,
		MetricsAddr:    "127.0.0.1:0",
		AckWait:        10 * time.Second,
		StreamReplicas: s.opts.replicas,
	}
	if s.Sim != nil {
		cfg.BaseURL = s.Sim.URL
	}
	if s.Ingest != nil {
		cfg.CallbackURL = s.Ingest.CallbackURL()
	}
	for _, f := range append(s.opts.dispCfg, mut) {
		if f != nil {
			f(&cfg)
		}
	}
	return cfg
}

// StartDispatcher starts a dispatcher of DispatcherConfig(mut); it stops
// at the test's cleanup, or at its Stop.
func (s *Stack) StartDispatcher(mut func(*dispatch.Config), opts ...dispatch.Option) *stack.Dispatcher {
	s.t.Helper()
	d, err := stack.StartDispatcher(s.DispatcherConfig(mut), s.log, opts...)
	require.NoError(s.t, err)
	s.t.Cleanup(func() { _ = d.Stop() })
	return d
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
