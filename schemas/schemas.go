package schemas

import (
	"bytes"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/santhosh-tekuri/jsonschema/v6/kind"
	"golang.org/x/text/language"
	"golang.org/x/text/message"
)

//go:embed *.schema.json examples/*.json
var files embed.FS

// BaseURL is the common prefix of every schema's $id.
const BaseURL = "https://github.com/esim-pipeline/thingspace-esim/schemas/"

// Schema file names. Each action's command schema is [CommandName] of it,
// generated from the action table (internal/command).
const (
	StatusEvent = "status-event.schema.json"
	Callback    = "callback.schema.json"
)

// ErrUnknownSchema reports a name that is not one of [Names].
var ErrUnknownSchema = errors.New("unknown schema")

// CommandName is the schema file of the command for action ("enable" gives
// command-enable.schema.json). It does not check that the action exists; [Get]
// does.
func CommandName(action string) string { return "command-" + action + ".schema.json" }

// FS holds the schema files at its root and the examples under examples/.
func FS() fs.FS { return files }

// Names lists every schema file, sorted.
func Names() []string {
	names, _ := fs.Glob(files, "*.schema.json")
	slices.Sort(names)
	return names
}

// Examples lists the example files (examples/<schema>[.<variant>].json), sorted.
func Examples() []string {
	names, _ := fs.Glob(files, "examples/*.json")
	slices.Sort(names)
	return names
}

// SchemaOf names the schema an example file is an instance of:
// examples/callback.warning.json gives callback.schema.json.
func SchemaOf(example string) string {
	base := strings.TrimSuffix(strings.TrimPrefix(example, "examples/"), ".json")
	if i := strings.IndexByte(base, '.'); i >= 0 {
		base = base[:i]
	}
	return base + ".schema.json"
}

type compiled struct {
	schemas map[string]*jsonschema.Schema
	err     error
}

var compileAll = sync.OnceValue(func() compiled {
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	names := Names()
	for _, name := range names {
		raw, err := files.ReadFile(name)
		if err != nil {
			return compiled{err: err}
		}
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
		if err != nil {
			return compiled{err: fmt.Errorf("schema %s: %w", name, err)}
		}
		if err := c.AddResource(BaseURL+name, doc); err != nil {
			return compiled{err: fmt.Errorf("schema %s: %w", name, err)}
		}
	}
	out := compiled{schemas: make(map[string]*jsonschema.Schema, len(names))}
	for _, name := range names {
		s, err := c.Compile(BaseURL + name)
		if err != nil {
			return compiled{err: fmt.Errorf("schema %s: %w", name, err)}
		}
		out.schemas[name] = s
	}
	return out
})

// Get returns the compiled schema called name (one of [Names]). Every schema
// is compiled once, on the first call; an error here is a broken schema file,
// which the package's tests catch.
func Get(name string) (*jsonschema.Schema, error) {
	all := compileAll()
	if all.err != nil {
		return nil, all.err
	}
	s, ok := all.schemas[name]
	if !ok {
		return nil, fmt.Errorf("%w %q (want one of %s)", ErrUnknownSchema, name, strings.Join(Names(), ", "))
	}
	return s, nil
}

// Parse reads one JSON document the way the validator wants it (numbers as
// json.Number), rejecting trailing data.
func Parse(data []byte) (any, error) {
	return jsonschema.UnmarshalJSON(bytes.NewReader(data))
}

// Validate checks doc against the schema called name. doc is raw JSON
// ([]byte, json.RawMessage), a decoded JSON value (map[string]any, []any,
// string, float64, json.Number, bool, nil), or any Go value, which is
// marshalled to JSON first (so a status.Event validates as it would be
// published). A failed validation returns an error that [errors.As] finds as
// a *jsonschema.ValidationError; [Violations] lists its findings.
func Validate(name string, doc any) error {
	s, err := Get(name)
	if err != nil {
		return err
	}
	v, err := instance(doc)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if err := s.Validate(v); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

func instance(doc any) (any, error) {
	switch d := doc.(type) {
	case []byte:
		return Parse(d)
	case json.RawMessage:
		return Parse(d)
	case nil, map[string]any, []any, string, float64, json.Number, bool:
		return d, nil
	}
	raw, err := json.Marshal(doc)
	if err != nil {
		return nil, err
	}
	return Parse(raw)
}

func explained(k jsonschema.ErrorKind) bool {
	switch k.(type) {
	case *kind.Contains, *kind.MinContains, *kind.MaxContains, *kind.AnyOf, *kind.OneOf, *kind.Not:
		return true
	}
	return false
}

var printer = message.NewPrinter(language.English)

// Violation is one finding of a failed validation: where in the instance and
// what.
type Violation struct {
	// Location is the path to the offending value, one element per object key
	// or array index; empty for the document itself.
	Location []string
	// Kind says what failed; its concrete types live in
	// github.com/santhosh-tekuri/jsonschema/v6/kind (kind.Required, kind.Type, ...).
	Kind jsonschema.ErrorKind
}

// Pointer is Location as a JSON Pointer ("/devices/0/deviceIds/1/kind").
func (v Violation) Pointer() string {
	var b strings.Builder
	for _, p := range v.Location {
		b.WriteByte('/')
		b.WriteString(strings.NewReplacer("~", "~0", "/", "~1").Replace(p))
	}
	return b.String()
}

// Message is the validator's message, without the location.
func (v Violation) Message() string { return v.Kind.LocalizedString(printer) }

// String prints the pointer and the validator's message.
func (v Violation) String() string {
	p := v.Pointer()
	if p == "" {
		p = "/"
	}
	return p + ": " + v.Kind.LocalizedString(printer)
}

// Violations flattens a validation error into its leaf findings, sorted by
// location, then message (the validator's own order varies from run to run). A finding whose causes only explain it (contains, anyOf,
// oneOf, not: which alternatives or items failed) is a leaf itself. It
// returns nil for an error that is not a validation error.
func Violations(err error) []Violation {
	var ve *jsonschema.ValidationError
	if !errors.As(err, &ve) {
		return nil
	}
	var out []Violation
	var walk func(e *jsonschema.ValidationError)
	walk = func(e *jsonschema.ValidationError) {
		if len(e.Causes) == 0 || explained(e.ErrorKind) {
			out = append(out, Violation{Location: e.InstanceLocation, Kind: e.ErrorKind})
			return
		}
		for _, c := range e.Causes {
			walk(c)
		}
	}
	walk(ve)
	slices.SortStableFunc(out, func(a, b Violation) int {
		if c := slices.Compare(a.Location, b.Location); c != 0 {
			return c
		}
		return strings.Compare(a.Message(), b.Message())
	})
	return out
}
