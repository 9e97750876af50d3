package callback

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	wmjs "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/jetstream"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/correlation"
	"github.com/esim-pipeline/thingspace-esim/internal/observability"
	"github.com/esim-pipeline/thingspace-esim/internal/statuspub"
)

// Addrs are the bound addresses of the two listeners.
type Addrs struct {
	Callback string // LISTEN_ADDR: POST /callbacks, /healthz, /readyz
	Admin    string // METRICS_ADDR: /healthz, /readyz, /metrics, /devices/{id}
}

// Option tunes Run.
type Option func(*options)

type options struct {
	onReady  func(Addrs)
	registry *prometheus.Registry
	now      func() time.Time
}

// OnReady is called once, when both listeners are bound, the streams and
// the fan-out consumer exist and the fan-out runs: from then on callbacks
// are stored and turned into events.
func OnReady(f func(Addrs)) Option { return func(o *options) { o.onReady = f } }

// WithRegistry registers the metrics in reg instead of a new registry (with
// the Go and process collectors) served on /metrics.
func WithRegistry(reg *prometheus.Registry) Option { return func(o *options) { o.registry = reg } }

// ConnectionName is the NATS connection name of the service; the fan-out's
// own connection adds "-fanout".
const ConnectionName = "callback-ingest"

// Run serves callback-ingest until ctx ends, then stops in stages: the HTTP
// listener finishes the requests in flight, the fan-out finishes the
// callbacks in flight, the connections drain. It returns nil after a clean
// stop. NATS may come up after Run starts: both listeners answer /healthz at
// once and /readyz (and POST /callbacks, with 503) only when ready.
func Run(ctx context.Context, cfg Config, log zerolog.Logger, opts ...Option) error {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return err
	}
	o := options{now: time.Now}
	for _, opt := range opts {
		opt(&o)
	}
	reg := o.registry
	if reg == nil {
		reg = observability.NewRegistry()
	}
	m := newMetrics(reg)
	s := &service{cfg: cfg, log: log, m: m, now: o.now}
	reg.MustRegister(newConsumerCollector("esim_ingest_fanout", "Callbacks", "the fan-out", func() jetstream.Consumer {
		if c := s.consumer.Load(); c != nil {
			return *c
		}
		return nil
	}), newConsumerCollector("esim_ingest_eid_index", "Status events", "the EID index", func() jetstream.Consumer {
		if c := s.indexConsumer.Load(); c != nil {
			return *c
		}
		return nil
	}), newDeadLetterCollector(func() jetstream.Stream {
		if d := s.deadLetters.Load(); d != nil {
			return *d
		}
		return nil
	}))
	return s.run(ctx, reg, o.onReady)
}

type service struct {
	cfg Config
	log zerolog.Logger
	m   *metrics
	now func() time.Time

	handoff   *handoff
	readiness atomic.Pointer[broker.Readiness]
	js        atomic.Pointer[jetstream.JetStream]
	consumer  atomic.Pointer[jetstream.Consumer]

	indexConsumer atomic.Pointer[jetstream.Consumer]
	deadLetters   atomic.Pointer[jetstream.Stream]
	index         *indexer             // set by start
	indexConn     *nats.Conn           // set by start
	pub           *statuspub.Publisher // set by start: the fan-out's events
}

func (s *service) ready() error {
	r := s.readiness.Load()
	if r == nil {
		return errors.New("connecting to NATS")
	}
	return r.Check()
}

