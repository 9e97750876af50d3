package dispatch

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/esim-pipeline/thingspace-esim/internal/batch"
	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/command"
	"github.com/esim-pipeline/thingspace-esim/internal/correlation"
	"github.com/esim-pipeline/thingspace-esim/internal/observability"
	"github.com/esim-pipeline/thingspace-esim/internal/ratelimit"
	"github.com/esim-pipeline/thingspace-esim/internal/thingspace"
)

// ThingSpace is what the dispatcher needs of ThingSpace.
type ThingSpace interface {
	ProfileAction(ctx context.Context, action string, req thingspace.ProfileRequest) (string, error)
	RegisterCallback(ctx context.Context, account string, reg thingspace.CallbackRegistration) error
}

// Option changes how a Service is built.
type Option func(*Service)

// WithThingSpace replaces the ThingSpace client built from the config.
func WithThingSpace(ts ThingSpace) Option { return func(s *Service) { s.ts = ts } }

// WithLimiter replaces the local rate limiter built from the config.
func WithLimiter(l ratelimit.Limiter) Option { return func(s *Service) { s.limiter = l } }

// WithRegistry registers metrics on reg instead of a new registry.
func WithRegistry(reg *prometheus.Registry) Option { return func(s *Service) { s.reg = reg } }

// WithStarted is called once the service is ready, with its admin address.
func WithStarted(f func(adminAddr string)) Option { return func(s *Service) { s.started = f } }

// Service is one dispatcher.
type Service struct {
	cfg     Config
	log     zerolog.Logger
	ts      ThingSpace
	limiter ratelimit.Limiter
	reg     *prometheus.Registry
	m       *metrics
	started func(string)

	nc    *nats.Conn
	js    jetstream.JetStream
	cons  jetstream.Consumer
	store *correlation.Store
	ready *broker.Readiness

	mu      sync.Mutex
	batcher *batch.Batcher
	options map[batch.Key]command.Options // call options of each batch key
	held    map[*pending]struct{}
	fences  map[string][]fence  // device key -> its commands out, by stream sequence (order.go)
	parked  []parkedItem        // later commands' devices waiting for their fences
	acked   map[uint64]struct{} // commands acked here while fences stood, until the ack floor passes them
	wake    chan struct{}

	registered map[string]bool // accounts whose callback URL is registered
	later      func(func())    // queues a call's outcome for the outcome goroutine (sendLoop's)
	background sync.WaitGroup  // records, deadlines and acks stored beside the outcome goroutine
	batches    atomic.Int64    // calls that got a requestId
	lastAck    atomic.Int64    // when a command was last acked, Unix ns
}

// Stats are running counts of one dispatcher.
type Stats struct {
	// Batches is the number of ThingSpace calls that got a requestId.
	Batches int64
}

// Stats reports what this dispatcher has done so far.
func (s *Service) Stats() Stats { return Stats{Batches: s.batches.Load()} }

// New checks cfg and builds a dispatcher; Run starts it.
func New(cfg Config, log zerolog.Logger, opts ...Option) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Service{cfg: cfg, log: log, held: map[*pending]struct{}{}, fences: map[string][]fence{}, acked: map[uint64]struct{}{}, options: map[batch.Key]command.Options{}, wake: make(chan struct{}, 1), registered: map[string]bool{}}
	for _, o := range opts {
		o(s)
	}
	b, err := batch.New(cfg.batchConfig())
	if err != nil {
		return nil, err
	}
	s.batcher = b
	if s.reg == nil {
		s.reg = observability.NewRegistry()
	}
	s.m = newMetrics(s.reg)
	if s.limiter == nil && !cfg.RateShared {
		s.limiter = ratelimit.NewLocal(cfg.Rate, cfg.Burst)
	}
	if s.ts == nil {
		c, err := thingspace.New(thingspace.Config{
			BaseURL:      cfg.BaseURL,
			ClientID:     cfg.ClientID,
			ClientSecret: cfg.ClientSecret.Reveal(),
			Username:     cfg.Username,
			Password:     cfg.Password.Reveal(),
			Timeout:      cfg.HTTPTimeout,
			Logger:       log.With().Str(observability.FieldComponent, "thingspace").Logger(),
		})
		if err != nil {
			return nil, err
		}
		s.ts = c
	}
	return s, nil
}

