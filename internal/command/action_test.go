package command_test

import (
	"encoding/json"
	"io/fs"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/command"
	"github.com/esim-pipeline/thingspace-esim/internal/device"
	"github.com/esim-pipeline/thingspace-esim/internal/status"
	"github.com/esim-pipeline/thingspace-esim/schemas"
)

func TestParseActionReadsAnyCase(t *testing.T) {
	tests := []struct {
		in   string
		want command.Action
	}{
		{"enable", command.Enable},
		{"Disable", command.Disable},
		{"DELETE", command.Delete},
		{" deactivate ", command.Deactivate},
		{"Suspend", command.Suspend},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			a, err := command.ParseAction(tt.in)
			require.NoError(t, err)
			require.Equal(t, tt.want, a)
		})
	}
}

func TestParseActionNamesTheValidActions(t *testing.T) {
	for _, in := range []string{"activate", "profile_suspend", ""} {
		_, err := command.ParseAction(in)
		require.ErrorIs(t, err, command.ErrUnknownAction)
		require.EqualError(t, err, `unknown action "`+in+`" (want one of enable, disable, delete, deactivate, suspend, resume, device_suspend, device_resume, download_enable, download_disable)`)
	}
}

func TestEachActionKnowsItsEndpointSubjectAndIdentifiers(t *testing.T) {
	tests := []struct {
		action   command.Action
		endpoint string
		required []device.Kind
		accepted []device.Kind
	}{
		{command.Enable, "enable", []device.Kind{device.EID, device.ICCID}, []device.Kind{device.EID, device.ICCID}},
		{command.Disable, "disable", []device.Kind{device.EID, device.ICCID}, []device.Kind{device.EID, device.ICCID}},
		{command.Delete, "delete", []device.Kind{device.EID, device.ICCID}, []device.Kind{device.EID, device.ICCID}},
		{command.Deactivate, "deactivate", []device.Kind{device.EID, device.ICCID}, []device.Kind{device.EID, device.ICCID, device.IMEI}},
		{command.Suspend, "profile_suspend", []device.Kind{device.ICCID}, []device.Kind{device.ICCID}},
		{command.Resume, "profile_resume", []device.Kind{device.ICCID}, []device.Kind{device.ICCID}},
		{command.DeviceSuspend, "device_suspend", []device.Kind{device.EID}, []device.Kind{device.EID}},
		{command.DeviceResume, "device_resume", []device.Kind{device.EID}, []device.Kind{device.EID}},
		{command.DownloadEnable, "download_enable", []device.Kind{device.EID, device.ICCID}, []device.Kind{device.EID, device.ICCID}},
		{command.DownloadDisable, "download_disable", []device.Kind{device.EID, device.ICCID}, []device.Kind{device.EID, device.ICCID}},
	}
	require.Len(t, command.Actions, len(tests))
	for i, tt := range tests {
		t.Run(string(tt.action), func(t *testing.T) {
			require.Equal(t, tt.action, command.Actions[i])
			require.True(t, tt.action.Valid())
			require.Equal(t, tt.endpoint, tt.action.Endpoint())
			require.Equal(t, "thingspace.profile.commands."+string(tt.action), tt.action.Subject())
			require.Equal(t, tt.required, tt.action.RequiredKinds())
			require.Equal(t, tt.accepted, tt.action.Kinds())
			got, err := command.ActionFromSubject(tt.action.Subject())
			require.NoError(t, err)
			require.Equal(t, tt.action, got)
		})
	}
	require.Equal(t, "thingspace.profile.commands.>", command.SubjectWildcard)
}

func TestActionFromSubjectRefusesOtherSubjects(t *testing.T) {
	tests := []struct{ subject, want string }{
		{"thingspace.profile.commands.activate", `unknown action "activate" (want one of enable, disable, delete, deactivate, suspend, resume, device_suspend, device_resume, download_enable, download_disable)`},
		{"thingspace.profile.commands.enable.extra", `unknown action: subject "thingspace.profile.commands.enable.extra" is not thingspace.profile.commands.<action> (want one of enable, disable, delete, deactivate, suspend, resume, device_suspend, device_resume, download_enable, download_disable)`},
		{"thingspace.profile.status.enable", `unknown action: subject "thingspace.profile.status.enable" is not thingspace.profile.commands.<action> (want one of enable, disable, delete, deactivate, suspend, resume, device_suspend, device_resume, download_enable, download_disable)`},
		{"thingspace.profile.commands.", `unknown action: subject "thingspace.profile.commands." is not thingspace.profile.commands.<action> (want one of enable, disable, delete, deactivate, suspend, resume, device_suspend, device_resume, download_enable, download_disable)`},
	}
	for _, tt := range tests {
		t.Run(tt.subject, func(t *testing.T) {
			_, err := command.ActionFromSubject(tt.subject)
			require.ErrorIs(t, err, command.ErrUnknownAction)
			require.EqualError(t, err, tt.want)
		})
	}
}

// schemaDoc reads an action's command schema as plain JSON.
func schemaDoc(t *testing.T, a command.Action) map[string]any {
	t.Helper()
	raw, err := fs.ReadFile(schemas.FS(), a.Schema())
	require.NoError(t, err)
	var doc map[string]any
	require.NoError(t, json.Unmarshal(raw, &doc))
	return doc
}

