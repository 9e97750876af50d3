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
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Shape names which of ThingSpace's three error bodies an [APIError] came in.
type Shape string

// The error body shapes.
const (
	// ShapeBusiness is {"errorCode":"<Service>.<CLASS>.<Detail>","errorMessage":…},
	// or on the Global eSIM endpoints (command.Spec.Global)
	// {"errorCode":"400","errorMessage":…}: the HTTP status as three digits
	// (GIORestErrorResponse), so the message is all that says what is wrong.
	ShapeBusiness Shape = "business"
	// ShapeGateway is {"fault":{"code","message","description"}}.
	ShapeGateway Shape = "gateway"
	// ShapeOAuth is RFC 6749's {"error","error_description"}.
	ShapeOAuth Shape = "oauth"
	// ShapeNone is an error status whose body had none of the shapes.
	ShapeNone Shape = "none"
)

// Sentinels, matched with errors.Is.
var (
	// ErrSessionExpired: the M2M session token is expired or unknown
	// (errorCode …REQUEST_FAILED.SessionToken.Expired).
	ErrSessionExpired = errors.New("thingspace: session token expired")
	// ErrTokenInvalid: the API (OAuth2) token is expired or invalid
	// (gateway fault 900901 or 900902).
	ErrTokenInvalid = errors.New("thingspace: API token invalid or expired")
	// ErrRateLimited: HTTP 429.
	ErrRateLimited = errors.New("thingspace: rate limited")
	// ErrLoginFailed: getting a token or a session failed, or a login is
	// refused locally during the back-off that follows a failed one.
	ErrLoginFailed = errors.New("thingspace: login failed")
	// ErrTimeout: one HTTP call exceeded the client's per-call timeout (the
	// caller's own context was still live).
	ErrTimeout = errors.New("thingspace: call timed out")
)

// Gateway fault codes.
const (
	FaultInvalidCredentials = "900901"
	FaultTokenInactive      = "900902"
	FaultNoMatchingResource = "900906"
)

// Business error codes without their service prefix.
const (
	CodeSessionExpired      = "REQUEST_FAILED.SessionToken.Expired"
	CodeIdentifierInvalid   = "INPUT_INVALID.Device.Identifier.Invalid"
	CodeKindInvalid         = "INPUT_INVALID.Device.Kind.Invalid"
	CodeAccountInvalid      = "INPUT_INVALID.Device.Account.Invalid"
	CodeMaxRequestsExceeded = "INPUT_INVALID.MaxRequestsExceeded"
	CodeDeviceNotFound      = "REQUEST_FAILED.DeviceNotFound"
	CodeAccountNotFound     = "REQUEST_FAILED.AccountNotFound"
	CodeUnexpectedError     = "REQUEST_FAILED.UnexpectedError"
)

// APIError is an error answer from ThingSpace, in any of the three body
// shapes. errors.Is matches the sentinels above, and any *APIError target by
// its Code without the service prefix (and its HTTPStatus when set), so
//
//	errors.Is(err, &thingspace.APIError{Code: thingspace.CodeIdentifierInvalid})
//
// holds for an errorCode "DeviceService.INPUT_INVALID.Device.Identifier.Invalid".
type APIError struct {
	// HTTPStatus is the answer's status code.
	HTTPStatus int
	// Code is the full errorCode, the gateway fault code or the OAuth error.
	Code string
	// Message is errorMessage, the fault's message (and description) or
	// error_description, cut to a sane length.
	Message string
	// Shape is the body shape the error came in.
	Shape Shape
	// RetryAfter is the Retry-After header's delay, 0 when absent.
	RetryAfter time.Duration
	// Method and Path name the call (never its query or body).
	Method, Path string
}

