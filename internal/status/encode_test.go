package status_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/device"
	"github.com/esim-pipeline/thingspace-esim/internal/status"
)

func TestAppendJSONIsWhatJSONMarshalMakes(t *testing.T) {
	at := time.Date(2026, 11, 23, 20, 0, 0, 123456789, time.UTC)
	events := []status.Event{
		{EventID: "e1", CommandID: "c1", RequestID: "r1", Action: "enable", AccountName: "0000123456-00001",
			Device: device.Set{EID: "89049032000000000000000000000001", ICCID: "89148000000000000001"}, Status: status.Accepted, OccurredAt: at},
		{EventID: "e2", CommandID: `quo"te\back<>&` + "\n\t\x01\u2028é\xff", Action: "suspend", Device: device.Set{},
			Status: status.Rejected, Final: true, Reason: &status.Reason{Code: "INVALID_IDENTIFIER", Message: "iccid \"x\" <bad>"}, OccurredAt: at.Truncate(time.Second)},
		{EventID: "e3", RequestID: "r3", Action: "unknown", Device: device.Set{IMEI: "356938035643809", MDN: "2022326360", MSISDN: "12022326360"},
			Status: status.Succeeded, Final: true, Profile: &status.Profile{State: "Active", IPAddress: "10.0.0.1", EuiccSubAddressUpdateStatusDesc: "ok"},
			CallbackCount: 2, MaxCallbackThreshold: 4, OccurredAt: at},
		{EventID: "e4", Action: "delete", Status: status.Pending, Profile: &status.Profile{}, OccurredAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)},
	}
	for _, ev := range events {
		want, err := json.Marshal(ev)
		require.NoError(t, err)
		require.Equal(t, string(want), string(ev.AppendJSON(nil)), "event %s", ev.EventID)
	}
}

func FuzzAppendJSON(f *testing.F) {
	f.Add("c", "r", "0000123456-00001", "89148000000000000001", "msg")
	f.Add("\x00\"\\", "\u2029<", "&>", "\xff\xfe", "\t\r\n")
	f.Fuzz(func(t *testing.T, cmd, req, account, iccid, msg string) {
		ev := status.Event{EventID: "x", CommandID: cmd, RequestID: req, Action: "enable", AccountName: account,
			Device: device.Set{ICCID: iccid}, Status: status.Failed, Final: true, Reason: &status.Reason{Code: "C", Message: msg},
			OccurredAt: time.Unix(1700000000, 5).UTC()}
		want, err := json.Marshal(ev)
		require.NoError(t, err)
		require.Equal(t, string(want), string(ev.AppendJSON(nil)))
	})
}
