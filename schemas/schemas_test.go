package schemas_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6/kind"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/command"
	"github.com/esim-pipeline/thingspace-esim/schemas"
)

func TestEverySchemaCompiles(t *testing.T) {
	names := schemas.Names()
	want := []string{schemas.Callback, schemas.StatusEvent}
	for _, a := range command.Names() {
		want = append(want, schemas.CommandName(a))
	}
	require.ElementsMatch(t, want, names)
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			s, err := schemas.Get(name)
			require.NoError(t, err)
			require.NotNil(t, s)
			again, err := schemas.Get(name)
			require.NoError(t, err)
			require.Same(t, s, again, "a schema is compiled once")
		})
	}
}

func TestEveryActionHasACommandSchema(t *testing.T) {
	for _, action := range command.Names() {
		_, err := schemas.Get(schemas.CommandName(action))
		require.NoError(t, err, action)
	}
}

func TestAnUnknownSchemaNameIsAnError(t *testing.T) {
	_, err := schemas.Get("command-activate.schema.json")
	require.ErrorIs(t, err, schemas.ErrUnknownSchema)
	require.ErrorContains(t, err, `unknown schema "command-activate.schema.json" (want one of callback.schema.json,`)
}

func TestEveryExampleValidatesAgainstItsSchema(t *testing.T) {
	examples := schemas.Examples()
	require.NotEmpty(t, examples)
	covered := map[string]bool{}
	for _, ex := range examples {
		t.Run(ex, func(t *testing.T) {
			raw, err := os.ReadFile(ex)
			require.NoError(t, err)
			require.NoError(t, schemas.Validate(schemas.SchemaOf(ex), raw))
		})
		covered[schemas.SchemaOf(ex)] = true
	}
	for _, name := range schemas.Names() {
		require.True(t, covered[name], "no example for %s", name)
	}
}

var trailingComma = regexp.MustCompile(`,(\s*[}\]])`)

// The API pages' example callbacks: the delete page has a trailing comma,
// which the ingest's parser tolerates, so it is stripped here.
func TestEverySeedCallbackValidates(t *testing.T) {
	files, err := filepath.Glob("testdata/seeds/*.callback.json")
	require.NoError(t, err)
	require.Len(t, files, 5)
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			raw, err := os.ReadFile(f)
			require.NoError(t, err)
			clean := trailingComma.ReplaceAll(raw, []byte("$1"))
			require.NoError(t, schemas.Validate(schemas.Callback, clean))
		})
	}
}

