package simulator

import (
	"fmt"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"golang.org/x/time/rate"

	"github.com/esim-pipeline/thingspace-esim/internal/command"
	"github.com/esim-pipeline/thingspace-esim/internal/device"
	"github.com/esim-pipeline/thingspace-esim/internal/thingspace"
)

// Sub-request and request statuses the status endpoint answers.
const (
	StatusPending   = "Pending"
	StatusSuccess   = "Success"
	StatusFailed    = "Failed"
	StatusCompleted = "Completed" // every device settled, some failed
)

// request is the simulator's record of one accepted action call.
type request struct {
	created              time.Time
	id, action, account  string
	smsrOid, servicePlan string
	mu                   sync.Mutex // guards devices[].status
	devices              []devState
}

type devState struct {
	ids       []thingspace.DeviceID // kinds lower-cased, as the request named them
	fail      bool
	warning   bool
	dropFinal bool
	stuck     bool
	status    string
	// profiles are the profile callbacks of a device-level action
	// (device_suspend, device_resume), sent before the device's own.
	profiles []profileOutcome
}

func (d *devState) get(kind string) string {
	for _, id := range d.ids {
		if id.Kind == kind {
			return id.ID
		}
	}
	return ""
}

// key names the device in records: ICCID, else EID, else the first id.
func (d *devState) key() string {
	if v := d.get("iccid"); v != "" {
		return v
	}
	if v := d.get("eid"); v != "" {
		return v
	}
	if len(d.ids) > 0 {
		return d.ids[0].ID
	}
	return ""
}

// requirement is what a request of one action must carry, from the action
// table: the identifier kinds of every device, and whether smsrOid.
type requirement struct {
	kinds []string
	smsr  bool
}

var requirements = func() map[string]requirement {
	out := map[string]requirement{}
	for _, a := range command.Actions {
		sp := a.Spec()
		r := requirement{smsr: slices.Contains(sp.Mandatory, "smsrOid")}
		for _, k := range sp.Required {
			r.kinds = append(r.kinds, string(k))
		}
		out[string(a)] = r
	}
	return out
}()

func (s *Server) handleAction(w http.ResponseWriter, r *http.Request) {
	c := callOf(r)
	action, ok := thingspace.ActionForPath(r.PathValue("action"))
	if !ok || r.Method != http.MethodPost {
		s.handleUnknown(w, r)
		return
	}
	c.Action = action
	s.count.actionCalls.Add(1)
	if !s.authorize(w, r) {
		return
	}
	if !isJSON(r) {
		s.wrongContentType(w, c, serviceDevice)
		return
	}
	var req thingspace.ProfileRequest
	if !s.decode(w, r, serviceDevice, &req) {
		return
	}
	c.Account = req.AccountName
	c.DeviceCount = len(req.Devices)
	if len(req.Devices) <= recordDevices {
		c.Devices = make([][]thingspace.DeviceID, len(req.Devices))
		for i, d := range req.Devices {
			c.Devices[i] = append([]thingspace.DeviceID(nil), d.DeviceIDs...)
		}
	}
	if req.AccountName != "" {
		if wait, ok := s.allow(req.AccountName); !ok {
			secs := int(math.Ceil(wait.Seconds()))
			if secs < 1 {
				secs = 1
			}
			w.Header().Set("Retry-After", strconv.Itoa(secs))
			s.gatewayFault(w, c, http.StatusTooManyRequests, "900800", "Message throttled out",
				"You have exceeded your quota of requests per minute for this account.")
			return
		}
	}
	devs, code, msg := s.validate(action, &req)
	if code != "" {
		status := http.StatusBadRequest
		s.businessError(w, c, status, serviceDevice, code, msg)
		return
	}
	rq := &request{
		created: s.now(),
		id:      uuid.NewString(), action: action, account: req.AccountName,
		smsrOid: req.SmsrOid, servicePlan: req.ServicePlan, devices: devs,
	}
	s.decide(rq)
	s.apply(rq)
	s.rmu.Lock()
	s.requests[rq.id] = rq
	s.pruneLocked(rq.created)
	s.rmu.Unlock()
	c.RequestID = rq.id
	s.count.actionAccepted.Add(1)
	s.count.devicesAccepted.Add(int64(len(devs)))
	writeJSON(w, http.StatusOK, thingspace.RequestIDResponse{RequestID: rq.id})
	s.sched.submit(rq)
}