func (s *service) run(ctx context.Context, reg *prometheus.Registry, onReady func(Addrs)) error {
	log := s.log

	// Listeners first: health answers while NATS is still coming.
	in := &intake{
		js: func() jetstream.JetStream {
			if p := s.js.Load(); p != nil {
				return *p
			}
			return nil
		},
		ready:   s.ready,
		timeout: s.cfg.StoreTimeout,
		now:     s.now,
		m:       s.m,
		log:     log.With().Str(observability.FieldComponent, "intake").Logger(),
	}
	// What the intake parsed waits for the fan-out: at most twice the
	// callbacks the consumer may hold, for at most two minutes.
	s.handoff = newHandoff(2*s.cfg.MaxAckPending, 2*time.Minute)
	in.commit = newCommitter(in.js, s.cfg.StoreWorkers, s.cfg.GroupCommit, s.cfg.StoreTimeout, s.m, s.handoff)
	commitCtx, stopCommit := context.WithCancel(context.Background())
	defer stopCommit() // after the HTTP listener stopped: run returns last
	in.commit.run(commitCtx, s.cfg.StoreWorkers)
	if s.cfg.authRequired() {
		in.auth = newCredentials(s.cfg.Username, s.cfg.Password.Reveal())
	}
	pubMux := http.NewServeMux()
	observability.Health(pubMux, s.ready)
	pubMux.Handle("POST "+CallbackPath, in)
	var certs *certReloader
	if s.cfg.TLSCertFile != "" {
		var err error
		certs, err = newCertReloader(s.cfg.TLSCertFile, s.cfg.TLSKeyFile,
			log.With().Str(observability.FieldComponent, "tls").Logger(), s.m.tlsReloaded)
		if err != nil {
			return err
		}
	}
	pub, err := observability.Listen(s.cfg.ListenAddr, pubMux, log)
	if err != nil {
		return fmt.Errorf("LISTEN_ADDR: %w", err)
	}
	// A callback is small; a slow sender must not hold a connection long,
	// and no sender may hold more than MAX_CONNECTIONS of them.
	pub.HTTP().ReadTimeout = 15 * time.Second
	pub.HTTP().WriteTimeout = s.cfg.StoreTimeout + 10*time.Second
	pub.LimitConnections(s.cfg.MaxConnections)
	if certs != nil {
		pub.HTTP().TLSConfig = certs.tlsConfig()
		certCtx, stopCerts := context.WithCancel(context.Background())
		defer stopCerts()
		go certs.run(certCtx)
	}

	adminMux := observability.AdminMux(reg, s.ready)
	adminMux.Handle("GET /devices/{id}", &devices{
		js: func() jetstream.JetStream {
			if p := s.js.Load(); p != nil {
				return *p
			}
			return nil
		},
		timeout: s.cfg.StoreTimeout,
	})
	admin, err := observability.Listen(s.cfg.MetricsAddr, adminMux, log)
	if err != nil {
		_ = pub.HTTP().Close()
		return fmt.Errorf("METRICS_ADDR: %w", err)
	}
	addrs := Addrs{Callback: pub.Addr(), Admin: admin.Addr()}
	log.Info().Str("callback_addr", addrs.Callback).Bool("tls", certs != nil).Str("admin_addr", addrs.Admin).Msg("listening")

	pubCtx, stopPub := context.WithCancel(context.WithoutCancel(ctx))
	adminCtx, stopAdmin := context.WithCancel(context.WithoutCancel(ctx))
	pubDone := make(chan error, 1)
	adminDone := make(chan error, 1)
	go func() { pubDone <- pub.Serve(pubCtx, s.cfg.ShutdownGrace) }()
	go func() { adminDone <- admin.Serve(adminCtx, s.cfg.ShutdownGrace) }()
	stopHTTP := func() error {
		stopPub()
		err := <-pubDone
		stopAdmin()
		if e := <-adminDone; err == nil {
			err = e
		}
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		return err
	}

	nc, fanConn, router, g, err := s.start(ctx)
	if err != nil {
		herr := stopHTTP()
		if ctx.Err() != nil && errors.Is(err, context.Canceled) {
			return herr // stopped while starting: a clean stop
		}
		return err
	}
	routerDone := make(chan error, 1)
	go func() { routerDone <- router.Run(context.WithoutCancel(ctx)) }()
	indexCtx, stopIndex := context.WithCancel(context.WithoutCancel(ctx))
	defer stopIndex()
	indexDone := make(chan error, 1)
	go func() { indexDone <- s.index.run(indexCtx) }()
	select {
	case <-router.Running():
	case err := <-routerDone:
		_ = stopHTTP()
		stopIndex()
		<-indexDone
		nc.Close()
		fanConn.Close()
		s.indexConn.Close()
		return fmt.Errorf("fan-out router: %w", err)
	case <-ctx.Done():
	}
	if ctx.Err() == nil {
		log.Info().Int("workers", s.cfg.Workers).Msg("ready")
		if onReady != nil {
			onReady(addrs)
		}
	}

	var runErr error
	select {
	case <-ctx.Done():
	case err := <-pubDone:
		runErr = fmt.Errorf("callback listener: %w", err)
		pubDone <- nil
	case err := <-adminDone:
		runErr = fmt.Errorf("admin listener: %w", err)
		adminDone <- nil
	case err := <-routerDone:
		runErr = fmt.Errorf("fan-out router stopped: %w", err)
		routerDone <- nil
	case err := <-indexDone:
		runErr = fmt.Errorf("EID index stopped: %w", err)
		indexDone <- nil
	}

	// Stage 1: no new callbacks; finish those being stored.
	log.Info().Msg("stopping: finishing callbacks in flight")
	if err := stopHTTP(); err != nil && runErr == nil {
		runErr = fmt.Errorf("http shutdown: %w", err)
	}
	// Stage 2: no new fan-out runs; finish those in flight, then the router.
	if !g.close(s.cfg.ShutdownGrace) {
		log.Warn().Msg("fan-out handlers still running at the shutdown grace; JetStream redelivers them")
	}
	if err := router.Close(); err != nil {
		log.Warn().Err(err).Msg("fan-out router close")
	}
	<-routerDone
	s.pub.Close()
	// The EID index stops between two events; what it has not acknowledged
	// comes back to the next ingest.
	stopIndex()
	if err := <-indexDone; err != nil {
		log.Warn().Err(err).Msg("EID index")
	}
	// Stage 3: flush acks and publishes, then close.
	for _, c := range []*nats.Conn{fanConn, s.indexConn, nc} {
		if err := drain(c, s.cfg.ShutdownGrace); err != nil {
			log.Warn().Err(err).Msg("nats drain")
		}
	}
	log.Info().Msg("stopped")
	return runErr
}

