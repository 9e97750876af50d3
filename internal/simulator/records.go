package simulator

import (
	"encoding/json"
	"sync"
	"sync/atomic"
	"time"

	"github.com/esim-pipeline/thingspace-esim/internal/thingspace"
)

// Call is one HTTP request the simulator answered (admin endpoints aside).
type Call struct {
	At     time.Time `json:"at"`
	Method string    `json:"method"`
	Path   string    `json:"path"`
	// Action, Account, Devices, Body and RequestID are set on profile action
	// calls (Account also on callback and status calls). Devices and Body
	// are kept for requests of at most recordDevices devices.
	Action      string                  `json:"action,omitempty"`
	Account     string                  `json:"account,omitempty"`
	DeviceCount int                     `json:"deviceCount,omitempty"`
	Devices     [][]thingspace.DeviceID `json:"devices,omitempty"`
	Body        json.RawMessage         `json:"body,omitempty"`
	RequestID   string                  `json:"requestId,omitempty"`
	// Status is the HTTP status answered; 0 for a dropped connection.
	Status int `json:"status"`
	// ErrorCode is the error body's code, if any.
	ErrorCode string `json:"errorCode,omitempty"`
	Dropped   bool   `json:"dropped,omitempty"`
}

// recordDevices bounds the devices (and body) a Call keeps.
const recordDevices = 1000

// Delivery is one callback attempt, or a final callback withheld on purpose.
type Delivery struct {
	At        time.Time `json:"at"`
	RequestID string    `json:"requestId"`
	Action    string    `json:"action"`
	Account   string    `json:"account"`
	URL       string    `json:"url,omitempty"`
	// Device is the device's ICCID, else its EID.
	Device        string `json:"device"`
	Status        string `json:"status"` // the callback's status field
	Final         bool   `json:"final"`
	CallbackCount int    `json:"callbackCount"`
	// HTTPStatus is the listener's answer, 0 when none came.
	HTTPStatus int    `json:"httpStatus"`
	Answered   bool   `json:"answered"` // a 2xx
	Error      string `json:"error,omitempty"`
	// Withheld marks a final callback not sent on purpose (DropFinalShare).
	Withheld bool `json:"withheld,omitempty"`
}

// Stats are running counts since start.
type Stats struct {
	TokenGrants    int64 `json:"tokenGrants"`    // successful token answers
	TokensIssued   int64 `json:"tokensIssued"`   // distinct tokens created
	TokenFailures  int64 `json:"tokenFailures"`  // refused token requests
	Logins         int64 `json:"logins"`         // successful session logins
	LoginFailures  int64 `json:"loginFailures"`  // refused logins
	Logouts        int64 `json:"logouts"`        //
	ActionCalls    int64 `json:"actionCalls"`    // profile action calls past fault injection
	ActionAccepted int64 `json:"actionAccepted"` // answered with a requestId
	DevicesAccept  int64 `json:"devicesAccepted"`

	CallbacksSent          int64 `json:"callbacksSent"`          // POST attempts
	CallbacksAnswered      int64 `json:"callbacksAnswered"`      // answered 2xx
	CallbacksUnanswered    int64 `json:"callbacksUnanswered"`    // non-2xx or no answer
	CallbacksAbandoned     int64 `json:"callbacksAbandoned"`     // unanswered after the last attempt
	CallbacksWithheld      int64 `json:"callbacksWithheld"`      // finals not sent (DropFinalShare)
	CallbacksUndeliverable int64 `json:"callbacksUndeliverable"` // no listener registered
	// CallbacksPending counts callbacks scheduled or in flight (resends included).
	CallbacksPending int64 `json:"callbacksPending"`
}

type counters struct {
	tokenGrants, tokensIssued, tokenFailures                           atomic.Int64
	logins, loginFailures, logouts                                     atomic.Int64
	actionCalls, actionAccepted, devicesAccepted                       atomic.Int64
	cbSent, cbAnswered, cbUnanswered, cbAbandoned, cbWithheld, cbUndel atomic.Int64
	cbPending                                                          atomic.Int64
}

func (c *counters) snapshot() Stats {
	return Stats{
		TokenGrants: c.tokenGrants.Load(), TokensIssued: c.tokensIssued.Load(), TokenFailures: c.tokenFailures.Load(),
		Logins: c.logins.Load(), LoginFailures: c.loginFailures.Load(), Logouts: c.logouts.Load(),
		ActionCalls: c.actionCalls.Load(), ActionAccepted: c.actionAccepted.Load(), DevicesAccept: c.devicesAccepted.Load(),
		CallbacksSent: c.cbSent.Load(), CallbacksAnswered: c.cbAnswered.Load(), CallbacksUnanswered: c.cbUnanswered.Load(),
		CallbacksAbandoned: c.cbAbandoned.Load(), CallbacksWithheld: c.cbWithheld.Load(),
		CallbacksUndeliverable: c.cbUndel.Load(), CallbacksPending: c.cbPending.Load(),
	}
}

// ring keeps the last n items.
type ring[T any] struct {
	mu    sync.Mutex
	items []T
	next  int
	full  bool
	n     int
}

func newRing[T any](n int) *ring[T] { return &ring[T]{n: n} }

func (r *ring[T]) add(v T) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.full {
		r.items = append(r.items, v)
		if len(r.items) == r.n {
			r.full = true
			r.next = 0
		}
		return
	}
	r.items[r.next] = v
	r.next = (r.next + 1) % r.n
}

func (r *ring[T]) list() []T {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]T, 0, len(r.items))
	if r.full {
		out = append(out, r.items[r.next:]...)
		out = append(out, r.items[:r.next]...)
		return out
	}
	return append(out, r.items...)
}

func (r *ring[T]) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.items, r.next, r.full = nil, 0, false
}
