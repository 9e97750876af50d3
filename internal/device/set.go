package device

import "strings"

// Set is what is known of one device: at most one identifier per kind, each
// already checked. It marshals as the contract's `device` object, lower-case
// kind to id.
type Set struct {
	EID    string `json:"eid,omitempty"`
	ICCID  string `json:"iccid,omitempty"`
	IMEI   string `json:"imei,omitempty"`
	MDN    string `json:"mdn,omitempty"`
	MSISDN string `json:"msisdn,omitempty"`
}

// Get returns the identifier of kind k, or "".
func (s Set) Get(k Kind) string {
	switch k {
	case EID:
		return s.EID
	case ICCID:
		return s.ICCID
	case IMEI:
		return s.IMEI
	case MDN:
		return s.MDN
	case MSISDN:
		return s.MSISDN
	}
	return ""
}

// With returns s with k set to v.
func (s Set) With(k Kind, v string) Set {
	switch k {
	case EID:
		s.EID = v
	case ICCID:
		s.ICCID = v
	case IMEI:
		s.IMEI = v
	case MDN:
		s.MDN = v
	case MSISDN:
		s.MSISDN = v
	}
	return s
}

// Add returns s with id added.
func (s Set) Add(id ID) Set { return s.With(id.Kind(), id.Value()) }

// IsZero reports whether s names no identifier.
func (s Set) IsZero() bool { return s == Set{} }

// Key is the device's name in subjects and look-ups: the ICCID, else the EID,
// else the first identifier known, else "unknown".
func (s Set) Key() string {
	for _, k := range []Kind{ICCID, EID, IMEI, MSISDN, MDN} {
		if v := s.Get(k); v != "" {
			return v
		}
	}
	return "unknown"
}

// String prints the identifiers as kind:value pairs, for logs and errors.
func (s Set) String() string {
	var b strings.Builder
	for _, k := range Kinds {
		if v := s.Get(k); v != "" {
			if b.Len() > 0 {
				b.WriteByte(' ')
			}
			b.WriteString(string(k) + ":" + v)
		}
	}
	return b.String()
}
