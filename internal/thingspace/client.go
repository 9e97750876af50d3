package thingspace

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/esim-pipeline/thingspace-esim/internal/command"
)

// Paths of the endpoints the client calls, under the base URL.
const (
	TokenPath     = "/api/ts/v1/oauth2/token"
	LoginPath     = "/api/m2m/v1/session/login"
	LogoutPath    = "/api/m2m/v1/session/logout"
	CallbacksPath = "/api/m2m/v1/callbacks/"
)

// HeaderSession is the header that carries the M2M session token.
const HeaderSession = "VZ-M2M-Token"

// DefaultBaseURL is production ThingSpace.
const DefaultBaseURL = "https://thingspace.verizon.com"

// Log field names.
const (
	fieldMethod   = "method"
	fieldPath     = "path"
	fieldStatus   = "status"
	fieldDuration = "duration"
	fieldAction   = "action"
	fieldDevices  = "devices"
)

// maxAnswer bounds how much of an answer body is read.
const maxAnswer = 16 << 20

// Config configures a [Client]. Zero values take the defaults noted.
type Config struct {
	// BaseURL is ThingSpace's address, scheme and host only. Default
	// https://thingspace.verizon.com.
	BaseURL string
	// ClientID and ClientSecret are the OAuth2 client credentials. Required.
	ClientID, ClientSecret string
	// Username and Password log the M2M session in. Required.
	Username, Password string
	// HTTPClient sends every call. Default: a keep-alive client without its
	// own timeout (Timeout applies per call).
	HTTPClient *http.Client
	// Timeout bounds each HTTP call (token, login and business calls
	// alike). Default 30s.
	Timeout time.Duration
	// Logger receives a debug line per call. Default: no logging.
	Logger zerolog.Logger
	// LoginBackoff is how long logins are refused after a failed one, so a
	// wrong password never turns into a loop that locks the account (five
	// failed logins in a row do). Default 1m.
	LoginBackoff time.Duration
}

func (c *Config) setDefaults() {
	if c.BaseURL == "" {
		c.BaseURL = DefaultBaseURL
	}
	c.BaseURL = strings.TrimRight(c.BaseURL, "/")
	if c.HTTPClient == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConns = 100
		t.MaxIdleConnsPerHost = 32
		c.HTTPClient = &http.Client{Transport: t}
	}
	if c.Timeout == 0 {
		c.Timeout = 30 * time.Second
	}
	if c.LoginBackoff == 0 {
		c.LoginBackoff = time.Minute
	}
}

// Validate reports the first setting that cannot work.
func (c Config) Validate() error {
	u, err := url.Parse(c.BaseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("thingspace: BaseURL %q: want http(s)://host", c.BaseURL)
	}
	for _, f := range []struct{ name, v string }{
		{"ClientID", c.ClientID}, {"ClientSecret", c.ClientSecret},
		{"Username", c.Username}, {"Password", c.Password},
	} {
		if f.v == "" {
			return fmt.Errorf("thingspace: %s is required", f.name)
		}
	}
	if c.Timeout < 0 {
		return fmt.Errorf("thingspace: Timeout %s must be positive", c.Timeout)
	}
	if c.LoginBackoff < 0 {
		return fmt.Errorf("thingspace: LoginBackoff %s must not be negative", c.LoginBackoff)
	}
	return nil
}

// Client calls ThingSpace. It is safe for concurrent use. It holds one API
// token and one M2M session, obtained on first use; when ThingSpace says
// either has expired, the first caller to notice logs in again while the
// others wait for that login, and each retries its call once.
type Client struct {
	cfg      Config
	hc       *http.Client
	log      zerolog.Logger
	cc       clientcredentials.Config
	oauthCtx context.Context

	gate chan struct{} // one authentication at a time

	mu       sync.Mutex // guards the fields below
	ts       oauth2.TokenSource
	session  string
	gen      uint64 // counts successful logins
	failedAt time.Time
	lastErr  error
}