// Error prints status, code and message; never headers or request bodies.
func (e *APIError) Error() string {
	var b strings.Builder
	b.WriteString("thingspace: ")
	if e.Method != "" {
		b.WriteString(e.Method + " " + e.Path + ": ")
	}
	if e.HTTPStatus != 0 {
		b.WriteString("HTTP " + strconv.Itoa(e.HTTPStatus))
	}
	if e.Code != "" {
		b.WriteString(" " + e.Code)
	}
	if e.Message != "" {
		b.WriteString(": " + e.Message)
	}
	if e.RetryAfter > 0 {
		b.WriteString(" (retry after " + e.RetryAfter.String() + ")")
	}
	return b.String()
}

// Numeric reports a Global eSIM style code: three digits, the HTTP status
// ("400"), instead of a dotted <Service>.<CLASS>.<Detail> one.
func (e *APIError) Numeric() bool { return numericCode(e.Code) }

func numericCode(code string) bool {
	code = strings.TrimSpace(code)
	if len(code) != 3 {
		return false
	}
	for _, r := range code {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

// sessionWord and sessionEnded match what a numerically coded answer would
// say of an expired or unknown session ("Session token is expired or
// invalid", "Invalid session token").
var (
	sessionWord  = regexp.MustCompile(`(?i)\bsession`)
	sessionEnded = regexp.MustCompile(`(?i)\b(expir\w*|invalid|unknown|not valid)\b`)
)

// ShortCode is Code without its service prefix:
// "DeviceService.REQUEST_FAILED.SessionToken.Expired" gives
// "REQUEST_FAILED.SessionToken.Expired". Codes without a known class are
// returned unchanged.
func (e *APIError) ShortCode() string { return shortCode(e.Code) }

var codeClasses = []string{"INPUT_INVALID", "REQUEST_FAILED", "REQUEST_ONHOLD", "REQUEST_CANCELLED"}

func shortCode(code string) string {
	code = strings.TrimSpace(code)
	for _, cls := range codeClasses {
		if strings.HasPrefix(code, cls) {
			return code
		}
		if i := strings.Index(code, "."+cls); i >= 0 {
			return code[i+1:]
		}
	}
	return code
}

// Is matches the package's sentinels and *APIError targets (see the type).
func (e *APIError) Is(target error) bool {
	switch target {
	case ErrSessionExpired:
		sc := e.ShortCode()
		if e.Shape == ShapeBusiness && e.Numeric() && e.HTTPStatus != http.StatusTooManyRequests && e.HTTPStatus < 500 {
			return sessionWord.MatchString(e.Message) && sessionEnded.MatchString(e.Message)
		}
		return sc == CodeSessionExpired || (e.Shape == ShapeBusiness && strings.HasSuffix(sc, "SessionToken.Expired"))
	case ErrTokenInvalid:
		return e.Shape == ShapeGateway && (e.Code == FaultInvalidCredentials || e.Code == FaultTokenInactive)
	case ErrRateLimited:
		return e.HTTPStatus == http.StatusTooManyRequests
	}
	t, ok := target.(*APIError)
	if !ok || t == nil {
		return false
	}
	if t.HTTPStatus != 0 && t.HTTPStatus != e.HTTPStatus {
		return false
	}
	if t.Code != "" && shortCode(t.Code) != e.ShortCode() {
		return false
	}
	return t.HTTPStatus != 0 || t.Code != ""
}

const maxMessage = 300

// decodeError builds the APIError of a non-2xx answer from its body.
func decodeError(resp *http.Response, body []byte, method, path string) *APIError {
	e := &APIError{HTTPStatus: resp.StatusCode, Shape: ShapeNone, Method: method, Path: path}
	if d, ok := parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()); ok {
		e.RetryAfter = d
	}
	var probe struct {
		ErrorCode    json.RawMessage `json:"errorCode"`
		ErrorMessage string          `json:"errorMessage"`
		Fault        *struct {
			Code        json.RawMessage `json:"code"`
			Message     string          `json:"message"`
			Description string          `json:"description"`
		} `json:"fault"`
		Error            string `json:"error"`
		ErrorDescription string `json:"error_description"`
	}
	if err := json.Unmarshal(bytes.TrimSpace(body), &probe); err == nil {
		switch {
		case probe.Fault != nil:
			e.Shape = ShapeGateway
			e.Code, _ = stringOrNumber(probe.Fault.Code, "code")
			e.Message = probe.Fault.Message
			if probe.Fault.Description != "" {
				e.Message += " (" + probe.Fault.Description + ")"
			}
		case len(probe.ErrorCode) > 0:
			e.Shape = ShapeBusiness
			e.Code, _ = stringOrNumber(probe.ErrorCode, "errorCode")
			e.Message = probe.ErrorMessage
		case probe.Error != "":
			e.Shape = ShapeOAuth
			e.Code = probe.Error
			e.Message = probe.ErrorDescription
		}
	}
	if e.Shape == ShapeNone {
		e.Message = http.StatusText(resp.StatusCode)
	}
	e.Message = truncate(strings.TrimSpace(e.Message), maxMessage)
	return e
}

// parseRetryAfter reads a Retry-After value: delay seconds or an HTTP-date.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n < 0 {
			return 0, false
		}
		if n > 1<<31 {
			n = 1 << 31
		}
		return time.Duration(n) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		d := t.Sub(now)
		if d < 0 {
			d = 0
		}
		return d, true
	}
	return 0, false
}

