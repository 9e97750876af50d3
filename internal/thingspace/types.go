package thingspace

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/esim-pipeline/thingspace-esim/internal/command"
	"github.com/esim-pipeline/thingspace-esim/internal/device"
)

// The profile actions are package command's action table: their names,
// endpoints and bodies.

// ActionPathPrefix is the path every profile action lives under.
const ActionPathPrefix = "/api/m2m/v1/devices/profile/actions/"

// ActionPath returns the endpoint path of action, its row's endpoint
// under ActionPathPrefix, or false for an unknown action.
func ActionPath(action string) (string, bool) {
	sp, ok := command.Lookup(command.Action(action))
	if !ok {
		return "", false
	}
	return ActionPathPrefix + sp.Endpoint, true
}

// ActionForPath is the inverse of [ActionPath]: the action whose endpoint
// ends with the last path segment seg.
func ActionForPath(seg string) (string, bool) {
	sp, ok := command.ForEndpoint(seg)
	return string(sp.Action), ok
}

// IsGlobal reports a Global eSIM action, whose error bodies carry the HTTP
// status as errorCode.
func IsGlobal(action string) bool { return command.Action(action).Spec().Global }

// DeviceID is one identifier of a device as ThingSpace writes it. Kind
// arrives in any case ("ICCID", "Iccid"); compare with strings.EqualFold or
// use [DeviceID.NormalizedKind]. When decoding, an id given as a JSON number
// is kept as its digits.
type DeviceID struct {
	Kind string `json:"kind"`
	ID   string `json:"id"`
}

// NormalizedKind is the kind in lower case, trimmed.
func (d DeviceID) NormalizedKind() string { return strings.ToLower(strings.TrimSpace(d.Kind)) }