// New checks cfg and returns a client. It does not call ThingSpace.
func New(cfg Config) (*Client, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	oauthHC := *cfg.HTTPClient
	if oauthHC.Timeout == 0 || oauthHC.Timeout > cfg.Timeout {
		oauthHC.Timeout = cfg.Timeout
	}
	c := &Client{
		cfg:      cfg,
		hc:       cfg.HTTPClient,
		log:      cfg.Logger.With().Str("component", "thingspace").Logger(),
		oauthCtx: context.WithValue(context.Background(), oauth2.HTTPClient, &oauthHC),
		gate:     make(chan struct{}, 1),
		cc: clientcredentials.Config{
			ClientID:     cfg.ClientID,
			ClientSecret: cfg.ClientSecret,
			TokenURL:     cfg.BaseURL + TokenPath,
			AuthStyle:    oauth2.AuthStyleInHeader,
		},
	}
	c.ts = c.newTokenSource()
	return c, nil
}

// newTokenSource caches API tokens with oauth2.ReuseTokenSource over
// clientcredentials; every fetch honours the login back-off.
func (c *Client) newTokenSource() oauth2.TokenSource {
	return oauth2.ReuseTokenSource(nil, tokenFetcher{c})
}

// tokenFetcher gets a new API token, unless a login failed within
// LoginBackoff. The ReuseTokenSource above it serializes fetches, so a burst
// of callers after a failure gets one fetch, then refusals.
type tokenFetcher struct{ c *Client }

func (f tokenFetcher) Token() (*oauth2.Token, error) {
	if err := f.c.refused(); err != nil {
		return nil, err
	}
	tok, err := f.c.cc.Token(f.c.oauthCtx)
	if err != nil {
		return nil, f.c.failed("getting an API token", f.c.oauthError(err))
	}
	return tok, nil
}

// refused returns an error while logins are refused after a failed one.
func (c *Client) refused() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.failedAt.IsZero() {
		return nil
	}
	if wait := c.cfg.LoginBackoff - time.Since(c.failedAt); wait > 0 {
		return &loginError{what: "refused after a failed login", cause: c.lastErr, wait: wait}
	}
	return nil
}

// ProfileAction submits a profile action (a name of package command's
// action table) and returns ThingSpace's requestId. Callbacks follow, one
// per device (per profile, then per device, for device_suspend and
// device_resume).
func (c *Client) ProfileAction(ctx context.Context, action string, req ProfileRequest) (string, error) {
	path, ok := ActionPath(action)
	if !ok {
		return "", fmt.Errorf("thingspace: unknown profile action %q (want one of %s)", action, command.OneOf())
	}
	var out RequestIDResponse
	if err := c.call(ctx, http.MethodPost, path, req, &out); err != nil {
		return "", err
	}
	if out.RequestID == "" {
		return "", fmt.Errorf("thingspace: POST %s: answer has no requestId", path)
	}
	c.log.Debug().Str(fieldAction, action).Int(fieldDevices, len(req.Devices)).
		Str("request_id", out.RequestID).Msg("profile action accepted")
	return out.RequestID, nil
}

// RegisterCallback registers (or replaces) the account's listener reg.Name,
// usually [ServiceDeviceProfile].
func (c *Client) RegisterCallback(ctx context.Context, account string, reg CallbackRegistration) error {
	if reg.Name == "" || reg.URL == "" {
		return errors.New("thingspace: a callback registration needs a name and a url")
	}
	var ack CallbackAck
	return c.call(ctx, http.MethodPost, CallbacksPath+url.PathEscape(account), reg, &ack)
}

