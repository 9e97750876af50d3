package esimctl

import (
	"bytes"
	"crypto/sha256"
	"encoding/csv"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/esim-pipeline/thingspace-esim/internal/command"
	"github.com/esim-pipeline/thingspace-esim/internal/device"
)

// ChunkSize is the most devices one published command names.
const ChunkSize = 1000

// maxIDLength bounds an identifier cell: a longer value is no identifier, and
// the pipeline would not echo it on the device's rejected event, so its row
// could not be matched.
const maxIDLength = 64

// fileKinds are the identifier columns the CSV may have, in results order.
var fileKinds = []device.Kind{device.ICCID, device.EID, device.IMEI}

// Row is one device line of the input, values trimmed.
type Row struct {
	Line  int // line number in the file; 0 when read back from a run record
	ICCID string
	EID   string
	IMEI  string
}

func (r Row) get(k device.Kind) string {
	switch k {
	case device.ICCID:
		return r.ICCID
	case device.EID:
		return r.EID
	case device.IMEI:
		return r.IMEI
	}
	return ""
}

// FileError is a problem with the input file, naming the line.
type FileError struct {
	Path string
	Line int // 0 when the problem is the file as a whole
	Msg  string
}

func (e *FileError) Error() string {
	if e.Line == 0 {
		return e.Path + ": " + e.Msg
	}
	return e.Path + ": line " + strconv.Itoa(e.Line) + ": " + e.Msg
}

// Input is a parsed devices file.
type Input struct {
	Path string
	// Content is the file as read; the run id is derived from it.
	Content []byte
	// Columns are the identifier columns the header names.
	Columns []device.Kind
	Rows    []Row
	// Warnings are lines worth a look that do not stop the run.
	Warnings []string
}

var sciNotation = regexp.MustCompile(`^[0-9]\.[0-9]+[eE]\+?[0-9]+$`)

// ParseCSV reads a devices file: a header row naming columns iccid, eid and
// imei in any case (other columns are ignored), then one device per line.
// Lines whose cells are all empty are skipped. Every error names its line.
func ParseCSV(path string, content []byte) (*Input, error) {
	in := &Input{Path: path, Content: content}
	data := bytes.TrimPrefix(content, []byte("\xef\xbb\xbf"))
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, &FileError{Path: path, Msg: "the file is empty; want a header row naming iccid, eid or imei columns, then one device per line"}
	}
	r := csv.NewReader(bytes.NewReader(data))
	r.Comma = delimiter(data)
	r.FieldsPerRecord = -1
	r.TrimLeadingSpace = true
	header, err := r.Read()
	if err != nil {
		return nil, csvError(path, err)
	}
	col := map[device.Kind]int{}
	for i, name := range header {
		k, err := device.ParseKind(strings.TrimSpace(name))
		if err != nil || !slices.Contains(fileKinds, k) {
			continue
		}
		if first, dup := col[k]; dup {
			return nil, &FileError{Path: path, Line: 1, Msg: fmt.Sprintf("the header names %s twice (columns %d and %d)", k, first+1, i+1)}
		}
		col[k] = i
	}
	if len(col) == 0 {
		return nil, &FileError{Path: path, Line: 1, Msg: fmt.Sprintf("the header names no iccid, eid or imei column (it has %s)", quoteAll(header))}
	}
	for _, k := range fileKinds {
		if _, ok := col[k]; ok {
			in.Columns = append(in.Columns, k)
		}
	}
	for {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, csvError(path, err)
		}
		line, _ := r.FieldPos(0)
		if allEmpty(rec) {
			continue
		}
		row := Row{Line: line}
		for _, k := range in.Columns {
			i := col[k]
			if i >= len(rec) {
				continue
			}
			v := strings.TrimSpace(rec[i])
			if len(v) > maxIDLength {
				return nil, &FileError{Path: path, Line: line, Msg: fmt.Sprintf("%s has %d characters, more than an identifier can have", k, len(v))}
			}
			if sciNotation.MatchString(v) {
				in.Warnings = append(in.Warnings, fmt.Sprintf("%s: line %d: %s %q looks like a spreadsheet number in scientific notation; format the column as text", path, line, k, v))
			}
			switch k {
			case device.ICCID:
				row.ICCID = v
			case device.EID:
				row.EID = v
			case device.IMEI:
				row.IMEI = v
			}
		}
		if row.ICCID == "" && row.EID == "" && row.IMEI == "" {
			return nil, &FileError{Path: path, Line: line, Msg: "names no device: the " + kindList(in.Columns, " and ") + " cells are empty"}
		}
		in.Rows = append(in.Rows, row)
	}
	if len(in.Rows) == 0 {
		return nil, &FileError{Path: path, Msg: "no devices after the header row"}
	}
	return in, nil
}