// loginError is a failed or refused login.
type loginError struct {
	cause error         // what the token endpoint or session login said; may be nil
	wait  time.Duration // until another login is allowed
	what  string
}

func (e *loginError) Error() string {
	msg := "thingspace: login failed: " + e.what
	if e.cause != nil {
		msg += ": " + e.cause.Error()
	}
	if e.wait > 0 {
		msg += fmt.Sprintf(" (no new login for %s)", e.wait.Round(time.Millisecond))
	}
	return msg
}

func (e *loginError) Unwrap() []error {
	if e.cause == nil {
		return []error{ErrLoginFailed}
	}
	return []error{ErrLoginFailed, e.cause}
}

// Retryable reports whether the same call may succeed later: 429, 5xx, the
// per-call timeout, connection errors (refused, reset, closed). Not the
// caller's own cancellation or deadline, not other 4xx, not a rejected login
// (a login refused for a transient cause such as a 5xx or a timeout is
// retryable; wait for [RetryAfter]).
func Retryable(err error) bool {
	if err == nil {
		return false
	}
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.HTTPStatus == http.StatusTooManyRequests || ae.HTTPStatus >= 500
	}
	if errors.Is(err, ErrTimeout) {
		return true
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.EPIPE) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	var oe *net.OpError
	return errors.As(err, &oe)
}

// RetryAfter returns how long to wait before calling again, when the error
// says: the Retry-After header of a 429 or 5xx, or the rest of the back-off
// after a failed login.
func RetryAfter(err error) (time.Duration, bool) {
	var le *loginError
	if errors.As(err, &le) && le.wait > 0 {
		return le.wait, true
	}
	var ae *APIError
	if errors.As(err, &ae) && ae.RetryAfter > 0 {
		return ae.RetryAfter, true
	}
	return 0, false
}

// IsAuth reports an authentication problem: a failed login, an invalid API
// token or session that could not be renewed, HTTP 401 or 403.
func IsAuth(err error) bool {
	if errors.Is(err, ErrLoginFailed) || errors.Is(err, ErrTokenInvalid) || errors.Is(err, ErrSessionExpired) {
		return true
	}
	var ae *APIError
	return errors.As(err, &ae) && (ae.HTTPStatus == http.StatusUnauthorized || ae.HTTPStatus == http.StatusForbidden)
}

// IsPermanent reports that ThingSpace refused the request itself: a 4xx
// other than 429 and the authentication cases. Sending it again unchanged
// gives the same answer; the devices it names are rejected.
func IsPermanent(err error) bool {
	var ae *APIError
	if !errors.As(err, &ae) || IsAuth(err) {
		return false
	}
	return ae.HTTPStatus >= 400 && ae.HTTPStatus < 500 && ae.HTTPStatus != http.StatusTooManyRequests &&
		ae.HTTPStatus != http.StatusRequestTimeout
}

