package dispatch

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/correlation"
	"github.com/esim-pipeline/thingspace-esim/internal/observability"
	"github.com/esim-pipeline/thingspace-esim/internal/ratelimit"
	"github.com/esim-pipeline/thingspace-esim/internal/statuspub"
	"github.com/esim-pipeline/thingspace-esim/internal/thingspace"
)

// ThingSpace is what the dispatcher needs of ThingSpace.
type ThingSpace interface {
	ProfileAction(ctx context.Context, action string, req thingspace.ProfileRequest) (string, error)
	RegisterCallback(ctx context.Context, account string, reg thingspace.CallbackRegistration) error
}

// Option changes how a Service is built.
type Option func(*Service)

// WithLimiter replaces the rate limiter the config chooses.
func WithLimiter(l ratelimit.Limiter) Option { return func(s *Service) { s.limiter = l } }

// WithRegistry registers metrics on reg instead of a new registry.
func WithRegistry(reg *prometheus.Registry) Option { return func(s *Service) { s.reg = reg } }

// WithClock replaces this host's clock as the fleet rate limiter reads it
// (it counts in the server's time, measured against this one): a test hook
// for a host whose clock runs ahead.
func WithClock(now func() time.Time) Option { return func(s *Service) { s.clock = now } }

// OnReady is called once the streams, the consumer and the limiter are
// set up, before the first command is taken.
func OnReady(f func()) Option { return func(s *Service) { s.ready = f } }

// Service is the dispatcher on the parts its program wired: a NATS
// connection and a ThingSpace client (cmd/dispatcher's run builds them).
type Service struct {
	cfg     Config
	log     zerolog.Logger
	nc      *nats.Conn
	ts      ThingSpace
	limiter ratelimit.Limiter
	reg     *prometheus.Registry
	ready   func()
	clock   func() time.Time
	batches atomic.Int64
}

// Stats are running counts of one dispatcher.
type Stats struct {
	// Batches is the number of ThingSpace calls that got a requestId.
	Batches int64
}

// Stats reports what this dispatcher has done so far.
func (s *Service) Stats() Stats { return Stats{Batches: s.batches.Load()} }

// New checks cfg and builds a dispatcher on nc and ts; Run starts it.
func New(cfg Config, nc *nats.Conn, ts ThingSpace, log zerolog.Logger, opts ...Option) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Service{cfg: cfg, log: log, nc: nc, ts: ts}
	for _, o := range opts {
		o(s)
	}
	if s.reg == nil {
		s.reg = observability.NewRegistry()
	}
	if s.limiter == nil && !cfg.RateShared {
		s.limiter = ratelimit.NewLocal(cfg.Rate, cfg.Burst)
	}
	return s, nil
}

// ThingSpace is the client configuration these settings give.
func (c Config) ThingSpace(log zerolog.Logger) thingspace.Config {
	return thingspace.Config{
		BaseURL:      c.BaseURL,
		ClientID:     c.ClientID,
		ClientSecret: c.ClientSecret.Reveal(),
		Username:     c.Username,
		Password:     c.Password.Reveal(),
		Timeout:      c.HTTPTimeout,
		Logger:       log.With().Str(observability.FieldComponent, "thingspace").Logger(),
	}
}

// PriorityGroup is the dispatcher consumer's pinned priority group.
const PriorityGroup = "dispatch"

