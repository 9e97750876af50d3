package simulator

import (
	"bytes"
	"container/heap"
	"context"
	"encoding/json"
	"hash/fnv"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/esim-pipeline/thingspace-esim/internal/command"
	"github.com/esim-pipeline/thingspace-esim/internal/thingspace"
)

type jobKind uint8

const (
	kindWarning jobKind = iota + 1
	kindFinal
	// kindProfile: one profile's callback of a device-level action; the
	// device's own final follows the last of them.
	kindProfile
)

// job is one callback to send (one attempt of it).
type job struct {
	due     time.Time
	seq     uint64
	rq      *request
	dev     int
	kind    jobKind
	profile int  // kindProfile: the index in the device's profiles
	attempt int  // 1 for the first send; callbackCount
	next    *job // what follows (the final after a warning, the next profile), scheduled after its first attempt
}

type jobHeap []*job

func (h jobHeap) Len() int { return len(h) }
func (h jobHeap) Less(i, j int) bool {
	if !h[i].due.Equal(h[j].due) {
		return h[i].due.Before(h[j].due)
	}
	return h[i].seq < h[j].seq
}
func (h jobHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *jobHeap) Push(x any)   { *h = append(*h, x.(*job)) }
func (h *jobHeap) Pop() any {
	old := *h
	n := len(old)
	j := old[n-1]
	old[n-1] = nil
	*h = old[:n-1]
	return j
}

// scheduler holds callbacks until they are due and hands them to a bounded
// pool of workers.
type scheduler struct {
	s       *Server
	workers int

	mu   sync.Mutex
	h    jobHeap
	seq  uint64
	wake chan struct{}
	work chan *job

	ctx       context.Context
	cancel    context.CancelFunc
	startOnce sync.Once
	closeOnce sync.Once
	wg        sync.WaitGroup
}

func newScheduler(s *Server, workers int) *scheduler {
	ctx, cancel := context.WithCancel(context.Background())
	return &scheduler{
		s: s, workers: workers,
		wake: make(chan struct{}, 1),
		work: make(chan *job, workers*4),
		ctx:  ctx, cancel: cancel,
	}
}

func (sc *scheduler) start() {
	sc.startOnce.Do(func() {
		if sc.ctx.Err() != nil {
			return
		}
		sc.wg.Add(1 + sc.workers)
		go sc.run()
		for range sc.workers {
			go sc.worker()
		}
		sc.s.log.Info().Int("workers", sc.workers).Msg("callback delivery started")
	})
}

func (sc *scheduler) close() {
	sc.closeOnce.Do(func() {
		sc.cancel()
		sc.wg.Wait()
		sc.s.hc.CloseIdleConnections()
	})
}

// push schedules jobs and wakes the scheduler.
func (sc *scheduler) push(js ...*job) {
	if len(js) == 0 {
		return
	}
	sc.mu.Lock()
	for _, j := range js {
		sc.seq++
		j.seq = sc.seq
		heap.Push(&sc.h, j)
	}
	sc.mu.Unlock()
	sc.s.count.cbPending.Add(int64(len(js)))
	select {
	case sc.wake <- struct{}{}:
	default:
	}
}

// submit schedules the first callback of every device of an accepted request.
func (sc *scheduler) submit(rq *request) {
	due := time.Now().Add(sc.s.Faults().CallbackDelay)
	js := make([]*job, 0, len(rq.devices))
	for i := range rq.devices {
		d := &rq.devices[i]
		var final *job
		if !d.stuck {
			final = &job{rq: rq, dev: i, kind: kindFinal, attempt: 1}
		}
		// A device-level action: each profile's callback, then the device's.
		for p := len(d.profiles) - 1; p >= 0; p-- {
			final = &job{rq: rq, dev: i, kind: kindProfile, profile: p, attempt: 1, next: final}
		}
		switch {
		case d.warning:
			js = append(js, &job{due: due, rq: rq, dev: i, kind: kindWarning, attempt: 1, next: final})
		case final != nil:
			final.due = due
			js = append(js, final)
		}
	}
	sc.push(js...)
}

