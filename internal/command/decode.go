package command

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	gojson "github.com/goccy/go-json"
	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/santhosh-tekuri/jsonschema/v6/kind"

	"github.com/esim-pipeline/thingspace-esim/internal/device"
	"github.com/esim-pipeline/thingspace-esim/schemas"
)

// maxEchoed bounds an identifier value carried into a Problem's Device: a
// longer value is not an identifier, and would make an unwieldy subject.
const maxEchoed = 64

// Decode reads a command body for action: the ThingSpace request body of the
// action, as in the API pages, plus an optional "commandId".
//
// It returns an error wrapping [ErrUndecodable] when no device can be read:
// the body is not JSON, not an object, a top-level field has the wrong type,
// devices is missing, empty, not an array or holds no object, or action is
// unknown. Otherwise it returns a Command in which every device is either in
// Devices or in Problems, and Err tells whether the command is refused as a
// whole. A leading UTF-8 byte order mark is ignored. Any other error is a
// broken schema file, which this package's tests rule out.
func Decode(action Action, body []byte, opts device.Options) (*Command, error) {
	a, err := ParseAction(string(action))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUndecodable, err)
	}
	body = bytes.TrimPrefix(body, []byte("\xef\xbb\xbf"))
	if c, ok := fastDecode(a, body, opts); ok {
		return c, nil
	}
	return decodeGeneral(a, body, opts)
}

// decodeGeneral is Decode for any body (its byte order mark trimmed): the
// document as encoding/json reads it, judged by the action's schema.
func decodeGeneral(a Action, body []byte, opts device.Options) (*Command, error) {
	sch, err := schemas.Get(a.Schema())
	if err != nil {
		return nil, fmt.Errorf("command schema for %s: %w", a, err)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, undecodable("the body is empty, want a JSON object with devices and accountName")
	}
	doc, err := decodeDoc(body)
	if err != nil {
		return nil, undecodable(syntaxMessage(body, err))
	}
	root, ok := doc.(map[string]any)
	if !ok {
		return nil, undecodable("the body must be a JSON object with devices and accountName, not " + article(jsonType(doc)))
	}
	d := decoder{action: a, opts: opts, root: root, deviceMsgs: map[int][]finding{}}
	devices, isArray := root["devices"].([]any)
	var groups [][]int
	if isArray {
		// Validate one representative per device shape (see group), then
		// check the device count the schema can no longer see.
		var reduced []any
		reduced, groups = group(devices)
		shallow := make(map[string]any, len(root))
		for k, v := range root {
			shallow[k] = v
		}
		shallow["devices"] = reduced
		doc = shallow
		if limit := maxDevices(sch); len(devices) > limit {
			d.command = append(d.command, fmt.Sprintf("devices has %d entries, more than the %d one command may name", len(devices), limit))
		}
	}
	key, cacheable := verdictKey(a, root, doc)
	if _, known := validDocs.Load(key); !cacheable || !known {
		if err := sch.Validate(doc); err != nil {
			for _, v := range schemas.Violations(err) {
				d.classify(v, groups)
			}
		} else if cacheable {
			rememberValid(key)
		}
	}
	if len(d.fatal) > 0 {
		return nil, undecodable(strings.Join(sorted(d.fatal), "; "))
	}
	if !slices.ContainsFunc(devices, func(e any) bool { _, ok := e.(map[string]any); return ok }) {
		return nil, undecodable("devices must be an array of objects, each with deviceIds")
	}
	ids := make([][]rawID, len(devices))
	for i, e := range devices {
		ids[i] = rawIDsOf(e)
	}
	c := d.build(ids)
	c.ID, _ = root["commandId"].(string)
	c.AccountName, _ = root["accountName"].(string)
	c.Options.SmsrOid, _ = root["smsrOid"].(string)
	c.Options.ServicePlan, _ = root["servicePlan"].(string)
	c.Options.ReasonCode, _ = root["reasonCode"].(string)
	if w, ok := root["etfWaiver"].(bool); ok {
		c.Options.EtfWaiver = &w
	}
	return c, nil
}

// decodeDoc is json.Unmarshal into any, faster: a body that is valid
// UTF-8 and valid JSON (encoding/json's own check) is decoded by
// goccy/go-json, which gives the same document (FuzzDecodeDoc holds it to
// that); anything else goes to encoding/json, for its replacement of
// invalid UTF-8 and for the error that syntaxMessage explains.
func decodeDoc(body []byte) (any, error) {
	var doc any
	if utf8.Valid(body) && json.Valid(body) {
		if err := gojson.Unmarshal(body, &doc); err == nil {
			return doc, nil
		}
		doc = nil
	}
	err := json.Unmarshal(body, &doc)
	return doc, err
}