// ListCallbacks returns the account's registered listeners.
func (c *Client) ListCallbacks(ctx context.Context, account string) ([]CallbackService, error) {
	var out []CallbackService
	if err := c.call(ctx, http.MethodGet, CallbacksPath+url.PathEscape(account), nil, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// RemoveCallback removes the account's listener serviceName.
func (c *Client) RemoveCallback(ctx context.Context, account, serviceName string) error {
	var ack CallbackAck
	return c.call(ctx, http.MethodDelete,
		CallbacksPath+url.PathEscape(account)+"/name/"+url.PathEscape(serviceName), nil, &ack)
}

// RequestStatus asks what became of each device of a request.
func (c *Client) RequestStatus(ctx context.Context, account, requestID string) (*RequestStatus, error) {
	var out RequestStatus
	path := "/api/m2m/v2/accounts/" + url.PathEscape(account) + "/requests/" + url.PathEscape(requestID) + "/status"
	if err := c.call(ctx, http.MethodGet, path, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Logout ends the M2M session, if any. The next call logs in again.
func (c *Client) Logout(ctx context.Context) error {
	c.mu.Lock()
	sess := c.session
	c.session = ""
	c.mu.Unlock()
	if sess == "" {
		return nil
	}
	tok, err := c.token()
	if err != nil {
		return err
	}
	return c.send(ctx, http.MethodPost, LogoutPath, nil, creds{token: tok, session: sess}, nil)
}

// creds is what one call authenticates with.
type creds struct {
	token, session string
	gen            uint64
}

// call sends one business call, re-authenticating once when ThingSpace says
// the API token or the session has expired.
func (c *Client) call(ctx context.Context, method, path string, in, out any) error {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return fmt.Errorf("thingspace: %s %s: encoding the body: %w", method, path, err)
		}
	}
	cr, err := c.current(ctx)
	if err != nil {
		return err
	}
	err = c.send(ctx, method, path, body, cr, out)
	var newToken bool
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrTokenInvalid):
		newToken = true
	case errors.Is(err, ErrSessionExpired):
	default:
		return err
	}
	c.log.Debug().Str(fieldMethod, method).Str(fieldPath, path).Bool("new_token", newToken).
		Msg("credentials expired; authenticating again")
	if cr, err = c.renew(ctx, cr.gen, newToken); err != nil {
		return err
	}
	return c.send(ctx, method, path, body, cr, out)
}

// current returns the credentials to use, logging in first when there is
// no session yet.
func (c *Client) current(ctx context.Context) (creds, error) {
	c.mu.Lock()
	sess, gen := c.session, c.gen
	c.mu.Unlock()
	if sess == "" {
		return c.renew(ctx, gen, false)
	}
	tok, err := c.token()
	if err != nil {
		return creds{}, err
	}
	return creds{token: tok, session: sess, gen: gen}, nil
}

// token returns the API token, fetching a new one when the cached one is
// about to expire (clientcredentials' ReuseTokenSource).
func (c *Client) token() (string, error) {
	c.mu.Lock()
	ts := c.ts
	c.mu.Unlock()
	tok, err := ts.Token()
	if err != nil {
		return "", err
	}
	return tok.AccessToken, nil
}

// renew logs in again, unless another caller has done so since gen was
// read, in which case its result is used. newToken also replaces the API
// token first. Only one renewal runs at a time; a failure refuses further
// logins for LoginBackoff.
func (c *Client) renew(ctx context.Context, gen uint64, newToken bool) (creds, error) {
	select {
	case c.gate <- struct{}{}:
	case <-ctx.Done():
		return creds{}, fmt.Errorf("thingspace: waiting for a login: %w", ctx.Err())
	}
	defer func() { <-c.gate }()

	c.mu.Lock()
	if c.gen != gen && c.session != "" {
		sess, g := c.session, c.gen
		c.mu.Unlock()
		tok, err := c.token()
		if err != nil {
			return creds{}, err
		}
		return creds{token: tok, session: sess, gen: g}, nil
	}
	if newToken {
		c.ts = c.newTokenSource()
	}
	ts := c.ts
	c.mu.Unlock()
	if err := c.refused(); err != nil {
		return creds{}, err
	}

	tok, err := ts.Token()
	if err != nil {
		return creds{}, err
	}
	sess, err := c.login(ctx, tok.AccessToken)
	if err != nil && errors.Is(err, ErrTokenInvalid) && !newToken {
		// The cached token was refused at login: one fresh token, one more try.
		c.mu.Lock()
		c.ts = c.newTokenSource()
		ts = c.ts
		c.mu.Unlock()
		if tok, err = ts.Token(); err != nil {
			return creds{}, err
		}
		sess, err = c.login(ctx, tok.AccessToken)
	}
	if err != nil {
		if ctx.Err() != nil { // the caller gave up: not the account's fault
			return creds{}, err
		}
		return creds{}, c.failed("session login", err)
	}
	c.mu.Lock()
	c.session = sess
	c.gen++
	g := c.gen
	c.failedAt, c.lastErr = time.Time{}, nil
	c.mu.Unlock()
	c.log.Debug().Uint64("login", g).Msg("logged in")
	return creds{token: tok.AccessToken, session: sess, gen: g}, nil
}

