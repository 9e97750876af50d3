package simulator

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"mime"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/time/rate"

	"github.com/esim-pipeline/thingspace-esim/internal/thingspace"
)

// Server is the simulator. Build it with [New], serve [Server.Handler],
// and run [Server.Start] for callback delivery; [Server.Close] stops it.
// It is safe for concurrent use.
type Server struct {
	cfg Config
	log zerolog.Logger
	now func() time.Time
	hc  *http.Client
	mux *http.ServeMux

	fmu      sync.RWMutex // guards faults, reject
	faults   Faults
	reject   map[string]bool
	limMu    sync.Mutex
	limiters map[string]*rate.Limiter

	rngMu sync.Mutex
	rng   *mrand.Rand

	amu          sync.Mutex // guards the auth state below
	token        string
	tokenExp     time.Time
	sessions     map[string]time.Time // session -> last use
	failedLogins int
	locked       bool

	cbmu      sync.RWMutex
	listeners map[string]map[string]thingspace.CallbackRegistration // account -> name -> registration

	rmu      sync.Mutex
	requests map[string]*request
	pruned   time.Time

	emu    sync.Mutex        // guards euiccs
	euiccs map[string]*euicc // eid -> what calls said of it

	calls      *ring[Call]
	deliveries *ring[Delivery]
	count      counters

	sched *scheduler
}

// New checks cfg and builds a simulator.
func New(cfg Config) (*Server, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Server{
		cfg:        cfg,
		log:        cfg.Logger.With().Str("component", "thingspace-sim").Logger(),
		now:        cfg.Now,
		hc:         cfg.HTTPClient,
		limiters:   map[string]*rate.Limiter{},
		rng:        mrand.New(mrand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)),
		sessions:   map[string]time.Time{},
		listeners:  map[string]map[string]thingspace.CallbackRegistration{},
		requests:   map[string]*request{},
		euiccs:     map[string]*euicc{},
		calls:      newRing[Call](cfg.HistoryLimit),
		deliveries: newRing[Delivery](cfg.HistoryLimit),
	}
	s.setFaults(cfg.Faults)
	s.sched = newScheduler(s, cfg.DeliveryWorkers)
	s.routes()
	return s, nil
}

// Handler serves the ThingSpace API and the admin endpoints under /sim/.
func (s *Server) Handler() http.Handler { return s.mux }

// Start runs the callback scheduler and delivery workers. Requests are
// accepted before Start; their callbacks wait for it.
func (s *Server) Start() { s.sched.start() }

// Close stops delivery: callbacks in flight are aborted, the rest dropped.
func (s *Server) Close() { s.sched.close() }

// SetFaults replaces the run-time faults (RatePerMinute 0 means the default).
func (s *Server) SetFaults(f Faults) error {
	f.setDefaults()
	if err := f.Validate(); err != nil {
		return err
	}
	s.setFaults(f)
	return nil
}

func (s *Server) setFaults(f Faults) {
	reject := make(map[string]bool, len(f.RejectDevices))
	for _, id := range f.RejectDevices {
		reject[strings.TrimSpace(id)] = true
	}
	f.RejectDevices = append([]string(nil), f.RejectDevices...)
	s.fmu.Lock()
	rateChanged := s.faults.RatePerMinute != f.RatePerMinute
	s.faults, s.reject = f, reject
	s.fmu.Unlock()
	if rateChanged {
		s.limMu.Lock()
		s.limiters = map[string]*rate.Limiter{}
		s.limMu.Unlock()
	}
}

// Faults returns the current faults.
func (s *Server) Faults() Faults {
	s.fmu.RLock()
	defer s.fmu.RUnlock()
	f := s.faults
	f.RejectDevices = append([]string(nil), f.RejectDevices...)
	return f
}

// ExpireTokens invalidates every API token: the next business call gets
// 401 fault 900901 and a token request issues a new one.
func (s *Server) ExpireTokens() {
	s.amu.Lock()
	s.token, s.tokenExp = "", time.Time{}
	s.amu.Unlock()
}

// ExpireSessions ends every M2M session: the next business call gets 400
// …SessionToken.Expired.
func (s *Server) ExpireSessions() {
	s.amu.Lock()
	s.sessions = map[string]time.Time{}
	s.amu.Unlock()
}

// Unlock clears a lockout and the count of failed logins.
func (s *Server) Unlock() {
	s.amu.Lock()
	s.locked, s.failedLogins = false, 0
	s.amu.Unlock()
}

// Calls returns the recorded calls, oldest first.
func (s *Server) Calls() []Call { return s.calls.list() }