// group puts the devices whose validation by the schema must come out the
// same into one group, so a 10,000-device command costs the schema a handful
// of device validations instead of 10,000. Two devices are alike when both
// are {"deviceIds": [{"kind": K, "id": <string>}, ...]} with the same kinds
// in the same order: the command schemas constrain an id to be a string and
// nothing more (a test in this package holds them to it). Any other entry is
// its own group. It returns one representative per group and the groups.
func group(devices []any) (reps []any, groups [][]int) {
	byShape := make(map[string]int)
	var key []byte
	for i, e := range devices {
		var ok bool
		key, ok = shapeKey(key[:0], e)
		if ok {
			if g, seen := byShape[string(key)]; seen {
				groups[g] = append(groups[g], i)
				continue
			}
			byShape[string(key)] = len(groups)
		}
		reps = append(reps, e)
		groups = append(groups, []int{i})
	}
	return reps, groups
}

// shapeKey appends the kinds of a plain device entry to buf, or reports that
// the entry is not plain.
func shapeKey(buf []byte, e any) ([]byte, bool) {
	m, ok := e.(map[string]any)
	if !ok || len(m) != 1 {
		return buf, false
	}
	ids, ok := m["deviceIds"].([]any)
	if !ok {
		return buf, false
	}
	for _, x := range ids {
		im, ok := x.(map[string]any)
		if !ok || len(im) != 2 {
			return buf, false
		}
		k, okKind := im["kind"].(string)
		_, okID := im["id"].(string)
		if !okKind || !okID {
			return buf, false
		}
		buf = appendLenPrefixed(buf, k) // no kind can mimic two
	}
	return buf, true
}

// maxDevices reads the schema's maxItems of devices.
func maxDevices(sch *jsonschema.Schema) int {
	if p, ok := sch.Properties["devices"]; ok && p.MaxItems != nil {
		return *p.MaxItems
	}
	return MaxDevices
}

func undecodable(msg string) error { return fmt.Errorf("%w: %s", ErrUndecodable, msg) }

// finding is one problem of one device.
type finding struct {
	path, code, msg string
}

type decoder struct {
	action     Action
	opts       device.Options
	root       map[string]any
	fatal      []string          // the body is undecodable
	command    []string          // the command is invalid as a whole
	deviceMsgs map[int][]finding // by device index
}

// classify sorts one schema violation into undecodable, command-level or
// per-device, with the words a user reads.
// groups maps a representative's index in the validated devices to the
// indices of the devices it stands for.
func (d *decoder) classify(v schemas.Violation, groups [][]int) {
	loc := v.Location
	switch k := v.Kind.(type) {
	case *kind.Type:
		if len(loc) == 0 {
			d.fatal = append(d.fatal, "the body must be a JSON object, not "+article(k.Got))
			return
		}
	}
	if len(loc) == 0 {
		d.topLevel(v)
		return
	}
	if loc[0] == "devices" && len(loc) >= 2 {
		if k, err := strconv.Atoi(loc[1]); err == nil && k < len(groups) {
			for _, i := range groups[k] {
				at := slices.Clone(loc)
				at[1] = strconv.Itoa(i)
				d.deviceMsgs[i] = append(d.deviceMsgs[i], d.deviceFinding(schemas.Violation{Location: at, Kind: v.Kind}))
			}
			return
		}
	}
	field := loc[0]
	switch k := v.Kind.(type) {
	case *kind.Type:
		d.fatal = append(d.fatal, field+" must be "+article(want(k.Want))+", not "+article(k.Got))
	case *kind.MinItems:
		d.fatal = append(d.fatal, "devices is empty: a command names 1 to 10000 devices")
	case *kind.MaxItems:
		// counted in Decode on the whole array: the schema saw representatives only
	case *kind.MinLength:
		if field == "reasonCode" {
			d.command = append(d.command, fmt.Sprintf("reasonCode %q must be 2 characters", d.root[field]))
		} else {
			d.command = append(d.command, field+" is empty")
		}
	case *kind.MaxLength:
		if field == "reasonCode" {
			d.command = append(d.command, fmt.Sprintf("reasonCode %q must be 2 characters", d.root[field]))
		} else {
			d.command = append(d.command, fmt.Sprintf("%s has %d characters, more than the %d allowed", field, k.Got, k.Want))
		}
	case *kind.Pattern:
		if field == "smsrOid" {
			d.command = append(d.command, fmt.Sprintf("smsrOid %q is not a dotted object identifier such as 1.3.6.1.4.1.31746.1.500.200.101.5", k.Got))
		} else {
			d.command = append(d.command, fmt.Sprintf("%s %q has the wrong format", field, k.Got))
		}
	default:
		d.command = append(d.command, field+": "+v.Message())
	}
}

