package callback

import (
	"strings"
	"time"
	"unicode/utf8"

	"github.com/esim-pipeline/thingspace-esim/internal/command"
	"github.com/esim-pipeline/thingspace-esim/internal/correlation"
	"github.com/esim-pipeline/thingspace-esim/internal/device"
	"github.com/esim-pipeline/thingspace-esim/internal/status"
	"github.com/esim-pipeline/thingspace-esim/internal/thingspace"
)

// parsedCallback is what the intake read of one callback, handed to the
// fan-out with the stored message so that it is read once.
type parsedCallback struct {
	cb         *thingspace.Callback
	status     status.Status
	known      bool       // the callback's status has an event status
	said       device.Set // the device the callback names
	receivedAt time.Time
}

func parse(cb *thingspace.Callback, receivedAt time.Time) *parsedCallback {
	st, ok := callbackStatus(cb)
	return &parsedCallback{cb: cb, status: st, known: ok, said: callbackDevice(cb), receivedAt: receivedAt}
}

// callbackStatus maps a callback's status (any case) to the event's.
func callbackStatus(cb *thingspace.Callback) (status.Status, bool) {
	switch {
	case cb.IsSuccess():
		return status.Succeeded, true
	case cb.IsFailed():
		return status.Failed, true
	case cb.IsWarning():
		return status.Pending, true
	}
	return "", false
}

// callbackDevice is the device a callback names: the union of deviceIds and
// deviceIdentifierCollection, kinds lower-cased, kinds outside device.Kinds
// left out. Values are kept as ThingSpace wrote them.
func callbackDevice(cb *thingspace.Callback) device.Set {
	var d device.Set
	for k, id := range cb.AllIdentifiers() {
		kind, err := device.ParseKind(k)
		if err != nil || d.Get(kind) != "" {
			continue // the first value of a kind counts, as in Identifiers
		}
		d = d.With(kind, id)
	}
	return d
}

// merge adds the identifiers the record knows and the callback did not say,
// so the event lands on the subject of the device's accepted event.
func merge(cb, rec device.Set) device.Set {
	for _, k := range device.Kinds {
		if cb.Get(k) == "" {
			if v := rec.Get(k); v != "" {
				cb = cb.With(k, v)
			}
		}
	}
	return cb
}

// guessAction reads the action a callback answers from what it reports, for
// a requestId without a record: the downloads, delete and disable name
// themselves in profileStatus; deactivate and suspend show in the device's
// state (their profileStatus stays ENABLE); enable names itself in
// profileStatus. resume reports nothing of its own (its event goes to the
// unknown action); device_suspend's callbacks show a suspended state like
// suspend's, and without a record are taken for suspend's.
func guessAction(p *thingspace.DeviceProfileResponse) string {
	if p == nil {
		return status.UnknownAction
	}
	ps := strings.ToLower(strings.TrimSpace(p.ProfileStatus))
	st := strings.ToLower(strings.TrimSpace(p.State))
	var a command.Action
	switch {
	case ps == string(command.DownloadEnable), ps == string(command.DownloadDisable):
		a = command.Action(ps)
	case strings.HasPrefix(ps, "delete"):
		a = command.Delete
	case strings.HasPrefix(ps, "disable"):
		a = command.Disable
	case strings.HasPrefix(st, "deactiv"):
		a = command.Deactivate
	case strings.HasPrefix(st, "suspend"):
		a = command.Suspend
	case strings.HasPrefix(ps, "enable") && strings.TrimSpace(p.ProfileStatus) != "ENABLE":
		// the enable page writes "enable"; "ENABLE" with an active state is
		// a Global page's (a resume, perhaps): not a guess to make
		a = command.Enable
	default:
		return status.UnknownAction
	}
	return string(a)
}

// profileOf copies the allow-listed fields of the callback's profile
// response: never deviceCredential, username or password.
func profileOf(p *thingspace.DeviceProfileResponse) *status.Profile {
	if p == nil {
		return nil
	}
	out := status.Profile{
		State:                           clip(p.State),
		ProfileStatus:                   clip(p.ProfileStatus),
		ProfileRole:                     clip(p.ProfileRole),
		ServicePlan:                     clip(p.ServicePlan),
		SmsrOid:                         clip(p.SmsrOid),
		EuiccStatus:                     clip(p.EuiccStatus),
		EuiccStatusCode:                 clip(p.EuiccStatusCode),
		EuiccStatusDesc:                 clip(p.EuiccStatusDesc),
		EuiccSubAddressUpdateStatus:     clip(p.EuiccSubAddressUpdateStatus),
		EuiccSubAddressUpdateStatusCode: clip(p.EuiccSubAddressUpdateStatusCode),
		EuiccSubAddressUpdateStatusDesc: clip(p.EuiccSubAddressUpdateStatusDesc),
		IPAddress:                       clip(p.IPAddress),
	}
	if out.IsZero() {
		return nil
	}
	return &out
}

// Reason codes of failed callbacks without a faultResponse.
const reasonNoFault = "CALLBACK_FAILED"

// buildEvent makes the status event of one callback. rec may be nil (no
// record after the grace); receivedAt is when the callback reached us.
func buildEvent(pc *parsedCallback, rec *correlation.Record) status.Event {
	cb, st, said := pc.cb, pc.status, pc.said
	dev := said
	ev := status.Event{
		RequestID:            cb.RequestID,
		Status:               st,
		Final:                st.Final(),
		Profile:              profileOf(cb.Profile()),
		CallbackCount:        cb.CallbackCount,
		MaxCallbackThreshold: cb.MaxCallbackThreshold,
		OccurredAt:           pc.receivedAt.UTC(),
	}
	if rec != nil {
		ev.Action = rec.Action
		ev.AccountName = rec.AccountName
		if e, ok := rec.Find(dev); ok {
			ev.CommandID = e.CommandID
			dev = merge(dev, e.Device)
		}
	}
	if ev.Action == "" {
		ev.Action = guessAction(cb.Profile())
	}
	if st == status.Failed {
		ev.Reason = &status.Reason{Code: reasonNoFault, Message: "ThingSpace reported the action failed without a faultResponse"}
		if f := cb.FaultResponse; f != nil && (f.FaultCode != "" || f.FaultString != "") {
			ev.Reason = &status.Reason{Code: clip(strings.TrimSpace(f.FaultCode)), Message: clip(f.FaultString)}
			if ev.Reason.Code == "" {
				ev.Reason.Code = reasonNoFault
			}
		}
	}
	ev.Device = dev
	// The id comes from what the callback says, so a resend names the same
	// fact whether or not the record was found by then.
	ev.EventID = status.RequestEventID(st, cb.RequestID, said)
	return ev
}

// maxEventText is the most bytes of one callback text field an event
// carries. ThingSpace's are short; a callback of a megabyte of fault text
// still makes an event that fits a NATS message (the callback itself is
// kept whole in the callback stream).
const maxEventText = 1024

// clip cuts s to maxEventText bytes on a character boundary.
func clip(s string) string {
	if len(s) <= maxEventText {
		return s
	}
	cut := maxEventText
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