// failed records a failed login and returns its error.
func (c *Client) failed(what string, cause error) error {
	c.mu.Lock()
	c.failedAt = time.Now()
	c.lastErr = cause
	c.mu.Unlock()
	c.log.Warn().Str("step", what).Str("error", cause.Error()).Dur("backoff", c.cfg.LoginBackoff).
		Msg("ThingSpace login failed; no new login during the back-off")
	return &loginError{what: what, cause: cause, wait: c.cfg.LoginBackoff}
}

// login opens an M2M session.
func (c *Client) login(ctx context.Context, token string) (string, error) {
	body, err := json.Marshal(struct {
		Username string `json:"username"`
		Password string `json:"password"`
	}{c.cfg.Username, c.cfg.Password})
	if err != nil {
		return "", err
	}
	var out struct {
		SessionToken string `json:"sessionToken"`
	}
	if err := c.send(ctx, http.MethodPost, LoginPath, body, creds{token: token}, &out); err != nil {
		return "", err
	}
	if out.SessionToken == "" {
		return "", fmt.Errorf("thingspace: POST %s: answer has no sessionToken", LoginPath)
	}
	return out.SessionToken, nil
}

// oauthError turns the oauth2 package's errors into an *APIError (its own
// Error text would quote the whole answer body).
func (c *Client) oauthError(err error) error {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) && re.Response != nil {
		return decodeError(re.Response, re.Body, http.MethodPost, TokenPath)
	}
	return c.transportError(context.Background(), http.MethodPost, TokenPath, err)
}

// send makes one HTTP call with the given credentials and decodes a 2xx
// answer into out; any other answer is an *APIError.
func (c *Client) send(ctx context.Context, method, path string, body []byte, cr creds, out any) error {
	actx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(actx, method, c.cfg.BaseURL+path, rd)
	if err != nil {
		return fmt.Errorf("thingspace: %s %s: %w", method, path, err)
	}
	req.Header.Set("Authorization", "Bearer "+cr.token)
	if cr.session != "" {
		req.Header.Set(HeaderSession, cr.session)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")

	start := time.Now()
	resp, err := c.hc.Do(req)
	if err != nil {
		c.log.Debug().Str(fieldMethod, method).Str(fieldPath, path).Dur(fieldDuration, time.Since(start)).
			Str("error", err.Error()).Msg("thingspace call failed")
		return c.transportError(ctx, method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	c.log.Debug().Str(fieldMethod, method).Str(fieldPath, path).Int(fieldStatus, resp.StatusCode).
		Dur(fieldDuration, time.Since(start)).Msg("thingspace call")
	if err != nil {
		return c.transportError(ctx, method, path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return decodeError(resp, data, method, path)
	}
	if out == nil || len(bytes.TrimSpace(data)) == 0 {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("thingspace: %s %s: decoding the answer: %s", method, path, jsonErrorText(err))
	}
	return nil
}

// transportError classifies a failure to get an answer: the caller's
// cancellation stays itself (not retryable); the per-call timeout becomes
// ErrTimeout (retryable); connection errors keep their cause.
func (c *Client) transportError(ctx context.Context, method, path string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("thingspace: %s %s: %w", method, path, ctx.Err())
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err // its text repeats the URL
	}
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return fmt.Errorf("thingspace: %s %s: %w (after %s)", method, path, ErrTimeout, c.cfg.Timeout)
	}
	return fmt.Errorf("thingspace: %s %s: %w", method, path, err)
}
