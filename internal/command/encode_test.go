package command_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/command"
	"github.com/esim-pipeline/thingspace-esim/internal/device"
)

func TestEncodeWritesWhatDecodeReadsForEveryAction(t *testing.T) {
	full := device.Set{EID: "89049032000000000000000000001230", ICCID: "89148000000840784251", IMEI: "356938035643809"}
	for _, a := range command.Actions {
		t.Run(string(a), func(t *testing.T) {
			var opts command.Options
			sp := a.Spec()
			for _, f := range sp.Fields {
				switch f {
				case "smsrOid":
					opts.SmsrOid = "1.3.6.1.4.1.31746.1.500.200.101.5"
				case "servicePlan":
					opts.ServicePlan = "GlobalPlan"
				case "reasonCode":
					opts.ReasonCode = "FF"
				case "etfWaiver":
					w := true
					opts.EtfWaiver = &w
				}
			}
			body, err := command.Encode(a, "cmd-7", "0000123456-00001", opts, []device.Set{full})
			require.NoError(t, err)
			c, err := command.Decode(a, body, device.Options{})
			require.NoError(t, err)
			require.Nil(t, c.Err, string(body))
			require.Empty(t, c.Problems, string(body))
			require.Equal(t, "cmd-7", c.ID)
			require.Equal(t, "0000123456-00001", c.AccountName)
			require.Equal(t, opts, c.Options)
			var want device.Set
			for _, k := range sp.Kinds {
				want = want.With(k, full.Get(k))
			}
			require.Equal(t, want, c.Devices[0].IDs, "only the kinds %s takes", a)
		})
	}
	body, err := command.Encode(command.Suspend, "", "1", command.Options{}, []device.Set{{ICCID: "89148000000840784251"}})
	require.NoError(t, err)
	require.JSONEq(t, `{"devices":[{"deviceIds":[{"kind":"iccid","id":"89148000000840784251"}]}],"accountName":"1"}`, string(body), "no commandId when none is given")
}
