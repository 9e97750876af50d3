package callback

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/esim-pipeline/thingspace-esim/internal/config"
	"github.com/esim-pipeline/thingspace-esim/internal/statuspub"
)

// Config is everything callback-ingest reads at start. Build it with
// [Config.Declare] and config.Set.Parse, or fill it in code (tests, the dev
// stack); zero values take the defaults written on each field.
type Config struct {
	// NATS is NATS_URL, NATS_CREDS and NATS_TLS_CA/CERT/KEY.
	NATS config.NATS
	// LogLevel is LOG_LEVEL; cmd uses it to build the logger.
	LogLevel string
	// ListenAddr is LISTEN_ADDR, the public callback listener (default ":8080";
	// ":0" picks a port).
	ListenAddr string
	// TLSCertFile is TLS_CERT_FILE and TLSKeyFile TLS_KEY_FILE: a PEM
	// certificate (chain) and its key. With both, LISTEN_ADDR serves HTTPS
	// only (TLS 1.2 or newer), and a pair rewritten in place is served to
	// new connections within certPollInterval; with neither, plain HTTP.
	TLSCertFile string
	TLSKeyFile  string
	// MaxConnections is MAX_CONNECTIONS: connections the public listener
	// serves at once; more wait in the kernel's backlog (default 2048).
	MaxConnections int
	// MetricsAddr is METRICS_ADDR, the admin listener: health, /metrics and
	// /devices/{id} (default ":9091").
	MetricsAddr string
	// Username is CALLBACK_USERNAME. With Password, callbacks must carry them
	// (HTTP Basic or the body's username/password); both empty: no check.
	Username string
	// Password is CALLBACK_PASSWORD.
	Password config.Secret
	// StreamReplicas is STREAM_REPLICAS, replicas of the streams and bucket
	// this service creates (default 1).
	StreamReplicas int
	// Storage of the streams this service creates: file (default) or memory.
	// Not a setting; the dev stack may choose memory.
	Storage jetstream.StorageType

	// CorrelationGrace is CORRELATION_GRACE: how long after receipt a callback
	// whose requestId has no record yet is redelivered, waiting for the
	// dispatcher to write it, before its event goes out without commandId
	// (default 15s).
	CorrelationGrace time.Duration
	// RetryDelay is FANOUT_RETRY_DELAY: the first redelivery delay of a
	// callback whose event could not be made yet (record pending, NATS
	// trouble); later ones grow by as much, up to five times it (default 1s).
	RetryDelay time.Duration
	// Workers is FANOUT_WORKERS: stored messages turned into events at once
	// (default 64).
	Workers int
	// MaxAckPending is FANOUT_MAX_ACK_PENDING: stored messages the fan-out
	// consumer may hold unacknowledged, including those waiting for a record
	// (default 20000). With group commit a stored message carries up to
	// GROUP_COMMIT_MAX callbacks; a message waiting for its record is handed
	// back with a delay and counts here meanwhile, so this is the room for
	// callbacks that beat their records, not a buffer (each pull loop
	// buffers at most maxPrefetch).
	MaxAckPending int
	// RecordCache is RECORD_CACHE: requestId records kept in memory (default
	// 1024; one record serves up to 10,000 callbacks).
	RecordCache int
	// StoreWorkers is STORE_WORKERS: stores to the callback stream under
	// way at most at once (default 4). A store begins beside another only
	// once half of GroupCommit callbacks wait for it, or the first waited
	// 2 ms: larger group commits answered more callbacks per CPU-second in
	// both sync modes (BENCHMARKS.md, lesson 9).
	StoreWorkers int
	// GroupCommit is GROUP_COMMIT_MAX: the most callbacks one stored message
	// may carry when many wait at once (default 64; 1 stores each alone).
	GroupCommit int
	// StoreTimeout is STORE_TIMEOUT: how long a callback waits for JetStream
	// to store it before the answer is 503, and the limit of each publish of
	// the fan-out (default 5s).
	StoreTimeout time.Duration
	// StatusBatchMax is STATUS_BATCH_MAX: the most status events stored in
	// one atomic batch, from every fan-out worker at once (0, the default:
	// each alone). With sync_interval: always a batch costs one fsync
	// instead of one per event (BENCHMARKS.md, lesson 15).
	StatusBatchMax int
	// ShutdownGrace is SHUTDOWN_GRACE: how long each stage of a graceful stop
	// (HTTP requests in flight, fan-out handlers in flight) may take
	// (default 20s).
	ShutdownGrace time.Duration
}

