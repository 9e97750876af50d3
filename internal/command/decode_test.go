package command_test

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/command"
	"github.com/esim-pipeline/thingspace-esim/internal/device"
	"github.com/esim-pipeline/thingspace-esim/schemas"
)

// Identifiers that pass every check, checksums included.
const (
	eid1   = "89049032000000000000000000001230"
	eid2   = "89049032000000000000000000001327"
	iccid1 = "89148000000840784251"
	iccid2 = "89148000000840784269"
	imei1  = "353456789012348"
	smsr   = "1.3.6.1.4.1.31746.1.500.200.101.5"
)

func seed(t *testing.T, action command.Action) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/seeds/" + string(action) + ".request.json")
	require.NoError(t, err)
	return b
}

func decode(t *testing.T, a command.Action, body string) *command.Command {
	t.Helper()
	c, err := command.Decode(a, []byte(body), device.Options{})
	require.NoError(t, err)
	return c
}

func TestTheEnableAndDeleteSeedBodiesDecodeAndValidate(t *testing.T) {
	for _, a := range []command.Action{command.Enable, command.Delete} {
		t.Run(string(a), func(t *testing.T) {
			body := seed(t, a)
			require.NoError(t, schemas.Validate(a.Schema(), body))

			c, err := command.Decode(a, body, device.Options{})
			require.NoError(t, err)
			require.NoError(t, c.Err)
			require.Empty(t, c.Problems)
			require.Equal(t, []command.Device{{Index: 0, IDs: device.Set{
				EID: "666456789123456789123456784008", ICCID: "89148000000840784259",
			}}}, c.Devices)
			require.Equal(t, "1223334444-00001", c.AccountName)
			require.Equal(t, command.Options{SmsrOid: smsr}, c.Options)
			require.Empty(t, c.ID)
		})
	}
}

// The disable page's example ends with an unterminated smsrOid string: a
// user must learn which field, and where.
func TestTheDisableSeedBodyIsUndecodableAndTheErrorNamesSmsrOid(t *testing.T) {
	body := seed(t, command.Disable)
	c, err := command.Decode(command.Disable, body, device.Options{})
	require.Nil(t, c)
	require.ErrorIs(t, err, command.ErrUndecodable)
	require.EqualError(t, err, `undecodable command: invalid JSON in smsrOid at line 17, column 15: `+
		`invalid character '\n' in string literal: the string is not closed on its line`)

	fixed := strings.Replace(string(body), `"smsrOid": "`, `"smsrOid": "`+smsr+`"`, 1)
	require.NoError(t, schemas.Validate(command.Disable.Schema(), []byte(fixed)))
	c = decode(t, command.Disable, fixed)
	require.Len(t, c.Devices, 1)
}

// The deactivate and suspend pages show placeholders ("20-digit ICCID"):
// the structure is right, the identifiers are not.
func TestTheDeactivateAndSuspendSeedBodiesPassTheSchemaAndTheirPlaceholdersAreRejected(t *testing.T) {
	tests := []struct {
		action command.Action
		want   []command.Problem
	}{
		{command.Deactivate, []command.Problem{{
			Index:  0,
			Device: device.Set{EID: "32-digit EID", ICCID: "20-digit ICCID", IMEI: "15-digit IMEI"},
			Code:   command.CodeInvalidIdentifier,
			Message: `devices[0].deviceIds[0].id: invalid identifier: eid "32-digit EID" must contain digits only; ` +
				`devices[0].deviceIds[1].id: invalid identifier: iccid "20-digit ICCID" must contain digits only; ` +
				`devices[0].deviceIds[2].id: invalid identifier: imei "15-digit IMEI" must contain digits only`,
		}}},
		{command.Suspend, []command.Problem{{
			Index:   0,
			Device:  device.Set{ICCID: "20-digit ICCID"},
			Code:    command.CodeInvalidIdentifier,
			Message: `devices[0].deviceIds[0].id: invalid identifier: iccid "20-digit ICCID" must contain digits only`,
		}}},
	}
	for _, tt := range tests {
		t.Run(string(tt.action), func(t *testing.T) {
			body := seed(t, tt.action)
			require.NoError(t, schemas.Validate(tt.action.Schema(), body))

			c := decode(t, tt.action, string(body))
			require.NoError(t, c.Err)
			require.Empty(t, c.Devices)
			require.Equal(t, tt.want, c.Problems)
		})
	}
}

