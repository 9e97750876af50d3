package callback

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/esim-pipeline/thingspace-esim/internal/device"
	"github.com/esim-pipeline/thingspace-esim/internal/thingspace"
)

// errInvalidValue marks a callback that parses but names a value that
// cannot become a subject token or a key: it is unparseable all the same
// (400, dead-lettered) and nothing of it reaches a subject.
var errInvalidValue = errors.New("invalid callback value")

// maxRequestID is the longest requestId taken. ThingSpace's are UUIDs (36).
const maxRequestID = 64

// parseCallback reads a callback and holds the values that become subject
// tokens or KV keys to their formats before anything is stored or looked
// up: the requestId (1 to 64 of A-Z a-z 0-9 - _), which names the requestId
// record's key, and every identifier of a known kind, which may name the
// event's subject (device.Parse's formats: THINGSPACE.md). Identifiers of
// other kinds never reach a subject and are left as they are. The
// credentials the callback carried are dropped from what it returns.
func parseCallback(body []byte) (*thingspace.Callback, error) {
	cb, err := thingspace.ParseCallback(body)
	if err != nil {
		return nil, err
	}
	if err := checkValues(cb); err != nil {
		return nil, err
	}
	forgetCredentials(cb)
	return cb, nil
}

func checkValues(cb *thingspace.Callback) error {
	if !validRequestID(cb.RequestID) {
		return fmt.Errorf("%w: requestId %s is not 1 to %d letters, digits, '-' or '_'", errInvalidValue, describe(cb.RequestID), maxRequestID)
	}
	for k, id := range cb.AllIdentifiers() {
		kind, err := device.ParseKind(k)
		if err != nil {
			continue
		}
		if _, err := device.Parse(kind, id, device.Options{}); err != nil {
			return fmt.Errorf("%w: %s %s breaks the %s format", errInvalidValue, kind, describe(id), kind)
		}
	}
	return nil
}

func validRequestID(s string) bool {
	if len(s) == 0 || len(s) > maxRequestID {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// describe quotes at most the first 24 bytes of an input value, escaped,
// with its length when longer: enough to find it, never a 5,000-character
// error line.
func describe(s string) string {
	const show = 24
	if len(s) <= show {
		return strconv.Quote(s)
	}
	return strconv.Quote(s[:show]) + "… (" + strconv.Itoa(len(s)) + " bytes)"
}

// forgetCredentials drops what a parsed callback holds of credentials, so
// that what the intake hands to the fan-out carries none.
func forgetCredentials(cb *thingspace.Callback) {
	cb.Username, cb.Password = "", ""
	if p := cb.Profile(); p != nil {
		p.DeviceCredential = nil
	}
}