// Scope says what a refusal ([IsPermanent]) is about, which tells a caller
// of a bulk call what to do with the devices it named.
type Scope int

// The scopes of a refusal.
const (
	// ScopeNone: not a refusal (success, retryable, authentication).
	ScopeNone Scope = iota
	// ScopeDevice: a device of the request is refused (an identifier, a
	// kind, a device ThingSpace does not know). The others may pass alone:
	// send the request again without the devices the message names, or
	// split it to find them.
	ScopeDevice
	// ScopeAccount: the account is refused (invalid, unknown). Every device
	// of the request would be: splitting it only multiplies the refusals.
	ScopeAccount
	// ScopeRequest: the request as a whole (a field other than the devices,
	// the body, the content type, too many devices): the same for any part
	// of it.
	ScopeRequest
	// ScopeUnknown: the answer says nothing that tells (no code, no message
	// beyond the HTTP status text). A device may be the cause.
	ScopeUnknown
)

var scopeNames = [...]string{"none", "device", "account", "request", "unknown"}

// String is the scope's lower-case name.
func (s Scope) String() string {
	if s < 0 || int(s) >= len(scopeNames) {
		return "Scope(" + strconv.Itoa(int(s)) + ")"
	}
	return scopeNames[s]
}

// What a refusal's errorMessage names, for codes that do not say (numeric
// codes, none): its size, a device, the account.
var (
	sizeWords    = regexp.MustCompile(`(?i)\b(at most|too many|maximum|max|exceed(s|ed)?|limit)\b`)
	deviceWords  = regexp.MustCompile(`(?i)\b(devices?|device ?ids?|identifiers?|eids?|iccids?|imeis?|mdns?|msisdns?|euicc)\b`)
	accountWords = regexp.MustCompile(`(?i)\b(account ?names?|accounts?)\b`)
)

// RefusalScope says what ThingSpace refused, for an error that
// [IsPermanent]; [ScopeNone] for any other. A dotted business code says it
// by its parts ("Account" before "Device": INPUT_INVALID.Device.Account.Invalid
// is the account's); a numeric code ("400", the Global eSIM endpoints) or
// none leaves it to errorMessage: a message that names a size limit is the
// request's, one that names a device or an identifier kind the device's
// (even "… is invalid for this account"), one that names only the account
// the account's, any other the request's; no message at all is
// [ScopeUnknown]. Gateway and OAuth refusals are the request's.
func RefusalScope(err error) Scope {
	var ae *APIError
	if !IsPermanent(err) || !errors.As(err, &ae) {
		return ScopeNone
	}
	switch ae.Shape {
	case ShapeGateway, ShapeOAuth:
		return ScopeRequest
	}
	if code := ae.ShortCode(); code != "" && !ae.Numeric() {
		return codeScope(code)
	}
	msg := strings.TrimSpace(ae.Message)
	switch {
	case msg == "" || strings.EqualFold(msg, http.StatusText(ae.HTTPStatus)):
		return ScopeUnknown
	case sizeWords.MatchString(msg):
		return ScopeRequest
	case deviceWords.MatchString(msg):
		return ScopeDevice
	case accountWords.MatchString(msg):
		return ScopeAccount
	}
	return ScopeRequest
}

// codeScope reads a dotted code's parts.
func codeScope(code string) Scope {
	parts := strings.Split(code, ".")
	for _, p := range parts {
		if strings.HasPrefix(strings.ToLower(p), "account") {
			return ScopeAccount
		}
	}
	for _, p := range parts {
		p = strings.ToLower(p)
		if strings.HasPrefix(p, "device") || p == "identifier" || p == "kind" {
			return ScopeDevice
		}
	}
	return ScopeRequest
}

// IsDeviceRefusal reports a refusal that a device of the request may have
// caused ([ScopeDevice] or [ScopeUnknown]): worth sending the other devices
// again without it. An account's or the whole request's refusal is not,
// however its code is written.
func IsDeviceRefusal(err error) bool {
	s := RefusalScope(err)
	return s == ScopeDevice || s == ScopeUnknown
}
