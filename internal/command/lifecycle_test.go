package command_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/command"
	"github.com/esim-pipeline/thingspace-esim/internal/device"
)

const (
	lcAccount = `"accountName":"0000123456-00001"`
	lcEID     = `{"kind":"eid","id":"89049032000000000000000000001230"}`
	lcICCID   = `{"kind":"iccid","id":"89148000000840784251"}`
	lcSmsr    = `"smsrOid":"1.3.6.1.4.1.31746.1.500.200.101.5"`
)

// The lifecycle actions refuse what their pages do not take, each with a
// reason that names the fix.
func TestTheLifecycleActionsRejectWhatTheirPagesDoNotTake(t *testing.T) {
	tests := []struct {
		name   string
		action command.Action
		body   string
		code   string
		msg    string
	}{
		{"resume without an ICCID", command.Resume,
			`{` + lcAccount + `,"devices":[{"deviceIds":[` + lcEID + `]}]}`,
			command.CodeMissingIdentifier, `devices[0] has no iccid (resume needs iccid)`},
		{"device_suspend naming an ICCID", command.DeviceSuspend,
			`{` + lcAccount + `,"devices":[{"deviceIds":[` + lcEID + `,` + lcICCID + `]}]}`,
			command.CodeInvalidIdentifier, `devices[0].deviceIds[1].kind "iccid" is not accepted by device_suspend (want eid)`},
		{"device_resume naming only an ICCID", command.DeviceResume,
			`{` + lcAccount + `,"devices":[{"deviceIds":[` + lcICCID + `]}]}`,
			command.CodeMissingIdentifier, `devices[0].deviceIds[0].kind "iccid" is not accepted by device_resume (want eid)`},
		{"download_enable without smsrOid", command.DownloadEnable,
			`{` + lcAccount + `,"devices":[{"deviceIds":[` + lcEID + `,` + lcICCID + `]}]}`,
			command.CodeInvalidCommand, `smsrOid is required for download_enable`},
		{"download_disable without an EID", command.DownloadDisable,
			`{` + lcAccount + `,` + lcSmsr + `,"devices":[{"deviceIds":[` + lcICCID + `]}]}`,
			command.CodeMissingIdentifier, `devices[0] has no eid (download_disable needs eid and iccid)`},
		{"smsrOid on resume", command.Resume,
			`{` + lcAccount + `,` + lcSmsr + `,"devices":[{"deviceIds":[` + lcICCID + `]}]}`,
			command.CodeInvalidCommand, `unknown field "smsrOid" (resume takes devices, accountName, servicePlan, commandId)`},
		{"servicePlan on device_suspend", command.DeviceSuspend,
			`{` + lcAccount + `,"servicePlan":"P1","devices":[{"deviceIds":[` + lcEID + `]}]}`,
			command.CodeInvalidCommand, `unknown field "servicePlan" (device_suspend takes devices, accountName, commandId)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := command.Decode(tt.action, []byte(tt.body), device.Options{})
			require.NoError(t, err)
			require.Empty(t, c.Devices)
			require.Len(t, c.Problems, 1)
			require.Equal(t, tt.code, c.Problems[0].Code)
			require.Contains(t, c.Problems[0].Message, tt.msg)
		})
	}
}

func TestTheLifecycleActionsTakeTheirPagesExamples(t *testing.T) {
	tests := []struct {
		action command.Action
		body   string
		want   device.Set
	}{
		{command.Resume, `{` + lcAccount + `,"servicePlan":"GlobalPlan","devices":[{"deviceIds":[` + lcICCID + `]}]}`,
			device.Set{ICCID: "89148000000840784251"}},
		{command.DeviceSuspend, `{` + lcAccount + `,"devices":[{"deviceIds":[` + lcEID + `]}]}`,
			device.Set{EID: "89049032000000000000000000001230"}},
		{command.DeviceResume, `{` + lcAccount + `,"devices":[{"deviceIds":[{"kind":"EID","id":"89049032000000000000000000001230"}]}]}`,
			device.Set{EID: "89049032000000000000000000001230"}},
		{command.DownloadEnable, `{` + lcAccount + `,` + lcSmsr + `,"devices":[{"deviceIds":[` + lcEID + `,` + lcICCID + `]}]}`,
			device.Set{EID: "89049032000000000000000000001230", ICCID: "89148000000840784251"}},
		{command.DownloadDisable, `{` + lcAccount + `,` + lcSmsr + `,"devices":[{"deviceIds":[` + lcICCID + `,` + lcEID + `]}]}`,
			device.Set{EID: "89049032000000000000000000001230", ICCID: "89148000000840784251"}},
	}
	for _, tt := range tests {
		t.Run(string(tt.action), func(t *testing.T) {
			c, err := command.Decode(tt.action, []byte(tt.body), device.Options{})
			require.NoError(t, err)
			require.Nil(t, c.Err)
			require.Empty(t, c.Problems)
			require.Len(t, c.Devices, 1)
			require.Equal(t, tt.want, c.Devices[0].IDs)
		})
	}
}