// Run connects, creates the streams and consumer, and dispatches until ctx
// ends; then it stops taking commands, finishes the call in flight, hands
// back what waits, and returns nil.
func (s *Service) Run(ctx context.Context) error {
	nc, err := broker.Connect(ctx, s.cfg.NATS, "esim-dispatcher", s.log)
	if err != nil {
		return err
	}
	defer nc.Close()
	s.nc = nc
	s.ready = broker.NewReadiness(nc)
	// An async publish whose ack never comes (a stream leader lost with it
	// in flight) must fail and be sent again, not hang its batch forever.
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096), jetstream.WithPublishAsyncTimeout(publishTimeout))
	if err != nil {
		return err
	}
	s.js = js

	admin, err := observability.Listen(s.cfg.MetricsAddr, observability.AdminMux(s.reg, s.ready.Check), s.log)
	if err != nil {
		return fmt.Errorf("METRICS_ADDR %s: %w", s.cfg.MetricsAddr, err)
	}
	adminCtx, stopAdmin := context.WithCancel(context.WithoutCancel(ctx))
	adminDone := make(chan error, 1)
	go func() { adminDone <- admin.Serve(adminCtx, 5*time.Second) }()
	defer func() { stopAdmin(); <-adminDone }()

	cons, err := s.setup(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	s.cons = cons
	if s.limiter == nil {
		fleet, err := ratelimit.NewFleet(ctx, js, ratelimit.FleetConfig{
			PerSecond: s.cfg.Rate,
			Burst:     s.cfg.Burst,
			Replicas:  s.cfg.StreamReplicas,
			Log:       s.log.With().Str(observability.FieldComponent, "ratelimit").Logger(),
		})
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		s.limiter = fleet
	}
	s.ready.SetReady()
	s.log.Info().Str("admin_addr", admin.Addr()).Msg("dispatcher ready")
	if s.started != nil {
		s.started(admin.Addr())
	}

	sendCtx, stopSend := context.WithCancel(context.WithoutCancel(ctx))
	sendDone := make(chan struct{})
	go func() { defer close(sendDone); s.sendLoop(ctx, sendCtx) }()

	keepCtx, stopKeep := context.WithCancel(ctx)
	go s.keepAlive(keepCtx, cons)

	watch, err := s.watchDeadlines(ctx)
	if err != nil {
		stopSend()
		<-sendDone
		stopKeep()
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("deadline watcher: %w", err)
	}
	defer watch.Stop()

	cc, err := cons.Consume(func(msg jetstream.Msg) { s.intake(ctx, msg) },
		jetstream.PullPriorityGroup(PriorityGroup),
		jetstream.PullMaxMessages(min(1000, s.cfg.MaxAckPending)),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			if !errors.Is(err, jetstream.ErrNoHeartbeat) {
				s.log.Debug().Err(err).Msg("consume")
			}
		}))
	if err != nil {
		stopSend()
		<-sendDone
		stopKeep()
		return fmt.Errorf("consume: %w", err)
	}

	<-ctx.Done()
	s.log.Info().Msg("dispatcher stopping: no new commands, finishing the call in flight")
	cc.Drain()
	<-cc.Closed()
	// The send loop sees ctx done, finishes its call and returns.
	<-sendDone
	stopSend()
	stopKeep()
	s.handBackAll()
	// Let a standby take over now rather than after the pin's TTL.
	uctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	if st, err := s.js.Stream(uctx, broker.CommandStream); err == nil {
		_ = st.UnpinConsumer(uctx, broker.DispatcherConsumer, PriorityGroup)
	}
	cancel()
	if err := nc.Drain(); err != nil {
		s.log.Warn().Err(err).Msg("drain")
	}
	s.log.Info().Msg("dispatcher stopped")
	return nil
}

