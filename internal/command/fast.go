package command

import (
	"strconv"
	"strings"
	"sync"

	"github.com/esim-pipeline/thingspace-esim/internal/device"
	"github.com/esim-pipeline/thingspace-esim/schemas"
)

// fastDecode is Decode for the bodies producers send nearly always, read
// straight into identifiers instead of through map[string]any (which cost
// most of Decode's time and 40 of its 51 allocations a single-device
// command): an object of known top-level fields, each once, with plain
// string values (ASCII, no escapes) and etfWaiver a boolean, and devices an
// array of {"deviceIds": [{"kind": ..., "id": ...}, ...]} entries, each
// with at least one identifier.
//
// It only answers for a body whose verdict key the schema has found valid
// before (see validDocs): what is left to check then is what Decode checks
// beyond the schema, the identifiers and duplicate devices, and that is
// the same code. For anything else it reports false and Decode takes its
// general path, which also words every error; FuzzFastDecode holds the two
// to the same Command.
func fastDecode(a Action, body []byte, opts device.Options) (*Command, bool) {
	var doc fastDoc
	if !doc.parse(body) {
		return nil, false
	}
	if len(doc.devices) > deviceLimit(a) {
		return nil, false
	}
	if _, known := validDocs.Load(doc.verdictKey(a)); !known {
		return nil, false
	}
	d := decoder{action: a, opts: opts}
	c := d.build(doc.devices)
	// Everything the command hands out is a copy, not a slice of the
	// whole body: the dispatcher keeps a batch key's options for good and
	// a device's identifiers until its call is made.
	for i := range c.Devices {
		c.Devices[i].IDs = cloneSet(c.Devices[i].IDs)
	}
	for i := range c.Problems {
		c.Problems[i].Device = cloneSet(c.Problems[i].Device)
	}
	c.ID, c.AccountName = strings.Clone(doc.fields[fieldCommandID]), strings.Clone(doc.fields[fieldAccountName])
	c.Options.SmsrOid = strings.Clone(doc.fields[fieldSmsrOid])
	c.Options.ServicePlan = strings.Clone(doc.fields[fieldServicePlan])
	c.Options.ReasonCode = strings.Clone(doc.fields[fieldReasonCode])
	if doc.has&(1<<fieldEtfWaiver) != 0 {
		w := doc.etfWaiver
		c.Options.EtfWaiver = &w
	}
	return c, true
}

// cloneSet copies the identifiers of s.
func cloneSet(s device.Set) device.Set {
	return device.Set{
		EID: strings.Clone(s.EID), ICCID: strings.Clone(s.ICCID), IMEI: strings.Clone(s.IMEI),
		MDN: strings.Clone(s.MDN), MSISDN: strings.Clone(s.MSISDN),
	}
}

// The top-level fields fastDecode reads, in the byte order of their names
// (the order verdictKey writes them in).
const (
	fieldAccountName = iota
	fieldCommandID
	fieldDevices
	fieldEtfWaiver
	fieldReasonCode
	fieldServicePlan
	fieldSmsrOid
	fieldCount
)

var fieldNames = [fieldCount]string{"accountName", "commandId", "devices", "etfWaiver", "reasonCode", "servicePlan", "smsrOid"}

// maxShapes bounds the distinct device shapes fastDecode keeps apart; a
// body with more goes the general way.
const maxShapes = 8

// fastDoc is what fastDecode read of a body. Its strings share one copy of
// the body.
type fastDoc struct {
	s         string
	i         int
	has       uint8 // bit per field present
	fields    [fieldCount]string
	etfWaiver bool
	devices   [][]rawID
	shapes    []string // distinct device shapes (see shapeKey), in order of first appearance
}

func (p *fastDoc) parse(body []byte) bool {
	p.s = string(body)
	if !p.open('{') || p.peek() == '}' {
		return false
	}
	for {
		key, ok := p.str()
		if !ok || !p.open(':') {
			return false
		}
		f := fieldOf(key)
		if f < 0 || p.has&(1<<f) != 0 {
			return false
		}
		p.has |= 1 << f
		switch f {
		case fieldDevices:
			ok = p.deviceList()
		case fieldEtfWaiver:
			p.etfWaiver, ok = p.boolean()
		default:
			p.fields[f], ok = p.str()
		}
		if !ok {
			return false
		}
		if p.open(',') {
			continue
		}
		if !p.open('}') {
			return false
		}
		p.space()
		return p.i == len(p.s) && p.has&(1<<fieldDevices) != 0
	}
}

func fieldOf(name string) int {
	for f, n := range fieldNames {
		if n == name {
			return f
		}
	}
	return -1
}

