package status_test

import (
	"encoding/json"
	"io/fs"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/device"
	"github.com/esim-pipeline/thingspace-esim/internal/status"
	"github.com/esim-pipeline/thingspace-esim/schemas"
)

const (
	iccid = "89148000000840784251"
	eid   = "89049032000000000000000000001230"
)

func TestFinalStatusesAreTheOnesNothingFollows(t *testing.T) {
	want := map[status.Status]bool{
		status.Accepted:  false,
		status.Pending:   false,
		status.Succeeded: true,
		status.Failed:    true,
		status.Rejected:  true,
		status.TimedOut:  true,
	}
	require.Len(t, status.Statuses, len(want))
	for _, s := range status.Statuses {
		require.Equal(t, want[s], s.Final(), s)
	}
	require.False(t, status.Status("done").Final())
}

func TestTheSubjectNamesTheActionAndTheDevice(t *testing.T) {
	tests := []struct {
		name   string
		action string
		device device.Set
		want   string
	}{
		{"by ICCID when known", "enable", device.Set{EID: eid, ICCID: iccid}, "thingspace.profile.status.enable." + iccid},
		{"by EID without ICCID", "disable", device.Set{EID: eid}, "thingspace.profile.status.disable." + eid},
		{"unknown without identifiers", "suspend", device.Set{}, "thingspace.profile.status.suspend.unknown"},
		{"with unsafe characters made safe", "enable", device.Set{ICCID: "89.14*>8 9"}, "thingspace.profile.status.enable.89_14__8_9"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.want, status.Subject(tt.action, tt.device))
			require.Equal(t, tt.want, status.Event{Action: tt.action, Device: tt.device}.Subject())
		})
	}
	require.Equal(t, "thingspace.profile.status.*."+iccid, status.DeviceSubjects(iccid))
	require.Equal(t, "thingspace.profile.status.>", status.SubjectWildcard)
}

func TestTokenKeepsDigitsAndReplacesWhatNATSGivesAMeaning(t *testing.T) {
	tests := []struct{ in, want string }{
		{iccid, iccid},
		{"", "_"},
		{"a.b", "a_b"},
		{"*", "_"},
		{">", "_"},
		{"a b\tc\nd\x7f", "a_b_c_d_"},
		{"ünï", "ünï"},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, status.Token(tt.in), "%q", tt.in)
	}
}

func TestEventIDsAreStableForOneFactAndDistinctForOthers(t *testing.T) {
	d := device.Set{EID: eid, ICCID: iccid}
	a := status.CommandEventID(status.Rejected, "cmd-1", "enable", d)
	require.Equal(t, a, status.CommandEventID(status.Rejected, "cmd-1", "enable", d), "stable")
	require.Equal(t, a, status.CommandEventID(status.Rejected, "cmd-1", "enable", device.Set{ICCID: iccid}),
		"named by the device's key, not by every identifier known")
	require.Len(t, a, 32)

	distinct := []string{
		a,
		status.CommandEventID(status.Accepted, "cmd-1", "enable", d),
		status.CommandEventID(status.Rejected, "cmd-2", "enable", d),
		status.CommandEventID(status.Rejected, "cmd-1", "disable", d),
		status.CommandEventID(status.Rejected, "cmd-1", "enable", device.Set{ICCID: "89148000000840784269"}),
		status.RequestEventID(status.Rejected, "cmd-1", d),
		status.RequestEventID(status.Succeeded, "req-1", d),
		status.RequestEventID(status.Failed, "req-1", d),
		status.RequestEventID(status.Succeeded, "req-2", d),
		status.ID("ab", "c"),
		status.ID("a", "bc"),
	}
	seen := map[string]bool{}
	for _, id := range distinct {
		require.False(t, seen[id], "eventId %s repeats", id)
		seen[id] = true
	}
	require.Equal(t, status.RequestEventID(status.Succeeded, "req-1", d), status.RequestEventID(status.Succeeded, "req-1", d),
		"a resent callback gives the same eventId")
}

