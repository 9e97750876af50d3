package thingspace

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"strconv"
	"strings"

	gojson "github.com/goccy/go-json"
)

// Callback statuses, as ThingSpace spells them in its examples. Compare
// case-insensitively ("SUCCESS" also arrives).
const (
	CallbackSuccess = "Success"
	CallbackFailed  = "Failed"
	CallbackWarning = "warning"
)

// Callback is the DeviceProfileResponse callback body, one device each.
// Username and Password are the credentials given at registration, echoed
// in plain text: never log them (see [Callback.Redacted]).
type Callback struct {
	Username             string          `json:"username,omitempty"`
	Password             string          `json:"password,omitempty"`
	RequestID            string          `json:"requestId"`
	DeviceIDs            []DeviceID      `json:"deviceIds,omitempty"`
	DeviceResponse       *DeviceResponse `json:"deviceResponse,omitempty"`
	FaultResponse        *FaultResponse  `json:"faultResponse,omitempty"`
	Status               string          `json:"status"`
	CallbackCount        int             `json:"callbackCount"`
	MaxCallbackThreshold int             `json:"maxCallbackThreshold"`
}

// DeviceResponse wraps the device's profile response.
type DeviceResponse struct {
	DeviceProfileResponse *DeviceProfileResponse `json:"deviceProfileResponse,omitempty"`
}

// DeviceProfileResponse is what ThingSpace reports of the device after the
// action. Fields are optional; the pages show different subsets per action.
type DeviceProfileResponse struct {
	DeviceIdentifierCollection      []DeviceID        `json:"deviceIdentifierCollection,omitempty"`
	IPAddress                       string            `json:"ipAddress,omitempty"`
	State                           string            `json:"state,omitempty"`
	ServicePlan                     string            `json:"servicePlan,omitempty"`
	DeviceCredential                *DeviceCredential `json:"deviceCredential,omitempty"`
	SmsrOid                         string            `json:"smsrOid,omitempty"`
	ProfileStatus                   string            `json:"profileStatus,omitempty"`
	ProfileRole                     string            `json:"profileRole,omitempty"`
	EuiccStatus                     string            `json:"euiccStatus,omitempty"`
	EuiccStatusCode                 string            `json:"euiccStatusCode,omitempty"`
	EuiccStatusDesc                 string            `json:"euiccStatusDesc,omitempty"`
	EuiccSubAddressUpdateStatus     string            `json:"euiccSubAddressUpdateStatus,omitempty"`
	EuiccSubAddressUpdateStatusCode string            `json:"euiccSubAddressUpdateStatusCode,omitempty"`
	EuiccSubAddressUpdateStatusDesc string            `json:"euiccSubAddressUpdateStatusDesc,omitempty"`
}

// DeviceCredential is the device's own network credential: a secret.
type DeviceCredential struct {
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
}

// FaultResponse explains a Failed callback.
type FaultResponse struct {
	FaultCode   string `json:"faultcode"`
	FaultString string `json:"faultstring"`
}

// ErrCallback reports a callback body that cannot be read; ParseCallback's
// errors wrap it.
var ErrCallback = errors.New("thingspace: invalid callback")

// ParseCallback reads a DeviceProfileResponse callback tolerantly: trailing
// commas before } or ] (outside strings) are ignored, unknown keys are
// ignored, kinds are lower-cased, callbackCount and maxCallbackThreshold may
// be numbers or strings, and deviceResponse/deviceProfileResponse may be an
// object or an array of them (the pages' tables say array). It requires a
// JSON object with a requestId, a status of Success, Failed or warning in any
// case, and at least one device identifier. It never panics.
func ParseCallback(body []byte) (*Callback, error) {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 {
		return nil, fmt.Errorf("%w: empty body", ErrCallback)
	}
	if trimmed[0] != '{' {
		return nil, fmt.Errorf("%w: want a JSON object, got %s", ErrCallback, describeJSON(trimmed))
	}
	// Most callbacks are plain: one decoding pass into typed fields. Only
	// when that fails do the tolerant conversions below run (trailing
	// commas, numbers for strings, arrays for objects).
	if c, ok := parsePlain(trimmed); ok {
		if err := c.check(); err != nil {
			return nil, err
		}
		return c, nil
	}
	return parseTolerant(trimmed)
}

