package simulator

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/rs/zerolog"

	"github.com/esim-pipeline/thingspace-esim/internal/command"
)

// Demo credentials, accepted when none are configured.
const (
	DemoClientID     = "demo-client-id"
	DemoClientSecret = "demo-client-secret"
	DemoUsername     = "demo-user"
	DemoPassword     = "demo-password"
)

// Faults are the behaviours that can change while the simulator runs.
// Shares are probabilities in [0,1], drawn per device (callbacks) or per
// call (ErrorShare, DropShare).
type Faults struct {
	// CallbackDelay is how long after acceptance a device's callback is
	// sent (and between a warning and its final callback). Default 0.
	CallbackDelay time.Duration
	// WarningShare of devices first get a "warning" callback, then a final one.
	WarningShare float64
	// FailShare of devices get a Failed callback with a faultResponse.
	FailShare float64
	// DropFinalShare of devices never get their final callback, although the
	// request status endpoint reports the outcome (a lost callback).
	DropFinalShare float64
	// StuckShare of devices never settle: no final callback, and the request
	// status endpoint reports them pending forever.
	StuckShare float64
	// RatePerMinute bounds profile action calls per account (token bucket of
	// that size refilled over a minute); over it: 429 with Retry-After.
	// 0 means the default 100; negative means unlimited.
	RatePerMinute int
	// ErrorShare of business calls answer 500 (REQUEST_FAILED.UnexpectedError).
	ErrorShare float64
	// Latency is added to every business call.
	Latency time.Duration
	// DropShare of business calls have their connection closed without an answer.
	DropShare float64
	// RejectDevices are identifier values refused with 400
	// INPUT_INVALID.Device.Identifier.Invalid whenever a request names them.
	RejectDevices []string
}

// DefaultRatePerMinute is the rate documented for the sibling activate endpoint.
const DefaultRatePerMinute = 100

func (f *Faults) setDefaults() {
	if f.RatePerMinute == 0 {
		f.RatePerMinute = DefaultRatePerMinute
	}
}

// Validate checks shares are probabilities and durations not negative.
func (f Faults) Validate() error {
	for _, s := range []struct {
		name string
		v    float64
	}{
		{"WarningShare", f.WarningShare}, {"FailShare", f.FailShare}, {"DropFinalShare", f.DropFinalShare},
		{"StuckShare", f.StuckShare}, {"ErrorShare", f.ErrorShare}, {"DropShare", f.DropShare},
	} {
		if s.v < 0 || s.v > 1 || s.v != s.v {
			return fmt.Errorf("simulator: %s %v must be between 0 and 1", s.name, s.v)
		}
	}
	if f.CallbackDelay < 0 || f.Latency < 0 {
		return errors.New("simulator: CallbackDelay and Latency must not be negative")
	}
	return nil
}

// faultsJSON is Faults on the admin endpoint, durations as Go strings.
type faultsJSON struct {
	CallbackDelay  string   `json:"callbackDelay"`
	WarningShare   float64  `json:"warningShare"`
	FailShare      float64  `json:"failShare"`
	DropFinalShare float64  `json:"dropFinalShare"`
	StuckShare     float64  `json:"stuckShare"`
	RatePerMinute  int      `json:"ratePerMinute"`
	ErrorShare     float64  `json:"errorShare"`
	Latency        string   `json:"latency"`
	DropShare      float64  `json:"dropShare"`
	RejectDevices  []string `json:"rejectDevices"`
}

// MarshalJSON writes durations as Go duration strings ("250ms").
func (f Faults) MarshalJSON() ([]byte, error) {
	return json.Marshal(faultsJSON{
		CallbackDelay: f.CallbackDelay.String(), WarningShare: f.WarningShare, FailShare: f.FailShare,
		DropFinalShare: f.DropFinalShare, StuckShare: f.StuckShare, RatePerMinute: f.RatePerMinute,
		ErrorShare: f.ErrorShare, Latency: f.Latency.String(), DropShare: f.DropShare,
		RejectDevices: f.RejectDevices,
	})
}

// UnmarshalJSON reads what MarshalJSON writes; keys absent keep the
// receiver's values, so a partial document updates only what it names.
func (f *Faults) UnmarshalJSON(b []byte) error {
	cur := faultsJSON{
		CallbackDelay: f.CallbackDelay.String(), WarningShare: f.WarningShare, FailShare: f.FailShare,
		DropFinalShare: f.DropFinalShare, StuckShare: f.StuckShare, RatePerMinute: f.RatePerMinute,
		ErrorShare: f.ErrorShare, Latency: f.Latency.String(), DropShare: f.DropShare,
		RejectDevices: f.RejectDevices,
	}
	if err := json.Unmarshal(b, &cur); err != nil {
		return err
	}
	cd, err := time.ParseDuration(cur.CallbackDelay)
	if err != nil {
		return fmt.Errorf("callbackDelay: %w", err)
	}
	lat, err := time.ParseDuration(cur.Latency)
	if err != nil {
		return fmt.Errorf("latency: %w", err)
	}
	*f = Faults{
		CallbackDelay: cd, WarningShare: cur.WarningShare, FailShare: cur.FailShare,
		DropFinalShare: cur.DropFinalShare, StuckShare: cur.StuckShare, RatePerMinute: cur.RatePerMinute,
		ErrorShare: cur.ErrorShare, Latency: lat, DropShare: cur.DropShare, RejectDevices: cur.RejectDevices,
	}
	return nil
}

