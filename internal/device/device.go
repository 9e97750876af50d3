package device

import (
	"errors"
	"fmt"
	"strings"
)

// Kind is an identifier kind, always lower case.
type Kind string

// The identifier kinds ThingSpace knows for profile actions.
const (
	EID    Kind = "eid"
	ICCID  Kind = "iccid"
	IMEI   Kind = "imei"
	MDN    Kind = "mdn"
	MSISDN Kind = "msisdn"
)

// Kinds lists every kind in a stable order.
var Kinds = []Kind{EID, ICCID, IMEI, MDN, MSISDN}

// ErrUnknownKind reports an identifier kind outside [Kinds].
var ErrUnknownKind = errors.New("unknown identifier kind")

// ErrInvalid reports an identifier whose value breaks its kind's format.
var ErrInvalid = errors.New("invalid identifier")

// ParseKind reads a kind in any case ("ICCID", "Iccid", "iccid").
func ParseKind(s string) (Kind, error) {
	k := Kind(strings.ToLower(strings.TrimSpace(s)))
	for _, known := range Kinds {
		if k == known {
			return k, nil
		}
	}
	return "", fmt.Errorf("%w %q (want one of eid, iccid, imei, mdn, msisdn)", ErrUnknownKind, s)
}

// Valid reports whether k is one of [Kinds] (lower case, as ParseKind returns).
func (k Kind) Valid() bool {
	switch k {
	case EID, ICCID, IMEI, MDN, MSISDN:
		return true
	}
	return false
}

// Options tune how strictly identifiers are checked.
type Options struct {
	// Checksums also verifies check digits: Luhn for ICCID and IMEI, ISO 7064
	// MOD 97-10 for EID. Off by default, because ThingSpace's documented
	// samples fail them.
	Checksums bool
}

// ID is one well-formed identifier. The zero value is "no identifier".
type ID struct {
	kind  Kind
	value string
}

// Kind returns the identifier's kind.
func (id ID) Kind() Kind { return id.kind }

// Value returns the identifier's digits.
func (id ID) Value() string { return id.value }

// IsZero reports whether id is the zero value.
func (id ID) IsZero() bool { return id.kind == "" }

// String prints kind:value.
func (id ID) String() string { return string(id.kind) + ":" + id.value }

// Parse checks value against kind's format (see THINGSPACE.md) and, with
// opts.Checksums, its check digit.
func Parse(kind Kind, value string, opts Options) (ID, error) {
	if !kind.Valid() {
		return ID{}, fmt.Errorf("%w %q (want one of eid, iccid, imei, mdn, msisdn)", ErrUnknownKind, string(kind))
	}
	v := strings.TrimSpace(value)
	if v == "" {
		return ID{}, fmt.Errorf("%w: %s is empty", ErrInvalid, kind)
	}
	if !allDigits(v) {
		return ID{}, fmt.Errorf("%w: %s %q must contain digits only", ErrInvalid, kind, value)
	}
	n := len(v)
	switch kind {
	case EID:
		// The text says 32 digits, the documented sample has 30: accept both
		// lengths and anything in between.
		if n < 30 || n > 32 {
			return ID{}, fmt.Errorf("%w: eid %q has %d digits, want 32", ErrInvalid, value, n)
		}
		if opts.Checksums && !mod97(v) {
			return ID{}, fmt.Errorf("%w: eid %q fails the ISO 7064 MOD 97-10 check", ErrInvalid, value)
		}
	case ICCID:
		if n != 19 && n != 20 {
			return ID{}, fmt.Errorf("%w: iccid %q has %d digits, want 19 or 20", ErrInvalid, value, n)
		}
		if opts.Checksums && !luhn(v) {
			return ID{}, fmt.Errorf("%w: iccid %q fails the Luhn check", ErrInvalid, value)
		}
	case IMEI:
		switch {
		case n == 15:
			if opts.Checksums && !luhn(v) {
				return ID{}, fmt.Errorf("%w: imei %q fails the Luhn check", ErrInvalid, value)
			}
		case n == 16: // IMEISV carries no check digit
		default:
			return ID{}, fmt.Errorf("%w: imei %q has %d digits, want 15 (or 16 for IMEISV)", ErrInvalid, value, n)
		}
	case MDN:
		if n != 10 {
			return ID{}, fmt.Errorf("%w: mdn %q has %d digits, want 10", ErrInvalid, value, n)
		}
	case MSISDN:
		if n < 11 || n > 15 {
			return ID{}, fmt.Errorf("%w: msisdn %q has %d digits, want 11 to 15", ErrInvalid, value, n)
		}
	}
	return ID{kind: kind, value: v}, nil
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// luhn reports whether the last digit of s is its Luhn check digit.
func luhn(s string) bool {
	sum := 0
	double := false
	for i := len(s) - 1; i >= 0; i-- {
		d := int(s[i] - '0')
		if double {
			d *= 2
			if d > 9 {
				d -= 9
			}
		}
		sum += d
		double = !double
	}
	return sum%10 == 0
}

// mod97 reports whether the decimal number s is 1 modulo 97 (ISO 7064 MOD 97-10).
func mod97(s string) bool {
	r := 0
	for i := 0; i < len(s); i++ {
		r = (r*10 + int(s[i]-'0')) % 97
	}
	return r == 1
}
