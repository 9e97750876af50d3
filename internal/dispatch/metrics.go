package dispatch

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	commands     *prometheus.CounterVec   // result
	devices      *prometheus.CounterVec   // status
	batches      *prometheus.CounterVec   // action
	batchFull    prometheus.Counter       //
	batchSize    prometheus.Histogram     //
	calls        *prometheus.CounterVec   // endpoint, code
	callSeconds  *prometheus.HistogramVec // endpoint
	retries      prometheus.Counter
	throttled    prometheus.Counter
	deadLetters  prometheus.Counter
	held         prometheus.Gauge
	waiting      prometheus.Gauge
	pending      prometheus.Gauge
	redelivered  prometheus.Counter
	takeovers    prometheus.Counter
	eventBatches *prometheus.CounterVec // result
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		commands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "esim_dispatcher_commands_total", Help: "Command messages finished, by result (acked, deadlettered, handed_back at a stop or a lost pin).",
		}, []string{"result"}),
		devices: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "esim_dispatcher_devices_total", Help: "Devices settled by the dispatcher, by status event (accepted, rejected, failed), or skipped (a redelivery whose earlier delivery settled them).",
		}, []string{"status"}),
		batches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "esim_dispatcher_batches_total", Help: "ThingSpace bulk calls that got a requestId, by action.",
		}, []string{"action"}),
		batchFull: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "esim_dispatcher_batches_full_total", Help: "Batches that left full.",
		}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "esim_dispatcher_batch_devices", Help: "Devices per ThingSpace call.",
			Buckets: []float64{1, 10, 100, 500, 1000, 2500, 5000, 7500, 10000},
		}),
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "esim_dispatcher_thingspace_calls_total", Help: "ThingSpace calls by endpoint and answer class (2xx, 400, 429, 5xx, error...).",
		}, []string{"endpoint", "code"}),
		callSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "esim_dispatcher_thingspace_call_seconds", Help: "ThingSpace call latency.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14),
		}, []string{"endpoint"}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "esim_dispatcher_retries_total", Help: "ThingSpace calls tried again after a retryable error.",
		}),
		throttled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "esim_dispatcher_throttled_total", Help: "429 answers from ThingSpace.",
		}),
		deadLetters: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "esim_dispatcher_deadletters_total", Help: "Commands sent to the dead-letter subject.",
		}),
		held: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "esim_dispatcher_commands_held", Help: "Commands taken in and not yet acknowledged.",
		}),
		waiting: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "esim_dispatcher_devices_parked", Help: "Devices of held commands not in a batch: waiting for an earlier command of theirs, or in a call.",
		}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "esim_dispatcher_consumer_pending", Help: "Commands in the stream not yet delivered to the dispatchers (consumer lag).",
		}),
		redelivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "esim_dispatcher_redelivered_commands_total", Help: "Commands delivered more than once (their devices an earlier delivery settled are skipped).",
		}),
		eventBatches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "esim_dispatcher_event_batches_total", Help: "Atomic batches of status events, by result (committed, refused_<JetStream error code>: its events then went one by one).",
		}, []string{"result"}),
		takeovers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "esim_dispatcher_takeovers_total", Help: "Times this dispatcher took the consumer's pin (and read the commands delivered before, not acknowledged).",
		}),
	}
	reg.MustRegister(m.commands, m.devices, m.batches, m.batchFull, m.batchSize, m.calls, m.callSeconds,
		m.retries, m.throttled, m.deadLetters, m.held, m.waiting, m.pending, m.redelivered, m.takeovers, m.eventBatches)
	return m
}