// Config configures a [Server]. Zero values take the defaults noted, which
// behave like ThingSpace; tests scale the durations down to milliseconds.
type Config struct {
	// ClientID and ClientSecret are the OAuth2 client credentials accepted.
	// Default DemoClientID / DemoClientSecret.
	ClientID, ClientSecret string
	// Username and Password are the M2M login accepted. Default DemoUsername
	// / DemoPassword.
	Username, Password string
	// TokenLifetime is how long an API token lives from first issue; asking
	// again within it returns the same token. Default 1h.
	TokenLifetime time.Duration
	// SessionIdle expires a session after this long without use (sliding).
	// Default 20m.
	SessionIdle time.Duration
	// LockoutAfter consecutive failed logins lock the account until
	// [Server.Unlock]. Default 5.
	LockoutAfter int
	// ResendInterval is the wait before resending a callback not answered
	// 2xx. Default 5m.
	ResendInterval time.Duration
	// MaxCallbackThreshold is the number of attempts per callback. Default 4.
	MaxCallbackThreshold int
	// CallbackTimeout bounds one callback POST. Default 30s.
	CallbackTimeout time.Duration
	// MaxDevices is the most devices one request may name. Default 10000.
	MaxDevices int
	// DeliveryWorkers is the number of concurrent callback senders. Default 64.
	DeliveryWorkers int
	// RequestRetention is how long the record of an accepted request is kept
	// for the status endpoint (and an unknown requestId answered after).
	// Default 1h.
	RequestRetention time.Duration
	// HistoryLimit is how many calls and deliveries are kept for inspection
	// (the oldest go first; counters are never trimmed). Default 10000.
	HistoryLimit int
	// Seed seeds the random draws (faults, outcomes). 0 picks one from the clock.
	Seed uint64
	// Now is the clock for token, session and rate decisions and for
	// records. Default time.Now. Delays still use real timers.
	Now func() time.Time
	// HTTPClient delivers callbacks. Default: keep-alive client sized to
	// DeliveryWorkers.
	HTTPClient *http.Client
	// Logger receives lifecycle lines at info and a line per call at debug.
	Logger zerolog.Logger

	// Faults are the initial faults; see [Server.SetFaults].
	Faults
}

func (c *Config) setDefaults() {
	def := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	def(&c.ClientID, DemoClientID)
	def(&c.ClientSecret, DemoClientSecret)
	def(&c.Username, DemoUsername)
	def(&c.Password, DemoPassword)
	dur := func(p *time.Duration, v time.Duration) {
		if *p == 0 {
			*p = v
		}
	}
	dur(&c.TokenLifetime, time.Hour)
	dur(&c.SessionIdle, 20*time.Minute)
	dur(&c.ResendInterval, 5*time.Minute)
	dur(&c.CallbackTimeout, 30*time.Second)
	dur(&c.RequestRetention, time.Hour)
	num := func(p *int, v int) {
		if *p == 0 {
			*p = v
		}
	}
	num(&c.LockoutAfter, 5)
	num(&c.MaxCallbackThreshold, 4)
	num(&c.MaxDevices, command.MaxDevices)
	num(&c.DeliveryWorkers, 64)
	num(&c.HistoryLimit, 10000)
	if c.Seed == 0 {
		c.Seed = uint64(time.Now().UnixNano())
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.HTTPClient == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConns = c.DeliveryWorkers * 2
		t.MaxIdleConnsPerHost = c.DeliveryWorkers
		t.MaxConnsPerHost = c.DeliveryWorkers
		c.HTTPClient = &http.Client{Transport: t}
	}
	c.Faults.setDefaults()
}

// Validate reports the first setting that cannot work.
func (c Config) Validate() error {
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"TokenLifetime", c.TokenLifetime}, {"SessionIdle", c.SessionIdle},
		{"ResendInterval", c.ResendInterval}, {"CallbackTimeout", c.CallbackTimeout},
		{"RequestRetention", c.RequestRetention},
	} {
		if d.v <= 0 {
			return fmt.Errorf("simulator: %s %s must be positive", d.name, d.v)
		}
	}
	for _, n := range []struct {
		name string
		v    int
	}{
		{"LockoutAfter", c.LockoutAfter}, {"MaxCallbackThreshold", c.MaxCallbackThreshold},
		{"MaxDevices", c.MaxDevices}, {"DeliveryWorkers", c.DeliveryWorkers}, {"HistoryLimit", c.HistoryLimit},
	} {
		if n.v <= 0 {
			return fmt.Errorf("simulator: %s %d must be positive", n.name, n.v)
		}
	}
	return c.Faults.Validate()
}
