package status

import (
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/esim-pipeline/thingspace-esim/internal/device"
)

// AppendJSON appends e as JSON to b: the same document json.Marshal makes
// (same fields, same omissions), without reflection, for the dispatcher's
// hot path of 10,000 events a call.
func (e Event) AppendJSON(b []byte) []byte {
	b = append(b, `{"eventId":`...)
	b = appendString(b, e.EventID)
	if e.CommandID != "" {
		b = appendString(append(b, `,"commandId":`...), e.CommandID)
	}
	if e.RequestID != "" {
		b = appendString(append(b, `,"requestId":`...), e.RequestID)
	}
	b = appendString(append(b, `,"action":`...), e.Action)
	if e.AccountName != "" {
		b = appendString(append(b, `,"accountName":`...), e.AccountName)
	}
	b = appendDevice(append(b, `,"device":`...), e.Device)
	b = appendString(append(b, `,"status":`...), string(e.Status))
	b = strconv.AppendBool(append(b, `,"final":`...), e.Final)
	if e.Reason != nil {
		b = appendString(append(b, `,"reason":{"code":`...), e.Reason.Code)
		b = appendString(append(b, `,"message":`...), e.Reason.Message)
		b = append(b, '}')
	}
	if e.Profile != nil {
		b = appendProfile(append(b, `,"profile":`...), e.Profile)
	}
	if e.CallbackCount != 0 {
		b = strconv.AppendInt(append(b, `,"callbackCount":`...), int64(e.CallbackCount), 10)
	}
	if e.MaxCallbackThreshold != 0 {
		b = strconv.AppendInt(append(b, `,"maxCallbackThreshold":`...), int64(e.MaxCallbackThreshold), 10)
	}
	b = append(b, `,"occurredAt":"`...)
	b = e.OccurredAt.AppendFormat(b, time.RFC3339Nano)
	return append(b, `"}`...)
}

func appendDevice(b []byte, d device.Set) []byte {
	return appendFields(b, []field{{"eid", d.EID}, {"iccid", d.ICCID}, {"imei", d.IMEI}, {"mdn", d.MDN}, {"msisdn", d.MSISDN}})
}

func appendProfile(b []byte, p *Profile) []byte {
	return appendFields(b, []field{
		{"state", p.State}, {"profileStatus", p.ProfileStatus}, {"profileRole", p.ProfileRole},
		{"servicePlan", p.ServicePlan}, {"smsrOid", p.SmsrOid}, {"euiccStatus", p.EuiccStatus},
		{"euiccStatusCode", p.EuiccStatusCode}, {"euiccStatusDesc", p.EuiccStatusDesc},
		{"euiccSubAddressUpdateStatus", p.EuiccSubAddressUpdateStatus},
		{"euiccSubAddressUpdateStatusCode", p.EuiccSubAddressUpdateStatusCode},
		{"euiccSubAddressUpdateStatusDesc", p.EuiccSubAddressUpdateStatusDesc},
		{"ipAddress", p.IPAddress},
	})
}

// field is one string member of a JSON object, left out when empty
// (omitempty).
type field struct{ k, v string }

// appendFields appends an object of the non-empty fields, in order.
func appendFields(b []byte, fs []field) []byte {
	b = append(b, '{')
	first := true
	for _, f := range fs {
		if f.v == "" {
			continue
		}
		if !first {
			b = append(b, ',')
		}
		first = false
		b = appendString(append(appendString(b, f.k), ':'), f.v)
	}
	return append(b, '}')
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string, escaped as encoding/json does
// (quotes, backslash, control characters, <, >, &, U+2028, U+2029; invalid
// UTF-8 becomes U+FFFD).
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