func (sc *scheduler) run() {
	defer sc.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		sc.mu.Lock()
		for len(sc.h) > 0 && !sc.h[0].due.After(time.Now()) {
			j := heap.Pop(&sc.h).(*job)
			sc.mu.Unlock()
			select {
			case sc.work <- j:
			case <-sc.ctx.Done():
				return
			}
			sc.mu.Lock()
		}
		// The first job's due time may pass between the look above and
		// this one: a wait of zero or less is a timer that fires at once,
		// never "nothing scheduled" (which would sleep until the next push).
		empty := len(sc.h) == 0
		var wait time.Duration
		if !empty {
			wait = time.Until(sc.h[0].due)
		}
		sc.mu.Unlock()
		if empty {
			select {
			case <-sc.wake:
			case <-sc.ctx.Done():
				return
			}
			continue
		}
		timer.Reset(wait)
		select {
		case <-timer.C:
		case <-sc.wake:
			timer.Stop() // Go 1.23+ timers: no stale tick to drain
		case <-sc.ctx.Done():
			return
		}
	}
}

func (sc *scheduler) worker() {
	defer sc.wg.Done()
	for {
		select {
		case j := <-sc.work:
			sc.deliver(j)
		case <-sc.ctx.Done():
			return
		}
	}
}

// deliver sends one attempt of a callback and schedules what follows: a
// resend when unanswered, the final after a warning.
func (sc *scheduler) deliver(j *job) {
	s := sc.s
	defer s.count.cbPending.Add(-1)
	rq, d := j.rq, &j.rq.devices[j.dev]
	final := j.kind == kindFinal
	next := j.next
	if j.attempt == 1 {
		j.next = nil
		if final {
			rq.settle(j.dev)
		}
		if next != nil {
			next.due = time.Now()
			if j.kind == kindWarning {
				next.due = next.due.Add(s.Faults().CallbackDelay)
			}
			defer sc.push(next) // after this attempt, so the warning goes first
		}
	}
	rec := Delivery{
		At: s.now(), RequestID: rq.id, Action: rq.action, Account: rq.account,
		Device: d.key(), Final: final, CallbackCount: j.attempt,
	}
	if j.kind == kindProfile {
		rec.Device = d.profiles[j.profile].iccid
	}
	if final && d.dropFinal {
		rec.Withheld = true
		rec.Status = finalStatus(rq.action, d.fail)
		s.count.cbWithheld.Add(1)
		s.deliveries.add(rec)
		return
	}
	reg, ok := s.listener(rq.account)
	if !ok {
		rec.Error = "no " + thingspace.ServiceDeviceProfile + " listener registered for the account"
		s.count.cbUndel.Add(1)
		s.deliveries.add(rec)
		return
	}
	cb := s.callback(rq, j, reg)
	rec.URL, rec.Status = reg.URL, cb.Status
	body, err := json.Marshal(cb)
	if err != nil {
		rec.Error = err.Error()
		s.deliveries.add(rec)
		return
	}
	ctx, cancel := context.WithTimeout(sc.ctx, s.cfg.CallbackTimeout)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, reg.URL, bytes.NewReader(body))
	if err == nil {
		req.Header.Set("Content-Type", "application/json")
		if reg.Username != "" || reg.Password != "" {
			req.SetBasicAuth(reg.Username, reg.Password)
		}
		s.count.cbSent.Add(1)
		var resp *http.Response
		if resp, err = s.hc.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
			_ = resp.Body.Close()
			rec.HTTPStatus = resp.StatusCode
			rec.Answered = resp.StatusCode >= 200 && resp.StatusCode <= 299
		}
	}
	cancel()
	if err != nil {
		rec.Error = err.Error()
	}
	s.deliveries.add(rec)
	if rec.Answered {
		s.count.cbAnswered.Add(1)
		return
	}
	s.count.cbUnanswered.Add(1)
	if sc.ctx.Err() != nil {
		return
	}
	if j.attempt >= s.cfg.MaxCallbackThreshold {
		s.count.cbAbandoned.Add(1)
		s.log.Debug().Str("request_id", rq.id).Str("device", rec.Device).Int("attempts", j.attempt).
			Msg("callback abandoned")
		return
	}
	j.attempt++
	j.due = time.Now().Add(s.cfg.ResendInterval)
	sc.push(j)
}