// Defaults of the fields above.
const (
	DefaultListenAddr       = ":8080"
	DefaultMetricsAddr      = ":9091"
	DefaultCorrelationGrace = 15 * time.Second
	DefaultRetryDelay       = time.Second
	DefaultWorkers          = 64
	DefaultMaxAckPending    = 20000
	DefaultRecordCache      = 1024
	DefaultStoreTimeout     = 5 * time.Second
	DefaultStoreWorkers     = 4
	DefaultGroupCommit      = 64
	DefaultShutdownGrace    = 20 * time.Second
	DefaultMaxConnections   = 2048
)

// Declare adds every setting of c to s, with its environment variable, flag
// and default.
func (c *Config) Declare(s *config.Set) {
	config.DeclareNATS(s, &c.NATS)
	config.DeclareLogLevel(s, &c.LogLevel)
	s.String(&c.ListenAddr, "listen-addr", "LISTEN_ADDR", DefaultListenAddr, "public callback listener (POST /callbacks, /healthz, /readyz)")
	s.String(&c.TLSCertFile, "tls-cert-file", "TLS_CERT_FILE", "", "PEM certificate (chain) of the callback listener; with TLS_KEY_FILE, LISTEN_ADDR is HTTPS only and the files are re-read every 2s")
	s.String(&c.TLSKeyFile, "tls-key-file", "TLS_KEY_FILE", "", "PEM private key of TLS_CERT_FILE")
	s.Int(&c.MaxConnections, "max-connections", "MAX_CONNECTIONS", DefaultMaxConnections, "connections the callback listener serves at once (more wait to be accepted)")
	s.String(&c.MetricsAddr, "metrics-addr", "METRICS_ADDR", DefaultMetricsAddr, "admin listener (/healthz, /readyz, /metrics, /devices/{id})")
	s.String(&c.Username, "callback-username", "CALLBACK_USERNAME", "", "user name callbacks must carry (Basic auth or body); empty with the password: no check")
	s.Sensitive("CALLBACK_USERNAME") // ThingSpace echoes it in callbacks: never logged
	s.Secret(&c.Password, "callback-password", "CALLBACK_PASSWORD", "password callbacks must carry")
	s.Int(&c.StreamReplicas, "stream-replicas", "STREAM_REPLICAS", 1, "replicas of the streams and bucket created (3 on a cluster)")
	s.Duration(&c.CorrelationGrace, "correlation-grace", "CORRELATION_GRACE", DefaultCorrelationGrace, "how long a callback may wait for its requestId record before its event goes out without commandId")
	s.Duration(&c.RetryDelay, "fanout-retry-delay", "FANOUT_RETRY_DELAY", DefaultRetryDelay, "redelivery delay of a callback whose event cannot be made yet")
	s.Int(&c.Workers, "fanout-workers", "FANOUT_WORKERS", DefaultWorkers, "callbacks turned into events concurrently")
	s.Int(&c.MaxAckPending, "fanout-max-ack-pending", "FANOUT_MAX_ACK_PENDING", DefaultMaxAckPending, "unacknowledged stored messages (each up to GROUP_COMMIT_MAX callbacks) the fan-out consumer may hold")
	s.Int(&c.RecordCache, "record-cache", "RECORD_CACHE", DefaultRecordCache, "requestId records kept in memory")
	s.Int(&c.StoreWorkers, "store-workers", "STORE_WORKERS", DefaultStoreWorkers, "stores to the callback stream under way at once")
	s.Int(&c.GroupCommit, "group-commit-max", "GROUP_COMMIT_MAX", DefaultGroupCommit, "most callbacks stored together in one message when many wait (1: each alone)")
	s.Duration(&c.StoreTimeout, "store-timeout", "STORE_TIMEOUT", DefaultStoreTimeout, "how long a store in JetStream may take before a callback is answered 503")
	s.Int(&c.StatusBatchMax, "status-batch-max", "STATUS_BATCH_MAX", 0, "status events stored in one atomic batch, 100 to the server's limit (1000): with sync_interval: always (0: each alone)")
	s.Duration(&c.ShutdownGrace, "shutdown-grace", "SHUTDOWN_GRACE", DefaultShutdownGrace, "limit of each stage of a graceful stop")
}

func (c *Config) setDefaults() {
	str := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	dur := func(p *time.Duration, v time.Duration) {
		if *p == 0 {
			*p = v
		}
	}
	num := func(p *int, v int) {
		if *p == 0 {
			*p = v
		}
	}
	str(&c.NATS.URL, "nats://127.0.0.1:4222")
	str(&c.LogLevel, "info")
	str(&c.ListenAddr, DefaultListenAddr)
	str(&c.MetricsAddr, DefaultMetricsAddr)
	num(&c.StreamReplicas, 1)
	num(&c.MaxConnections, DefaultMaxConnections)
	dur(&c.CorrelationGrace, DefaultCorrelationGrace)
	dur(&c.RetryDelay, DefaultRetryDelay)
	num(&c.Workers, DefaultWorkers)
	num(&c.MaxAckPending, DefaultMaxAckPending)
	num(&c.RecordCache, DefaultRecordCache)
	num(&c.StoreWorkers, DefaultStoreWorkers)
	num(&c.GroupCommit, DefaultGroupCommit)
	dur(&c.StoreTimeout, DefaultStoreTimeout)
	dur(&c.ShutdownGrace, DefaultShutdownGrace)
}