// Run creates the streams and the consumer and dispatches until ctx ends;
// then it stops as the package's rule 4 says and returns nil. The caller
// drains and closes the connection afterwards.
func (s *Service) Run(ctx context.Context) error {
	// An async publish whose ack never comes (a stream leader lost with it
	// in flight) must fail and be sent again, not hang its batch forever.
	js, err := jetstream.New(s.nc, jetstream.WithPublishAsyncMaxPending(4096), jetstream.WithPublishAsyncTimeout(publishTimeout))
	if err != nil {
		return err
	}
	pl, err := newPuller(s.nc, js)
	if err != nil {
		return err
	}
	m := newMetrics(s.reg)
	pub := newPublisher(js, s.cfg, m)
	defer pub.Close()
	d := &dispatcher{cfg: s.cfg, log: s.log, m: m, js: js, pull: pl, pub: pub, ts: s.ts, limiter: s.limiter, clock: s.clock, batches: &s.batches, links: newLinks()}
	if err := d.setup(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	if s.ready != nil {
		s.ready()
	}
	err = d.run(ctx)
	s.log.Info().Msg("dispatcher stopped")
	return err
}

// dispatcher is the work of one dispatcher on its parts.
type dispatcher struct {
	cfg     Config
	log     zerolog.Logger
	m       *metrics
	js      jetstream.JetStream
	cons    jetstream.Consumer
	pull    *puller
	pub     *statuspub.Publisher
	store   *correlation.Store
	ts      ThingSpace
	limiter ratelimit.Limiter

	registered registrations
	links      *links
	clock      func() time.Time // for the fleet limiter; nil: time.Now
	batches    *atomic.Int64
}

// setup creates or updates the streams, the request bucket, the consumer
// and (unless one was given) the fleet's rate limiter.
func (d *dispatcher) setup(ctx context.Context) error {
	if err := broker.Ensure(ctx, d.js, broker.StreamSettings{Replicas: d.cfg.StreamReplicas}); err != nil {
		return err
	}
	store, err := correlation.Open(ctx, d.js)
	if err != nil {
		return err
	}
	d.store = store
	err = broker.Retry(ctx, func(ctx context.Context) error {
		c, err := d.js.CreateOrUpdateConsumer(ctx, broker.CommandStream, d.consumerConfig())
		d.cons = c
		return err
	})
	if err != nil {
		return fmt.Errorf("consumer %s: %w", broker.DispatcherConsumer, err)
	}
	if d.limiter == nil {
		return broker.Retry(ctx, func(ctx context.Context) error {
			fleet, err := ratelimit.NewFleet(ctx, d.js, ratelimit.FleetConfig{
				PerSecond: d.cfg.Rate,
				Burst:     d.cfg.Burst,
				Replicas:  d.cfg.StreamReplicas,
				Log:       d.log.With().Str(observability.FieldComponent, "ratelimit").Logger(),
				Clock:     d.clock,
			})
			d.limiter = fleet
			return err
		})
	}
	return nil
}

// consumerConfig is the dispatchers' shared consumer: one of them holds the
// pin and gets the commands, the others wait (one sender keeps one device's
// actions in publish order, and ThingSpace's rate, not this process, is the
// bottleneck). It redelivers without limit: the dispatcher counts the
// deliveries itself, so a command handed back on its last one is never
// dropped. Its ack-pending bound leaves a dispatcher that takes over room
// beside what a dead one held.
func (d *dispatcher) consumerConfig() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:        broker.DispatcherConsumer,
		Description:    "dispatcher intake: commands to ThingSpace calls",
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        d.cfg.AckWait,
		MaxDeliver:     -1,
		MaxAckPending:  2 * d.cfg.MaxHeldCommands,
		FilterSubject:  broker.CommandSubjects,
		DeliverPolicy:  jetstream.DeliverAllPolicy,
		Replicas:       d.cfg.StreamReplicas,
		PriorityPolicy: jetstream.PriorityPolicyPinned,
		PriorityGroups: []string{PriorityGroup},
		PinnedTTL:      d.cfg.PinnedTTL,
	}
}

// run takes commands and watches deadlines until ctx ends, then stops.
func (d *dispatcher) run(ctx context.Context) error {
	watch, err := d.watchDeadlines(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("deadline watcher: %w", err)
	}
	d.intake(ctx) // returns once the session it ran has ended
	watch.Stop()
	<-watch.Closed()
	d.log.Info().Msg("dispatcher stopping: handed back what was not finished")
	// Let a standby take over now rather than after the pin's TTL.
	uctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if st, err := d.js.Stream(uctx, broker.CommandStream); err == nil {
		_ = st.UnpinConsumer(uctx, broker.DispatcherConsumer, PriorityGroup)
	}
	return nil
}

// scope is the rate budget a call for account draws on.
func (d *dispatcher) scope(account string) string {
	if d.cfg.RateScope == RateScopeAccount {
		return "account." + account
	}
	return "fleet"
}