// start connects, ensures the streams and the fan-out consumer, and builds
// the router. It retries until it holds or ctx ends.
func (s *service) start(ctx context.Context) (nc, fanConn *nats.Conn, router *message.Router, g *gate, err error) {
	log := s.log
	nc, err = broker.Connect(ctx, s.cfg.NATS, ConnectionName, log.With().Str(observability.FieldComponent, "nats").Logger())
	if err != nil {
		return nil, nil, nil, nil, err
	}
	fail := func(e error) (*nats.Conn, *nats.Conn, *message.Router, *gate, error) {
		nc.Close()
		if fanConn != nil {
			fanConn.Close()
		}
		if s.indexConn != nil {
			s.indexConn.Close()
		}
		if s.pub != nil {
			s.pub.Close()
		}
		return nil, nil, nil, nil, e
	}
	s.readiness.Store(broker.NewReadiness(nc))
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(s.cfg.StoreTimeout))
	if err != nil {
		return fail(err)
	}
	settings := broker.StreamSettings{Replicas: s.cfg.StreamReplicas, Storage: s.cfg.Storage}
	if err := broker.Ensure(ctx, js, settings); err != nil {
		return fail(err)
	}
	var statusStream jetstream.Stream
	if err := broker.Retry(ctx, func(ctx context.Context) (err error) {
		statusStream, err = js.Stream(ctx, broker.StatusStream)
		return err
	}); err != nil {
		return fail(fmt.Errorf("stream %s: %w", broker.StatusStream, err))
	}
	var store *correlation.Store
	if err := broker.Retry(ctx, func(ctx context.Context) (err error) {
		store, err = correlation.Open(ctx, js)
		return err
	}); err != nil {
		return fail(err)
	}
	consumerCfg := jetstream.ConsumerConfig{
		Durable:       broker.CallbackFanoutConsumer,
		Description:   "callback-ingest: raw callbacks to status events",
		FilterSubject: broker.CallbackSubject,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       s.cfg.StoreTimeout*3 + 5*time.Second, // above the longest handler run
		MaxDeliver:    -1,
		MaxAckPending: s.cfg.MaxAckPending,
		Replicas:      s.cfg.StreamReplicas,
	}
	var consumer jetstream.Consumer
	if err := broker.Retry(ctx, func(ctx context.Context) (err error) {
		consumer, err = js.CreateOrUpdateConsumer(ctx, broker.CallbackStream, consumerCfg)
		return err
	}); err != nil {
		return fail(fmt.Errorf("consumer %s: %w", broker.CallbackFanoutConsumer, err))
	}
	// The EID index follows the status stream on a connection of its own:
	// its deliveries (every status event) must not queue before the
	// intake's acks on nc.
	if err := broker.EnsureBucket(ctx, js, broker.EIDBucketConfig(settings)); err != nil {
		return fail(err)
	}
	indexConn, err := broker.Connect(ctx, s.cfg.NATS, ConnectionName+"-index", log.With().Str(observability.FieldComponent, "nats-index").Logger())
	if err != nil {
		return fail(err)
	}
	s.indexConn = indexConn
	indexJS, err := jetstream.New(indexConn, jetstream.WithPublishAsyncTimeout(s.cfg.StoreTimeout))
	if err != nil {
		return fail(err)
	}
	var indexCons jetstream.Consumer
	if err := broker.Retry(ctx, func(ctx context.Context) (err error) {
		indexCons, err = indexJS.CreateOrUpdateConsumer(ctx, broker.StatusStream, indexConsumerConfig(s.cfg))
		return err
	}); err != nil {
		return fail(fmt.Errorf("consumer %s: %w", broker.EIDIndexConsumer, err))
	}
	s.index = &indexer{
		js: indexJS, cons: indexCons, written: newWritten(indexWrittenSize, broker.EIDIndexRefresh),
		timeout: s.cfg.StoreTimeout, now: s.now, m: s.m,
		log: log.With().Str(observability.FieldComponent, "eid-index").Logger(),
	}

	s.js.Store(&js)
	s.consumer.Store(&consumer)
	s.indexConsumer.Store(&indexCons)
	var deadLetterStream jetstream.Stream
	if err := broker.Retry(ctx, func(ctx context.Context) (err error) {
		deadLetterStream, err = js.Stream(ctx, broker.DeadLetterStream)
		return err
	}); err != nil {
		return fail(fmt.Errorf("stream %s: %w", broker.DeadLetterStream, err))
	}
	s.deadLetters.Store(&deadLetterStream)
	s.readiness.Load().SetReady()

	// The watermill subscriber drains the connection it is given when it
	// closes: it gets one of its own.
	fanConn, err = broker.Connect(ctx, s.cfg.NATS, ConnectionName+"-fanout", log.With().Str(observability.FieldComponent, "nats-fanout").Logger())
	if err != nil {
		return fail(err)
	}
	wlog := observability.WatermillLogger(log.With().Str(observability.FieldComponent, "fanout").Logger())
	sub, err := wmjs.NewSubscriber(wmjs.SubscriberConfig{
		Conn:                fanConn,
		Logger:              quietLogger{LoggerAdapter: wlog, infoToDebug: true},
		AckWaitTimeout:      consumerCfg.AckWait - 5*time.Second,
		ResourceInitializer: existingConsumer(consumer),
		NakDelay:            backoff{step: s.cfg.RetryDelay},
		ConsumeOptions:      []jetstream.PullConsumeOpt{jetstream.PullMaxMessages(prefetch(s.cfg))},
		AckAsync:            true, // a lost ack means a redelivery, which the eventId absorbs
		Unmarshaler:         Unmarshaler{},
	})
	if err != nil {
		return fail(err)
	}
	router, err = message.NewRouter(message.RouterConfig{CloseTimeout: s.cfg.ShutdownGrace}, quietLogger{LoggerAdapter: wlog})
	if err != nil {
		return fail(err)
	}
	// Events go out on the fan-out's connection: nats-server reads each
	// connection in order, so the intake's stores do not queue behind the
	// events on one.
	fanJS, err := jetstream.New(fanConn, jetstream.WithPublishAsyncTimeout(s.cfg.StoreTimeout))
	if err != nil {
		return fail(err)
	}
	s.pub = statuspub.New(fanJS, statuspub.Config{BatchMax: s.cfg.StatusBatchMax, Timeout: s.cfg.StoreTimeout,
		Batches: func(result string) { s.m.eventBatches.WithLabelValues(result).Inc() }})
	f := &fanout{
		js:      fanJS,
		pub:     s.pub,
		status:  statusStream,
		records: newRecords(store, s.cfg.RecordCache, missTTL(s.cfg)),
		handoff: s.handoff,
		grace:   s.cfg.CorrelationGrace,
		timeout: s.cfg.StoreTimeout,
		now:     s.now,
		m:       s.m,
		log:     log.With().Str(observability.FieldComponent, "fanout").Logger(),
	}
	poison, err := middleware.PoisonQueueWithFilter(deadLetters{
		js: js, timeout: s.cfg.StoreTimeout,
		onStore: func() { s.m.deadLetters.WithLabelValues("fanout").Inc() },
	}, broker.DeadLetterCallbacks, isPermanent)
	if err != nil {
		return fail(err)
	}
	g = &gate{}
	// Outermost first. Recoverer is innermost so that a panic becomes an
	// error the poison queue sees.
	router.AddMiddleware(middleware.CorrelationID, g.middleware, poison, f.observe, middleware.Recoverer)
	// Each handler is one more pull loop on the same durable consumer:
	// watermill-nats hands a loop's messages over one at a time.
	for i := range s.cfg.Workers {
		router.AddConsumerHandler("callback-fanout-"+strconv.Itoa(i), broker.CallbackSubject, sub, f.handle)
	}
	return nc, fanConn, router, g, nil
}