func TestEventsMarshalAsTheStatusEventSchemaSays(t *testing.T) {
	at := time.Date(2025, 3, 14, 9, 26, 53, 500, time.UTC)
	d := device.Set{EID: eid, ICCID: iccid}
	tests := []struct {
		name  string
		event status.Event
	}{
		{"accepted", status.Event{
			EventID: status.CommandEventID(status.Accepted, "cmd-1", "enable", d), CommandID: "cmd-1", RequestID: "req-1",
			Action: "enable", AccountName: "0000123456-00001", Device: d, Status: status.Accepted, OccurredAt: at,
		}},
		{"rejected before submission", status.Event{
			EventID: status.CommandEventID(status.Rejected, "cmd-1", "enable", d), CommandID: "cmd-1",
			Action: "enable", AccountName: "0000123456-00001", Device: d, Status: status.Rejected, Final: true,
			Reason: &status.Reason{Code: "INVALID_IDENTIFIER", Message: "devices[0].deviceIds[1].id: ..."}, OccurredAt: at,
		}},
		{"rejected with no identifier readable", status.Event{
			EventID: "e", CommandID: "cmd-1", Action: "suspend", Status: status.Rejected, Final: true,
			Reason: &status.Reason{Code: "INVALID_DEVICE", Message: "devices[3] must be an object, not a string"}, OccurredAt: at,
		}},
		{"succeeded from a callback", status.Event{
			EventID: status.RequestEventID(status.Succeeded, "req-1", d), CommandID: "cmd-1", RequestID: "req-1",
			Action: "enable", AccountName: "0000123456-00001", Device: device.Set{EID: eid, ICCID: iccid, IMEI: "353456789012348", MDN: "2022326360", MSISDN: "12022326360"},
			Status: status.Succeeded, Final: true,
			Profile: &status.Profile{State: "Active", ProfileStatus: "enable", ProfileRole: "LOCAL", ServicePlan: "RP4235311",
				SmsrOid: "1.3.6.1.4.1.31746.1.500.200.101.5", EuiccStatus: "EXECUTED_SUCCESS", EuiccStatusCode: "1.2.365",
				EuiccStatusDesc: "updated", EuiccSubAddressUpdateStatus: "EXECUTED_SUCCESS", EuiccSubAddressUpdateStatusCode: "1",
				EuiccSubAddressUpdateStatusDesc: "SUCCESS", IPAddress: "101.0.1.216"},
			CallbackCount: 2, MaxCallbackThreshold: 4, OccurredAt: at,
		}},
		{"pending after a warning", status.Event{
			EventID: "e", RequestID: "req-1", Action: "deactivate", Device: d, Status: status.Pending,
			CallbackCount: 1, MaxCallbackThreshold: 4, OccurredAt: at,
		}},
		{"timed out", status.Event{
			EventID: "e", CommandID: "cmd-1", RequestID: "req-1", Action: "delete", Device: d, Status: status.TimedOut, Final: true, OccurredAt: at,
		}},
		{"failed", status.Event{
			EventID: "e", RequestID: "req-1", Action: "disable", Device: d, Status: status.Failed, Final: true,
			Reason: &status.Reason{Code: "REQUEST_FAILED.DeviceNotFound", Message: "Device not found"}, OccurredAt: at,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.event.Status.Final(), tt.event.Final)
			require.NoError(t, schemas.Validate(schemas.StatusEvent, tt.event))
		})
	}
}

func TestAnEventWhoseFinalContradictsItsStatusFailsTheSchema(t *testing.T) {
	e := status.Event{EventID: "e", Action: "enable", Status: status.Succeeded, Final: false, OccurredAt: time.Now().UTC()}
	require.Error(t, schemas.Validate(schemas.StatusEvent, e))
}

// The schema's fields are status.Event's JSON fields, no more, no fewer, at
// every level.
func TestTheStatusEventSchemaMatchesEventExactly(t *testing.T) {
	raw, err := fs.ReadFile(schemas.FS(), schemas.StatusEvent)
	require.NoError(t, err)
	var schema map[string]any
	require.NoError(t, json.Unmarshal(raw, &schema))

	props := func(s map[string]any) map[string]any { return s["properties"].(map[string]any) }
	check := func(where string, s map[string]any, typ reflect.Type) {
		t.Helper()
		var fields []string
		for f := range props(s) {
			fields = append(fields, f)
		}
		require.ElementsMatch(t, jsonFields(typ), fields, where)
		require.Equal(t, false, s["additionalProperties"], where)
	}
	check("event", schema, reflect.TypeFor[status.Event]())
	check("device", props(schema)["device"].(map[string]any), reflect.TypeFor[device.Set]())
	check("reason", props(schema)["reason"].(map[string]any), reflect.TypeFor[status.Reason]())
	check("profile", props(schema)["profile"].(map[string]any), reflect.TypeFor[status.Profile]())

	var statuses []string
	for _, s := range props(schema)["status"].(map[string]any)["enum"].([]any) {
		statuses = append(statuses, s.(string))
	}
	var want []string
	for _, s := range status.Statuses {
		want = append(want, string(s))
	}
	require.Equal(t, want, statuses)

	var required []string
	for _, r := range schema["required"].([]any) {
		required = append(required, r.(string))
	}
	for _, f := range reflect.VisibleFields(reflect.TypeFor[status.Event]()) {
		name, opts, _ := strings.Cut(f.Tag.Get("json"), ",")
		require.Equal(t, opts != "omitempty", slices.Contains(required, name),
			"%s: required in the schema exactly when the Go field is always marshalled", name)
	}
}

func jsonFields(typ reflect.Type) []string {
	var out []string
	for _, f := range reflect.VisibleFields(typ) {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name != "" && name != "-" {
			out = append(out, name)
		}
	}
	return out
}