func TestTheDeactivateAndSuspendSeedBodiesWithRealDigitsDecode(t *testing.T) {
	real := strings.NewReplacer("32-digit EID", eid1, "20-digit ICCID", iccid1, "15-digit IMEI", imei1)
	waiver := false
	tests := []struct {
		action command.Action
		ids    device.Set
		opts   command.Options
	}{
		{command.Deactivate, device.Set{EID: eid1, ICCID: iccid1, IMEI: imei1},
			command.Options{ServicePlan: "service plan name", EtfWaiver: &waiver, ReasonCode: "FF"}},
		{command.Suspend, device.Set{ICCID: iccid1}, command.Options{ServicePlan: "service plan name"}},
	}
	for _, tt := range tests {
		t.Run(string(tt.action), func(t *testing.T) {
			body := real.Replace(string(seed(t, tt.action)))
			require.NoError(t, schemas.Validate(tt.action.Schema(), []byte(body)))

			c, err := command.Decode(tt.action, []byte(body), device.Options{Checksums: true})
			require.NoError(t, err)
			require.NoError(t, c.Err)
			require.Empty(t, c.Problems)
			require.Equal(t, []command.Device{{Index: 0, IDs: tt.ids}}, c.Devices)
			require.Equal(t, "0000123456-00001", c.AccountName)
			require.Equal(t, tt.opts, c.Options)
		})
	}
}

func TestTheDocumentedSamplesFailTheChecksumsWhenAskedFor(t *testing.T) {
	c, err := command.Decode(command.Enable, seed(t, command.Enable), device.Options{Checksums: true})
	require.NoError(t, err)
	require.Empty(t, c.Devices)
	require.Equal(t, []command.Problem{{
		Index:  0,
		Device: device.Set{EID: "666456789123456789123456784008", ICCID: "89148000000840784259"},
		Code:   command.CodeInvalidIdentifier,
		Message: `devices[0].deviceIds[0].id: invalid identifier: eid "666456789123456789123456784008" fails the ISO 7064 MOD 97-10 check; ` +
			`devices[0].deviceIds[1].id: invalid identifier: iccid "89148000000840784259" fails the Luhn check`,
	}}, c.Problems)
}

func TestEveryExampleCommandInSchemasDecodesWithChecksums(t *testing.T) {
	for _, a := range command.Actions {
		t.Run(string(a), func(t *testing.T) {
			raw, err := fs.ReadFile(schemas.FS(), "examples/command-"+string(a)+".json")
			require.NoError(t, err)
			c, err := command.Decode(a, raw, device.Options{Checksums: true})
			require.NoError(t, err)
			require.NoError(t, c.Err)
			require.Empty(t, c.Problems)
			require.NotEmpty(t, c.Devices)
		})
	}
}

// dev is one device entry: kind/id pairs.
func dev(pairs ...string) string {
	var ids []string
	for i := 0; i+1 < len(pairs); i += 2 {
		ids = append(ids, fmt.Sprintf(`{"kind":%q,"id":%q}`, pairs[i], pairs[i+1]))
	}
	return `{"deviceIds":[` + strings.Join(ids, ",") + `]}`
}

func enableBody(devices ...string) string {
	return `{"accountName":"0000123456-00001","smsrOid":"` + smsr + `","devices":[` + strings.Join(devices, ",") + `]}`
}