// PriorityGroup is the dispatcher consumer's pinned priority group.
const PriorityGroup = "dispatch"

// scope is the rate budget a call for account draws on.
func (s *Service) scope(account string) string {
	if s.cfg.RateScope == RateScopeAccount {
		return "account." + account
	}
	return "fleet"
}

func (s *Service) setup(ctx context.Context) (jetstream.Consumer, error) {
	settings := broker.StreamSettings{Replicas: s.cfg.StreamReplicas}
	if err := broker.Ensure(ctx, s.js, settings); err != nil {
		return nil, err
	}
	store, err := correlation.Open(ctx, s.js)
	if err != nil {
		return nil, err
	}
	s.store = store
	var cons jetstream.Consumer
	err = broker.Retry(ctx, func(ctx context.Context) error {
		c, err := s.js.CreateOrUpdateConsumer(ctx, broker.CommandStream, jetstream.ConsumerConfig{
			Durable:       broker.DispatcherConsumer,
			Description:   "dispatcher intake: commands to ThingSpace calls",
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       s.cfg.AckWait,
			MaxDeliver:    s.cfg.MaxDeliver,
			MaxAckPending: s.cfg.MaxAckPending,
			FilterSubject: broker.CommandSubjects,
			DeliverPolicy: jetstream.DeliverAllPolicy,
			Replicas:      s.cfg.StreamReplicas,
			// One dispatcher is active at a time, the others wait: one
			// sender keeps one device's actions in publish order, and
			// ThingSpace's rate, not this process, is the bottleneck.
			PriorityPolicy: jetstream.PriorityPolicyPinned,
			PriorityGroups: []string{PriorityGroup},
			PinnedTTL:      s.cfg.PinnedTTL,
		})
		cons = c
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("consumer %s: %w", broker.DispatcherConsumer, err)
	}
	return cons, nil
}

// keepAlive tells the server that held commands are still being worked on,
// and samples the consumer's backlog.
func (s *Service) keepAlive(ctx context.Context, cons jetstream.Consumer) {
	every := s.cfg.AckWait / 3
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, p := range s.heldNow() {
			if !p.finished.Load() {
				_ = p.msg.InProgress()
			}
		}
		s.expireFences(time.Now())
		ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
		if info, err := cons.Info(ictx); err == nil {
			s.m.pending.Set(float64(info.NumPending))
			s.liftAcked(info.AckFloor.Stream)
		}
		cancel()
	}
}

// pending is one command message between intake and its ack.
type pending struct {
	msg       jetstream.Msg
	seq       uint64 // stream sequence
	id        string
	action    string
	account   string
	last      bool         // this is its last allowed delivery
	remaining atomic.Int64 // devices not yet settled
	finished  atomic.Bool  // acked, termed or handed back
	failed    atomic.Bool  // some device ended failed: dead-letter it at the end
	lastErr   atomic.Value // string
}

// hold keeps p until it is settled or handed back, and reports whether it
// is the only command held.
func (s *Service) hold(p *pending) (only bool) {
	s.mu.Lock()
	s.held[p] = struct{}{}
	only = len(s.held) == 1
	s.m.held.Set(float64(len(s.held)))
	s.mu.Unlock()
	return only
}

// release lets go of p; acked says the stream will not deliver it again.
func (s *Service) release(p *pending, acked bool) {
	s.mu.Lock()
	delete(s.held, p)
	if acked && len(s.fences) > 0 && len(s.acked) < maxUnackedRead {
		s.acked[p.seq] = struct{}{}
	}
	s.m.held.Set(float64(len(s.held)))
	s.mu.Unlock()
}

