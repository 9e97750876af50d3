package broker_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/device"
	"github.com/esim-pipeline/thingspace-esim/internal/status"
)

// decodedEID is what a full decode of the event reads.
func decodedEID(t *testing.T, data []byte) string {
	t.Helper()
	var ev struct {
		Device struct {
			EID string `json:"eid"`
		} `json:"device"`
	}
	if json.Unmarshal(data, &ev) != nil {
		return ""
	}
	return ev.Device.EID
}

// The ingest reads the EID of every status event with a scan; whatever the
// shape, it reads what a full decode reads.
func TestTheEIDOfAnEventIsWhatAFullDecodeReads(t *testing.T) {
	ev := status.Event{EventID: "e1", CommandID: "c1", Action: "enable", Status: status.Accepted, OccurredAt: time.Now().UTC(),
		Device: device.Set{EID: "89049032000000000000000000000201", ICCID: "89148000000000000201", IMEI: "358742152308308"},
		Reason: &status.Reason{Code: "X", Message: `"device":{"eid":"89049032000000000000000000000999"}`}}
	plain := ev.AppendJSON(nil)
	indented, err := json.MarshalIndent(ev, "", "  ")
	require.NoError(t, err)
	iccidOnly := ev
	iccidOnly.Device = device.Set{ICCID: "89148000000000000201"}
	eidLast := ev
	eidLast.Device = device.Set{ICCID: "89148000000000000201", EID: "89049032000000000000000000000201"}
	marshaled, err := json.Marshal(eidLast)
	require.NoError(t, err)
	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"as the services write it", plain, "89049032000000000000000000000201"},
		{"indented", indented, "89049032000000000000000000000201"},
		{"no eid", iccidOnly.AppendJSON(nil), ""},
		{"encoding/json", marshaled, "89049032000000000000000000000201"},
		{"device first, eid not first", []byte(`{"device":{"iccid":"1","eid":"2"},"status":"accepted"}`), "2"},
		{"an escaped eid", []byte(`{"device":{"eid":"8\u00390"}}`), "890"},
		{"a repeated device key", []byte(`{"device":{"eid":"1"},"device":{"eid":"2"}}`), "2"},
		{"a nested value", []byte(`{"device":{"x":{"eid":"1"},"eid":"2"}}`), "2"},
		{"eid not a string", []byte(`{"device":{"eid":7}}`), ""},
		{"spaces around the colon", []byte(`{"device":{"eid" : "3"}}`), "3"},
		{"not JSON", []byte(`{"device":{"eid":"4"`), ""},
		{"no device", []byte(`{"eid":"5"}`), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.want, decodedEID(t, tt.data), "the test's own expectation")
			require.Equal(t, tt.want, broker.EventEID(tt.data))
		})
	}
}

func BenchmarkEventEID(b *testing.B) {
	ev := status.Event{EventID: "0bbb71dee81f56c3080839ddde33071d", CommandID: "esimctl-affeda3088edee70-0000", RequestID: "6451c6d2-effa-475b-8940-099e9d98a904",
		Action: "disable", AccountName: "0000123456-00001", Device: device.Set{EID: "89049032000000000000000000000201", ICCID: "89148000000000000202", IMEI: "358742152308308"},
		Status: status.Succeeded, Final: true, Profile: &status.Profile{State: "Active", ProfileStatus: "disable", ServicePlan: "RP4235311", EuiccStatus: "EXECUTED_SUCCESS"},
		CallbackCount: 1, MaxCallbackThreshold: 4, OccurredAt: time.Now()}
	data := ev.AppendJSON(nil)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if broker.EventEID(data) == "" {
			b.Fatal("no eid")
		}
	}
}