func (d *decoder) topLevel(v schemas.Violation) {
	switch k := v.Kind.(type) {
	case *kind.Required:
		for _, f := range k.Missing {
			switch f {
			case "devices":
				d.fatal = append(d.fatal, "devices is missing: a command names 1 to 10000 devices")
			case "smsrOid":
				d.command = append(d.command, "smsrOid is required for "+string(d.action))
			default:
				d.command = append(d.command, f+" is required")
			}
		}
	case *kind.AdditionalProperties:
		for _, f := range k.Properties {
			d.command = append(d.command, fmt.Sprintf("unknown field %q (%s takes %s)",
				f, d.action, strings.Join(d.action.Fields(), ", ")))
		}
	default:
		d.command = append(d.command, v.Message())
	}
}

// deviceFinding words a violation inside devices[i].
func (d *decoder) deviceFinding(v schemas.Violation) finding {
	loc := v.Location
	path := fieldPath(loc)
	// depth: 2 devices[i], 3 devices[i].deviceIds, 4 devices[i].deviceIds[j], 5 .kind / .id
	code := CodeInvalidDevice
	if len(loc) >= 4 {
		code = CodeInvalidIdentifier
	}
	f := finding{path: path, code: code}
	switch k := v.Kind.(type) {
	case *kind.Contains: // deviceIds lacks a kind the action needs: name it
		i, _ := strconv.Atoi(loc[1])
		f.path = "devices[" + loc[1] + "]"
		f.code, f.msg = CodeMissingIdentifier, d.missing(i, d.present(i))
	case *kind.Type:
		f.msg = path + " must be " + article(want(k.Want)) + ", not " + article(k.Got)
	case *kind.Required:
		if len(loc) == 2 && slices.Contains(k.Missing, "deviceIds") {
			f.code, f.msg = CodeMissingIdentifier, path+" has no deviceIds"+d.needs()
			break
		}
		f.msg = path + " lacks " + strings.Join(k.Missing, " and ")
	case *kind.MinItems: // deviceIds is empty: word it as contains does, once
		i, _ := strconv.Atoi(loc[1])
		f.path = "devices[" + loc[1] + "]"
		f.code, f.msg = CodeMissingIdentifier, d.missing(i, device.Set{})
	case *kind.AdditionalProperties:
		has := "deviceIds"
		if len(loc) >= 4 {
			has = "kind and id"
		}
		q := make([]string, len(k.Properties))
		for i, p := range k.Properties {
			q[i] = strconv.Quote(p)
		}
		f.msg = path + " has an unknown field " + strings.Join(q, ", ") + " (want " + has + ")"
	case *kind.Pattern:
		if loc[len(loc)-1] == "kind" {
			f.msg = d.kindMessage(path, k.Got)
			break
		}
		f.msg = fmt.Sprintf("%s %q has the wrong format", path, k.Got)
	default:
		f.msg = path + ": " + v.Message()
	}
	return f
}

func (d *decoder) kindMessage(path, got string) string {
	kinds := d.action.Kinds()
	names := make([]string, len(kinds))
	for i, k := range kinds {
		names[i] = string(k)
	}
	accepted := strings.Join(names, " or ")
	if _, err := device.ParseKind(got); err == nil {
		return fmt.Sprintf("%s %q is not accepted by %s (want %s)", path, got, d.action, accepted)
	}
	return fmt.Sprintf("%s %q is not an identifier kind (want %s)", path, got, accepted)
}

// present reads the kinds devices[i] names, valid or not.
func (d *decoder) present(i int) device.Set {
	devices, _ := d.root["devices"].([]any)
	var set device.Set
	if i < len(devices) {
		obj, _ := devices[i].(map[string]any)
		ids, _ := obj["deviceIds"].([]any)
		for _, x := range ids {
			m, _ := x.(map[string]any)
			raw, _ := m["kind"].(string)
			if k, err := device.ParseKind(raw); err == nil {
				set = set.With(k, "x")
			}
		}
	}
	return set
}