// deviceList reads the devices array: flat holds every identifier, each
// device a slice of it.
func (p *fastDoc) deviceList() bool {
	if !p.open('[') || p.peek() == ']' {
		return false
	}
	var flat []rawID
	var ends []int
	for {
		if !p.open('{') {
			return false
		}
		if key, ok := p.str(); !ok || key != "deviceIds" || !p.open(':') || !p.open('[') || p.peek() == ']' {
			return false
		}
		for {
			id, ok := p.identifier()
			if !ok {
				return false
			}
			flat = append(flat, id)
			if p.open(',') {
				continue
			}
			if !p.open(']') || !p.open('}') {
				return false
			}
			break
		}
		ends = append(ends, len(flat))
		if p.open(',') {
			continue
		}
		if !p.open(']') {
			return false
		}
		break
	}
	p.devices = make([][]rawID, len(ends))
	start := 0
	for n, end := range ends {
		p.devices[n] = flat[start:end:end]
		start = end
	}
	return true
}

// identifier reads {"kind": K, "id": I} with its two keys in either order.
func (p *fastDoc) identifier() (rawID, bool) {
	var id rawID
	if !p.open('{') {
		return id, false
	}
	var seen [2]bool
	for n := 0; n < 2; n++ {
		key, ok := p.str()
		if !ok || !p.open(':') {
			return id, false
		}
		val, ok := p.str()
		if !ok {
			return id, false
		}
		switch {
		case key == "kind" && !seen[0]:
			id.kind, seen[0] = val, true
		case key == "id" && !seen[1]:
			id.id, seen[1] = val, true
		default:
			return id, false
		}
		if n == 0 && !p.open(',') {
			return id, false
		}
	}
	return id, p.open('}')
}

// space skips JSON whitespace.
func (p *fastDoc) space() {
	for p.i < len(p.s) {
		switch p.s[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

// peek returns the next byte after whitespace, 0 at the end.
func (p *fastDoc) peek() byte {
	p.space()
	if p.i < len(p.s) {
		return p.s[p.i]
	}
	return 0
}

// open consumes c, after whitespace, if it comes next.
func (p *fastDoc) open(c byte) bool {
	if p.peek() != c {
		return false
	}
	p.i++
	return true
}

// str reads a string of printable ASCII without escapes: its value is its
// bytes.
func (p *fastDoc) str() (string, bool) {
	if !p.open('"') {
		return "", false
	}
	start := p.i
	for p.i < len(p.s) {
		c := p.s[p.i]
		switch {
		case c == '"':
			p.i++
			return p.s[start : p.i-1], true
		case c < 0x20 || c >= 0x7f || c == '\\':
			return "", false
		}
		p.i++
	}
	return "", false
}

func (p *fastDoc) boolean() (bool, bool) {
	switch p.peek() {
	case 't':
		if len(p.s)-p.i >= 4 && p.s[p.i:p.i+4] == "true" {
			p.i += 4
			return true, true
		}
	case 'f':
		if len(p.s)-p.i >= 5 && p.s[p.i:p.i+5] == "false" {
			p.i += 5
			return false, true
		}
	}
	return false, false
}

// verdictKey is verdictKey's key of the same body, built from what was
// read (FuzzFastDecode holds the two together); "" when the devices have
// more shapes than maxShapes.
func (p *fastDoc) verdictKey(a Action) string {
	b := make([]byte, 0, 256)
	b = append(b, a...)
	for f, name := range fieldNames {
		if p.has&(1<<f) == 0 {
			continue
		}
		b = appendLenPrefixed(append(b, ';'), name)
		b = append(b, '=')
		switch f {
		case fieldCommandID:
			// ASCII: its length in bytes is its length in runes
			b = strconv.AppendInt(append(b, "len:"...), int64(min(len(p.fields[f]), 1<<20)), 10)
		case fieldEtfWaiver:
			b = strconv.AppendBool(b, p.etfWaiver)
		case fieldDevices:
			var ok bool
			if b, ok = p.appendShapes(append(b, 'a')); !ok {
				return ""
			}
		default:
			b = appendLenPrefixed(append(b, 's'), p.fields[f])
		}
	}
	return string(b)
}

// appendShapes appends the number of distinct device shapes and each, as
// verdictKey writes the representatives of group.
func (p *fastDoc) appendShapes(b []byte) ([]byte, bool) {
	var key []byte
	p.shapes = p.shapes[:0]
	for _, ids := range p.devices {
		key = key[:0]
		for _, id := range ids {
			key = appendLenPrefixed(key, id.kind)
		}
		known := false
		for _, s := range p.shapes {
			if s == string(key) {
				known = true
				break
			}
		}
		if !known {
			if len(p.shapes) == maxShapes {
				return b, false
			}
			p.shapes = append(p.shapes, string(key))
		}
	}
	b = strconv.AppendInt(b, int64(len(p.shapes)), 10)
	for _, s := range p.shapes {
		b = append(append(b, '|'), s...)
	}
	return b, true
}

// deviceLimit is the schema's maxItems of devices for a, read once.
func deviceLimit(a Action) int {
	return deviceLimits()[a]
}

var deviceLimits = sync.OnceValue(func() map[Action]int {
	limits := make(map[Action]int, len(Actions))
	for _, a := range Actions {
		limits[a] = MaxDevices
		if sch, err := schemas.Get(a.Schema()); err == nil {
			limits[a] = maxDevices(sch)
		}
	}
	return limits
})