// allow takes one token of the account's bucket, or says how long to wait.
func (s *Server) allow(account string) (time.Duration, bool) {
	per := s.Faults().RatePerMinute
	if per < 0 {
		return 0, true
	}
	now := s.now()
	s.limMu.Lock()
	defer s.limMu.Unlock()
	lim := s.limiters[account]
	if lim == nil {
		lim = rate.NewLimiter(rate.Limit(float64(per)/60), per)
		s.limiters[account] = lim
	}
	if lim.AllowN(now, 1) {
		return 0, true
	}
	res := lim.ReserveN(now, 1)
	d := res.DelayFrom(now)
	res.CancelAt(now)
	return d, false
}

// validate checks a request as ThingSpace does; code is "" when it passes.
func (s *Server) validate(action string, req *thingspace.ProfileRequest) ([]devState, string, string) {
	rq := requirements[action]
	if !accountRE.MatchString(req.AccountName) {
		if req.AccountName == "" {
			return nil, thingspace.CodeAccountInvalid, "accountName is required."
		}
		return nil, thingspace.CodeAccountInvalid, "Account name " + strconv.Quote(req.AccountName) + " is invalid."
	}
	if len(req.Devices) == 0 {
		return nil, thingspace.CodeIdentifierInvalid, "devices is required: name at least one device."
	}
	if len(req.Devices) > s.cfg.MaxDevices {
		return nil, thingspace.CodeMaxRequestsExceeded,
			fmt.Sprintf("The request names %d devices; at most %d are allowed.", len(req.Devices), s.cfg.MaxDevices)
	}
	if rq.smsr && strings.TrimSpace(req.SmsrOid) == "" {
		return nil, "INPUT_INVALID.SmsrOid.Invalid", "smsrOid is required for " + action + "."
	}
	if req.ReasonCode != "" && len(req.ReasonCode) != 2 {
		return nil, "INPUT_INVALID.ReasonCode.Invalid", "reasonCode must be 2 characters."
	}
	s.fmu.RLock()
	reject := s.reject
	s.fmu.RUnlock()
	devs := make([]devState, len(req.Devices))
	for i, d := range req.Devices {
		ids := make([]thingspace.DeviceID, 0, len(d.DeviceIDs))
		for _, id := range d.DeviceIDs {
			kind, err := device.ParseKind(id.Kind)
			if err != nil {
				return nil, thingspace.CodeKindInvalid,
					fmt.Sprintf("Device %d: identifier kind %q is not supported.", i+1, id.Kind)
			}
			if _, err := device.Parse(kind, id.ID, device.Options{}); err != nil {
				return nil, thingspace.CodeIdentifierInvalid,
					fmt.Sprintf("Device %d: %s %q is not a valid identifier.", i+1, kind, id.ID)
			}
			if reject[strings.TrimSpace(id.ID)] {
				return nil, thingspace.CodeIdentifierInvalid,
					fmt.Sprintf("Device identifier %s is invalid for this account.", strings.TrimSpace(id.ID))
			}
			ids = append(ids, thingspace.DeviceID{Kind: string(kind), ID: strings.TrimSpace(id.ID)})
		}
		devs[i] = devState{ids: ids, status: StatusPending}
		for _, k := range rq.kinds {
			if devs[i].get(k) == "" {
				return nil, thingspace.CodeIdentifierInvalid,
					fmt.Sprintf("Device %d: %s is required for %s.", i+1, strings.ToUpper(k), action)
			}
		}
	}
	return devs, "", ""
}