// missing words the lack of the kinds the action needs that set has not.
func (d *decoder) missing(i int, set device.Set) string {
	var missing []string
	for _, k := range d.action.RequiredKinds() {
		if set.Get(k) == "" {
			missing = append(missing, string(k))
		}
	}
	return "devices[" + strconv.Itoa(i) + "] has no " + strings.Join(missing, " and no ") + d.needs()
}

// needs says which identifiers the action needs, as " (enable needs eid and iccid)".
func (d *decoder) needs() string {
	req := d.action.RequiredKinds()
	names := make([]string, len(req))
	for i, k := range req {
		names[i] = string(k)
	}
	return " (" + string(d.action) + " needs " + strings.Join(names, " and ") + ")"
}

// rawID is one deviceIds entry as sent: kind and id, each "" when absent
// or not a string.
type rawID struct{ kind, id string }

// rawIDsOf reads the deviceIds entries of a device entry, whatever its
// shape: none when it is not an object or deviceIds is not an array.
func rawIDsOf(e any) []rawID {
	obj, _ := e.(map[string]any)
	list, _ := obj["deviceIds"].([]any)
	if len(list) == 0 {
		return nil
	}
	ids := make([]rawID, len(list))
	for j, x := range list {
		m, _ := x.(map[string]any)
		ids[j].kind, _ = m["kind"].(string)
		ids[j].id, _ = m["id"].(string)
	}
	return ids
}

// build sorts the devices (the deviceIds of each, as sent) into Devices and
// Problems; the schema has vouched for every type outside the devices
// with findings. The caller fills in the command's fields.
func (d *decoder) build(devices [][]rawID) *Command {
	c := &Command{Action: d.action}

	var cmdErr string
	if len(d.command) > 0 {
		cmdErr = strings.Join(sorted(d.command), "; ")
		c.Err = &Error{Code: CodeInvalidCommand, Message: cmdErr}
	} else {
		c.Devices = make([]Device, 0, len(devices))
	}
	var seen map[string]int // device key → index of first
	if len(devices) > 1 {
		seen = make(map[string]int, len(devices))
	}
	for i, ids := range devices {
		var set device.Set
		findings := d.deviceMsgs[i]
		if len(findings) == 0 {
			set, findings = d.device(i, ids)
		}
		if len(findings) == 0 && seen != nil {
			key := set.Key()
			if first, dup := seen[key]; dup {
				findings = []finding{{code: CodeDuplicateDevice,
					msg: fmt.Sprintf("devices[%d] repeats the device of devices[%d] (%s)", i, first, set.String())}}
			} else {
				seen[key] = i
			}
		}
		if len(findings) == 0 && cmdErr == "" {
			c.Devices = append(c.Devices, Device{Index: i, IDs: set})
			continue
		}
		p := Problem{Index: i, Device: echoed(ids)}
		if len(findings) > 0 {
			slices.SortStableFunc(findings, func(a, b finding) int { return strings.Compare(a.path, b.path) })
			msgs := make([]string, 0, len(findings))
			for _, f := range findings {
				if !slices.Contains(msgs, f.msg) {
					msgs = append(msgs, f.msg)
				}
			}
			p.Code, p.Message = findings[0].code, strings.Join(msgs, "; ")
		}
		if cmdErr != "" {
			p.Code = CodeInvalidCommand
			if p.Message == "" {
				p.Message = cmdErr
			} else {
				p.Message = cmdErr + "; " + p.Message
			}
		}
		c.Problems = append(c.Problems, p)
	}
	return c
}

// device checks the identifiers of one schema-valid device: formats,
// one value per kind, the kinds the action needs.
func (d *decoder) device(i int, ids []rawID) (device.Set, []finding) {
	var set device.Set
	var fs []finding
	for j, e := range ids {
		rawKind, rawID := e.kind, e.id
		k, err := device.ParseKind(rawKind)
		if err != nil { // the schema's pattern lets no unknown kind through; kept for safety
			path := idPath(i, j) + ".kind"
			fs = append(fs, finding{path, CodeInvalidIdentifier, d.kindMessage(path, rawKind)})
			continue
		}
		id, err := device.Parse(k, rawID, d.opts)
		if err != nil {
			path := idPath(i, j) + ".id"
			fs = append(fs, finding{path, CodeInvalidIdentifier, path + ": " + err.Error()})
			continue
		}
		if prev := set.Get(k); prev != "" {
			if prev != id.Value() {
				path := idPath(i, j)
				fs = append(fs, finding{path, CodeInvalidIdentifier,
					fmt.Sprintf("%s is a second %s %q for one device, after %q", path, k, id.Value(), prev)})
			}
			continue
		}
		set = set.Add(id)
	}
	if len(fs) > 0 {
		return set, fs
	}
	for _, k := range d.action.RequiredKinds() {
		if set.Get(k) == "" { // the schema's contains has caught it already; kept for safety
			return set, []finding{{"devices[" + strconv.Itoa(i) + "]", CodeMissingIdentifier, d.missing(i, set)}}
		}
	}
	return set, nil
}