// Validate reports the first setting that cannot work, naming its variable.
// Zero values count as their defaults.
func (c Config) Validate() error {
	c.setDefaults()
	var errs []error
	addr := func(env, v string) {
		if _, _, err := net.SplitHostPort(v); err != nil {
			errs = append(errs, fmt.Errorf("%s: %q is not host:port: %w", env, v, err))
		}
	}
	if err := c.NATS.Validate(); err != nil {
		errs = append(errs, err)
	}
	addr("LISTEN_ADDR", c.ListenAddr)
	addr("METRICS_ADDR", c.MetricsAddr)
	if c.ListenAddr == c.MetricsAddr && !strings.HasSuffix(c.ListenAddr, ":0") {
		errs = append(errs, fmt.Errorf("METRICS_ADDR: %q is also LISTEN_ADDR; the admin listener must never be the callback port", c.MetricsAddr))
	}
	switch {
	case c.Username != "" && c.Password.IsZero():
		errs = append(errs, errors.New("CALLBACK_PASSWORD: missing required setting: CALLBACK_USERNAME is set"))
	case c.Username == "" && !c.Password.IsZero():
		errs = append(errs, errors.New("CALLBACK_USERNAME: missing required setting: CALLBACK_PASSWORD is set"))
	}
	switch {
	case c.TLSCertFile != "" && c.TLSKeyFile == "":
		errs = append(errs, errors.New("TLS_KEY_FILE: missing required setting: TLS_CERT_FILE is set"))
	case c.TLSCertFile == "" && c.TLSKeyFile != "":
		errs = append(errs, errors.New("TLS_CERT_FILE: missing required setting: TLS_KEY_FILE is set"))
	}
	if c.MaxConnections < 1 {
		errs = append(errs, fmt.Errorf("MAX_CONNECTIONS: %d must be at least 1", c.MaxConnections))
	}
	if c.StreamReplicas < 1 || c.StreamReplicas > 5 {
		errs = append(errs, fmt.Errorf("STREAM_REPLICAS: %d is out of range 1..5", c.StreamReplicas))
	}
	positive := func(env string, d time.Duration) {
		if d < 0 {
			errs = append(errs, fmt.Errorf("%s: %s must not be negative", env, d))
		}
	}
	positive("CORRELATION_GRACE", c.CorrelationGrace)
	positive("FANOUT_RETRY_DELAY", c.RetryDelay)
	positive("STORE_TIMEOUT", c.StoreTimeout)
	positive("SHUTDOWN_GRACE", c.ShutdownGrace)
	if c.Workers < 1 || c.Workers > 1024 {
		errs = append(errs, fmt.Errorf("FANOUT_WORKERS: %d is out of range 1..1024", c.Workers))
	}
	if c.MaxAckPending < c.Workers {
		errs = append(errs, fmt.Errorf("FANOUT_MAX_ACK_PENDING: %d is below FANOUT_WORKERS %d", c.MaxAckPending, c.Workers))
	}
	if c.StoreWorkers < 1 || c.StoreWorkers > 256 {
		errs = append(errs, fmt.Errorf("STORE_WORKERS: %d is out of range 1..256", c.StoreWorkers))
	}
	if c.GroupCommit < 1 || c.GroupCommit > 1024 {
		errs = append(errs, fmt.Errorf("GROUP_COMMIT_MAX: %d is out of range 1..1024", c.GroupCommit))
	}
	if c.StatusBatchMax < 0 || (c.StatusBatchMax > 0 && c.StatusBatchMax < statuspub.MinBatch) {
		errs = append(errs, fmt.Errorf("STATUS_BATCH_MAX: %d is neither 0 nor at least %d", c.StatusBatchMax, statuspub.MinBatch))
	}
	if c.RecordCache < 1 {
		errs = append(errs, fmt.Errorf("RECORD_CACHE: %d must be at least 1", c.RecordCache))
	}
	if len(errs) > 0 {
		return errs[0]
	}
	return nil
}

// authRequired reports whether callbacks must carry credentials.
func (c Config) authRequired() bool { return c.Username != "" || !c.Password.IsZero() }
