package callback_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/callback"
	"github.com/esim-pipeline/thingspace-esim/internal/device"
	"github.com/esim-pipeline/thingspace-esim/internal/status"
)

// ingestConns lists the client ids of the service's NATS connections as the
// server sees them: a connection that dropped and came back has a new id.
func ingestConns(t *testing.T, s *stack) []uint64 {
	t.Helper()
	cz, err := s.ns.Inner().Connz(&server.ConnzOptions{})
	require.NoError(t, err)
	var ids []uint64
	for _, c := range cz.Conns {
		if strings.HasPrefix(c.Name, callback.ConnectionName) {
			ids = append(ids, c.Cid)
		}
	}
	return ids
}

// rawCallback is a callback body with the given requestId and identifiers.
func rawCallback(requestID string, ids ...[2]string) []byte {
	var devs []map[string]string
	for _, id := range ids {
		devs = append(devs, map[string]string{"kind": id[0], "id": id[1]})
	}
	b, _ := json.Marshal(map[string]any{"requestId": requestID, "status": "Success", "deviceIds": devs,
		"username": testUser, "password": testPass})
	return b
}

// TestValuesThatWouldBecomeSubjectsOrKeysAreCheckedBeforeNATS sends
// authenticated callbacks whose requestId (a KV key) or device identifiers
// (subject tokens) are long or carry what NATS gives a meaning to. Each is
// answered 400 and kept as one dead letter without its credentials; the
// service's NATS connections stay the same ones throughout, and a valid
// callback sent after each still becomes its event.
func TestValuesThatWouldBecomeSubjectsOrKeysAreCheckedBeforeNATS(t *testing.T) {
	s := startStack(t, func(c *callback.Config) { c.CorrelationGrace = 100 * time.Millisecond })
	conns := ingestConns(t, s)
	require.Len(t, conns, 3, "the intake's, the fan-out's and the EID index's connections")
	iccid := [2]string{"iccid", "89148000000840784401"}
	long := strings.Repeat("7", 5000)
	tests := []struct {
		name string
		body []byte
		want string
	}{
		{name: "request_id_of_5000_characters", body: rawCallback(strings.Repeat("r", 5000), iccid), want: "requestId"},
		{name: "request_id_of_65_characters", body: rawCallback(strings.Repeat("r", 65), iccid), want: "requestId"},
		{name: "request_id_with_a_dot", body: rawCallback("req.a", iccid), want: "requestId"},
		{name: "request_id_with_a_star", body: rawCallback("req*", iccid), want: "requestId"},
		{name: "request_id_with_a_greater_than", body: rawCallback("req>", iccid), want: "requestId"},
		{name: "request_id_with_a_space_inside", body: rawCallback("req 1", iccid), want: "requestId"},
		{name: "request_id_with_a_nul", body: rawCallback("req\x00", iccid), want: "requestId"},
		{name: "request_id_of_5000_characters_with_wildcards", body: rawCallback(strings.Repeat(".*> \x00", 1000), iccid), want: "requestId"},
		{name: "iccid_of_5000_digits", body: rawCallback("req-long-iccid", [2]string{"iccid", long}), want: "iccid"},
		{name: "eid_of_5000_digits", body: rawCallback("req-long-eid", [2]string{"eid", long}), want: "eid"},
		{name: "iccid_with_a_dot", body: rawCallback("req-dot", [2]string{"ICCID", "8914800000.840784401"}), want: "iccid"},
		{name: "eid_with_wildcards", body: rawCallback("req-wild", [2]string{"eid", "8904903200000000000000000000*>"}), want: "eid"},
		{name: "imei_with_a_nul", body: rawCallback("req-nul", iccid, [2]string{"imei", "35693803564380\x00"}), want: "imei"},
		{name: "mdn_of_5000_characters", body: rawCallback("req-mdn", iccid, [2]string{"mdn", strings.Repeat("> ", 2500)}), want: "mdn"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := len(s.messages(broker.DeadLetterStream, broker.DeadLetterCallbacks))
			code, answer := s.post(tc.body, "", "")
			require.Equal(t, http.StatusBadRequest, code, answer)
			require.Contains(t, answer, tc.want)
			require.Less(t, len(answer), 400, "the answer quotes a short part of the value")
			dl := s.messages(broker.DeadLetterStream, broker.DeadLetterCallbacks)
			require.Len(t, dl, before+1)
			last := dl[len(dl)-1]
			require.Contains(t, last.Header.Get(broker.HeaderDeadletterReason), tc.want)
			require.Empty(t, secretsIn(last.Data), "credentials in the dead letter: %.200s", last.Data)

			ok := "req-after-hostile-" + string(rune('a'+i))
			s.postOK(callbackBody(cbOpts{requestID: ok, iccid: "89148000000840784402"}))
			s.waitEvents(ok, 1)
		})
	}
	require.Equal(t, conns, ingestConns(t, s), "a NATS connection of the service dropped")
	require.NotContains(t, s.logs.String(), "nats disconnected")
	require.Zero(t, s.streamCount(broker.CallbackStream, broker.CallbackSubject)-len(tests),
		"only the valid callbacks were stored")
	s.settle()
	for _, e := range s.events() {
		require.Less(t, len(e.Subject), 100, "event subject %.120s", e.Subject)
	}
}

