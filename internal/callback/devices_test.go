package callback_test

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/callback"
	"github.com/esim-pipeline/thingspace-esim/internal/device"
	"github.com/esim-pipeline/thingspace-esim/internal/status"
)

// deviceState is GET /devices/{id}'s answer.
type deviceState struct {
	Latest  status.Event            `json:"latest"`
	Actions map[string]status.Event `json:"actions"`
}

// publishEvent stores ev on its subject as the dispatcher does (Nats-Msg-Id
// = eventId) and returns its stream sequence.
func publishEvent(t *testing.T, js jetstream.JetStream, ev status.Event) uint64 {
	t.Helper()
	if ev.EventID == "" {
		ev.EventID = status.CommandEventID(ev.Status, ev.CommandID, ev.Action, ev.Device)
	}
	ev.Final = ev.Status.Final()
	if ev.OccurredAt.IsZero() {
		ev.OccurredAt = time.Now().UTC()
	}
	msg := nats.NewMsg(ev.Subject())
	msg.Data = ev.AppendJSON(nil)
	msg.Header.Set(nats.MsgIdHdr, ev.EventID)
	ack, err := js.PublishMsg(context.Background(), msg)
	require.NoError(t, err)
	return ack.Sequence
}

// deviceAt reads GET /devices/{id} until want accepts the answer.
func (s *stack) deviceAt(id string, want func(code int, st deviceState) bool) (int, deviceState) {
	s.t.Helper()
	var (
		code int
		st   deviceState
		body []byte
	)
	ok := assert.Eventually(s.t, func() bool {
		code, body = s.get(s.admin("/devices/" + id))
		st = deviceState{}
		if code == http.StatusOK {
			require.NoError(s.t, json.Unmarshal(body, &st), string(body))
		}
		return want(code, st)
	}, 20*time.Second, 20*time.Millisecond)
	require.True(s.t, ok, "GET /devices/%s answers %d %s", id, code, body)
	return code, st
}

// oneEUICC writes the history of one eUICC with two profiles, A and B, as
// the dispatcher and the ingest would: accepted events from the dispatcher,
// callback events from the ingest, a rejection from the dispatcher alone,
// a suspend of A by its ICCID alone, and another eUICC's event. It returns
// the eventIds an EID lookup must find, per action.
func oneEUICC(t *testing.T, s *stack, eid, iccidA, iccidB string) (want map[string]string, latest string) {
	t.Helper()
	a, b := device.Set{EID: eid, ICCID: iccidA}, device.Set{EID: eid, ICCID: iccidB}
	publishEvent(t, s.js, status.Event{CommandID: "cmd-eid-1", RequestID: "req-eid-1", Action: "enable", Device: a, Status: status.Accepted})
	putRecord(t, s, "req-eid-1", "enable", "cmd-eid-1", a)
	s.postOK(callbackBody(cbOpts{requestID: "req-eid-1", iccid: iccidA, eid: eid}))
	enabled := s.waitEvents("req-eid-1", 2)[1]
	require.Equal(t, status.Succeeded, enabled.Event.Status)

	putRecord(t, s, "req-eid-2", "disable", "cmd-eid-2", b)
	s.postOK(callbackBody(cbOpts{requestID: "req-eid-2", iccid: iccidB, eid: eid, status: "warning"}))
	pending := s.waitEvents("req-eid-2", 1)[0]
	require.Equal(t, status.Pending, pending.Event.Status)

	rejected := status.Event{CommandID: "cmd-eid-3", Action: "delete", Device: b, Status: status.Rejected,
		Reason: &status.Reason{Code: "INVALID_SMSR_OID", Message: "smsrOid is not the device's"}}
	rejected.EventID = status.CommandEventID(rejected.Status, rejected.CommandID, rejected.Action, rejected.Device)
	publishEvent(t, s.js, rejected)

	// After the EID's last event: a suspend names A's ICCID alone, and a
	// profile of another eUICC is enabled.
	publishEvent(t, s.js, status.Event{CommandID: "cmd-eid-4", RequestID: "req-eid-4", Action: "suspend", Device: device.Set{ICCID: iccidA}, Status: status.Accepted})
	publishEvent(t, s.js, status.Event{CommandID: "cmd-eid-5", RequestID: "req-eid-5", Action: "enable",
		Device: device.Set{EID: "89049032000000000000000000000999", ICCID: "89148000000000000999"}, Status: status.Accepted})
	return map[string]string{"enable": enabled.Event.EventID, "disable": pending.Event.EventID, "delete": rejected.EventID}, rejected.EventID
}