// settle marks n devices of p as durably decided; the last one acks p.
func (s *Service) settle(ctx context.Context, p *pending, n int) {
	if p.remaining.Add(int64(-n)) > 0 {
		return
	}
	if !p.finished.CompareAndSwap(false, true) {
		return
	}
	acked := true
	defer func() { s.release(p, acked) }()
	if p.failed.Load() {
		reason, _ := p.lastErr.Load().(string)
		if err := s.deadLetter(ctx, p.msg, "deliveries exhausted: "+reason); err != nil {
			s.log.Error().Err(err).Str(observability.FieldCommandID, p.id).Msg("dead letter failed; command handed back")
			acked = false
			_ = p.msg.Nak()
			s.m.commands.WithLabelValues("handed_back").Inc()
			return
		}
		_ = p.msg.Term()
		s.m.commands.WithLabelValues("deadlettered").Inc()
		return
	}
	s.ack(p)
	s.m.commands.WithLabelValues("acked").Inc()
}

// ack acknowledges p. An ack that cannot leave (NATS reconnecting) is sent
// again, and confirmed, once the connection is back: a lost ack means a
// redelivery, and a redelivery a second look at ThingSpace.
func (s *Service) ack(p *pending) {
	s.lastAck.Store(time.Now().UnixNano())
	if err := p.msg.Ack(); err == nil {
		return
	}
	go func() {
		wait := 100 * time.Millisecond
		deadline := time.Now().Add(s.cfg.AckWait)
		for time.Now().Before(deadline) {
			time.Sleep(wait)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			err := p.msg.DoubleAck(ctx)
			cancel()
			if err == nil || errors.Is(err, jetstream.ErrMsgAlreadyAckd) {
				return
			}
			if wait < time.Second {
				wait *= 2
			}
		}
		s.log.Warn().Str(observability.FieldCommandID, p.id).Msg("ack not confirmed; the command will be redelivered and checked")
	}()
}

// handBack returns p to the stream for a later delivery.
func (s *Service) handBack(p *pending, delay time.Duration) {
	if !p.finished.CompareAndSwap(false, true) {
		return
	}
	defer s.release(p, false)
	var err error
	if delay > 0 {
		err = p.msg.NakWithDelay(delay)
	} else {
		err = p.msg.Nak()
	}
	if err != nil {
		s.log.Debug().Err(err).Str(observability.FieldCommandID, p.id).Msg("nak")
	}
	s.m.commands.WithLabelValues("handed_back").Inc()
}

// heldNow lists the commands held at this moment.
func (s *Service) heldNow() []*pending {
	s.mu.Lock()
	defer s.mu.Unlock()
	held := make([]*pending, 0, len(s.held))
	for p := range s.held {
		held = append(held, p)
	}
	return held
}

// handBackAll naks every command still held, at shutdown.
func (s *Service) handBackAll() {
	s.mu.Lock()
	s.batcher.Drain()
	s.parked, s.fences, s.acked = nil, map[string][]fence{}, map[uint64]struct{}{}
	s.m.parked.Set(0)
	s.mu.Unlock()
	held := s.heldNow()
	// In stream order: nats-server redelivers naked messages in the order
	// of the naks, and the dispatcher that takes over must see one
	// device's commands in the order they were published.
	slices.SortFunc(held, func(a, b *pending) int { return cmp.Compare(a.seq, b.seq) })
	for _, p := range held {
		s.handBack(p, 0)
	}
	if len(held) > 0 {
		s.log.Info().Int("commands", len(held)).Msg("handed back waiting commands")
	}
}

func (s *Service) deadLetter(ctx context.Context, msg jetstream.Msg, reason string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	s.m.deadLetters.Inc()
	return broker.DeadLetter(ctx, s.js, broker.DeadLetterCommands, msg.Data(), msg.Subject(), msg.Headers(), reason)
}

// statusCode is an answer class for metrics.
func statusCode(err error) string {
	if err == nil {
		return "2xx"
	}
	var apiErr *thingspace.APIError
	if errors.As(err, &apiErr) {
		switch {
		case apiErr.HTTPStatus == http.StatusTooManyRequests:
			return "429"
		case apiErr.HTTPStatus >= 500:
			return "5xx"
		case apiErr.HTTPStatus > 0:
			return fmt.Sprint(apiErr.HTTPStatus)
		}
	}
	return "error"
}