// titleStyle: the Global eSIM pages (deactivate, suspend, and
// presumably their lifecycle siblings) write kinds "Iccid", "Eid", "Imei"
// and status "SUCCESS"; the enable/disable/delete pages lower-case kinds
// and write "Success".
func titleStyle(action string) bool { return thingspace.IsGlobal(action) }

func styleKind(action, kind string) string {
	if titleStyle(action) {
		switch kind {
		case "iccid":
			return "Iccid"
		case "eid":
			return "Eid"
		case "imei":
			return "Imei"
		}
	}
	return kind
}

func finalStatus(action string, fail bool) string {
	switch {
	case fail:
		return thingspace.CallbackFailed
	case titleStyle(action):
		return "SUCCESS"
	}
	return thingspace.CallbackSuccess
}

// made-up identifiers, stable per device
func digits(h uint64, n int, prefix string) string {
	s := prefix
	for len(s) < n {
		s += strconv.FormatUint(h%10, 10)
		h /= 10
		if h == 0 {
			h = 0x9e3779b97f4a7c15
		}
	}
	return s
}

// callback builds the body ThingSpace would send for this attempt.
func (s *Server) callback(rq *request, j *job, reg thingspace.CallbackRegistration) thingspace.Callback {
	d := &rq.devices[j.dev]
	iccid, eid, imei := d.get("iccid"), d.get("eid"), d.get("imei")
	hf := fnv.New64a()
	_, _ = hf.Write([]byte(eid + "/" + iccid))
	h := hf.Sum64()
	if imei == "" {
		imei = digits(h, 15, "35")
	}
	mdn := d.get("mdn")
	if mdn == "" {
		mdn = digits(h>>11, 10, "2")
	}
	msisdn := d.get("msisdn")
	if msisdn == "" {
		msisdn = "1" + mdn
	}
	a := rq.action
	id := func(kind, v string) thingspace.DeviceID { return thingspace.DeviceID{Kind: styleKind(a, kind), ID: v} }
	var coll []thingspace.DeviceID
	if iccid != "" {
		coll = append(coll, id("iccid", iccid))
	}
	coll = append(coll, id("imei", imei), id("mdn", mdn))
	if eid != "" {
		coll = append(coll, id("eid", eid))
	}
	if titleStyle(a) {
		coll = append(coll, id("msisdn", msisdn))
	}
	// deviceIds: what the request named, plus the IMEI as the pages show.
	ids := make([]thingspace.DeviceID, 0, len(d.ids)+1)
	hasIMEI := false
	for _, x := range d.ids {
		ids = append(ids, id(x.Kind, x.ID))
		hasIMEI = hasIMEI || x.Kind == "imei"
	}
	if !hasIMEI {
		ids = append(ids, id("imei", imei))
	}
	cb := thingspace.Callback{
		Username: reg.Username, Password: reg.Password,
		RequestID: rq.id, DeviceIDs: ids,
		CallbackCount: j.attempt, MaxCallbackThreshold: s.cfg.MaxCallbackThreshold,
	}
	plan := rq.servicePlan
	if plan == "" {
		plan = "RP4235311"
	}
	ip := "10." + strconv.Itoa(int(h>>8&0xff)) + "." + strconv.Itoa(int(h>>16&0xff)) + "." + strconv.Itoa(int(h>>24&0xfe)+1)
	p := &thingspace.DeviceProfileResponse{DeviceIdentifierCollection: coll}
	if command.Action(a).Spec().Callbacks == command.PerProfileThenDevice {
		s.deviceLevel(&cb, rq, j)
		return cb
	}
	switch {
	case j.kind == kindWarning:
		cb.Status = thingspace.CallbackWarning
		p.ProfileStatus = profileStatus(a)
		p.EuiccStatus = "DEVICE_UNREACHABLE"
		p.EuiccStatusDesc = "The device is unreachable; the request will complete when it is reachable."
		if !titleStyle(a) {
			p.SmsrOid = rq.smsrOid
		}
		cb.DeviceResponse = &thingspace.DeviceResponse{DeviceProfileResponse: p}
		return cb
	case d.fail:
		cb.Status = thingspace.CallbackFailed
		cb.FaultResponse = refused("The SM-SR reported that the eUICC refused the profile " + a + ".")
		return cb
	}
	cb.Status = finalStatus(a, false)
	switch command.Action(a) {
	case command.Deactivate:
		p.State, p.ServicePlan, p.ProfileStatus, p.ProfileRole = "DEACTIVE", plan, "ENABLE", "LOCAL"
	case command.Suspend:
		p.State, p.ProfileStatus, p.ProfileRole = "SUSPENDED", "ENABLE", "LOCAL"
	case command.Resume:
		p.State, p.ServicePlan, p.ProfileStatus, p.ProfileRole = "ACTIVE", plan, "ENABLE", "LOCAL"
	default:
		p.IPAddress, p.State, p.ServicePlan, p.SmsrOid = ip, "Active", plan, rq.smsrOid
		p.DeviceCredential = &thingspace.DeviceCredential{Username: mdn + "@vzw4g.com", Password: mdn}
		p.ProfileStatus = profileStatus(a)
		p.EuiccStatus, p.EuiccStatusCode, p.EuiccStatusDesc = "EXECUTED_SUCCESS", "1.2.365", "EUICC device profile has been updated"
		if a == string(command.Enable) {
			p.EuiccSubAddressUpdateStatus, p.EuiccSubAddressUpdateStatusCode = "EXECUTED_SUCCESS", "1"
			p.EuiccSubAddressUpdateStatusDesc = "SUCCESS: Address has been updated"
		}
	}
	cb.DeviceResponse = &thingspace.DeviceResponse{DeviceProfileResponse: p}
	return cb
}