func TestTheCallbackSchemaIsTolerant(t *testing.T) {
	tests := []struct {
		name string
		doc  string
	}{
		{"unknown keys anywhere are allowed", `{"requestId":"r","status":"Success","extra":1,
			"deviceResponse":{"deviceProfileResponse":{"newField":"x"},"more":[]}}`},
		{"kinds and status in any case", `{"requestId":"r","status":"SUCCESS","deviceIds":[{"kind":"ICCID","id":"1"},{"kind":"Eid","id":"2"}]}`},
		{"counts as strings", `{"requestId":"r","status":"warning","callbackCount":"2","maxCallbackThreshold":"4"}`},
		{"counts as numbers", `{"requestId":"r","status":"Failed","callbackCount":2,"maxCallbackThreshold":4,
			"faultResponse":{"faultcode":"x","faultstring":"y"}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.NoError(t, schemas.Validate(schemas.Callback, []byte(tt.doc)))
		})
	}
}

func TestTheCallbackSchemaRejectsWhatCannotBeACallback(t *testing.T) {
	tests := []struct {
		name, doc, pointer string
	}{
		{"no requestId", `{"status":"Success"}`, "/"},
		{"no status", `{"requestId":"r"}`, "/"},
		{"a count that is not a number", `{"requestId":"r","status":"Success","callbackCount":"one"}`, "/callbackCount"},
		{"a negative count", `{"requestId":"r","status":"Success","callbackCount":-1}`, "/callbackCount"},
		{"an identifier without id", `{"requestId":"r","status":"Success","deviceIds":[{"kind":"iccid"}]}`, "/deviceIds/0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := schemas.Validate(schemas.Callback, []byte(tt.doc))
			require.Error(t, err)
			vs := schemas.Violations(err)
			require.NotEmpty(t, vs)
			var pointers []string
			for _, v := range vs {
				pointers = append(pointers, strings.SplitN(v.String(), ":", 2)[0])
			}
			require.Contains(t, pointers, tt.pointer)
		})
	}
}

func TestTheStatusEventSchemaHoldsTheContract(t *testing.T) {
	const ok = `"eventId":"e","action":"enable","device":{"iccid":"89148000000840784251"},"occurredAt":"2025-03-14T09:26:53Z"`
	tests := []struct {
		name  string
		doc   string
		valid bool
	}{
		{"an accepted event that is not final", `{` + ok + `,"status":"accepted","final":false}`, true},
		{"a succeeded event that is final", `{` + ok + `,"status":"succeeded","final":true}`, true},
		{"a timed-out event that is not final", `{` + ok + `,"status":"timed_out","final":false}`, false},
		{"a pending event that is final", `{` + ok + `,"status":"pending","final":true}`, false},
		{"a rejected event without a reason", `{` + ok + `,"status":"rejected","final":true}`, false},
		{"a rejected event with a reason", `{` + ok + `,"status":"rejected","final":true,"reason":{"code":"INVALID_IDENTIFIER","message":"m"}}`, true},
		{"an unknown status", `{` + ok + `,"status":"done","final":true}`, false},
		{"an unknown field", `{` + ok + `,"status":"accepted","final":false,"password":"x"}`, false},
		{"an unknown device kind", `{"eventId":"e","action":"enable","device":{"imsi":"1"},"occurredAt":"2025-03-14T09:26:53Z","status":"accepted","final":false}`, false},
		{"a time that is not UTC", `{"eventId":"e","action":"enable","device":{},"occurredAt":"2025-03-14T09:26:53+02:00","status":"accepted","final":false}`, false},
		{"a time that is not RFC 3339", `{"eventId":"e","action":"enable","device":{},"occurredAt":"yesterday Z","status":"accepted","final":false}`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := schemas.Validate(schemas.StatusEvent, []byte(tt.doc))
			if tt.valid {
				require.NoError(t, err)
			} else {
				require.Error(t, err)
			}
		})
	}
}

func TestValidateTakesGoValuesRawJSONAndDecodedJSON(t *testing.T) {
	type deviceID struct {
		Kind string `json:"kind"`
		ID   string `json:"id"`
	}
	goValue := struct {
		RequestID string     `json:"requestId"`
		Status    string     `json:"status"`
		DeviceIDs []deviceID `json:"deviceIds"`
	}{"r", "Success", []deviceID{{"iccid", "1"}}}
	require.NoError(t, schemas.Validate(schemas.Callback, goValue))
	require.NoError(t, schemas.Validate(schemas.Callback, map[string]any{"requestId": "r", "status": "Success"}))
	require.NoError(t, schemas.Validate(schemas.Callback, []byte(`{"requestId":"r","status":"Success"}`)))

	err := schemas.Validate(schemas.Callback, []byte(`{"requestId":"r"`))
	require.Error(t, err)
	require.Nil(t, schemas.Violations(err), "a parse error is not a validation error")
}

func TestViolationsNameTheLocationAndTheKind(t *testing.T) {
	err := schemas.Validate(schemas.CommandName("enable"), []byte(`{"accountName":"a","smsrOid":"1.2","devices":[{"deviceIds":[{"kind":"eid","id":"1"},{"kind":"iccid","id":7}]}]}`))
	vs := schemas.Violations(err)
	require.Len(t, vs, 1)
	require.Equal(t, []string{"devices", "0", "deviceIds", "1", "id"}, vs[0].Location)
	require.Equal(t, "/devices/0/deviceIds/1/id", vs[0].Pointer())
	require.IsType(t, &kind.Type{}, vs[0].Kind)
	require.Equal(t, "/devices/0/deviceIds/1/id: got number, want string", vs[0].String())

	err = schemas.Validate(schemas.CommandName("suspend"), []byte(`{"accountName":"a","devices":[{"deviceIds":[{"kind":"eid","id":"1"}]}]}`))
	vs = schemas.Violations(err)
	require.Len(t, vs, 2, "%v", vs)
	require.IsType(t, &kind.Contains{}, vs[0].Kind, "no iccid: one finding, not one per item that is not an iccid")
	require.Equal(t, "/devices/0/deviceIds", vs[0].Pointer())
	require.IsType(t, &kind.Pattern{}, vs[1].Kind, "the eid is not accepted by suspend")
	require.Equal(t, "/devices/0/deviceIds/0/kind", vs[1].Pointer())
}

func TestSchemaOfNamesTheSchemaOfAnExample(t *testing.T) {
	require.Equal(t, "callback.schema.json", schemas.SchemaOf("examples/callback.warning.json"))
	require.Equal(t, "command-enable.schema.json", schemas.SchemaOf("examples/command-enable.json"))
	require.Equal(t, "status-event.schema.json", schemas.SchemaOf("examples/status-event.rejected.json"))
}