// An eUICC holds several profiles and its events are filed under each
// profile's ICCID: GET /devices/<EID> finds every event that named the
// EID, whichever ICCID its subject carries, the dispatcher's as well as the
// ingest's; an ICCID still finds what is filed under it.
func TestAnEIDFindsEveryEventThatNamedItWhicheverICCIDItIsFiledUnder(t *testing.T) {
	s := startStack(t, nil)
	const eid, iccidA, iccidB = "89049032000000000000000000000777", "89148000000000000771", "89148000000000000772"
	want, latest := oneEUICC(t, s, eid, iccidA, iccidB)

	_, st := s.deviceAt(eid, func(code int, st deviceState) bool { return code == http.StatusOK && len(st.Actions) == len(want) })
	assert.Equal(t, latest, st.Latest.EventID, "latest is the newest event that named the EID")
	for action, id := range want {
		assert.Equal(t, id, st.Actions[action].EventID, action)
		assert.Equal(t, eid, st.Actions[action].Device.EID, action)
	}
	assert.NotContains(t, st.Actions, "suspend", "the suspend named A's ICCID, not the EID")

	_, byICCID := s.deviceAt(iccidA, func(code int, st deviceState) bool { return code == http.StatusOK })
	require.Len(t, byICCID.Actions, 2, "an ICCID finds what is filed under it")
	assert.Equal(t, want["enable"], byICCID.Actions["enable"].EventID)
	assert.Equal(t, status.Accepted, byICCID.Actions["suspend"].Status)
	assert.Equal(t, "suspend", byICCID.Latest.Action)

	code, _ := s.deviceAt("89049032000000000000000000000123", func(code int, _ deviceState) bool { return code != http.StatusOK })
	assert.Equal(t, http.StatusNotFound, code, "an EID with no event")
}

// A device-level event filed under the EID itself (device_suspend's last
// callback, a device known by no ICCID) is one of the EID's too; and when
// the newest event of a profile's subject does not name the EID, the
// newest one that does is found.
func TestAnEIDFindsItsOwnSubjectsAndLooksPastAnotherDevicesEvent(t *testing.T) {
	s := startStack(t, nil)
	const eid, iccid = "89049032000000000000000000000778", "89148000000000000781"
	withICCID := device.Set{EID: eid, ICCID: iccid}
	first := status.Event{CommandID: "cmd-own-1", RequestID: "req-own-1", Action: "disable", Device: withICCID, Status: status.Accepted}
	publishEvent(t, s.js, first)
	publishEvent(t, s.js, status.Event{CommandID: "cmd-own-2", RequestID: "req-own-2", Action: "disable", Device: device.Set{ICCID: iccid}, Status: status.Accepted})
	own := status.Event{CommandID: "cmd-own-3", RequestID: "req-own-3", Action: "unknown", Device: device.Set{EID: eid}, Status: status.Succeeded}
	publishEvent(t, s.js, own)

	_, st := s.deviceAt(eid, func(code int, st deviceState) bool { return code == http.StatusOK && len(st.Actions) == 2 })
	assert.Equal(t, status.CommandEventID(first.Status, first.CommandID, first.Action, first.Device), st.Actions["disable"].EventID,
		"the newest disable event that named the EID, not the newer one naming the ICCID alone")
	assert.Equal(t, status.CommandEventID(own.Status, own.CommandID, own.Action, own.Device), st.Latest.EventID)
}

// The index is kept in a bucket of its own; lost, it is recreated empty at
// the next start and `callback-ingest replay` fills it again from the
// status stream.
func TestTheEIDLookupWorksAgainAfterAReplayIntoAFreshBucket(t *testing.T) {
	s := startStack(t, nil)
	const eid, iccidA, iccidB = "89049032000000000000000000000779", "89148000000000000791", "89148000000000000792"
	want, latest := oneEUICC(t, s, eid, iccidA, iccidB)
	s.deviceAt(eid, func(code int, st deviceState) bool { return code == http.StatusOK && len(st.Actions) == len(want) })
	s.stop()

	ctx := context.Background()
	require.NoError(t, s.js.DeleteKeyValue(ctx, broker.EIDBucket))
	again := startOn(t, s.ns, nil)
	_, err := again.js.KeyValue(ctx, broker.EIDBucket)
	require.NoError(t, err, "the ingest recreates the bucket at start")
	code, body := again.get(again.admin("/devices/" + eid))
	require.Equal(t, http.StatusNotFound, code, "the index is lost: every event of the EID is filed under an ICCID: %s", body)

	stats, err := callback.Replay(ctx, again.js, callback.ReplayOptions{}, zerolog.Nop())
	require.NoError(t, err)
	assert.Equal(t, 0, stats.Published, "every callback's event was there")
	assert.Positive(t, stats.Index.Written)

	_, st := again.deviceAt(eid, func(code int, st deviceState) bool { return code == http.StatusOK && len(st.Actions) == len(want) })
	assert.Equal(t, latest, st.Latest.EventID)
	for action, id := range want {
		assert.Equal(t, id, st.Actions[action].EventID, action)
	}
}
