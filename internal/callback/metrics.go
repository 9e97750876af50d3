package callback

import (
	"context"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
)

// metrics are what callback-ingest shows on /metrics, all prefixed
// esim_ingest_.
type metrics struct {
	callbacks     *prometheus.CounterVec // by HTTP answer code
	callbackCodes map[int]prometheus.Counter
	storeSeconds  prometheus.Histogram   // POST /callbacks: time to the PubAck
	parseFailures prometheus.Counter     // unparseable callbacks (intake and fan-out)
	events        *prometheus.CounterVec // events stored, by status
	duplicates    prometheus.Counter     // events the status stream already had
	stale         prometheus.Counter     // pending events dropped: the request already settled
	deadLetters   *prometheus.CounterVec // by source: intake, fanout
	retries       *prometheus.CounterVec // fan-out redeliveries asked for, by reason
	handled       *prometheus.CounterVec // fan-out handler outcomes
	handleSeconds prometheus.Histogram   // fan-out handler duration
	lag           prometheus.Histogram   // receipt to event stored
	uncorrelated  prometheus.Counter     // events published without a record
	groupCommit   prometheus.Histogram   // callbacks stored by one message, when more than one
	reparsed      prometheus.Counter     // stored callbacks the fan-out had to parse again
	tlsReloads    *prometheus.CounterVec // certificate pairs loaded after the start, by result
	indexWrites   prometheus.Counter     // EID index keys stored
	indexErrors   prometheus.Counter     // EID index writes that failed (the event comes back)
	eventBatches  *prometheus.CounterVec // atomic batches of status events, by result
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		callbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "esim_ingest_callbacks_total",
			Help: "POST /callbacks requests, by HTTP answer code.",
		}, []string{"code"}),
		storeSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "esim_ingest_callback_store_seconds",
			Help:    "Time from a callback's arrival to JetStream's ack of its raw copy.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}),
		parseFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "esim_ingest_parse_failures_total",
			Help: "Authenticated callbacks that could not be parsed.",
		}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "esim_ingest_events_published_total",
			Help: "Status events stored in the status stream, by status.",
		}, []string{"status"}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "esim_ingest_events_duplicate_total",
			Help: "Status events the status stream already held (resends, redeliveries).",
		}),
		stale: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "esim_ingest_events_stale_total",
			Help: "pending events not published because the request had already settled the device.",
		}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "esim_ingest_dead_letters_total",
			Help: "Callbacks stored in the dead-letter subject, by where they failed (intake, fanout).",
		}, []string{"source"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "esim_ingest_fanout_retries_total",
			Help: "Callbacks handed back for redelivery, by reason (record_pending, nats, draining).",
		}, []string{"reason"}),
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "esim_ingest_fanout_handled_total",
			Help: "Fan-out handler runs, by outcome (ok, retry, error).",
		}, []string{"outcome"}),
		handleSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "esim_ingest_fanout_handle_seconds",
			Help:    "Duration of one fan-out handler run.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}),
		lag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "esim_ingest_fanout_lag_seconds",
			Help:    "Time from a callback's receipt to its status event being stored.",
			Buckets: []float64{.001, .005, .01, .05, .1, .5, 1, 5, 15, 30, 60, 300, 900},
		}),
		uncorrelated: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "esim_ingest_events_uncorrelated_total",
			Help: "Status events published without a requestId record (no commandId), after the grace.",
		}),
	}
	m.groupCommit = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "esim_ingest_group_commit_callbacks",
		Help:    "Callbacks stored together in one message (group commit), when more than one.",
		Buckets: []float64{2, 4, 8, 16, 32, 64, 128},
	})
	m.reparsed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "esim_ingest_fanout_reparsed_total",
		Help: "Stored callbacks the fan-out parsed again instead of taking what the intake parsed: stored by another instance, before a restart, or waiting longer than the hand-off keeps them.",
	})
	m.tlsReloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "esim_ingest_tls_reloads_total",
		Help: "Rewritten TLS certificate pairs of the callback listener, by result (ok: served to new connections; error: did not load, the previous pair stays).",
	}, []string{"result"})
	m.indexWrites = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "esim_ingest_eid_index_writes_total",
		Help: "EID index keys (bucket thingspace_eids) stored: a status event named an EID under a subject id (ICCID) not indexed or not refreshed for a day.",
	})
	m.indexErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "esim_ingest_eid_index_errors_total",
		Help: "EID index writes that failed or timed out; their status events are delivered again.",
	})
	m.eventBatches = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "esim_ingest_event_batches_total",
		Help: "Atomic batches of status events (STATUS_BATCH_MAX), by result (committed, refused_<JetStream error code>: its events then went one by one).",
	}, []string{"result"})
	reg.MustRegister(m.tlsReloads, m.indexWrites, m.indexErrors, m.eventBatches)
	for _, r := range []string{"ok", "error"} {
		m.tlsReloads.WithLabelValues(r)
	}
	reg.MustRegister(m.callbacks, m.storeSeconds, m.parseFailures, m.events, m.duplicates, m.stale,
		m.deadLetters, m.retries, m.handled, m.handleSeconds, m.lag, m.uncorrelated, m.groupCommit, m.reparsed)
	// Resolve the usual codes once: no label lookup per request.
	m.callbackCodes = make(map[int]prometheus.Counter)
	for _, c := range []int{200, 400, 401, 405, 413, 415, 503} {
		m.callbackCodes[c] = m.callbacks.WithLabelValues(strconv.Itoa(c))
	}
	for _, r := range []string{"record_pending", "nats", "draining"} {
		m.retries.WithLabelValues(r)
	}
	for _, s := range []string{"intake", "fanout"} {
		m.deadLetters.WithLabelValues(s)
	}
	return m
}