func TestUndecodableBodiesAreErrorsWithTheTextAUserReads(t *testing.T) {
	good := dev("eid", eid1, "iccid", iccid1)
	tests := []struct {
		name   string
		action command.Action
		body   string
		want   string
	}{
		{"not JSON", command.Enable, `hello`,
			`undecodable command: invalid JSON at line 1, column 1: invalid character 'h' looking for beginning of value`},
		{"an empty body", command.Enable, " \n",
			`undecodable command: the body is empty, want a JSON object with devices and accountName`},
		{"JSON cut short", command.Enable, `{"accountName":"a","devices":[` + good,
			`undecodable command: invalid JSON in devices at line 1, column 146: unexpected end of JSON input`},
		{"a key that is not a plain name, cut short", command.Enable, "{\"devices\":[],\"a\\nb\":",
			`undecodable command: invalid JSON in ["a\nb"] at line 1, column 22: unexpected end of JSON input`},
		{"a missing comma between fields", command.Enable, "{\"accountName\":\"a\"\n \"devices\":[]}",
			`undecodable command: invalid JSON after accountName at line 2, column 2: invalid character '"' after object key:value pair`},
		{"a broken identifier deep inside", command.Enable, `{"devices":[` + good + `,{"deviceIds":[{"kind":"iccid","id":89x}]}]}`,
			`undecodable command: invalid JSON after devices[1].deviceIds[0].id at line 1, column 166: invalid character 'x' after object key:value pair`},
		{"data after the object", command.Enable, enableBody(good) + ` {}`,
			`undecodable command: invalid JSON at line 1, column 210: invalid character '{' after top-level value`},
		{"an unknown action", command.Action("activate"), enableBody(good),
			`undecodable command: unknown action "activate" (want one of enable, disable, delete, deactivate, suspend, resume, device_suspend, device_resume, download_enable, download_disable)`},
		{"an array, not an object", command.Enable, `[` + good + `]`,
			`undecodable command: the body must be a JSON object with devices and accountName, not an array`},
		{"no devices field", command.Enable, `{"accountName":"a","smsrOid":"` + smsr + `"}`,
			`undecodable command: devices is missing: a command names 1 to 10000 devices`},
		{"0 devices", command.Enable, enableBody(),
			`undecodable command: devices is empty: a command names 1 to 10000 devices`},
		{"devices is an object", command.Enable, `{"accountName":"a","smsrOid":"` + smsr + `","devices":` + good + `}`,
			`undecodable command: devices must be an array, not an object`},
		{"devices holds no object", command.Enable, `{"accountName":"a","smsrOid":"` + smsr + `","devices":["` + iccid1 + `",7]}`,
			`undecodable command: devices must be an array of objects, each with deviceIds`},
		{"accountName is a number", command.Enable, `{"accountName":123,"smsrOid":"` + smsr + `","devices":[` + good + `]}`,
			`undecodable command: accountName must be a string, not a number`},
		{"etfWaiver is a string", command.Deactivate, `{"accountName":"a","etfWaiver":"no","devices":[` + good + `]}`,
			`undecodable command: etfWaiver must be a boolean, not a string`},
		{"two fields of the wrong type", command.Suspend, `{"accountName":null,"servicePlan":[],"devices":[` + dev("iccid", iccid1) + `]}`,
			`undecodable command: accountName must be a string, not null; servicePlan must be a string, not an array`},
		{"commandId is a number", command.Enable, `{"commandId":42,"accountName":"a","smsrOid":"` + smsr + `","devices":[` + good + `]}`,
			`undecodable command: commandId must be a string, not a number`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := command.Decode(tt.action, []byte(tt.body), device.Options{})
			require.Nil(t, c)
			require.ErrorIs(t, err, command.ErrUndecodable)
			require.EqualError(t, err, tt.want)
		})
	}
}

