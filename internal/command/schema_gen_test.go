package command_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/command"
	"github.com/esim-pipeline/thingspace-esim/internal/device"
	"github.com/esim-pipeline/thingspace-esim/schemas"
)

var update = flag.Bool("update", false, "rewrite the files generated from the action table (schemas/command-*.schema.json, the status-event enum)")

// kv is one member of a JSON object; obj keeps its members in order, so the
// generated files read as the pages do.
type kv struct {
	k string
	v any
}
type obj []kv

func (o obj) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, m := range o {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(m.k)
		v, err := json.Marshal(m.v)
		if err != nil {
			return nil, err
		}
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// fieldSchemas are the body fields' definitions, the same for every action
// that takes the field.
var fieldSchemas = map[string]obj{
	"commandId": {{"type", "string"}, {"maxLength", 256},
		{"description", "Optional id of this command, echoed as commandId on every status event of its devices. Without it the Nats-Msg-Id header is used, else an id derived from the stream sequence. Not sent to ThingSpace."}},
	"accountName": {{"type", "string"}, {"minLength", 1},
		{"description", "The billing account, usually digits and hyphens; leading zeros are kept, e.g. 0000123456-00001."}},
	"smsrOid": {{"type", "string"}, {"pattern", `^[0-9]+(\.[0-9]+)+$`},
		{"description", "The Object ID of the SM-SR system, a dotted object identifier, e.g. 1.3.6.1.4.1.31746.1.500.200.101.5."}},
	"servicePlan": {{"type", "string"}, {"minLength", 1},
		{"description", "The Verizon service plan for the Verizon network, the Global service plan for Global."}},
	"etfWaiver": {{"type", "boolean"},
		{"description", "Whether the customer qualifies for an Early Termination Fee waiver."}},
	"reasonCode": {{"type", "string"}, {"minLength", 2}, {"maxLength", 2},
		{"description", "A 2-character code saying why the device is deactivated, e.g. FF."}},
}

// caseless is a pattern matching s in any case: eid gives [Ee][Ii][Dd].
func caseless(s string) string {
	var b strings.Builder
	for _, r := range s {
		b.WriteString("[" + strings.ToUpper(string(r)) + string(r) + "]")
	}
	return b.String()
}

func kindNames(ks []device.Kind) []string {
	out := make([]string, len(ks))
	for i, k := range ks {
		out[i] = string(k)
	}
	return out
}

// commandSchema is the command schema of one row of the action table.
func commandSchema(sp command.Spec) obj {
	a := sp.Action
	needs := strings.Join(kindNames(sp.Required), " and ")
	props := obj{{"commandId", fieldSchemas["commandId"]}}
	for _, f := range sp.Fields {
		switch f {
		case "commandId":
		case "devices":
		default:
			props = append(props, kv{f, fieldSchemas[f]})
		}
	}
	props = append(props, kv{"devices", obj{{"type", "array"}, {"minItems", 1}, {"maxItems", command.MaxDevices},
		{"description", "1 to 10,000 devices. The dispatcher merges commands into ThingSpace calls and splits them."},
		{"items", obj{{"$ref", "#/$defs/device"}}}}})
	var contains []any
	for _, k := range sp.Required {
		contains = append(contains, obj{{"contains", obj{{"type", "object"},
			{"properties", obj{{"kind", obj{{"type", "string"}, {"pattern", "^" + caseless(string(k)) + "$"}}}}},
			{"required", []string{"kind"}}}}})
	}
	alts := make([]string, len(sp.Kinds))
	for i, k := range sp.Kinds {
		alts[i] = caseless(string(k))
	}
	required := []string{"devices", "accountName"}
	required = append(required, sp.Mandatory...)
	return obj{
		{"$schema", "https://json-schema.org/draft/2020-12/schema"},
		{"$id", schemas.BaseURL + a.Schema()},
		{"title", string(a) + " command"},
		{"description", "The body of a message on " + a.Subject() + ": the request body of POST /api/m2m/v1/devices/profile/actions/" + sp.Endpoint +
			", exactly as in the ThingSpace API page, plus an optional commandId. Identifier kinds are case-insensitive. Each device needs " + needs +
			". Identifier formats (digits, lengths, check digits) are checked per device by the dispatcher, so one bad device is rejected on its own."},
		{"type", "object"},
		{"required", required},
		{"properties", props},
		{"additionalProperties", false},
		{"$defs", obj{
			{"device", obj{{"type", "object"}, {"required", []string{"deviceIds"}},
				{"properties", obj{{"deviceIds", obj{{"type", "array"}, {"minItems", 1},
					{"description", "The identifiers of one device; it needs " + needs + "."},
					{"items", obj{{"$ref", "#/$defs/deviceId"}}},
					{"allOf", contains}}}}},
				{"additionalProperties", false}}},
			{"deviceId", obj{{"type", "object"}, {"required", []string{"kind", "id"}},
				{"properties", obj{
					{"kind", obj{{"type", "string"}, {"pattern", "^(" + strings.Join(alts, "|") + ")$"},
						{"description", "One of " + strings.Join(kindNames(sp.Kinds), ", ") + ", in any case."}}},
					{"id", obj{{"type", "string"}, {"description", "The identifier's digits; its format is checked per device."}}}}},
				{"additionalProperties", false}}},
		}},
	}
}

// schemaDir is the schemas/ directory of the module.
const schemaDir = "../../schemas"

func generated(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	require.NoError(t, err)
	return append(b, '\n')
}

// checkGenerated compares a file with what the table makes of it, or
// rewrites it under -update.
func checkGenerated(t *testing.T, name string, want []byte) {
	t.Helper()
	path := filepath.Join(schemaDir, name)
	if *update {
		require.NoError(t, os.WriteFile(path, want, 0o644))
		return
	}
	got, err := os.ReadFile(path)
	require.NoError(t, err, "no %s: run go test ./internal/command -run Generated -update", name)
	require.Equal(t, string(want), string(got), "%s is not what the action table makes: run go test ./internal/command -run Generated -update", name)
}

func TestTheCommandSchemasAreGeneratedFromTheActionTable(t *testing.T) {
	for _, a := range command.Actions {
		t.Run(string(a), func(t *testing.T) {
			checkGenerated(t, a.Schema(), generated(t, commandSchema(a.Spec())))
		})
	}
	// and no schema is left of an action that is gone
	for _, name := range schemas.Names() {
		if action, ok := strings.CutPrefix(strings.TrimSuffix(name, ".schema.json"), "command-"); ok {
			require.True(t, command.Action(action).Valid(), "%s names no action of the table", name)
		}
	}
}

// readmeTable is the README's action table, as the action table makes it.
func readmeTable() string {
	var b strings.Builder
	b.WriteString("| action | ThingSpace endpoint (POST) | identifiers per device | other fields | callbacks |\n")
	b.WriteString("| --- | --- | --- | --- | --- |\n")
	for _, a := range command.Actions {
		sp := a.Spec()
		var kinds []string
		for _, k := range sp.Kinds {
			s := "`" + string(k) + "`"
			if !slices.Contains(sp.Required, k) {
				s += " when known"
			}
			kinds = append(kinds, s)
		}
		required := []string{"`accountName`"}
		var optional []string
		for _, f := range sp.Fields {
			switch {
			case f == "devices" || f == "accountName" || f == "commandId":
			case slices.Contains(sp.Mandatory, f):
				required = append(required, "`"+f+"`")
			case f == "reasonCode":
				optional = append(optional, "`reasonCode` (2 chars)")
			default:
				optional = append(optional, "`"+f+"`")
			}
		}
		other := strings.Join(required, ", ") + " (required)"
		if len(optional) > 0 {
			other += "; " + strings.Join(optional, ", ") + " optional"
		}
		cbs := "one per device"
		if sp.Callbacks == command.PerProfileThenDevice {
			cbs = "one per profile on the eUICC, then one for the device"
		}
		fmt.Fprintf(&b, "| `%s` | `/api/m2m/v1/devices/profile/actions/%s` | %s | %s | %s |\n",
			a, sp.Endpoint, strings.Join(kinds, ", "), other, cbs)
	}
	return b.String()
}

const readmePath = "../../README.md"

func TestTheREADMEsActionTableIsGeneratedFromTheActionTable(t *testing.T) {
	raw, err := os.ReadFile(readmePath)
	require.NoError(t, err)
	doc := string(raw)
	begin := strings.Index(doc, "<!-- actions:begin")
	end := strings.Index(doc, "<!-- actions:end -->")
	require.True(t, begin >= 0 && end > begin, "README.md has no actions:begin/end markers")
	begin += strings.Index(doc[begin:], "\n") + 1
	want := readmeTable()
	if *update {
		require.NoError(t, os.WriteFile(readmePath, []byte(doc[:begin]+want+doc[end:]), 0o644))
		return
	}
	require.Equal(t, want, doc[begin:end], "README's action table: run go test ./internal/command -run Generated -update")
}

var natsPub = regexp.MustCompile(`(?m)^nats pub (thingspace\.profile\.commands\.\S+)(?: -H \S+)? '([^']*)'$`)

// Every README example is a command its action takes whole, and every
// action has one.
func TestTheREADMEsExamplesAreValidCommandsOneEachAction(t *testing.T) {
	raw, err := os.ReadFile(readmePath)
	require.NoError(t, err)
	seen := map[command.Action]bool{}
	for _, m := range natsPub.FindAllStringSubmatch(string(raw), -1) {
		a, err := command.ActionFromSubject(m[1])
		require.NoError(t, err)
		c, err := command.Decode(a, []byte(m[2]), device.Options{Checksums: false})
		require.NoError(t, err, m[0])
		require.Nil(t, c.Err, m[0])
		require.Empty(t, c.Problems, m[0])
		seen[a] = true
	}
	for _, a := range command.Actions {
		require.True(t, seen[a], "README.md has no nats pub example of %s", a)
	}
}
