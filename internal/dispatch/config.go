package dispatch

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/esim-pipeline/thingspace-esim/internal/batch"
	"github.com/esim-pipeline/thingspace-esim/internal/command"
	"github.com/esim-pipeline/thingspace-esim/internal/config"
	"github.com/esim-pipeline/thingspace-esim/internal/statuspub"
)

// Config is everything the dispatcher reads at start.
type Config struct {
	NATS     config.NATS
	LogLevel string

	// ThingSpace.
	BaseURL      string
	ClientID     string
	ClientSecret config.Secret
	Username     string
	Password     config.Secret
	// HTTPTimeout bounds one ThingSpace call (default 30s).
	HTTPTimeout time.Duration

	// Rate is ThingSpace calls per second (default 1.5, just under the
	// documented 100 a minute); Burst how many may go at once (default 1).
	Rate  float64
	Burst int
	// RateScope is what Rate counts: every call of the fleet together
	// ("fleet", the default) or each account's calls ("account").
	RateScope string
	// RateShared keeps the budget in NATS for the whole fleet of
	// dispatchers (default true); false keeps it in this process.
	RateShared bool

	// BatchMaxDevices is the most devices in one call (default and cap
	// 10,000); BatchMaxDevicesPerAction overrides it for one action.
	BatchMaxDevices          int
	BatchMaxDevicesPerAction map[string]int
	// BatchMaxWait is how long a batch may wait to fill (default 1s).
	BatchMaxWait time.Duration

	MetricsAddr    string
	StreamReplicas int

	// CallbackURL, when set, is registered as each account's
	// DeviceProfileService listener, with CallbackUsername/Password.
	CallbackURL      string
	CallbackUsername string
	CallbackPassword config.Secret
	// CallbackDeadline is how long an accepted device may wait for its
	// final callback (default 30m).
	CallbackDeadline time.Duration

	// What one dispatcher holds (taken in, not acknowledged): at most
	// MaxHeldCommands commands and MaxHeldDevices devices (defaults: three
	// full batches of each); a single command larger than that is taken
	// alone.
	MaxHeldCommands int
	MaxHeldDevices  int
	// AckWait is the consumer's ack wait; held commands are kept alive with
	// InProgress (default 30s).
	AckWait time.Duration
	// PinnedTTL is how long the active dispatcher may be silent before a
	// standby takes over (default 5s); it pulls at least every second.
	PinnedTTL time.Duration
	// MaxDeliver bounds deliveries of one command: a later delivery ends
	// its devices failed and dead-letters it (default 10). The consumer
	// itself redelivers without limit, so a command handed back is never
	// dropped by the server.
	MaxDeliver int
	// MaxAttempts bounds the tries of one ThingSpace call, made in place
	// while its commands stay held, before its devices end failed (default
	// 30); RetryMaxWait is the longest wait between two tries, a 5xx's
	// Retry-After included (default 30s).
	MaxAttempts  int
	RetryMaxWait time.Duration
	// ShutdownGrace bounds a stop: the call in flight and the storing of
	// outcomes get this long, then what is not acknowledged is handed back
	// (default 20s).
	ShutdownGrace time.Duration
	// StatusBatchMax, when set (100 or more, the server allows 1,000
	// unless its jetstream limits say more), stores status events in atomic
	// batches of that many: worth it when the servers fsync every write
	// (sync_interval: always, as the deploy files choose: 8x the events a
	// second), a loss when they do not (0.65x): BENCHMARKS.md lesson 15.
	// Default 0: each event alone.
	StatusBatchMax int
	// Checksums also checks Luhn and MOD 97-10 digits (default false).
	Checksums bool

	perAction map[string]*int // per-action batch sizes read by Declare
}

// pull is the longest one pull for commands waits: the active dispatcher
// asks the server at least this often, which keeps its pin.
const pull = time.Second

// Rate scopes.
const (
	RateScopeFleet   = "fleet"
	RateScopeAccount = "account"
)