// UnmarshalJSON accepts id as a string or a number.
func (d *DeviceID) UnmarshalJSON(b []byte) error {
	var raw struct {
		Kind json.RawMessage `json:"kind"`
		ID   json.RawMessage `json:"id"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	var err error
	if d.Kind, err = stringOrNumber(raw.Kind, "kind"); err != nil {
		return err
	}
	if d.ID, err = stringOrNumber(raw.ID, "id"); err != nil {
		return err
	}
	return nil
}

// stringOrNumber reads a JSON string, a number (kept as written) or null/absent ("").
func stringOrNumber(raw json.RawMessage, field string) (string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	switch raw[0] {
	case '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", fmt.Errorf("%s: %w", field, err)
		}
		return s, nil
	case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		var n json.Number
		if err := json.Unmarshal(raw, &n); err != nil {
			return "", fmt.Errorf("%s: %w", field, err)
		}
		return n.String(), nil
	}
	return "", fmt.Errorf("%s: want a string, got %s", field, describeJSON(raw))
}

func describeJSON(raw []byte) string {
	if len(raw) == 0 {
		return "nothing"
	}
	switch raw[0] {
	case '{':
		return "an object"
	case '[':
		return "an array"
	case 't', 'f':
		return "a boolean"
	case '"':
		return "a string"
	case 'n':
		return "null"
	}
	return "a number"
}

// Device is one entry of a request's devices array.
type Device struct {
	DeviceIDs []DeviceID `json:"deviceIds"`
}

// DeviceFromSet builds the request entry of a device from its checked
// identifiers, in the order eid, iccid, imei, mdn, msisdn.
func DeviceFromSet(s device.Set) Device {
	d := Device{}
	for _, k := range device.Kinds {
		if v := s.Get(k); v != "" {
			d.DeviceIDs = append(d.DeviceIDs, DeviceID{Kind: string(k), ID: v})
		}
	}
	return d
}

// Get returns the id of the given kind (any case), or "".
func (d Device) Get(kind string) string {
	for _, id := range d.DeviceIDs {
		if strings.EqualFold(strings.TrimSpace(id.Kind), kind) {
			return id.ID
		}
	}
	return ""
}

// ProfileRequest is the body of every profile action call.
type ProfileRequest struct {
	Devices     []Device `json:"devices"`
	AccountName string   `json:"accountName"`
	SmsrOid     string   `json:"smsrOid,omitempty"`
	ServicePlan string   `json:"servicePlan,omitempty"`
	EtfWaiver   *bool    `json:"etfWaiver,omitempty"`
	ReasonCode  string   `json:"reasonCode,omitempty"`
}

// RequestIDResponse is the synchronous answer to a profile action.
type RequestIDResponse struct {
	RequestID string `json:"requestId"`
}

// RequestStatus answers GET /api/m2m/v2/accounts/{account}/requests/{requestId}/status.
// Decoding accepts both "subRequests" and "subrequests", and a sub-request's
// ids as an array or a single object.
type RequestStatus struct {
	RequestID   string       `json:"requestId"`
	Status      string       `json:"status"`
	SubRequests []SubRequest `json:"subRequests"`
}

// SubRequest is the status of one device of a request.
type SubRequest struct {
	IDs    []DeviceID `json:"ids"`
	Status string     `json:"status"`
}

// UnmarshalJSON accepts the key spellings seen in Verizon's docs and SDKs.
func (r *RequestStatus) UnmarshalJSON(b []byte) error {
	var raw struct {
		RequestID   string       `json:"requestId"`
		Status      string       `json:"status"`
		SubRequests []SubRequest `json:"subRequests"`
		Lower       []SubRequest `json:"subrequests"`
	}
	// An exact key match wins in encoding/json, so each spelling lands in
	// its own field.
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	r.RequestID, r.Status, r.SubRequests = raw.RequestID, raw.Status, raw.SubRequests
	if len(r.SubRequests) == 0 {
		r.SubRequests = raw.Lower
	}
	return nil
}

// UnmarshalJSON accepts ids as an array or a single object.
func (s *SubRequest) UnmarshalJSON(b []byte) error {
	var raw struct {
		IDs    json.RawMessage `json:"ids"`
		Status string          `json:"status"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	s.Status = raw.Status
	s.IDs = nil
	ids := bytes.TrimSpace(raw.IDs)
	switch {
	case len(ids) == 0 || string(ids) == "null":
	case ids[0] == '{':
		var one DeviceID
		if err := json.Unmarshal(ids, &one); err != nil {
			return fmt.Errorf("ids: %w", err)
		}
		s.IDs = []DeviceID{one}
	default:
		if err := json.Unmarshal(ids, &s.IDs); err != nil {
			return fmt.Errorf("ids: %w", err)
		}
	}
	return nil
}

// Identifiers returns lower-case kind -> id of the sub-request's device.
func (s SubRequest) Identifiers() map[string]string {
	out := make(map[string]string, len(s.IDs))
	for _, id := range s.IDs {
		if k := id.NormalizedKind(); k != "" && id.ID != "" {
			if _, seen := out[k]; !seen {
				out[k] = id.ID
			}
		}
	}
	return out
}

// The name a DeviceProfileResponse listener is registered under.
const ServiceDeviceProfile = "DeviceProfileService"

// CallbackRegistration registers a callback listener for an account.
// Username and Password are sent back in every callback's body.
type CallbackRegistration struct {
	Name     string `json:"name"`
	URL      string `json:"url"`
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
}

// String leaves the credentials out.
func (r CallbackRegistration) String() string { return r.Name + " " + r.URL }

// CallbackService is one listener as ListCallbacks reports it. Verizon's
// SDK (ConnectivityManagementCallback) reads the name as "serviceName";
// older answers call it "name": decoding takes either. The registered
// username comes back too; the password, which the answer also carries,
// is dropped on decoding, so that no listing can leak it.
type CallbackService struct {
	AccountName string `json:"accountName"`
	Name        string `json:"serviceName"`
	URL         string `json:"url"`
	Username    string `json:"username,omitempty"`
}

// UnmarshalJSON accepts "serviceName" or "name".
func (c *CallbackService) UnmarshalJSON(b []byte) error {
	var raw struct {
		AccountName string `json:"accountName"`
		ServiceName string `json:"serviceName"`
		Name        string `json:"name"`
		URL         string `json:"url"`
		Username    string `json:"username"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	*c = CallbackService{AccountName: raw.AccountName, Name: raw.ServiceName, URL: raw.URL, Username: raw.Username}
	if c.Name == "" {
		c.Name = raw.Name
	}
	return nil
}

// CallbackAck answers registering or removing a listener.
type CallbackAck struct {
	AccountName string `json:"accountName"`
	ServiceName string `json:"serviceName"`
}
