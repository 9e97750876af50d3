package status

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"time"

	"github.com/esim-pipeline/thingspace-esim/internal/device"
)

// Status is where one device's action stands.
type Status string

// The status vocabulary of the contract.
const (
	// Accepted: ThingSpace took the request carrying the device.
	Accepted Status = "accepted"
	// Pending: a callback said warning (device unreachable); a later one decides.
	Pending Status = "pending"
	// Succeeded: the final callback reported success.
	Succeeded Status = "succeeded"
	// Failed: the final callback reported failure, or submission gave up.
	Failed Status = "failed"
	// Rejected: invalid, or refused by ThingSpace.
	Rejected Status = "rejected"
	// TimedOut: no final callback arrived before the deadline.
	TimedOut Status = "timed_out"
)

// Statuses lists the vocabulary in lifecycle order.
var Statuses = []Status{Accepted, Pending, Succeeded, Failed, Rejected, TimedOut}

// Final reports whether no later event is expected for the action.
func (s Status) Final() bool {
	switch s {
	case Succeeded, Failed, Rejected, TimedOut:
		return true
	}
	return false
}

// Reason explains a rejected or failed device.
type Reason struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Profile is what a callback reported of the device's profile. It is an
// allow-list: credentials a callback carries (deviceCredential, username,
// password) have no field here, so they can never reach an event.
type Profile struct {
	State                           string `json:"state,omitempty"`
	ProfileStatus                   string `json:"profileStatus,omitempty"`
	ProfileRole                     string `json:"profileRole,omitempty"`
	ServicePlan                     string `json:"servicePlan,omitempty"`
	SmsrOid                         string `json:"smsrOid,omitempty"`
	EuiccStatus                     string `json:"euiccStatus,omitempty"`
	EuiccStatusCode                 string `json:"euiccStatusCode,omitempty"`
	EuiccStatusDesc                 string `json:"euiccStatusDesc,omitempty"`
	EuiccSubAddressUpdateStatus     string `json:"euiccSubAddressUpdateStatus,omitempty"`
	EuiccSubAddressUpdateStatusCode string `json:"euiccSubAddressUpdateStatusCode,omitempty"`
	EuiccSubAddressUpdateStatusDesc string `json:"euiccSubAddressUpdateStatusDesc,omitempty"`
	IPAddress                       string `json:"ipAddress,omitempty"`
}

// IsZero reports whether nothing was reported.
func (p Profile) IsZero() bool { return p == Profile{} }

// Event is one status change of one device's action.
type Event struct {
	EventID              string     `json:"eventId"`
	CommandID            string     `json:"commandId,omitempty"`
	RequestID            string     `json:"requestId,omitempty"`
	Action               string     `json:"action"`
	AccountName          string     `json:"accountName,omitempty"`
	Device               device.Set `json:"device"`
	Status               Status     `json:"status"`
	Final                bool       `json:"final"`
	Reason               *Reason    `json:"reason,omitempty"`
	Profile              *Profile   `json:"profile,omitempty"`
	CallbackCount        int        `json:"callbackCount,omitempty"`
	MaxCallbackThreshold int        `json:"maxCallbackThreshold,omitempty"`
	OccurredAt           time.Time  `json:"occurredAt"`
}

// Subject is where e is published.
func (e Event) Subject() string { return Subject(e.Action, e.Device) }

// SubjectPrefix is the root of every status subject.
const SubjectPrefix = "thingspace.profile.status"

// SubjectWildcard matches every status subject.
const SubjectWildcard = SubjectPrefix + ".>"

// UnknownAction names the action of an event made from a callback whose
// requestId has no record and which does not say which action it answers.
const UnknownAction = "unknown"

// Subject is thingspace.profile.status.<action>.<iccid, else eid, ...>.
func Subject(action string, d device.Set) string {
	return SubjectPrefix + "." + Token(action) + "." + Token(d.Key())
}

// DeviceSubjects are the subjects that match any action of the device named id.
func DeviceSubjects(id string) string {
	return SubjectPrefix + ".*." + Token(id)
}

// Token makes s safe as one subject token: characters NATS gives a meaning
// to (dot, wildcards, white space) become underscores. Identifiers that
// passed validation are digits and come through unchanged.
func Token(s string) string {
	if s == "" {
		return "_"
	}
	return strings.Map(func(r rune) rune {
		switch {
		case r == '.' || r == '*' || r == '>' || r <= ' ' || r == 0x7f:
			return '_'
		}
		return r
	}, s)
}

// ID derives the stable eventId of one fact from the parts that name it.
// Everything that makes one fact different from another must be a part;
// nothing that changes between resends of it (callbackCount, receive time)
// may be.
func ID(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0x1f})
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// CommandEventID names an event decided from a command alone (accepted,
// rejected, failed after retries): one per command, action, device and status.
func CommandEventID(st Status, commandID, action string, d device.Set) string {
	return ID("command", string(st), commandID, action, d.Key())
}

// RequestEventID names an event decided from ThingSpace's answer about a
// request (a callback, a request-status reconciliation, a timeout): one per
// requestId, device and status, so a resent callback gives the same id.
func RequestEventID(st Status, requestID string, d device.Set) string {
	return ID("request", string(st), requestID, d.Key())
}