// parseTolerant is ParseCallback for bodies of unusual shape.
func parseTolerant(trimmed []byte) (*Callback, error) {
	var w wireCallback
	if err := json.Unmarshal(trimmed, &w); err != nil {
		w = wireCallback{}
		if err := json.Unmarshal(bytes.TrimSpace(StripTrailingCommas(trimmed)), &w); err != nil {
			return nil, fmt.Errorf("%w: %s", ErrCallback, jsonErrorText(err))
		}
	}
	c := &Callback{
		Username:  w.Username,
		Password:  w.Password,
		RequestID: strings.TrimSpace(w.RequestID),
		DeviceIDs: normalizeIDs(w.DeviceIDs),
		Status:    strings.TrimSpace(w.Status),
	}
	var err error
	if c.CallbackCount, err = flexInt(w.CallbackCount, "callbackCount"); err != nil {
		return nil, err
	}
	if c.MaxCallbackThreshold, err = flexInt(w.MaxCallbackThreshold, "maxCallbackThreshold"); err != nil {
		return nil, err
	}
	if c.DeviceResponse, err = parseDeviceResponse(w.DeviceResponse); err != nil {
		return nil, err
	}
	if c.FaultResponse, err = parseFault(w.FaultResponse); err != nil {
		return nil, err
	}
	if err := c.check(); err != nil {
		return nil, err
	}
	return c, nil
}

// check holds a parsed callback to what an event needs.
func (c *Callback) check() error {
	if c.RequestID == "" {
		return fmt.Errorf("%w: requestId is missing", ErrCallback)
	}
	switch {
	case strings.EqualFold(c.Status, CallbackSuccess), strings.EqualFold(c.Status, CallbackFailed),
		strings.EqualFold(c.Status, CallbackWarning):
	case c.Status == "":
		return fmt.Errorf("%w: status is missing", ErrCallback)
	default:
		return fmt.Errorf("%w: unknown status %q (want Success, Failed or warning)", ErrCallback, truncate(c.Status, 40))
	}
	for range c.AllIdentifiers() {
		return nil
	}
	return fmt.Errorf("%w: no device identifier in deviceIds or deviceIdentifierCollection", ErrCallback)
}

// plainID is an identifier as ThingSpace usually sends it: two strings.
type plainID struct {
	Kind string `json:"kind"`
	ID   string `json:"id"`
}

// plainCallback is a callback in its usual shape, decoded in one pass.
type plainCallback struct {
	Username       string    `json:"username"`
	Password       string    `json:"password"`
	RequestID      string    `json:"requestId"`
	DeviceIDs      []plainID `json:"deviceIds"`
	DeviceResponse *struct {
		DeviceProfileResponse *struct {
			DeviceProfileResponse
			// Shadows the embedded field: plain strings, no per-id decoder.
			DeviceIdentifierCollection []plainID `json:"deviceIdentifierCollection"`
		} `json:"deviceProfileResponse"`
	} `json:"deviceResponse"`
	FaultResponse        *FaultResponse `json:"faultResponse"`
	Status               string         `json:"status"`
	CallbackCount        json.Number    `json:"callbackCount"`
	MaxCallbackThreshold json.Number    `json:"maxCallbackThreshold"`
}

// parsePlain decodes a callback of the usual shape; false sends the body to
// the tolerant path.
func parsePlain(body []byte) (*Callback, bool) {
	var w plainCallback
	if err := gojson.Unmarshal(body, &w); err != nil {
		return nil, false
	}
	count, err1 := plainInt(w.CallbackCount)
	max, err2 := plainInt(w.MaxCallbackThreshold)
	if err1 != nil || err2 != nil {
		return nil, false
	}
	c := &Callback{
		Username:             w.Username,
		Password:             w.Password,
		RequestID:            strings.TrimSpace(w.RequestID),
		DeviceIDs:            plainIDs(w.DeviceIDs),
		FaultResponse:        w.FaultResponse,
		Status:               strings.TrimSpace(w.Status),
		CallbackCount:        count,
		MaxCallbackThreshold: max,
	}
	if w.DeviceResponse != nil {
		c.DeviceResponse = &DeviceResponse{}
		if p := w.DeviceResponse.DeviceProfileResponse; p != nil {
			dpr := p.DeviceProfileResponse
			dpr.DeviceIdentifierCollection = plainIDs(p.DeviceIdentifierCollection)
			c.DeviceResponse.DeviceProfileResponse = &dpr
		}
	}
	return c, true
}