// TestAStoredMessageWithHostileValuesIsDeadLetteredNotRetried: a raw
// message that did not come through this intake (another writer, an older
// version) is checked again by the fan-out; one whose values cannot become
// a subject goes to the dead letters once instead of being redelivered for
// ever, and so does one whose batch header claims a billion callbacks.
func TestAStoredMessageWithHostileValuesIsDeadLetteredNotRetried(t *testing.T) {
	s := startStack(t, nil)
	conns := ingestConns(t, s)
	ctx := context.Background()
	_, err := s.js.Publish(ctx, broker.CallbackSubject, rawCallback(strings.Repeat(">", 5000), [2]string{"iccid", "89148000000840784403"}))
	require.NoError(t, err)
	m := nats.NewMsg(broker.CallbackSubject)
	m.Header.Set(callback.HeaderBatch, "1000000000")
	m.Data = []byte{1, 'x', 1, 'y', 2, '{', '}'}
	_, err = s.js.PublishMsg(ctx, m)
	require.NoError(t, err)
	s.settle()
	dl := s.messages(broker.DeadLetterStream, broker.DeadLetterCallbacks)
	require.Len(t, dl, 2)
	reasons := dl[0].Header.Get(broker.HeaderDeadletterReason) + "\n" + dl[1].Header.Get(broker.HeaderDeadletterReason)
	assert.Contains(t, reasons, "requestId")
	assert.Contains(t, reasons, "out of range")
	require.Equal(t, conns, ingestConns(t, s))
}