// delimiter guesses the separator from the header line: a comma, else a
// semicolon (spreadsheets in many locales), else a tab.
func delimiter(data []byte) rune {
	first, _, _ := bytes.Cut(data, []byte("\n"))
	switch {
	case bytes.ContainsRune(first, ','):
		return ','
	case bytes.ContainsRune(first, ';'):
		return ';'
	case bytes.ContainsRune(first, '\t'):
		return '\t'
	}
	return ','
}

func csvError(path string, err error) error {
	var pe *csv.ParseError
	if errors.As(err, &pe) {
		return &FileError{Path: path, Line: pe.StartLine, Msg: "not valid CSV: " + pe.Err.Error()}
	}
	return &FileError{Path: path, Msg: "not valid CSV: " + err.Error()}
}

func allEmpty(rec []string) bool {
	for _, c := range rec {
		if strings.TrimSpace(c) != "" {
			return false
		}
	}
	return true
}

func quoteAll(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = strconv.Quote(s)
	}
	return strings.Join(q, ", ")
}

func kindList(kinds []device.Kind, sep string) string {
	s := make([]string, len(kinds))
	for i, k := range kinds {
		s[i] = string(k)
	}
	return strings.Join(s, sep)
}

// Spec is what a run does, besides its devices.
type Spec struct {
	Action      command.Action
	AccountName string
	Options     command.Options
}

// UsageError is bad usage: exit 2, nothing published.
type UsageError struct{ Msg string }

func (e *UsageError) Error() string { return e.Msg }

func usagef(format string, args ...any) error { return &UsageError{Msg: fmt.Sprintf(format, args...)} }

// Check says what the action needs that the spec lacks or what it has that
// the action does not take, in the flags' words; then lets the pipeline's own
// decoder judge the command as a whole, so that nothing it would refuse for
// every device is published.
func (s Spec) Check() error {
	if !s.Action.Valid() {
		return usagef("--action %q is not an action (want one of %s)", s.Action, command.OneOf())
	}
	if strings.TrimSpace(s.AccountName) == "" {
		return usagef("--account is required: the ThingSpace account name, e.g. 0000123456-00001")
	}
	takes := func(field string) bool { return slices.Contains(s.Action.Fields(), field) }
	o := s.Options
	for _, f := range []struct {
		set         bool
		flag, field string
	}{
		{o.SmsrOid != "", "--smsr-oid", "smsrOid"},
		{o.ServicePlan != "", "--service-plan", "servicePlan"},
		{o.EtfWaiver != nil, "--etf-waiver", "etfWaiver"},
		{o.ReasonCode != "", "--reason-code", "reasonCode"},
	} {
		if f.set && !takes(f.field) {
			return usagef("%s does not take %s", s.Action, f.flag)
		}
	}
	if takes("smsrOid") && o.SmsrOid == "" {
		return usagef("%s needs --smsr-oid (the SM-SR's object identifier, e.g. 1.3.6.1.4.1.31746.1.500.200.101.5)", s.Action)
	}
	if o.ReasonCode != "" && len(o.ReasonCode) != 2 {
		return usagef("--reason-code %q must be 2 characters", o.ReasonCode)
	}
	probe := device.Set{}
	for _, k := range s.Action.Kinds() {
		probe = probe.With(k, "0")
	}
	b, err := s.body("probe", []device.Set{probe})
	if err != nil {
		return err
	}
	c, err := command.Decode(s.Action, b, device.Options{})
	if err != nil {
		return usagef("%v", err)
	}
	if c.Err != nil {
		var ce *command.Error
		if errors.As(c.Err, &ce) {
			return usagef("%s", ce.Message)
		}
		return usagef("%v", c.Err)
	}
	return nil
}