func plainIDs(in []plainID) []DeviceID {
	if in == nil {
		return nil
	}
	out := make([]DeviceID, len(in))
	for i, id := range in {
		out[i] = DeviceID{Kind: strings.ToLower(strings.TrimSpace(id.Kind)), ID: strings.TrimSpace(id.ID)}
	}
	return out
}

func plainInt(n json.Number) (int, error) {
	if n == "" {
		return 0, nil
	}
	v, err := strconv.Atoi(string(n))
	if err == nil && v < 0 {
		err = errors.New("negative") // the tolerant path words the error
	}
	return v, err
}

// wireCallback is the callback as sent, before the tolerant conversions.
type wireCallback struct {
	Username             string          `json:"username"`
	Password             string          `json:"password"`
	RequestID            string          `json:"requestId"`
	DeviceIDs            []DeviceID      `json:"deviceIds"`
	DeviceResponse       json.RawMessage `json:"deviceResponse"`
	FaultResponse        json.RawMessage `json:"faultResponse"`
	Status               string          `json:"status"`
	CallbackCount        json.RawMessage `json:"callbackCount"`
	MaxCallbackThreshold json.RawMessage `json:"maxCallbackThreshold"`
}

// jsonErrorText describes a decoding error without quoting the body.
func jsonErrorText(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		field := te.Field
		if field == "" {
			field = "body"
		}
		return fmt.Sprintf("%s: want %s, got JSON %s", field, te.Type, te.Value)
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("malformed JSON at byte %d: %s", se.Offset, se.Error())
	}
	return err.Error()
}

func flexInt(raw json.RawMessage, field string) (int, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return 0, nil
	}
	s := string(raw)
	if raw[0] == '"' {
		if err := json.Unmarshal(raw, &s); err != nil {
			return 0, fmt.Errorf("%w: %s: %s", ErrCallback, field, jsonErrorText(err))
		}
		s = strings.TrimSpace(s)
		if s == "" {
			return 0, nil
		}
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		// Accept a whole number written as a float (4.0).
		f, ferr := strconv.ParseFloat(s, 64)
		if ferr != nil || f != float64(int(f)) {
			return 0, fmt.Errorf("%w: %s: want a whole number, got %s", ErrCallback, field, truncate(string(raw), 40))
		}
		n = int(f)
	}
	return n, nil
}

// objectOrFirst accepts a JSON object, or an array whose first non-null
// element is an object; it returns nil for null, absent or an empty array.
func objectOrFirst(raw json.RawMessage, field string) (json.RawMessage, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	switch raw[0] {
	case '{':
		return raw, nil
	case '[':
		var items []json.RawMessage
		if err := json.Unmarshal(raw, &items); err != nil {
			return nil, fmt.Errorf("%w: %s: %s", ErrCallback, field, jsonErrorText(err))
		}
		for _, it := range items {
			it = bytes.TrimSpace(it)
			if len(it) == 0 || string(it) == "null" {
				continue
			}
			if it[0] != '{' {
				return nil, fmt.Errorf("%w: %s: want objects, got %s", ErrCallback, field, describeJSON(it))
			}
			return it, nil
		}
		return nil, nil
	}
	return nil, fmt.Errorf("%w: %s: want an object, got %s", ErrCallback, field, describeJSON(raw))
}

func parseDeviceResponse(raw json.RawMessage) (*DeviceResponse, error) {
	obj, err := objectOrFirst(raw, "deviceResponse")
	if err != nil || obj == nil {
		return nil, err
	}
	var w struct {
		DeviceProfileResponse json.RawMessage `json:"deviceProfileResponse"`
	}
	if err := json.Unmarshal(obj, &w); err != nil {
		return nil, fmt.Errorf("%w: deviceResponse: %s", ErrCallback, jsonErrorText(err))
	}
	dpr, err := objectOrFirst(w.DeviceProfileResponse, "deviceResponse.deviceProfileResponse")
	if err != nil {
		return nil, err
	}
	out := &DeviceResponse{}
	if dpr == nil {
		return out, nil
	}
	var p DeviceProfileResponse
	if err := json.Unmarshal(dpr, &p); err != nil {
		return nil, fmt.Errorf("%w: deviceResponse.deviceProfileResponse: %s", ErrCallback, jsonErrorText(err))
	}
	p.DeviceIdentifierCollection = normalizeIDs(p.DeviceIdentifierCollection)
	out.DeviceProfileResponse = &p
	return out, nil
}