func TestACommandInvalidAsAWholeRejectsEveryDeviceWithItsReason(t *testing.T) {
	good1 := dev("eid", eid1, "iccid", iccid1)
	good2 := dev("eid", eid2, "iccid", iccid2)
	tests := []struct {
		name   string
		action command.Action
		body   string
		want   string
	}{
		{"missing accountName", command.Enable, `{"smsrOid":"` + smsr + `","devices":[` + good1 + `,` + good2 + `]}`,
			`accountName is required`},
		{"missing smsrOid for enable", command.Enable, `{"accountName":"a","devices":[` + good1 + `,` + good2 + `]}`,
			`smsrOid is required for enable`},
		{"missing accountName and smsrOid", command.Delete, `{"devices":[` + good1 + `,` + good2 + `]}`,
			`accountName is required; smsrOid is required for delete`},
		{"an empty accountName", command.Enable, `{"accountName":"","smsrOid":"` + smsr + `","devices":[` + good1 + `,` + good2 + `]}`,
			`accountName is empty`},
		{"an smsrOid that is no object identifier", command.Disable, `{"accountName":"a","smsrOid":"SMSR-1","devices":[` + good1 + `,` + good2 + `]}`,
			`smsrOid "SMSR-1" is not a dotted object identifier such as 1.3.6.1.4.1.31746.1.500.200.101.5`},
		{"a reasonCode of 3 characters", command.Deactivate, `{"accountName":"a","reasonCode":"FFF","devices":[` + good1 + `,` + good2 + `]}`,
			`reasonCode "FFF" must be 2 characters`},
		{"a reasonCode of 1 character", command.Deactivate, `{"accountName":"a","reasonCode":"F","devices":[` + good1 + `,` + good2 + `]}`,
			`reasonCode "F" must be 2 characters`},
		{"an option the action does not take", command.Suspend, `{"accountName":"a","etfWaiver":true,"devices":[` + dev("iccid", iccid1) + `,` + dev("iccid", iccid2) + `]}`,
			`unknown field "etfWaiver" (suspend takes devices, accountName, servicePlan, commandId)`},
		{"a misspelt field", command.Enable, `{"accountName":"a","smsrOID":"` + smsr + `","devices":[` + good1 + `,` + good2 + `]}`,
			`smsrOid is required for enable; unknown field "smsrOID" (enable takes devices, accountName, smsrOid, commandId)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := decode(t, tt.action, tt.body)
			require.ErrorIs(t, c.Err, command.ErrInvalid)
			require.EqualError(t, c.Err, "invalid command: "+tt.want)
			require.Empty(t, c.Devices)
			require.Len(t, c.Problems, 2)
			for i, p := range c.Problems {
				require.Equal(t, i, p.Index)
				require.Equal(t, command.CodeInvalidCommand, p.Code)
				require.Equal(t, tt.want, p.Message)
				require.False(t, p.Device.IsZero(), "the rejection names the device")
			}
		})
	}
}

func TestMoreThan10000DevicesRejectsEveryOne(t *testing.T) {
	c, err := command.Decode(command.Enable, body(t, command.MaxDevices+1), device.Options{})
	require.NoError(t, err)
	require.EqualError(t, c.Err, "invalid command: devices has 10001 entries, more than the 10000 one command may name")
	require.Empty(t, c.Devices)
	require.Len(t, c.Problems, 10001)
	last := c.Problems[10000]
	require.Equal(t, command.Problem{
		Index:   10000,
		Device:  device.Set{EID: "89049032000000000000000000010000", ICCID: "89148000000800010000"},
		Code:    command.CodeInvalidCommand,
		Message: "devices has 10001 entries, more than the 10000 one command may name",
	}, last)

	c, err = command.Decode(command.Enable, body(t, command.MaxDevices), device.Options{})
	require.NoError(t, err)
	require.NoError(t, c.Err)
	require.Len(t, c.Devices, 10000)
}

func TestAProblemOfTheCommandAndOfADeviceAreBothReported(t *testing.T) {
	c := decode(t, command.Enable, `{"accountName":"a","devices":[`+dev("eid", eid1, "iccid", "8914X")+`]}`)
	require.Equal(t, []command.Problem{{
		Index:  0,
		Device: device.Set{EID: eid1, ICCID: "8914X"},
		Code:   command.CodeInvalidCommand,
		Message: `smsrOid is required for enable; ` +
			`devices[0].deviceIds[1].id: invalid identifier: iccid "8914X" must contain digits only`,
	}}, c.Problems)
}

func TestABadDeviceIsRejectedAloneWithTheTextAUserReads(t *testing.T) {
	good := dev("eid", eid1, "iccid", iccid1)
	tests := []struct {
		name   string
		action command.Action
		bad    string
		want   command.Problem
	}{
		{"an ICCID with letters", command.Enable, dev("eid", eid2, "iccid", "8914800000084078425A"), command.Problem{
			Device: device.Set{EID: eid2, ICCID: "8914800000084078425A"}, Code: command.CodeInvalidIdentifier,
			Message: `devices[1].deviceIds[1].id: invalid identifier: iccid "8914800000084078425A" must contain digits only`}},
		{"an ICCID too short", command.Enable, dev("eid", eid2, "iccid", "8914"), command.Problem{
			Device: device.Set{EID: eid2, ICCID: "8914"}, Code: command.CodeInvalidIdentifier,
			Message: `devices[1].deviceIds[1].id: invalid identifier: iccid "8914" has 4 digits, want 19 or 20`}},
		{"an empty id", command.Enable, dev("eid", eid2, "iccid", ""), command.Problem{
			Device: device.Set{EID: eid2}, Code: command.CodeInvalidIdentifier,
			Message: `devices[1].deviceIds[1].id: invalid identifier: iccid is empty`}},
		{"a suspend without ICCID", command.Suspend, `{"deviceIds":[]}`, command.Problem{
			Code:    command.CodeMissingIdentifier,
			Message: `devices[1] has no iccid (suspend needs iccid)`}},
		{"a suspend naming an EID instead of an ICCID", command.Suspend, dev("eid", eid2), command.Problem{
			Device: device.Set{EID: eid2}, Code: command.CodeMissingIdentifier,
			Message: `devices[1] has no iccid (suspend needs iccid); devices[1].deviceIds[0].kind "eid" is not accepted by suspend (want iccid)`}},
		{"an enable without EID", command.Enable, dev("ICCID", iccid2), command.Problem{
			Device: device.Set{ICCID: iccid2}, Code: command.CodeMissingIdentifier,
			Message: `devices[1] has no eid (enable needs eid and iccid)`}},
		{"an enable with neither", command.Enable, `{"deviceIds":[]}`, command.Problem{
			Code:    command.CodeMissingIdentifier,
			Message: `devices[1] has no eid and no iccid (enable needs eid and iccid)`}},
		{"a device without deviceIds", command.Enable, `{}`, command.Problem{
			Code: command.CodeMissingIdentifier, Message: `devices[1] has no deviceIds (enable needs eid and iccid)`}},
		{"an unknown kind", command.Enable, dev("eid", eid2, "iccid", iccid2, "imsi", "310150123456789"), command.Problem{
			Device: device.Set{EID: eid2, ICCID: iccid2}, Code: command.CodeInvalidIdentifier,
			Message: `devices[1].deviceIds[2].kind "imsi" is not an identifier kind (want eid or iccid)`}},
		{"a kind the action does not take", command.Enable, dev("eid", eid2, "iccid", iccid2, "imei", imei1), command.Problem{
			Device: device.Set{EID: eid2, ICCID: iccid2, IMEI: imei1}, Code: command.CodeInvalidIdentifier,
			Message: `devices[1].deviceIds[2].kind "imei" is not accepted by enable (want eid or iccid)`}},
		{"two ICCIDs for one device", command.Enable, dev("eid", eid2, "iccid", iccid2, "Iccid", iccid1), command.Problem{
			Device: device.Set{EID: eid2, ICCID: iccid2}, Code: command.CodeInvalidIdentifier,
			Message: `devices[1].deviceIds[2] is a second iccid "` + iccid1 + `" for one device, after "` + iccid2 + `"`}},
		{"a duplicate device", command.Enable, dev("EID", eid1, "ICCID", iccid1), command.Problem{
			Device: device.Set{EID: eid1, ICCID: iccid1}, Code: command.CodeDuplicateDevice,
			Message: `devices[1] repeats the device of devices[0] (eid:` + eid1 + ` iccid:` + iccid1 + `)`}},
		{"a device that is a string", command.Enable, `"` + iccid2 + `"`, command.Problem{
			Code: command.CodeInvalidDevice, Message: `devices[1] must be an object, not a string`}},
		{"an id that is a number", command.Enable, `{"deviceIds":[{"kind":"eid","id":"` + eid2 + `"},{"kind":"iccid","id":89148000000840784269}]}`, command.Problem{
			Device: device.Set{EID: eid2}, Code: command.CodeInvalidIdentifier,
			Message: `devices[1].deviceIds[1].id must be a string, not a number`}},
		{"deviceIds that is an object", command.Enable, `{"deviceIds":{"kind":"iccid","id":"` + iccid2 + `"}}`, command.Problem{
			Code: command.CodeInvalidDevice, Message: `devices[1].deviceIds must be an array, not an object`}},
		{"an identifier that is a string", command.Enable, `{"deviceIds":["` + iccid2 + `"]}`, command.Problem{
			Code:    command.CodeMissingIdentifier,
			Message: `devices[1] has no eid and no iccid (enable needs eid and iccid); devices[1].deviceIds[0] must be an object, not a string`}},
		{"an identifier without id", command.Enable, `{"deviceIds":[{"kind":"eid","id":"` + eid2 + `"},{"kind":"iccid"}]}`, command.Problem{
			Device: device.Set{EID: eid2}, Code: command.CodeInvalidIdentifier, Message: `devices[1].deviceIds[1] lacks id`}},
		{"an unknown field in a device", command.Enable, `{"deviceIds":[{"kind":"eid","id":"` + eid2 + `"},{"kind":"iccid","id":"` + iccid2 + `"}],"name":"pump 7"}`, command.Problem{
			Device: device.Set{EID: eid2, ICCID: iccid2}, Code: command.CodeInvalidDevice,
			Message: `devices[1] has an unknown field "name" (want deviceIds)`}},
		{"an unknown field in an identifier", command.Enable, `{"deviceIds":[{"kind":"eid","id":"` + eid2 + `"},{"kind":"iccid","value":"` + iccid2 + `"}]}`, command.Problem{
			Device: device.Set{EID: eid2}, Code: command.CodeInvalidIdentifier,
			Message: `devices[1].deviceIds[1] has an unknown field "value" (want kind and id); devices[1].deviceIds[1] lacks id`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			first, third := good, dev("eid", eid2, "iccid", "89148000000840784277")
			if tt.action == command.Suspend {
				first, third = dev("iccid", iccid1), dev("iccid", "89148000000840784277")
			}
			body := `{"accountName":"a","devices":[` + first + `,` + tt.bad + `,` + third + `]`
			if tt.action != command.Suspend {
				body += `,"smsrOid":"` + smsr + `"`
			}
			c := decode(t, tt.action, body+`}`)
			require.NoError(t, c.Err)
			tt.want.Index = 1
			require.Equal(t, []command.Problem{tt.want}, c.Problems)
			require.Len(t, c.Devices, 2, "the good devices proceed")
			require.Equal(t, 0, c.Devices[0].Index)
			require.Equal(t, 2, c.Devices[1].Index)
		})
	}
}

// A 10,000-device command is validated one representative per device shape:
// each device still gets its own problem, under its own index.
func TestDevicesOfOneShapeAreEachReportedUnderTheirOwnIndex(t *testing.T) {
	c := decode(t, command.Enable, enableBody(
		dev("eid", eid1, "iccid", iccid1, "mdn", "2022326360"),
		dev("eid", eid2, "iccid", iccid2),
		dev("eid", eid2, "iccid", "89148000000840784277", "mdn", "2022326361"),
	))
	require.Equal(t, []command.Device{{Index: 1, IDs: device.Set{EID: eid2, ICCID: iccid2}}}, c.Devices)
	require.Len(t, c.Problems, 2)
	require.Equal(t, `devices[0].deviceIds[2].kind "mdn" is not accepted by enable (want eid or iccid)`, c.Problems[0].Message)
	require.Equal(t, `devices[2].deviceIds[2].kind "mdn" is not accepted by enable (want eid or iccid)`, c.Problems[1].Message)
	require.Equal(t, 2, c.Problems[1].Index)
	require.Equal(t, "2022326361", c.Problems[1].Device.MDN)
}

func TestAKindCannotPassForTwoKindsOfAnotherDevice(t *testing.T) {
	c := decode(t, command.Enable, enableBody(
		dev("eid", eid1, "iccid", iccid1),
		`{"deviceIds":[{"kind":"eid\u0000iccid","id":"`+eid2+`"}]}`,
	))
	require.Len(t, c.Devices, 1)
	require.Equal(t, []command.Problem{{
		Index: 1, Code: command.CodeMissingIdentifier,
		Message: `devices[1] has no eid and no iccid (enable needs eid and iccid); ` +
			`devices[1].deviceIds[0].kind "eid\x00iccid" is not an identifier kind (want eid or iccid)`,
	}}, c.Problems)
}

func TestTheCommandIDAndOptionsAreRead(t *testing.T) {
	c := decode(t, command.Deactivate, `{"commandId":"run-7","accountName":"0000123456-00001","servicePlan":"P","etfWaiver":true,"reasonCode":"FF","devices":[`+
		dev("eid", eid1, "iccid", iccid1, "imei", imei1)+`]}`)
	waiver := true
	require.Equal(t, "run-7", c.ID)
	require.Equal(t, command.Deactivate, c.Action)
	require.Equal(t, command.Options{ServicePlan: "P", EtfWaiver: &waiver, ReasonCode: "FF"}, c.Options)
	require.Equal(t, 1, c.Len())
}

func TestKindsAreReadInAnyCaseAndIdentifiersTrimmed(t *testing.T) {
	c := decode(t, command.Enable, enableBody(dev("EID", " "+eid1+" ", "Iccid", iccid1)))
	require.Equal(t, []command.Device{{Index: 0, IDs: device.Set{EID: eid1, ICCID: iccid1}}}, c.Devices)
}

func TestALeadingByteOrderMarkIsIgnored(t *testing.T) {
	c := decode(t, command.Enable, "\xef\xbb\xbf"+enableBody(dev("eid", eid1, "iccid", iccid1)))
	require.Len(t, c.Devices, 1)
}

func TestDecodeTakesTheActionInAnyCase(t *testing.T) {
	c := decode(t, command.Action("ENABLE"), enableBody(dev("eid", eid1, "iccid", iccid1)))
	require.Equal(t, command.Enable, c.Action)
}

func TestErrorsAreOneLine(t *testing.T) {
	_, err := command.Decode(command.Enable, []byte("{\"accountName\":\"a\nb\"}"), device.Options{})
	require.Error(t, err)
	require.NotContains(t, err.Error(), "\n")
	require.True(t, errors.Is(err, command.ErrUndecodable))
}