// Declare adds every setting to s with its variable, flag and default.
func (c *Config) Declare(s *config.Set) {
	config.DeclareNATS(s, &c.NATS)
	config.DeclareLogLevel(s, &c.LogLevel)
	s.String(&c.BaseURL, "thingspace-base-url", "THINGSPACE_BASE_URL", "https://thingspace.verizon.com", "ThingSpace base URL")
	s.String(&c.ClientID, "thingspace-client-id", "THINGSPACE_CLIENT_ID", "", "OAuth2 client id")
	s.Secret(&c.ClientSecret, "thingspace-client-secret", "THINGSPACE_CLIENT_SECRET", "OAuth2 client secret")
	s.String(&c.Username, "thingspace-username", "THINGSPACE_USERNAME", "", "M2M session login user")
	s.Secret(&c.Password, "thingspace-password", "THINGSPACE_PASSWORD", "M2M session login password")
	s.Duration(&c.HTTPTimeout, "thingspace-timeout", "THINGSPACE_TIMEOUT", 30*time.Second, "timeout of one ThingSpace call")
	s.Float(&c.Rate, "thingspace-rate", "THINGSPACE_RATE", 1.5, "ThingSpace calls per second (0 = unlimited)")
	s.Int(&c.Burst, "thingspace-burst", "THINGSPACE_BURST", 1, "ThingSpace calls allowed at once above the rate")
	s.String(&c.RateScope, "thingspace-rate-scope", "THINGSPACE_RATE_SCOPE", RateScopeFleet, "what THINGSPACE_RATE counts: fleet (all calls) or account (each account's calls)")
	s.Bool(&c.RateShared, "thingspace-rate-shared", "THINGSPACE_RATE_SHARED", true, "share THINGSPACE_RATE across every dispatcher through NATS (false: per process)")
	s.Int(&c.BatchMaxDevices, "batch-max-devices", "BATCH_MAX_DEVICES", command.MaxDevices, "most devices in one ThingSpace call (1..10000)")
	c.perAction = map[string]*int{}
	for _, a := range command.Names() {
		p := new(int)
		s.Int(p, "batch-max-devices-"+a, "BATCH_MAX_DEVICES_"+strings.ToUpper(a), 0, "most devices in one "+a+" call (0 = BATCH_MAX_DEVICES)")
		c.perAction[a] = p
	}
	s.Duration(&c.BatchMaxWait, "batch-max-wait", "BATCH_MAX_WAIT", time.Second, "how long a batch may wait to fill")
	s.String(&c.MetricsAddr, "metrics-addr", "METRICS_ADDR", ":9090", "admin listener: /healthz, /readyz, /metrics")
	s.Int(&c.StreamReplicas, "stream-replicas", "STREAM_REPLICAS", 1, "replicas of the streams and buckets created (3 on a cluster)")
	s.String(&c.CallbackURL, "callback-url", "CALLBACK_URL", "", "URL registered as each account's DeviceProfileService callback listener")
	s.String(&c.CallbackUsername, "callback-username", "CALLBACK_USERNAME", "", "user name registered with the callback URL")
	s.Secret(&c.CallbackPassword, "callback-password", "CALLBACK_PASSWORD", "password registered with the callback URL")
	s.Duration(&c.CallbackDeadline, "callback-deadline", "CALLBACK_DEADLINE", 30*time.Minute, "how long an accepted device may wait for its final callback")
	s.Int(&c.MaxHeldCommands, "max-held-commands", "MAX_HELD_COMMANDS", 0, "commands one dispatcher holds un-acked at once (0 = 3 full batches)")
	s.Int(&c.MaxHeldDevices, "max-held-devices", "MAX_HELD_DEVICES", 0, "devices of the commands one dispatcher holds at once (0 = 3 full batches)")
	s.Duration(&c.AckWait, "ack-wait", "ACK_WAIT", 30*time.Second, "consumer ack wait; held commands are kept alive")
	s.Duration(&c.PinnedTTL, "pinned-ttl", "PINNED_TTL", 5*time.Second, "how long the active dispatcher may be silent before a standby takes over")
	s.Int(&c.MaxDeliver, "max-deliver", "MAX_DELIVER", 10, "deliveries of one command; a later one ends its devices failed, dead-lettered")
	s.Int(&c.MaxAttempts, "max-attempts", "MAX_ATTEMPTS", 30, "tries of one ThingSpace call, its commands held meanwhile, before its devices end failed")
	s.Duration(&c.RetryMaxWait, "retry-max-wait", "RETRY_MAX_WAIT", 30*time.Second, "longest wait between two tries of a call (caps a 5xx's Retry-After)")
	s.Duration(&c.ShutdownGrace, "shutdown-grace", "SHUTDOWN_GRACE", 20*time.Second, "how long a stop waits for the call in flight and the storing of outcomes")
	s.Int(&c.StatusBatchMax, "status-batch-max", "STATUS_BATCH_MAX", 0, "status events stored in one atomic batch, 100 to the server's limit (1000): with sync_interval: always (0: each alone)")
	s.Bool(&c.Checksums, "check-digits", "CHECK_DIGITS", false, "also verify Luhn (ICCID, IMEI) and MOD 97-10 (EID) check digits")
	s.Sensitive("CALLBACK_USERNAME")
	s.Required("THINGSPACE_CLIENT_ID", "THINGSPACE_CLIENT_SECRET", "THINGSPACE_USERNAME", "THINGSPACE_PASSWORD")
}