// refused is the faultResponse of a failed callback: the SM-SR's refusal,
// with why.
func refused(why string) *thingspace.FaultResponse {
	return &thingspace.FaultResponse{FaultCode: "SMSR.REQUEST_FAILED.ProfileStateChange.Rejected", FaultString: why}
}

// profileStatus is what a callback reports of the profile after action: the
// action's own name on enable, disable and delete, DOWNLOAD_ENABLE or
// DOWNLOAD_DISABLE after a download ("Working with eUICC Devices"), ENABLE
// on the Global pages.
func profileStatus(action string) string {
	switch {
	case titleStyle(action):
		return "ENABLE"
	case action == string(command.DownloadEnable), action == string(command.DownloadDisable):
		return strings.ToUpper(action)
	}
	return action
}

// deviceLevel fills in a callback of device_suspend or device_resume: a
// profile's (the EID and that ICCID; "Profile is already suspended" as a
// failure) or, after them, the device's own (the EID alone).
func (s *Server) deviceLevel(cb *thingspace.Callback, rq *request, j *job) {
	d := &rq.devices[j.dev]
	eid, a := d.get("eid"), rq.action
	id := func(kind, v string) thingspace.DeviceID { return thingspace.DeviceID{Kind: styleKind(a, kind), ID: v} }
	state := "SUSPENDED"
	if a == string(command.DeviceResume) {
		state = "ACTIVE"
	}
	refusal := "The SM-SR reported that the eUICC refused the " + a + "."
	if j.kind == kindProfile {
		o := d.profiles[j.profile]
		cb.DeviceIDs = []thingspace.DeviceID{id("eid", eid), id("iccid", o.iccid)}
		switch {
		case o.fail:
			cb.Status, cb.FaultResponse = thingspace.CallbackFailed, refused(o.fault)
			return
		case d.fail:
			cb.Status, cb.FaultResponse = thingspace.CallbackFailed, refused(refusal)
			return
		}
		cb.Status = finalStatus(a, false)
		cb.DeviceResponse = &thingspace.DeviceResponse{DeviceProfileResponse: &thingspace.DeviceProfileResponse{
			DeviceIdentifierCollection: []thingspace.DeviceID{id("iccid", o.iccid), id("eid", eid)},
			State:                      state, ProfileStatus: "ENABLE", ProfileRole: "OPERATIONAL",
		}}
		return
	}
	cb.DeviceIDs = []thingspace.DeviceID{id("eid", eid)}
	if d.fail {
		cb.Status, cb.FaultResponse = thingspace.CallbackFailed, refused(refusal)
		return
	}
	cb.Status = finalStatus(a, false)
	cb.DeviceResponse = &thingspace.DeviceResponse{DeviceProfileResponse: &thingspace.DeviceProfileResponse{
		DeviceIdentifierCollection: []thingspace.DeviceID{id("eid", eid)}, State: state,
	}}
}