func TestTheGoTablesAgreeWithTheCommandSchemas(t *testing.T) {
	for _, a := range command.Actions {
		t.Run(string(a), func(t *testing.T) {
			doc := schemaDoc(t, a)
			props := doc["properties"].(map[string]any)
			var fields []string
			for f := range props {
				fields = append(fields, f)
			}
			require.ElementsMatch(t, a.Fields(), fields)
			devices := props["devices"].(map[string]any)
			require.EqualValues(t, command.MaxDevices, devices["maxItems"])
			var required []string
			for _, f := range doc["required"].([]any) {
				if f != "devices" && f != "accountName" {
					required = append(required, f.(string))
				}
			}
			require.ElementsMatch(t, a.Spec().Mandatory, required, "the table's mandatory fields are the schema's")
		})
	}
}

// Decode validates one representative per device shape; that is only sound
// while an identifier's id is constrained to be a string and nothing more.
func TestTheCommandSchemasConstrainAnIdToAStringOnly(t *testing.T) {
	for _, a := range command.Actions {
		doc := schemaDoc(t, a)
		id := doc["$defs"].(map[string]any)["deviceId"].(map[string]any)["properties"].(map[string]any)["id"].(map[string]any)
		for k := range id {
			require.Contains(t, []string{"type", "description"}, k, "%s: id has %q: revisit group() in decode.go", a, k)
		}
		require.Equal(t, "string", id["type"])
	}
}

// The verdict key (decode.go) holds only commandId's length: sound while
// the schemas constrain nothing else of it.
func TestTheCommandSchemasConstrainACommandIdByItsLengthOnly(t *testing.T) {
	for _, a := range command.Actions {
		doc := schemaDoc(t, a)
		id := doc["properties"].(map[string]any)["commandId"].(map[string]any)
		for k := range id {
			require.Contains(t, []string{"type", "maxLength", "description"}, k, "%s: commandId has %q: revisit verdictKey in decode.go", a, k)
		}
		require.Equal(t, "string", id["type"])
	}
}

func TestOptionsKeyIsEqualExactlyForEqualOptions(t *testing.T) {
	yes, no := true, false
	a := command.Options{ServicePlan: "P", EtfWaiver: &yes, ReasonCode: "FF"}
	yes2 := true
	require.Equal(t, a.Key(), command.Options{ServicePlan: "P", EtfWaiver: &yes2, ReasonCode: "FF"}.Key())
	others := []command.Options{
		{ServicePlan: "P", EtfWaiver: &no, ReasonCode: "FF"},
		{ServicePlan: "P", ReasonCode: "FF"},
		{ServicePlan: "P2", EtfWaiver: &yes, ReasonCode: "FF"},
		{ServicePlan: "P", EtfWaiver: &yes, ReasonCode: "FE"},
		{SmsrOid: "1.2", ServicePlan: "P", EtfWaiver: &yes, ReasonCode: "FF"},
		{ServicePlan: `P";reasonCode="FF`, EtfWaiver: &yes},
	}
	for _, o := range others {
		require.NotEqual(t, a.Key(), o.Key(), "%+v", o)
	}
	require.Equal(t, `smsrOid="1.2";servicePlan="";etfWaiver=unset;reasonCode=""`, command.Options{SmsrOid: "1.2"}.Key())
	require.Equal(t, `smsrOid="";servicePlan="P\"é";etfWaiver=false;reasonCode="FF"`,
		command.Options{ServicePlan: `P"é`, EtfWaiver: &no, ReasonCode: "FF"}.Key(), "esimctl's run ids hash this text")
}

func TestBatchKeySeparatesActionsAccountsAndOptions(t *testing.T) {
	base := command.Command{Action: command.Enable, AccountName: "1", Options: command.Options{SmsrOid: "1.2"}}
	same := base
	require.Equal(t, base.BatchKey(), same.BatchKey())
	other := base
	other.AccountName = "2"
	require.NotEqual(t, base.BatchKey(), other.BatchKey())
	other = base
	other.Action = command.Disable
	require.NotEqual(t, base.BatchKey(), other.BatchKey())
	other = base
	other.Options.SmsrOid = "1.3"
	require.NotEqual(t, base.BatchKey(), other.BatchKey())
}

func TestCommandIDPrefersTheBodyThenTheHeaderThenTheSequence(t *testing.T) {
	tests := []struct {
		name, body, header, stream string
		seq                        uint64
		want                       string
	}{
		{"the body's commandId", "cmd-1", "msg-1", "COMMANDS", 7, "cmd-1"},
		{"the Nats-Msg-Id without a commandId", "", "msg-1", "COMMANDS", 7, "msg-1"},
		{"the stream sequence without either", "", "", "COMMANDS", 7, "seq-COMMANDS-7"},
		{"blank ids count as none", "  ", " ", "COMMANDS", 8, "seq-COMMANDS-8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.want, command.CommandID(tt.body, tt.header, tt.stream, tt.seq))
		})
	}
}

func TestProblemReasonIsTheStatusEventsReason(t *testing.T) {
	p := command.Problem{Code: command.CodeDuplicateDevice, Message: "m"}
	require.Equal(t, command.CodeDuplicateDevice, p.Reason().Code)
	require.Equal(t, "m", p.Reason().Message)
}

// The status events name the table's actions, and unknown for a callback
// whose request has no record.
func TestTheStatusEventSchemaNamesEveryActionOfTheTable(t *testing.T) {
	raw, err := fs.ReadFile(schemas.FS(), "status-event.schema.json")
	require.NoError(t, err)
	var doc struct {
		Properties struct {
			Action struct {
				Enum []string `json:"enum"`
			} `json:"action"`
		} `json:"properties"`
	}
	require.NoError(t, json.Unmarshal(raw, &doc))
	require.Equal(t, append(command.Names(), status.UnknownAction), doc.Properties.Action.Enum)
	for _, a := range command.Actions {
		_, err := fs.Stat(schemas.FS(), a.Schema())
		require.NoError(t, err, "every action of the table has its command schema")
	}
}