func (m *metrics) tlsReloaded(ok bool) {
	if ok {
		m.tlsReloads.WithLabelValues("ok").Inc()
		return
	}
	m.tlsReloads.WithLabelValues("error").Inc()
}

func (m *metrics) answered(code int) {
	if c, ok := m.callbackCodes[code]; ok {
		c.Inc()
		return
	}
	m.callbacks.WithLabelValues(strconv.Itoa(code)).Inc()
}

// consumerCollector reports a durable consumer's backlog at scrape time:
// <prefix>_pending_messages (stored, not yet delivered),
// <prefix>_ack_pending_messages (delivered, not yet acked) and
// <prefix>_redelivered_messages. The fan-out's (esim_ingest_fanout_: the
// callbacks, including those waiting for their record) and the EID index's
// (esim_ingest_eid_index_: the status events).
type consumerCollector struct {
	consumer   func() jetstream.Consumer
	pending    *prometheus.Desc
	ackPending *prometheus.Desc
	redeliver  *prometheus.Desc
}

func newConsumerCollector(prefix, what, by string, consumer func() jetstream.Consumer) *consumerCollector {
	return &consumerCollector{
		consumer: consumer,
		pending: prometheus.NewDesc(prefix+"_pending_messages",
			what+" stored but not yet delivered to "+by+".", nil, nil),
		ackPending: prometheus.NewDesc(prefix+"_ack_pending_messages",
			what+" delivered to "+by+" and not yet acknowledged.", nil, nil),
		redeliver: prometheus.NewDesc(prefix+"_redelivered_messages",
			what+" delivered more than once and not yet acknowledged.", nil, nil),
	}
}

func (c *consumerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.pending
	ch <- c.ackPending
	ch <- c.redeliver
}

func (c *consumerCollector) Collect(ch chan<- prometheus.Metric) {
	cons := c.consumer()
	if cons == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	info, err := cons.Info(ctx)
	if err != nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(c.pending, prometheus.GaugeValue, float64(info.NumPending))
	ch <- prometheus.MustNewConstMetric(c.ackPending, prometheus.GaugeValue, float64(info.NumAckPending))
	ch <- prometheus.MustNewConstMetric(c.redeliver, prometheus.GaugeValue, float64(info.NumRedelivered))
}

// deadLetterCollector reports, at scrape time, what the dead-letter stream
// holds per subject, whichever service stored it (the dispatcher's
// commands, this service's callbacks): esim_ingest_deadletter_messages
// {subject}. Both subjects are always reported, 0 when empty, so an alert
// on their growth sees the first one arrive. It reads the stream's state
// only, never a dead letter.
type deadLetterCollector struct {
	stream func() jetstream.Stream
	kept   *prometheus.Desc
}

func newDeadLetterCollector(stream func() jetstream.Stream) *deadLetterCollector {
	return &deadLetterCollector{stream: stream, kept: prometheus.NewDesc("esim_ingest_deadletter_messages",
		"Dead letters kept in THINGSPACE_DEADLETTER, by subject (commands from the dispatcher, callbacks from the ingest), read from the stream at scrape time.",
		[]string{"subject"}, nil)}
}

func (c *deadLetterCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.kept }

func (c *deadLetterCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.stream()
	if st == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(broker.DeadLetterSubjects))
	if err != nil {
		return
	}
	counts := map[string]uint64{broker.DeadLetterCommands: 0, broker.DeadLetterCallbacks: 0}
	for subject, n := range info.State.Subjects {
		counts[subject] = n
	}
	for subject, n := range counts {
		ch <- prometheus.MustNewConstMetric(c.kept, prometheus.GaugeValue, float64(n), subject)
	}
}