// TestCredentialsAreRemovedBeforeTheCallbackIsStored: what the callback
// stream, the dead letters and a replay hold carries neither the echoed
// username/password nor any deviceCredential, and a replay of the stored
// callbacks makes the same events, same eventIds.
func TestCredentialsAreRemovedBeforeTheCallbackIsStored(t *testing.T) {
	s := startStack(t, func(c *callback.Config) { c.CorrelationGrace = 100 * time.Millisecond })
	iccid := "89148000000840784404"
	putRecord(t, s, "req-strip", "enable", "cmd-strip", device.Set{ICCID: iccid})
	body := callbackBody(cbOpts{requestID: "req-strip", iccid: iccid, user: testUser, pass: testPass})
	code, answer := s.post(body, "", "") // authenticated by the body
	require.Equal(t, http.StatusOK, code, answer)
	// Callbacks that arrive together are stored together: each keeps none
	// of its credentials in the group either.
	codes := make(chan int, 16)
	for i := range 16 {
		b := callbackBody(cbOpts{requestID: "req-strip", iccid: fmt.Sprintf("891480000008407844%02d", 10+i), user: testUser, pass: testPass})
		go func() {
			resp, err := http.Post(s.url("/callbacks"), "application/json", bytes.NewReader(b))
			if err != nil {
				codes <- 0
				return
			}
			_ = resp.Body.Close()
			codes <- resp.StatusCode
		}()
	}
	for range 16 {
		require.Equal(t, http.StatusOK, <-codes)
	}
	first := s.waitEvents("req-strip", 17)
	// An unparseable but authenticated body, credentials included.
	code, _ = s.post([]byte(`{"username":"`+testUser+`","password":"`+testPass+`","requestId":"req-bad","deviceResponse":{"deviceProfileResponse":{"deviceCredential":{"username":"2022326360@vzw4g.com","password":"dev-secret-99"}}}}`), "", "")
	require.Equal(t, http.StatusBadRequest, code)
	s.settle()

	raw := s.messages(broker.CallbackStream, broker.CallbackSubject)
	require.NotEmpty(t, raw)
	for _, m := range raw {
		require.Empty(t, secretsIn(m.Data), "credentials in the callback stream: %.300s", m.Data)
		require.True(t, bytes.Contains(m.Data, []byte("req-strip")), "the callback itself is kept")
	}
	for _, m := range s.messages(broker.DeadLetterStream, "") {
		require.Empty(t, secretsIn(m.Data), "credentials in a dead letter: %.300s", m.Data)
		require.Empty(t, secretsIn([]byte(m.Header.Get(broker.HeaderDeadletterReason))))
	}

	// A replay of the stored callbacks makes the same events: every one it
	// would publish is already on its subject with its eventId.
	stats, err := callback.Replay(context.Background(), s.js, callback.ReplayOptions{DryRun: true}, zerolog.Nop())
	require.NoError(t, err)
	require.Equal(t, callback.ReplayStats{Callbacks: 17, Existing: 17, Index: callback.IndexStats{Events: 17, Written: 17}}, stats,
		"and each event names its EID under its ICCID: 17 index keys it would write")
	subjects := make([]string, len(first))
	for i, ev := range first {
		subjects[i] = ev.Subject
	}
	require.Contains(t, subjects, status.Subject("enable", device.Set{ICCID: iccid}), "events are stored in no set order")
}

// TestAnUnauthenticatedRequestIsRefusedWhateverItsBody: credentials are
// looked for at the top level of the body only, and a body that is not a
// callback at all, or hides the right password deeper, is refused 401 and
// stores nothing.
func TestAnUnauthenticatedRequestIsRefusedWhateverItsBody(t *testing.T) {
	s := startStack(t, nil)
	nested := strings.Repeat("[", 400000) + strings.Repeat("]", 400000)
	for _, tc := range []struct{ name, body string }{
		{name: "nested_arrays_of_almost_a_mebibyte", body: nested},
		{name: "credentials_hidden_one_level_down", body: `{"x":{"username":"` + testUser + `","password":"` + testPass + `"},"requestId":"r","status":"Success","deviceIds":[{"kind":"iccid","id":"89148000000840784405"}]}`},
		{name: "password_as_a_number", body: `{"username":"` + testUser + `","password":1,"requestId":"r"}`},
		{name: "only_the_user_name", body: `{"username":"` + testUser + `","requestId":"r"}`},
		{name: "right_user_wrong_password_first", body: `{"username":"` + testUser + `","password":"no","password":"` + testPass + `"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _ := s.post([]byte(tc.body), "", "")
			require.Equal(t, http.StatusUnauthorized, code)
		})
	}
	require.Zero(t, s.streamCount(broker.CallbackStream, broker.CallbackSubject))
	require.Zero(t, s.streamCount(broker.DeadLetterStream, broker.DeadLetterCallbacks))
	// Escaped and differently cased member names are found, as a decoder would.
	code, answer := s.post([]byte(`{"UserName":"`+testUser+`","pass\u0077ord":"`+testPass+`","requestId":"req-escaped","status":"Success","deviceIds":[{"kind":"iccid","id":"89148000000840784405"}]}`), "", "")
	require.Equal(t, http.StatusOK, code, answer)
	for _, m := range s.messages(broker.CallbackStream, broker.CallbackSubject) {
		require.NotContains(t, string(m.Data), testPass)
		require.NotContains(t, string(m.Data), testUser)
	}
}