// Deliveries returns the recorded callback attempts, oldest first.
func (s *Server) Deliveries() []Delivery { return s.deliveries.list() }

// Stats returns the running counts.
func (s *Server) Stats() Stats { return s.count.snapshot() }

// ResetRecords forgets recorded calls and deliveries (counters stay).
func (s *Server) ResetRecords() {
	s.calls.reset()
	s.deliveries.reset()
}

// Listeners returns the account's registered callback listeners.
func (s *Server) Listeners(account string) []thingspace.CallbackRegistration {
	s.cbmu.RLock()
	defer s.cbmu.RUnlock()
	out := make([]thingspace.CallbackRegistration, 0, len(s.listeners[account]))
	for _, r := range s.listeners[account] {
		out = append(out, r)
	}
	return out
}

// ---- routing ----

const (
	statusPathPrefix = "/api/m2m/v2/accounts/"
	// statusV1PathPrefix is the request status path Verizon's SDK calls
	// (AccountRequestsController); it answers {requestId, status} only.
	statusV1PathPrefix = "/api/m2m/v1/accounts/"
	serviceDevice      = "DeviceService"
	serviceSession     = "UnifiedWebService"
	serviceCallback    = "CallbackService"
)

func (s *Server) routes() {
	m := http.NewServeMux()
	m.HandleFunc(thingspace.TokenPath, s.record(s.handleToken, false))
	m.HandleFunc(thingspace.LoginPath, s.record(s.handleLogin, false))
	m.HandleFunc(thingspace.LogoutPath, s.record(s.handleLogout, false))
	m.HandleFunc(thingspace.CallbacksPath+"{account}", s.record(s.handleCallbacks, true))
	m.HandleFunc(thingspace.CallbacksPath+"{account}/name/{service}", s.record(s.handleCallbackDelete, true))
	m.HandleFunc(thingspace.ActionPathPrefix+"{action}", s.record(s.handleAction, true))
	m.HandleFunc(statusPathPrefix+"{account}/requests/{requestId}/status", s.record(s.handleStatus, true))
	m.HandleFunc(statusV1PathPrefix+"{account}/requests/{requestId}/status", s.record(s.handleStatusV1, true))
	s.adminRoutes(m)
	m.HandleFunc("/", s.record(s.handleUnknown, false))
	s.mux = m
}

type ctxKey struct{}

// callOf returns the record of the call being answered.
func callOf(r *http.Request) *Call {
	c, _ := r.Context().Value(ctxKey{}).(*Call)
	if c == nil {
		return &Call{}
	}
	return c
}

// recorder notes the status and error code answered.
type recorder struct {
	http.ResponseWriter
	status int
}

func (w *recorder) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *recorder) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *recorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// record wraps a handler: it records the call, and for business calls
// (faulty=true) applies latency, dropped connections and 5xx first.
func (s *Server) record(h http.HandlerFunc, faulty bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		c := &Call{At: s.now(), Method: r.Method, Path: r.URL.Path}
		if seg, ok := strings.CutPrefix(r.URL.Path, thingspace.ActionPathPrefix); ok {
			c.Action, _ = thingspace.ActionForPath(seg)
		}
		rec := &recorder{ResponseWriter: w}
		r = r.WithContext(context.WithValue(r.Context(), ctxKey{}, c))
		defer func() {
			c.Status = rec.status
			s.calls.add(*c)
			s.log.Debug().Str("method", c.Method).Str("path", c.Path).Int("status", c.Status).
				Str("action", c.Action).Int("devices", c.DeviceCount).Dur("duration", time.Since(start)).Msg("call")
		}()
		if faulty && s.injectFault(rec, r, c) {
			return
		}
		h(rec, r)
	}
}

// injectFault applies Latency, DropShare and ErrorShare; true when it answered.
func (s *Server) injectFault(w http.ResponseWriter, r *http.Request, c *Call) bool {
	f := s.Faults()
	if f.Latency > 0 {
		t := time.NewTimer(f.Latency)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return true
		}
	}
	if f.DropShare > 0 && s.draw() < f.DropShare {
		_, _ = io.Copy(io.Discard, io.LimitReader(r.Body, 64<<20))
		c.Dropped = true
		if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
			_ = conn.Close()
			return true
		}
		// Cannot hijack (HTTP/2): abort the handler, which resets the stream.
		panic(http.ErrAbortHandler)
	}
	if f.ErrorShare > 0 && s.draw() < f.ErrorShare {
		s.businessError(w, c, http.StatusInternalServerError, serviceDevice, thingspace.CodeUnexpectedError,
			"An unexpected error occurred; please retry the request.")
		return true
	}
	return false
}