// RunID derives the run's id from the file's content, the action, the
// account and the options: the same submission, the same id.
func RunID(s Spec, content []byte) string {
	h := sha256.New()
	for _, p := range []string{"esimctl/run/v1", string(s.Action), s.AccountName, s.Options.Key()} {
		h.Write([]byte(p))
		h.Write([]byte{0x1f})
	}
	h.Write(content)
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// Plan is one run's devices: rows in input order, the distinct devices they
// name (as sent: only the kinds the action takes), and the chunks.
type Plan struct {
	Spec  Spec
	RunID string
	Rows  []Row
	// Devices are the distinct devices in order of first appearance.
	Devices []device.Set
	// RowDevice maps each row to its device.
	RowDevice []int
	byKey     map[string]int
}

// NewPlan checks rows against the action: the file must have every column
// the action needs, each row must name something the action takes, and a
// device named twice must be named the same way (it is then sent once and
// both rows report it).
func NewPlan(runID string, s Spec, columns []device.Kind, rows []Row, path string) (*Plan, error) {
	if columns != nil {
		var missing []device.Kind
		for _, k := range s.Action.RequiredKinds() {
			if !slices.Contains(columns, k) {
				missing = append(missing, k)
			}
		}
		if len(missing) > 0 {
			return nil, &FileError{Path: path, Line: 1, Msg: fmt.Sprintf("%s needs %s for every device; the header has no %s column (it has %s)",
				s.Action, kindList(s.Action.RequiredKinds(), " and "), kindList(missing, " or "), kindList(columns, ", "))}
		}
	}
	p := &Plan{Spec: s, RunID: runID, Rows: rows, RowDevice: make([]int, len(rows)), byKey: map[string]int{}}
	firstLine := map[string]int{}
	for i, r := range rows {
		var set device.Set
		for _, k := range s.Action.Kinds() {
			if v := r.get(k); v != "" {
				set = set.With(k, v)
			}
		}
		if set.IsZero() {
			return nil, &FileError{Path: path, Line: r.Line, Msg: fmt.Sprintf("names no %s, and %s takes nothing else", kindList(s.Action.Kinds(), " or "), s.Action)}
		}
		key := set.Key()
		if j, seen := p.byKey[key]; seen {
			if p.Devices[j] != set {
				return nil, &FileError{Path: path, Line: r.Line, Msg: fmt.Sprintf("names %s, which line %d names with other identifiers (%s)", key, firstLine[key], p.Devices[j])}
			}
			p.RowDevice[i] = j
			continue
		}
		p.byKey[key] = len(p.Devices)
		firstLine[key] = r.Line
		p.RowDevice[i] = len(p.Devices)
		p.Devices = append(p.Devices, set)
	}
	return p, nil
}

// Repeats counts rows naming a device an earlier row names.
func (p *Plan) Repeats() int { return len(p.Rows) - len(p.Devices) }

// Chunks is the number of commands the run publishes.
func (p *Plan) Chunks() int { return (len(p.Devices) + ChunkSize - 1) / ChunkSize }

// chunk returns the devices of chunk n.
func (p *Plan) chunk(n int) []device.Set {
	end := min((n+1)*ChunkSize, len(p.Devices))
	return p.Devices[n*ChunkSize : end]
}

// CommandPrefix starts the commandId of every chunk of the run.
func CommandPrefix(runID string) string { return "esimctl-" + runID + "-" }

// CommandID is the commandId (and Nats-Msg-Id) of chunk n.
func (p *Plan) CommandID(n int) string { return fmt.Sprintf("%s%04d", CommandPrefix(p.RunID), n) }

// Body is the command body of chunk n.
func (p *Plan) Body(n int) ([]byte, error) {
	return p.Spec.body(p.CommandID(n), p.chunk(n))
}

// device returns the index of the device an event names, by its key.
func (p *Plan) device(key string) (int, bool) {
	i, ok := p.byKey[key]
	return i, ok
}

// body is the command body of one chunk of devices.
func (s Spec) body(commandID string, devices []device.Set) ([]byte, error) {
	return command.Encode(s.Action, commandID, s.AccountName, s.Options, devices)
}