// setDefaults fills what was left zero, for configs built in code.
func (c *Config) setDefaults() {
	if c.BatchMaxDevicesPerAction == nil {
		c.BatchMaxDevicesPerAction = map[string]int{}
	}
	for a, p := range c.perAction {
		if *p > 0 {
			c.BatchMaxDevicesPerAction[a] = *p
		}
	}
	if c.NATS.URL == "" {
		c.NATS.URL = "nats://127.0.0.1:4222"
	}
	if c.HTTPTimeout <= 0 {
		c.HTTPTimeout = 30 * time.Second
	}
	if c.Burst < 1 {
		c.Burst = 1
	}
	if c.BatchMaxDevices <= 0 {
		c.BatchMaxDevices = command.MaxDevices
	}
	if c.BatchMaxWait <= 0 {
		c.BatchMaxWait = time.Second
	}
	if c.StreamReplicas <= 0 {
		c.StreamReplicas = 1
	}
	if c.CallbackDeadline <= 0 {
		c.CallbackDeadline = 30 * time.Minute
	}
	largest := c.BatchMaxDevices
	for _, n := range c.BatchMaxDevicesPerAction {
		largest = max(largest, n)
	}
	if c.MaxHeldCommands <= 0 {
		c.MaxHeldCommands = 3 * largest
	}
	if c.MaxHeldDevices <= 0 {
		c.MaxHeldDevices = 3 * largest
	}
	if c.AckWait <= 0 {
		c.AckWait = 30 * time.Second
	}
	if c.PinnedTTL <= 0 {
		c.PinnedTTL = 5 * time.Second
	}
	if c.MaxDeliver <= 0 {
		c.MaxDeliver = 10
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 30
	}
	if c.RetryMaxWait <= 0 {
		c.RetryMaxWait = 30 * time.Second
	}
	if c.ShutdownGrace <= 0 {
		c.ShutdownGrace = 20 * time.Second
	}
}

// Validate reports a config the dispatcher cannot run with, naming the variable.
func (c *Config) Validate() error {
	c.setDefaults()
	var errs []error
	if c.ClientID == "" {
		errs = append(errs, errors.New("THINGSPACE_CLIENT_ID is required"))
	}
	if c.ClientSecret.IsZero() {
		errs = append(errs, errors.New("THINGSPACE_CLIENT_SECRET is required"))
	}
	if c.Username == "" {
		errs = append(errs, errors.New("THINGSPACE_USERNAME is required"))
	}
	if c.Password.IsZero() {
		errs = append(errs, errors.New("THINGSPACE_PASSWORD is required"))
	}
	if u, err := url.Parse(c.BaseURL); err != nil || u.Scheme == "" || u.Host == "" {
		errs = append(errs, fmt.Errorf("THINGSPACE_BASE_URL: %q is not an absolute URL", c.BaseURL))
	}
	if c.RateScope == "" {
		c.RateScope = RateScopeFleet
	}
	if c.RateScope != RateScopeFleet && c.RateScope != RateScopeAccount {
		errs = append(errs, fmt.Errorf("THINGSPACE_RATE_SCOPE: %q is neither fleet nor account", c.RateScope))
	}
	if c.Rate < 0 {
		errs = append(errs, fmt.Errorf("THINGSPACE_RATE: %g is negative", c.Rate))
	}
	if c.CallbackURL != "" {
		if u, err := url.Parse(c.CallbackURL); err != nil || u.Scheme == "" || u.Host == "" {
			errs = append(errs, fmt.Errorf("CALLBACK_URL: %q is not an absolute URL", c.CallbackURL))
		}
	}
	if err := c.batchConfig().Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.StatusBatchMax < 0 || (c.StatusBatchMax > 0 && c.StatusBatchMax < statuspub.MinBatch) {
		errs = append(errs, fmt.Errorf("STATUS_BATCH_MAX: %d is neither 0 nor at least %d", c.StatusBatchMax, statuspub.MinBatch))
	}
	if c.AckWait < 3*time.Second {
		errs = append(errs, fmt.Errorf("ACK_WAIT: %s is shorter than 3s", c.AckWait))
	}
	if c.PinnedTTL < 2*pull {
		errs = append(errs, fmt.Errorf("PINNED_TTL: %s is shorter than two pulls (%s)", c.PinnedTTL, 2*pull))
	}
	return errors.Join(errs...)
}

func (c *Config) batchConfig() batch.Config {
	return batch.Config{MaxDevices: c.BatchMaxDevicesPerAction, Default: c.BatchMaxDevices, MaxWait: c.BatchMaxWait}
}