func (s *Server) draw() float64 {
	s.rngMu.Lock()
	defer s.rngMu.Unlock()
	return s.rng.Float64()
}

// ---- error bodies ----

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// businessError answers {"errorCode","errorMessage"}. The code is
// service.errCode, except on the Global eSIM endpoints, whose pages and
// Verizon's SDK (GIORestErrorResponse) give the HTTP status as three digits
// ("400"): there only msg says what is wrong. A session refused on them
// keeps its dotted code: it comes from the session layer in front of every
// endpoint.
func (s *Server) businessError(w http.ResponseWriter, c *Call, code int, service, errCode, msg string) {
	c.ErrorCode = service + "." + errCode
	if service == serviceDevice && thingspace.IsGlobal(c.Action) {
		c.ErrorCode = strconv.Itoa(code)
	}
	writeJSON(w, code, map[string]string{"errorCode": c.ErrorCode, "errorMessage": msg})
}

func (s *Server) gatewayFault(w http.ResponseWriter, c *Call, code int, fault, msg, desc string) {
	c.ErrorCode = fault
	writeJSON(w, code, map[string]any{"fault": map[string]string{"code": fault, "message": msg, "description": desc}})
}

func (s *Server) oauthError(w http.ResponseWriter, c *Call, code int, oauthCode, desc string) {
	c.ErrorCode = oauthCode
	if code == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Basic realm="thingspace"`)
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, code, map[string]string{"error": oauthCode, "error_description": desc})
}

func (s *Server) invalidToken(w http.ResponseWriter, c *Call, r *http.Request) {
	s.gatewayFault(w, c, http.StatusUnauthorized, thingspace.FaultInvalidCredentials, "Invalid Credentials",
		"Access failure for API: "+r.URL.Path+". Make sure you have given the correct access token")
}

func (s *Server) handleUnknown(w http.ResponseWriter, r *http.Request) {
	s.gatewayFault(w, callOf(r), http.StatusBadRequest, thingspace.FaultNoMatchingResource,
		"No matching resource found for given API Request",
		"The requested resource ("+r.Method+" "+r.URL.Path+") is not available.")
}

// ---- OAuth2 token ----

func (s *Server) handleToken(w http.ResponseWriter, r *http.Request) {
	c := callOf(r)
	if r.Method != http.MethodPost {
		s.handleUnknown(w, r)
		return
	}
	if err := r.ParseForm(); err != nil {
		s.count.tokenFailures.Add(1)
		s.oauthError(w, c, http.StatusBadRequest, "invalid_request", "the body must be a form")
		return
	}
	id, secret, basic := r.BasicAuth()
	if !basic {
		id, secret = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	}
	if id == "" {
		s.count.tokenFailures.Add(1)
		s.oauthError(w, c, http.StatusUnauthorized, "invalid_client", "client authentication is required")
		return
	}
	if !matches(id, s.cfg.ClientID, basic) || !matches(secret, s.cfg.ClientSecret, basic) {
		s.count.tokenFailures.Add(1)
		s.oauthError(w, c, http.StatusUnauthorized, "invalid_client", "client authentication failed")
		return
	}
	switch gt := r.PostForm.Get("grant_type"); gt {
	case "client_credentials":
	case "":
		s.count.tokenFailures.Add(1)
		s.oauthError(w, c, http.StatusBadRequest, "invalid_request", "grant_type is required")
		return
	default:
		s.count.tokenFailures.Add(1)
		s.oauthError(w, c, http.StatusBadRequest, "unsupported_grant_type", "only client_credentials is supported")
		return
	}
	now := s.now()
	s.amu.Lock()
	if s.token == "" || !now.Before(s.tokenExp) {
		s.token, s.tokenExp = newSecret(), now.Add(s.cfg.TokenLifetime)
		s.count.tokensIssued.Add(1)
	}
	tok, left := s.token, s.tokenExp.Sub(now)
	s.amu.Unlock()
	s.count.tokenGrants.Add(1)
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, map[string]any{
		"access_token": tok,
		"token_type":   "bearer",
		"expires_in":   int64(math.Ceil(left.Seconds())),
		"scope":        "discovery:read serviceprofile:read serviceprofile:write serviceregistry:read serviceregistry:write",
	})
}

// matches compares a client credential with the configured one. In Basic
// credentials RFC 6749 2.3.1 form-encodes each part first (golang.org/x/oauth2
// does), while Verizon's SDKs send them raw: either reading is accepted, so a
// secret with "+" or "%" works both ways.
func matches(got, want string, basic bool) bool {
	if subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1 {
		return true
	}
	if !basic {
		return false
	}
	u, err := url.QueryUnescape(got)
	return err == nil && subtle.ConstantTimeCompare([]byte(u), []byte(want)) == 1
}

func newSecret() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// tokenValid checks the bearer token.
func (s *Server) tokenValid(r *http.Request) bool {
	h := r.Header.Get("Authorization")
	const p = "bearer "
	if len(h) <= len(p) || !strings.EqualFold(h[:len(p)], p) {
		return false
	}
	tok := strings.TrimSpace(h[len(p):])
	now := s.now()
	s.amu.Lock()
	defer s.amu.Unlock()
	return s.token != "" && tok == s.token && now.Before(s.tokenExp)
}

// sessionValid checks and touches the session (sliding expiry).
func (s *Server) sessionValid(r *http.Request) bool {
	sess := r.Header.Get(thingspace.HeaderSession)
	if sess == "" {
		return false
	}
	now := s.now()
	s.amu.Lock()
	defer s.amu.Unlock()
	last, ok := s.sessions[sess]
	if !ok {
		return false
	}
	if now.Sub(last) >= s.cfg.SessionIdle {
		delete(s.sessions, sess)
		return false
	}
	s.sessions[sess] = now
	return true
}

// authorize checks both tokens of a business call; false when it answered.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request) bool {
	c := callOf(r)
	if !s.tokenValid(r) {
		s.invalidToken(w, c, r)
		return false
	}
	if !s.sessionValid(r) {
		s.businessError(w, c, http.StatusBadRequest, serviceSession, thingspace.CodeSessionExpired,
			"Session token is expired or invalid; log in again.")
		return false
	}
	return true
}

func isJSON(r *http.Request) bool {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	return err == nil && mt == "application/json"
}

func (s *Server) wrongContentType(w http.ResponseWriter, c *Call, service string) {
	s.businessError(w, c, http.StatusUnsupportedMediaType, service, "INPUT_INVALID.ContentType.Invalid",
		"Content-Type must be application/json")
}

// decode reads a JSON body; false when it answered 400.
func (s *Server) decode(w http.ResponseWriter, r *http.Request, service string, v any) bool {
	c := callOf(r)
	body, err := io.ReadAll(io.LimitReader(r.Body, 64<<20))
	if err == nil {
		err = json.Unmarshal(body, v)
	}
	if err != nil {
		s.businessError(w, c, http.StatusBadRequest, service, "INPUT_INVALID.Request.Body.Invalid",
			"The request body is not valid JSON for this request: "+jsonProblem(err))
		return false
	}
	if pr, ok := v.(*thingspace.ProfileRequest); ok && len(pr.Devices) <= recordDevices {
		c.Body = body
	}
	return true
}

func jsonProblem(err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("malformed at byte %d", se.Offset)
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Sprintf("%s has the wrong type (%s)", te.Field, te.Value)
	}
	return "unreadable"
}

// ---- session ----

func (s *Server) handleLogin(w http.ResponseWriter, r *http.Request) {
	c := callOf(r)
	if r.Method != http.MethodPost {
		s.handleUnknown(w, r)
		return
	}
	if !s.tokenValid(r) {
		s.invalidToken(w, c, r)
		return
	}
	if !isJSON(r) {
		s.wrongContentType(w, c, serviceSession)
		return
	}
	var in struct {
		Username string `json:"username"`
		Password string `json:"password"`
	}
	if !s.decode(w, r, serviceSession, &in) {
		return
	}
	s.amu.Lock()
	if s.locked {
		s.amu.Unlock()
		s.count.loginFailures.Add(1)
		s.businessError(w, c, http.StatusBadRequest, serviceSession, "REQUEST_FAILED.Account.Locked",
			fmt.Sprintf("The account is locked after %d failed logins; contact M2M Support.", s.cfg.LockoutAfter))
		return
	}
	if in.Username != s.cfg.Username || in.Password != s.cfg.Password {
		s.failedLogins++
		if s.failedLogins >= s.cfg.LockoutAfter {
			s.locked = true
		}
		s.amu.Unlock()
		s.count.loginFailures.Add(1)
		s.businessError(w, c, http.StatusBadRequest, serviceSession, "INPUT_INVALID.Credentials.Invalid",
			"Invalid username or password.")
		return
	}
	s.failedLogins = 0
	sess := newSecret()
	s.sessions[sess] = s.now()
	s.amu.Unlock()
	s.count.logins.Add(1)
	writeJSON(w, http.StatusOK, map[string]string{"sessionToken": sess})
}

func (s *Server) handleLogout(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		s.handleUnknown(w, r)
		return
	}
	if !s.authorize(w, r) {
		return
	}
	sess := r.Header.Get(thingspace.HeaderSession)
	s.amu.Lock()
	delete(s.sessions, sess)
	s.amu.Unlock()
	s.count.logouts.Add(1)
	// The SDK's LogOutRequest: "The session token is returned to confirm
	// that it was invalidated."
	writeJSON(w, http.StatusOK, map[string]string{"sessionToken": sess})
}

// ---- callback registration ----

var accountRE = regexp.MustCompile(`^[0-9][0-9-]{0,63}$`)

func (s *Server) handleCallbacks(w http.ResponseWriter, r *http.Request) {
	c := callOf(r)
	if r.Method != http.MethodPost && r.Method != http.MethodGet {
		s.handleUnknown(w, r)
		return
	}
	if !s.authorize(w, r) {
		return
	}
	account := r.PathValue("account")
	c.Account = account
	if !accountRE.MatchString(account) {
		s.businessError(w, c, http.StatusBadRequest, serviceCallback, thingspace.CodeAccountInvalid,
			"Account name "+strconv.Quote(account)+" is invalid.")
		return
	}
	if r.Method == http.MethodGet {
		s.cbmu.RLock()
		out := make([]listedCallback, 0, len(s.listeners[account]))
		for _, reg := range s.listeners[account] {
			out = append(out, listedCallback{AccountName: account, ServiceName: reg.Name, Name: reg.Name, URL: reg.URL,
				Username: reg.Username, Password: reg.Password})
		}
		s.cbmu.RUnlock()
		slices.SortFunc(out, func(a, b listedCallback) int { return strings.Compare(a.ServiceName, b.ServiceName) })
		writeJSON(w, http.StatusOK, out)
		return
	}
	if !isJSON(r) {
		s.wrongContentType(w, c, serviceCallback)
		return
	}
	var reg thingspace.CallbackRegistration
	if !s.decode(w, r, serviceCallback, &reg) {
		return
	}
	if reg.Name == "" {
		s.businessError(w, c, http.StatusBadRequest, serviceCallback, "INPUT_INVALID.Callback.Name.Invalid", "name is required.")
		return
	}
	if u, err := url.Parse(reg.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		s.businessError(w, c, http.StatusBadRequest, serviceCallback, "INPUT_INVALID.Callback.Url.Invalid",
			"url must be an absolute http(s) URL.")
		return
	}
	s.cbmu.Lock()
	if s.listeners[account] == nil {
		s.listeners[account] = map[string]thingspace.CallbackRegistration{}
	}
	s.listeners[account][reg.Name] = reg
	s.cbmu.Unlock()
	s.log.Info().Str("account_name", account).Str("service", reg.Name).Str("url", reg.URL).Msg("callback listener registered")
	writeJSON(w, http.StatusOK, thingspace.CallbackAck{AccountName: account, ServiceName: reg.Name})
}

// listedCallback is one listener in GET /callbacks/{account}, as Verizon's
// SDK reads it (ConnectivityManagementCallback: accountName, serviceName,
// url, and the username and password given at registration, "or an empty
// string if no password was defined"), plus "name", the older reading of
// serviceName. ThingSpace sends the same credentials in every callback body,
// so listing them gives away nothing the listener does not get; they are
// never logged.
type listedCallback struct {
	AccountName string `json:"accountName"`
	ServiceName string `json:"serviceName"`
	Name        string `json:"name"`
	URL         string `json:"url"`
	Username    string `json:"username"`
	Password    string `json:"password"`
}

func (s *Server) handleCallbackDelete(w http.ResponseWriter, r *http.Request) {
	c := callOf(r)
	if r.Method != http.MethodDelete {
		s.handleUnknown(w, r)
		return
	}
	if !s.authorize(w, r) {
		return
	}
	account, name := r.PathValue("account"), r.PathValue("service")
	c.Account = account
	s.cbmu.Lock()
	_, ok := s.listeners[account][name]
	delete(s.listeners[account], name)
	s.cbmu.Unlock()
	if !ok {
		s.businessError(w, c, http.StatusBadRequest, serviceCallback, "REQUEST_FAILED.Callback.NotFound",
			"No callback named "+strconv.Quote(name)+" is registered for the account.")
		return
	}
	writeJSON(w, http.StatusOK, thingspace.CallbackAck{AccountName: account, ServiceName: name})
}

func (s *Server) listener(account string) (thingspace.CallbackRegistration, bool) {
	s.cbmu.RLock()
	defer s.cbmu.RUnlock()
	reg, ok := s.listeners[account][thingspace.ServiceDeviceProfile]
	return reg, ok
}