// idPath names devices[i].deviceIds[j], for a finding.
func idPath(i, j int) string {
	return "devices[" + strconv.Itoa(i) + "].deviceIds[" + strconv.Itoa(j) + "]"
}

// echoed reads what it can of a device entry, as sent: the first value of
// each known kind, trimmed, valid or not.
func echoed(ids []rawID) device.Set {
	var set device.Set
	for _, x := range ids {
		rawKind, rawID := x.kind, strings.TrimSpace(x.id)
		k, err := device.ParseKind(rawKind)
		if err != nil || rawID == "" || len(rawID) > maxEchoed || set.Get(k) != "" {
			continue
		}
		set = set.With(k, rawID)
	}
	return set
}

// fieldPath prints a location as devices[3].deviceIds[1].id.
func fieldPath(loc []string) string {
	var b strings.Builder
	for i, p := range loc {
		if i > 0 && isIndex(p) {
			b.WriteString("[" + p + "]")
			continue
		}
		if i > 0 {
			b.WriteByte('.')
		}
		b.WriteString(p)
	}
	return b.String()
}

func isIndex(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func jsonType(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean"
	case float64, json.Number:
		return "number"
	case string:
		return "string"
	case []any:
		return "array"
	case map[string]any:
		return "object"
	}
	return "value"
}

// want names the wanted type of a kind.Type violation.
func want(types []string) string {
	if len(types) == 0 {
		return "value"
	}
	return types[0]
}

// article puts "a" or "an" before a JSON type name; null stays bare.
func article(t string) string {
	switch t {
	case "null":
		return "null"
	case "integer":
		t = "number"
	case "array", "object":
		return "an " + t
	}
	return "a " + t
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return slices.Compact(s)
}

// validDocs remembers the verdict keys of documents the schema found valid:
// producers send the same shape again and again (one account, one smsrOid,
// one or two devices with eid and iccid), and the schema's verdict on a
// shape is the same every time. Bounded: it starts over when full.
var (
	validDocs  sync.Map
	validCount atomic.Int64
)

const maxValidDocs = 4096

func rememberValid(key string) {
	if validCount.Add(1) > maxValidDocs {
		validDocs.Clear()
		validCount.Store(1)
	}
	validDocs.Store(key, struct{}{})
}

// verdictKey names everything of a (reduced) document the command schema
// can judge: every top-level value as it is, but for commandId only its
// length (the schema bounds nothing else of it), and each device by its
// shape (see group). Strings are length-prefixed and each kind of value
// has its own first byte, so no two documents share a key. Documents with
// other nesting are not cached.
func verdictKey(a Action, root map[string]any, doc any) (string, bool) {
	reduced, ok := doc.(map[string]any)
	if !ok {
		return "", false
	}
	keys := make([]string, 0, len(root))
	for k := range root {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b := make([]byte, 0, 256)
	b = append(b, a...)
	for _, k := range keys {
		b = appendLenPrefixed(append(b, ';'), k)
		b = append(b, '=')
		switch v := root[k].(type) {
		case string:
			if k == "commandId" {
				b = strconv.AppendInt(append(b, "len:"...), int64(min(utf8.RuneCountInString(v), 1<<20)), 10)
			} else {
				b = appendLenPrefixed(append(b, 's'), v)
			}
		case bool:
			b = strconv.AppendBool(b, v)
		case float64:
			b = strconv.AppendFloat(b, v, 'g', -1, 64)
		case nil:
			b = append(b, "null"...)
		case []any:
			if k != "devices" {
				return "", false
			}
			reps, _ := reduced["devices"].([]any)
			b = strconv.AppendInt(append(b, 'a'), int64(len(reps)), 10)
			for _, e := range reps {
				var plain bool
				if b, plain = shapeKey(append(b, '|'), e); !plain {
					return "", false
				}
			}
		default:
			return "", false
		}
	}
	return string(b), true
}

// appendLenPrefixed appends s as its byte length, a colon and its bytes:
// unambiguous like a quoted string, without the cost of quoting.
func appendLenPrefixed(b []byte, s string) []byte {
	b = strconv.AppendInt(b, int64(len(s)), 10)
	return append(append(b, ':'), s...)
}