// decide draws each device's fate from the current faults.
func (s *Server) decide(rq *request) {
	f := s.Faults()
	// No page of a device-level action speaks of a warning first.
	warns := command.Action(rq.action).Spec().Callbacks == command.PerProfile
	s.rngMu.Lock()
	defer s.rngMu.Unlock()
	for i := range rq.devices {
		d := &rq.devices[i]
		d.warning = warns && f.WarningShare > 0 && s.rng.Float64() < f.WarningShare
		d.fail = f.FailShare > 0 && s.rng.Float64() < f.FailShare
		d.dropFinal = f.DropFinalShare > 0 && s.rng.Float64() < f.DropFinalShare
		d.stuck = f.StuckShare > 0 && s.rng.Float64() < f.StuckShare
	}
}

// settle records a device's final outcome.
func (rq *request) settle(i int) {
	rq.mu.Lock()
	d := &rq.devices[i]
	if d.fail {
		d.status = StatusFailed
	} else {
		d.status = StatusSuccess
	}
	rq.mu.Unlock()
}

// handleStatus answers GET /api/m2m/v2/accounts/{account}/requests/{requestId}/status:
// the request's status and each device's.
func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) {
	if rq := s.lookup(w, r); rq != nil {
		writeJSON(w, http.StatusOK, rq.status())
	}
}

// V1 request statuses, as Verizon's SDK types them (RequestStatusEnum).
const (
	V1StatusPending = "Pending"
	V1StatusSuccess = "Success"
	V1StatusFailure = "Failure"
)

// handleStatusV1 answers the v1 path Verizon's SDK calls
// (AccountRequestsController, AsynchronousRequestResult): {requestId,
// status} only, status Pending while a device is unsettled, Success when
// every device succeeded, Failure when any failed.
func (s *Server) handleStatusV1(w http.ResponseWriter, r *http.Request) {
	rq := s.lookup(w, r)
	if rq == nil {
		return
	}
	st := rq.status()
	v1 := V1StatusFailure
	switch st.Status {
	case StatusPending:
		v1 = V1StatusPending
	case StatusSuccess:
		v1 = V1StatusSuccess
	}
	writeJSON(w, http.StatusOK, struct {
		RequestID string `json:"requestId"`
		Status    string `json:"status"`
	}{st.RequestID, v1})
}

// lookup finds the request a status call names; nil when it answered.
func (s *Server) lookup(w http.ResponseWriter, r *http.Request) *request {
	c := callOf(r)
	if r.Method != http.MethodGet {
		s.handleUnknown(w, r)
		return nil
	}
	if !s.authorize(w, r) {
		return nil
	}
	account, id := r.PathValue("account"), r.PathValue("requestId")
	c.Account, c.RequestID = account, id
	s.rmu.Lock()
	rq := s.requests[id]
	s.rmu.Unlock()
	if rq == nil || rq.account != account {
		s.businessError(w, c, http.StatusBadRequest, serviceDevice, "REQUEST_FAILED.RequestId.NotFound",
			"No request "+strconv.Quote(id)+" for account "+strconv.Quote(account)+".")
		return nil
	}
	return rq
}

func (rq *request) status() thingspace.RequestStatus {
	rq.mu.Lock()
	defer rq.mu.Unlock()
	out := thingspace.RequestStatus{RequestID: rq.id, SubRequests: make([]thingspace.SubRequest, len(rq.devices))}
	var pending, failed int
	for i, d := range rq.devices {
		out.SubRequests[i] = thingspace.SubRequest{IDs: d.ids, Status: d.status}
		switch d.status {
		case StatusPending:
			pending++
		case StatusFailed:
			failed++
		}
	}
	switch {
	case pending > 0:
		out.Status = StatusPending
	case failed == len(rq.devices):
		out.Status = StatusFailed
	case failed > 0:
		out.Status = StatusCompleted
	default:
		out.Status = StatusSuccess
	}
	return out
}

// pruneLocked forgets requests older than RequestRetention, at most once a
// second. s.rmu is held.
func (s *Server) pruneLocked(now time.Time) {
	if now.Sub(s.pruned) < time.Second {
		return
	}
	s.pruned = now
	for id, rq := range s.requests {
		if now.Sub(rq.created) > s.cfg.RequestRetention {
			delete(s.requests, id)
		}
	}
}