func parseFault(raw json.RawMessage) (*FaultResponse, error) {
	obj, err := objectOrFirst(raw, "faultResponse")
	if err != nil || obj == nil {
		return nil, err
	}
	var f FaultResponse
	if err := json.Unmarshal(obj, &f); err != nil {
		return nil, fmt.Errorf("%w: faultResponse: %s", ErrCallback, jsonErrorText(err))
	}
	return &f, nil
}

func normalizeIDs(ids []DeviceID) []DeviceID {
	for i := range ids {
		ids[i].Kind = ids[i].NormalizedKind()
		ids[i].ID = strings.TrimSpace(ids[i].ID)
	}
	return ids
}

// Identifiers returns lower-case kind -> id: the union of deviceIds and
// deviceResponse.deviceProfileResponse.deviceIdentifierCollection, deviceIds
// winning where both name a kind.
func (c *Callback) Identifiers() map[string]string {
	out := make(map[string]string, 5)
	for k, id := range c.AllIdentifiers() {
		if _, seen := out[k]; !seen {
			out[k] = id
		}
	}
	return out
}

// AllIdentifiers yields lower-case kind and id of every identifier the
// callback names, deviceIds first, then deviceIdentifierCollection, in
// their order; those with an empty kind or id are left out. A kind may come
// more than once: Identifiers keeps the first.
func (c *Callback) AllIdentifiers() iter.Seq2[string, string] {
	return func(yield func(string, string) bool) {
		lists := [2][]DeviceID{c.DeviceIDs}
		if p := c.Profile(); p != nil {
			lists[1] = p.DeviceIdentifierCollection
		}
		for _, ids := range lists {
			for _, id := range ids {
				k := id.NormalizedKind()
				if k == "" || id.ID == "" {
					continue
				}
				if !yield(k, id.ID) {
					return
				}
			}
		}
	}
}

// Profile returns deviceResponse.deviceProfileResponse, or nil.
func (c *Callback) Profile() *DeviceProfileResponse {
	if c.DeviceResponse == nil {
		return nil
	}
	return c.DeviceResponse.DeviceProfileResponse
}

// IsSuccess reports a Success callback (any case).
func (c *Callback) IsSuccess() bool { return strings.EqualFold(c.Status, CallbackSuccess) }

// IsFailed reports a Failed callback (any case).
func (c *Callback) IsFailed() bool { return strings.EqualFold(c.Status, CallbackFailed) }

// IsWarning reports a warning callback: a later one settles the device.
func (c *Callback) IsWarning() bool { return strings.EqualFold(c.Status, CallbackWarning) }

// Redacted returns a copy without the echoed listener credentials and the
// device credential, safe to log or store in events.
func (c *Callback) Redacted() *Callback {
	cp := *c
	cp.Username, cp.Password = "", ""
	if p := c.Profile(); p != nil {
		pc := *p
		pc.DeviceCredential = nil
		cp.DeviceResponse = &DeviceResponse{DeviceProfileResponse: &pc}
	}
	return &cp
}

// StripTrailingCommas removes every comma that is followed, after optional
// white space, by } or ], outside JSON strings. Everything else, including
// string contents, is kept byte for byte. Malformed input is returned as
// scanned, for the JSON decoder to report.
func StripTrailingCommas(b []byte) []byte {
	if bytes.IndexByte(b, ',') < 0 {
		return b
	}
	out := make([]byte, 0, len(b))
	inString, escaped := false, false
	for i := 0; i < len(b); i++ {
		ch := b[i]
		if inString {
			out = append(out, ch)
			switch {
			case escaped:
				escaped = false
			case ch == '\\':
				escaped = true
			case ch == '"':
				inString = false
			}
			continue
		}
		switch ch {
		case '"':
			inString = true
		case ',':
			j := i + 1
			for j < len(b) && (b[j] == ' ' || b[j] == '\t' || b[j] == '\n' || b[j] == '\r') {
				j++
			}
			if j < len(b) && (b[j] == '}' || b[j] == ']') {
				continue // drop the trailing comma
			}
		}
		out = append(out, ch)
	}
	return out
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