// maxPrefetch is the most messages one pull loop buffers. A stored message
// carries up to GROUP_COMMIT_MAX callbacks, and while events are slow to
// store (sync_interval: always: one fsync each, shared by every worker) one
// message can take a worker most of a second: 156 buffered messages a loop,
// as before group commit, outlived the ack wait, were delivered again and
// their events published twice. Four keep a worker busy (the next pull goes
// out while two are left) and wait at most three messages' time.
const maxPrefetch = 4

// prefetch is how many messages each pull loop buffers: enough to keep a
// worker busy, few enough that the buffered ones are handled well inside
// the consumer's ack wait.
func prefetch(cfg Config) int {
	return min(max(cfg.MaxAckPending/(cfg.Workers*2), 1), maxPrefetch)
}

// missTTL is how long a missing record is remembered: short against the
// retry delay, so the callbacks of one request that beat its record share
// one look-up per retry round.
func missTTL(cfg Config) time.Duration {
	d := cfg.RetryDelay / 4
	if d > 250*time.Millisecond {
		d = 250 * time.Millisecond
	}
	return d
}

// drain flushes what nc still has to send and closes it, waiting up to grace.
func drain(nc *nats.Conn, grace time.Duration) error {
	if nc.IsClosed() {
		return nil
	}
	closed := make(chan struct{})
	var once sync.Once
	nc.SetClosedHandler(func(*nats.Conn) { once.Do(func() { close(closed) }) })
	if nc.IsClosed() {
		return nil
	}
	if err := nc.Drain(); err != nil {
		nc.Close()
		return err
	}
	select {
	case <-closed:
		return nil
	case <-time.After(grace):
		nc.Close()
		return errors.New("drain timed out")
	}
}
