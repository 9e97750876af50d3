package callback_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/callback"
	"github.com/esim-pipeline/thingspace-esim/internal/config"
	"github.com/esim-pipeline/thingspace-esim/internal/correlation"
	"github.com/esim-pipeline/thingspace-esim/internal/device"
	"github.com/esim-pipeline/thingspace-esim/internal/status"
	"github.com/esim-pipeline/thingspace-esim/internal/thingspace"
	"github.com/esim-pipeline/thingspace-esim/schemas"
)

const eventSchema = "status-event.schema.json"

// secretsIn lists credentials found in b.
func secretsIn(b []byte, extra ...string) []string {
	var found []string
	for _, s := range append([]string{testPass, testUser, `"password"`, `"username"`, "deviceCredential",
		"2022326360@vzw4g.com", "dev-secret-99"}, extra...) {
		if bytes.Contains(b, []byte(s)) {
			found = append(found, s)
		}
	}
	return found
}

func putRecord(t *testing.T, s *stack, requestID, action, commandID string, d device.Set) {
	t.Helper()
	require.NoError(t, s.store.Put(context.Background(), &correlation.Record{
		RequestID: requestID, Action: action, AccountName: "0000123456-00001", SubmittedAt: time.Now().UTC(),
		Published: true, // as the dispatcher leaves it once the accepted events are stored
		Devices: []correlation.Entry{
			{CommandID: "other-command", Device: device.Set{ICCID: "89148000000000000001", EID: "89049032000000000000000000000001"}},
			{CommandID: commandID, Device: d},
		},
	}))
}

func TestEachSeedCallbackBecomesOneEventWithoutCredentials(t *testing.T) {
	tests := []struct {
		name    string
		seed    string
		auth    string // "basic" or "body"
		user    string
		pass    string
		device  device.Set // as the callback names it (union of both lists)
		profile status.Profile
		fill    bool // the page's example has placeholders for ids: fill them in
	}{
		{
			name: "disable_success_authenticated_by_body_credentials", seed: "disable", auth: "body", user: "user", pass: "user",
			device:  device.Set{IMEI: "666456789014008", EID: "666456789123456789123456784008", ICCID: "11245055053268336886", MDN: "2022326360"},
			profile: status.Profile{State: "Active", ProfileStatus: "disable", ServicePlan: "RP4235311", SmsrOid: "1.3.6.1.4.1.31746.1.500.200.101.5", EuiccStatus: "EXECUTED_SUCCESS", EuiccStatusCode: "1.2.365", EuiccStatusDesc: "EUICC device profile has been updated", IPAddress: "101.0.1.216"},
		},
		{
			name: "delete_success_with_trailing_comma", seed: "delete", auth: "basic", user: testUser, pass: testPass,
			device:  device.Set{IMEI: "666456789014008", EID: "666456789123456789123456784008", ICCID: "11245055053268336886", MDN: "2022326360"},
			profile: status.Profile{State: "Active", ProfileStatus: "delete", ServicePlan: "RP4235311", SmsrOid: "1.3.6.1.4.1.31746.1.500.200.101.5", EuiccStatus: "EXECUTED_SUCCESS", EuiccStatusCode: "1.2.365", EuiccStatusDesc: "EUICC device profile has been updated", IPAddress: "101.0.1.216"},
		},
		{
			name: "deactivate_success_in_upper_case", seed: "deactivate", auth: "basic", user: testUser, pass: testPass,
			device:  device.Set{ICCID: "89148000000840784270", IMEI: "356938035643809", EID: "89049032000000000000000000000270", MDN: "2022326360", MSISDN: "12022326360"},
			profile: status.Profile{State: "DEACTIVE", ServicePlan: "service plan name", ProfileStatus: "ENABLE", ProfileRole: "LOCAL"},
			fill:    true,
		},
		{
			name: "enable_success", seed: "enable", auth: "basic", user: testUser, pass: testPass,
			device: device.Set{IMEI: "666456789014008", EID: "666456789123456789123456784008", ICCID: "89148000000840784259", MDN: "2022326360"},
			profile: status.Profile{State: "Active", ProfileStatus: "enable", ServicePlan: "RP4235311", SmsrOid: "1.3.6.1.4.1.31746.1.500.200.101.5", EuiccStatus: "EXECUTED_SUCCESS", EuiccStatusCode: "1.2.365", EuiccStatusDesc: "EUICC device profile has been updated", IPAddress: "101.0.1.216",
				EuiccSubAddressUpdateStatus: "EXECUTED_SUCCESS", EuiccSubAddressUpdateStatusCode: "1", EuiccSubAddressUpdateStatusDesc: "SUCCESS: Address has been updated"},
		},
		{
			name: "suspend_success", seed: "suspend", auth: "basic", user: testUser, pass: testPass,
			device:  device.Set{ICCID: "89148000000840784270", IMEI: "356938035643809", EID: "89049032000000000000000000000270", MSISDN: "12022326360"},
			profile: status.Profile{State: "SUSPENDED", ProfileStatus: "ENABLE", ProfileRole: "LOCAL"},
			fill:    true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := startStack(t, func(c *callback.Config) { c.Username, c.Password = tc.user, config.NewSecret(tc.pass) })
			body := seed(t, tc.seed)
			if tc.fill {
				body = fillPlaceholders(body)
			}
			var cb struct {
				RequestID string `json:"requestId"`
			}
			require.NoError(t, json.Unmarshal(thingspace.StripTrailingCommas(body), &cb))
			commandID := "cmd-" + tc.seed
			// The record knows the device by ICCID and EID, as the dispatcher submitted it.
			putRecord(t, s, cb.RequestID, tc.seed, commandID, device.Set{ICCID: tc.device.ICCID, EID: tc.device.EID})

			before := time.Now().UTC()
			user, pass := tc.user, tc.pass
			if tc.auth == "body" {
				user, pass = "", ""
			}
			code, answer := s.post(body, user, pass)
			require.Equal(t, http.StatusOK, code, answer)
			require.JSONEq(t, `{"status":"stored"}`, answer)

			s.waitEvents(cb.RequestID, 1)
			s.settle()
			got := s.eventsOf(cb.RequestID)
			require.Len(t, got, 1, "one callback, one event")
			e := got[0]
			ev := e.Event

			assert.Equal(t, status.RequestEventID(status.Succeeded, cb.RequestID, tc.device), ev.EventID)
			assert.Equal(t, ev.EventID, e.MsgID, "Nats-Msg-Id is the eventId")
			assert.Equal(t, "thingspace.profile.status."+tc.seed+"."+status.Token(tc.device.ICCID), e.Subject)
			assert.Equal(t, commandID, ev.CommandID)
			assert.Equal(t, cb.RequestID, ev.RequestID)
			assert.Equal(t, tc.seed, ev.Action)
			assert.Equal(t, "0000123456-00001", ev.AccountName)
			assert.Equal(t, tc.device, ev.Device)
			assert.Equal(t, status.Succeeded, ev.Status)
			assert.True(t, ev.Final)
			assert.Nil(t, ev.Reason)
			require.NotNil(t, ev.Profile)
			assert.Equal(t, tc.profile, *ev.Profile)
			assert.Equal(t, 1, ev.CallbackCount)
			assert.Equal(t, 4, ev.MaxCallbackThreshold)
			assert.Equal(t, time.UTC, ev.OccurredAt.Location())
			assert.False(t, ev.OccurredAt.Before(before.Add(-time.Second)), "occurredAt %s is the receipt time", ev.OccurredAt)
			assert.NoError(t, schemas.Validate(eventSchema, e.Raw))

			extra := []string{}
			if tc.auth == "body" {
				extra = append(extra, `"`+tc.pass+`"`)
			}
			assert.Empty(t, secretsIn(e.Raw, extra...), "credentials in the event: %s", e.Raw)
			assert.Empty(t, secretsIn([]byte(s.logs.String()), extra...), "credentials in the logs")
		})
	}
}

// fillPlaceholders puts identifiers of the documented formats where an
// API page's example names the format instead ("20-digit ICCID").
func fillPlaceholders(b []byte) []byte {
	return []byte(strings.NewReplacer(
		"20-digit ICCID", "89148000000840784270",
		"15-digit IMEI", "356938035643809",
		"32-digit EID", "89049032000000000000000000000270",
		"1+ 10-digit phone number", "12022326360",
		"10-digit phone number", "2022326360",
	).Replace(string(b)))
}

// TestASeedWithPlaceholderIdentifiersIsUnparseable: the deactivate and
// suspend pages' examples name the formats ("20-digit ICCID") where the
// identifiers go; sent as they are, they break those formats and are kept
// as dead letters, never made subjects.
func TestASeedWithPlaceholderIdentifiersIsUnparseable(t *testing.T) {
	s := startStack(t, nil)
	for _, name := range []string{"deactivate", "suspend"} {
		code, answer := s.post(seed(t, name), testUser, testPass)
		require.Equal(t, http.StatusBadRequest, code, answer)
		require.Contains(t, answer, "breaks the")
	}
	require.Len(t, s.messages(broker.DeadLetterStream, broker.DeadLetterCallbacks), 2)
	require.Zero(t, s.streamCount(broker.CallbackStream, broker.CallbackSubject))
}

func TestResentCallbackGivesOneEvent(t *testing.T) {
	s := startStack(t, nil)
	iccid := "89148000000840784259"
	putRecord(t, s, "req-resend", "enable", "cmd-resend", device.Set{ICCID: iccid, EID: "666456789123456789123456784008"})

	for count := 1; count <= 3; count++ {
		s.postOK(callbackBody(cbOpts{requestID: "req-resend", iccid: iccid, count: count}))
	}
	s.waitEvents("req-resend", 1)
	s.settle()
	got := s.eventsOf("req-resend")
	require.Len(t, got, 1)
	assert.Equal(t, 1, got[0].Event.CallbackCount, "the first attempt is the event")
	assert.Equal(t, "cmd-resend", got[0].Event.CommandID)
}

func TestRedeliveredRawCallbacksGiveOneEvent(t *testing.T) {
	// Copies that reach the callback stream without the intake's
	// de-duplication (a replay, a second ingest) still give one event.
	s := startStack(t, nil)
	iccid := "89148000000840784260"
	putRecord(t, s, "req-raw", "enable", "cmd-raw", device.Set{ICCID: iccid})
	for count := 1; count <= 3; count++ {
		_, err := s.js.Publish(context.Background(), broker.CallbackSubject, callbackBody(cbOpts{requestID: "req-raw", iccid: iccid, count: count}))
		require.NoError(t, err)
	}
	require.Equal(t, 3, s.streamCount(broker.CallbackStream, broker.CallbackSubject))
	s.waitEvents("req-raw", 1)
	s.settle()
	require.Len(t, s.eventsOf("req-raw"), 1)
}

func TestWarningThenSuccessGivesPendingThenSucceeded(t *testing.T) {
	s := startStack(t, nil)
	iccid := "89148000000840784261"
	putRecord(t, s, "req-warn", "enable", "cmd-warn", device.Set{ICCID: iccid})

	s.postOK(callbackBody(cbOpts{requestID: "req-warn", iccid: iccid, status: "warning"}))
	first := s.waitEvents("req-warn", 1)
	require.Equal(t, status.Pending, first[0].Event.Status)
	assert.False(t, first[0].Event.Final)
	assert.NoError(t, schemas.Validate(eventSchema, first[0].Raw))

	s.postOK(callbackBody(cbOpts{requestID: "req-warn", iccid: iccid, status: "Success", count: 2}))
	s.waitEvents("req-warn", 2)
	s.settle()
	got := s.eventsOf("req-warn")
	require.Len(t, got, 2)
	assert.Equal(t, status.Pending, got[0].Event.Status)
	assert.Equal(t, status.Succeeded, got[1].Event.Status)
	assert.True(t, got[1].Event.Final)
	assert.Equal(t, "cmd-warn", got[1].Event.CommandID)
	assert.NotEqual(t, got[0].Event.EventID, got[1].Event.EventID)
}

func TestLateWarningDoesNotOverrideTheFinalEvent(t *testing.T) {
	s := startStack(t, nil)
	iccid := "89148000000840784262"
	putRecord(t, s, "req-late", "enable", "cmd-late", device.Set{ICCID: iccid})

	s.postOK(callbackBody(cbOpts{requestID: "req-late", iccid: iccid, status: "SUCCESS"}))
	s.waitEvents("req-late", 1)
	s.postOK(callbackBody(cbOpts{requestID: "req-late", iccid: iccid, status: "Warning"}))
	s.settle()
	got := s.eventsOf("req-late")
	require.Len(t, got, 1, "a warning handled after the request settled the device is stale")
	assert.Equal(t, status.Succeeded, got[0].Event.Status)
}

func TestFailedCallbackCarriesTheFault(t *testing.T) {
	s := startStack(t, nil)
	iccid := "89148000000840784263"
	putRecord(t, s, "req-fail", "disable", "cmd-fail", device.Set{ICCID: iccid})

	s.postOK(callbackBody(cbOpts{requestID: "req-fail", iccid: iccid, status: "failed", fault: true}))
	got := s.waitEvents("req-fail", 1)
	ev := got[0].Event
	assert.Equal(t, status.Failed, ev.Status)
	assert.True(t, ev.Final)
	require.NotNil(t, ev.Reason)
	assert.Equal(t, status.Reason{Code: "SMSR.DEVICE.UNREACHABLE", Message: "device did not answer"}, *ev.Reason)
	assert.Equal(t, "disable", ev.Action)
	assert.Equal(t, "thingspace.profile.status.disable."+iccid, got[0].Subject)
	assert.NoError(t, schemas.Validate(eventSchema, got[0].Raw))
}

func TestRejectedRequestsStoreNothing(t *testing.T) {
	s := startStack(t, nil)
	valid := callbackBody(cbOpts{requestID: "req-rejected", iccid: "89148000000840784264"})
	garbage := []byte(`{"requestId": "req-garbage", "status": "Success", "deviceIds": [ {"kind": "iccid"`)

	tests := []struct {
		name       string
		body       []byte
		user, pass string
		want       int
	}{
		{name: "no_credentials", body: valid, want: http.StatusUnauthorized},
		{name: "wrong_basic_password", body: valid, user: testUser, pass: "nope", want: http.StatusUnauthorized},
		{name: "wrong_basic_user", body: valid, user: "someone", pass: testPass, want: http.StatusUnauthorized},
		{name: "wrong_body_credentials", body: callbackBody(cbOpts{requestID: "req-rejected", iccid: "89148000000840784264", user: testUser, pass: "nope"}), want: http.StatusUnauthorized},
		{name: "garbage_without_credentials", body: garbage, want: http.StatusUnauthorized},
		{name: "two_mebibytes", body: bytes.Repeat([]byte("a"), 2<<20), user: testUser, pass: testPass, want: http.StatusRequestEntityTooLarge},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, answer := s.post(tc.body, tc.user, tc.pass)
			assert.Equal(t, tc.want, code, answer)
		})
	}
	t.Run("two_mebibytes_without_length", func(t *testing.T) {
		req, err := http.NewRequest(http.MethodPost, s.url("/callbacks"), struct{ *bytes.Reader }{bytes.NewReader(bytes.Repeat([]byte(" "), 2<<20))})
		require.NoError(t, err)
		req.SetBasicAuth(testUser, testPass)
		resp, err := s.client.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode)
	})

	t.Run("authenticated_garbage_is_dead_lettered", func(t *testing.T) {
		code, answer := s.post(garbage, testUser, testPass)
		require.Equal(t, http.StatusBadRequest, code, answer)
		dl := s.messages(broker.DeadLetterStream, broker.DeadLetterCallbacks)
		require.Len(t, dl, 1)
		assert.Equal(t, garbage, dl[0].Data, "the original bytes")
		assert.NotEmpty(t, dl[0].Header.Get(broker.HeaderDeadletterReason))
		assert.NotContains(t, dl[0].Header.Get(broker.HeaderDeadletterReason), "\n")
		assert.Equal(t, broker.CallbackSubject, dl[0].Header.Get(broker.HeaderDeadletterSubject))
		assert.Empty(t, dl[0].Header.Get(nats.MsgIdHdr))
	})

	assert.Zero(t, s.streamCount(broker.CallbackStream, broker.CallbackSubject), "a refused callback is never stored")
	s.settle()
	assert.Empty(t, s.events(), "and never becomes an event")
	assert.NotContains(t, s.logs.String(), testPass)
	assert.NotContains(t, s.logs.String(), "req-garbage\", \"status", "bodies are not logged")
}

func TestWithoutConfiguredCredentialsAnyCallbackIsTaken(t *testing.T) {
	s := startStack(t, func(c *callback.Config) { c.Username, c.Password = "", config.Secret{} })
	putRecord(t, s, "req-open", "enable", "cmd-open", device.Set{ICCID: "89148000000840784265"})
	code, answer := s.post(callbackBody(cbOpts{requestID: "req-open", iccid: "89148000000840784265"}), "", "")
	require.Equal(t, http.StatusOK, code, answer)
	s.waitEvents("req-open", 1)
}

func TestStoppedNATSAnswers503AndLosesNothing(t *testing.T) {
	s := startStack(t, func(c *callback.Config) { c.CorrelationGrace = 100 * time.Millisecond })
	var stored []string // requestIds answered 200
	post := func(id string) int {
		code, _ := s.post(callbackBody(cbOpts{requestID: id, iccid: "89148000000840784266"}), testUser, testPass)
		require.Contains(t, []int{http.StatusOK, http.StatusServiceUnavailable}, code)
		if code == http.StatusOK {
			stored = append(stored, id)
		}
		return code
	}
	require.Equal(t, http.StatusOK, post("req-before"))

	s.ns.Shutdown()
	n := 0
	require.Eventually(t, func() bool {
		n++
		return post("req-down-"+strings.Repeat("x", n%3)+strconv.FormatInt(time.Now().UnixNano(), 10)) == http.StatusServiceUnavailable
	}, 20*time.Second, 10*time.Millisecond, "POST /callbacks must answer 503 while NATS is down")
	code, _ := s.get(s.url("/readyz"))
	assert.Equal(t, http.StatusServiceUnavailable, code)

	s.ns.Start()
	require.Eventually(t, func() bool { return post("req-after-"+strconv.FormatInt(time.Now().UnixNano(), 10)) == http.StatusOK },
		20*time.Second, 20*time.Millisecond, "POST /callbacks must store again after NATS is back")

	for _, id := range stored {
		s.waitEvents(id, 1)
	}
	s.settle()
	raw := s.messages(broker.CallbackStream, broker.CallbackSubject)
	assert.Len(t, raw, len(stored), "every callback answered 200 is stored, nothing else")
}

func TestCallbackCarriesTheCommandOfItsRecord(t *testing.T) {
	s := startStack(t, nil)
	iccid := "89148000000840784267"
	putRecord(t, s, "req-known", "suspend", "cmd-known", device.Set{ICCID: iccid, EID: "89049032000000000000000000000267"})
	s.postOK(callbackBody(cbOpts{requestID: "req-known", iccid: iccid, eid: "89049032000000000000000000000267"}))
	ev := s.waitEvents("req-known", 1)[0].Event
	assert.Equal(t, "cmd-known", ev.CommandID)
	assert.Equal(t, "suspend", ev.Action, "the record's action wins over the guess from profileStatus")
	assert.Equal(t, "0000123456-00001", ev.AccountName)
}

func TestRecordWrittenAfterTheCallbackStillCorrelates(t *testing.T) {
	// Callbacks can beat the dispatcher's record: within the grace the
	// callback waits for it.
	s := startStack(t, nil) // grace 30s: the event cannot go out uncorrelated during this test
	iccid := "89148000000840784268"
	s.postOK(callbackBody(cbOpts{requestID: "req-early", iccid: iccid}))
	putRecord(t, s, "req-early", "enable", "cmd-early", device.Set{ICCID: iccid})
	ev := s.waitEvents("req-early", 1)[0].Event
	assert.Equal(t, "cmd-early", ev.CommandID)
}

func TestUnknownRequestBecomesAnEventAfterTheGrace(t *testing.T) {
	s := startStack(t, func(c *callback.Config) { c.CorrelationGrace = 300 * time.Millisecond })
	iccid := "89148000000840784269"
	s.postOK(callbackBody(cbOpts{requestID: "req-unknown", iccid: iccid}))
	got := s.waitEvents("req-unknown", 1)
	ev := got[0].Event
	assert.Empty(t, ev.CommandID)
	assert.Empty(t, ev.AccountName)
	assert.Equal(t, "enable", ev.Action, "guessed from profileStatus")
	assert.Equal(t, status.Succeeded, ev.Status)
	assert.GreaterOrEqual(t, time.Since(ev.OccurredAt), 300*time.Millisecond, "published only after the grace")
	assert.NoError(t, schemas.Validate(eventSchema, got[0].Raw))
	assert.Contains(t, scrape(t, s), "esim_ingest_events_uncorrelated_total 1")
}

func TestUnparseableStoredCallbackIsDeadLettered(t *testing.T) {
	s := startStack(t, nil)
	junk := []byte(`{"not": "a callback"}`)
	msg := nats.NewMsg(broker.CallbackSubject)
	msg.Data = junk
	msg.Header.Set("Trace-Id", "t-1")
	_, err := s.js.PublishMsg(context.Background(), msg)
	require.NoError(t, err)
	var dl []jetstream.RawStreamMsg
	require.Eventually(t, func() bool {
		dl = s.messages(broker.DeadLetterStream, broker.DeadLetterCallbacks)
		return len(dl) == 1
	}, 20*time.Second, 20*time.Millisecond)
	assert.Equal(t, junk, dl[0].Data)
	assert.Contains(t, dl[0].Header.Get(broker.HeaderDeadletterReason), "requestId")
	assert.Equal(t, broker.CallbackSubject, dl[0].Header.Get(broker.HeaderDeadletterSubject))
	assert.Equal(t, "t-1", dl[0].Header.Get("Trace-Id"), "original headers kept")
	s.settle()
	assert.Empty(t, s.events())
	metrics := scrape(t, s)
	assert.Contains(t, metrics, `esim_ingest_dead_letters_total{source="fanout"} 1`)
	assert.Contains(t, metrics, `esim_ingest_deadletter_messages{subject="thingspace.profile.deadletter.callbacks"} 1`,
		"what the dead-letter stream holds, per subject")
	assert.Contains(t, metrics, `esim_ingest_deadletter_messages{subject="thingspace.profile.deadletter.commands"} 0`)
}

func TestDeviceState(t *testing.T) {
	s := startStack(t, nil)
	iccid := "89148000000840784270"
	putRecord(t, s, "req-dev-1", "enable", "cmd-1", device.Set{ICCID: iccid})
	putRecord(t, s, "req-dev-2", "disable", "cmd-2", device.Set{ICCID: iccid})
	s.postOK(callbackBody(cbOpts{requestID: "req-dev-1", iccid: iccid}))
	enable := s.waitEvents("req-dev-1", 1)[0]
	s.postOK(callbackBody(cbOpts{requestID: "req-dev-2", iccid: iccid, status: "warning"}))
	disable := s.waitEvents("req-dev-2", 1)[0]

	code, body := s.get(s.admin("/devices/" + iccid))
	require.Equal(t, http.StatusOK, code, string(body))
	var state struct {
		Latest  status.Event            `json:"latest"`
		Actions map[string]status.Event `json:"actions"`
	}
	require.NoError(t, json.Unmarshal(body, &state))
	assert.Equal(t, disable.Event.EventID, state.Latest.EventID)
	require.Len(t, state.Actions, 2)
	assert.Equal(t, enable.Event.EventID, state.Actions["enable"].EventID)
	assert.Equal(t, status.Succeeded, state.Actions["enable"].Status)
	assert.Equal(t, disable.Event.EventID, state.Actions["disable"].EventID)
	assert.Equal(t, status.Pending, state.Actions["disable"].Status)

	code, body = s.get(s.admin("/devices/89148000000000009999"))
	assert.Equal(t, http.StatusNotFound, code)
	var notFound map[string]string
	require.NoError(t, json.Unmarshal(body, &notFound), string(body))
	assert.NotEmpty(t, notFound["error"])

	code, _ = s.get(s.url("/devices/" + iccid))
	assert.Equal(t, http.StatusNotFound, code, "device state is never on the callback port")
}

func TestListenersServeHealthAndMetricsWhereTheContractSays(t *testing.T) {
	s := startStack(t, nil)
	for _, u := range []string{s.url("/healthz"), s.url("/readyz"), s.admin("/healthz"), s.admin("/readyz")} {
		code, body := s.get(u)
		assert.Equal(t, http.StatusOK, code, "%s: %s", u, body)
	}
	code, _ := s.get(s.url("/metrics"))
	assert.Equal(t, http.StatusNotFound, code, "metrics are never on the callback port")

	putRecord(t, s, "req-metrics", "enable", "cmd-metrics", device.Set{ICCID: "89148000000840784271"})
	s.postOK(callbackBody(cbOpts{requestID: "req-metrics", iccid: "89148000000840784271"}))
	s.post(callbackBody(cbOpts{requestID: "req-metrics", iccid: "89148000000840784271"}), "", "")
	s.waitEvents("req-metrics", 1)
	// A final event is counted once its store's ack came back, which may be
	// after the event is seen in the stream.
	var m string
	require.Eventually(t, func() bool {
		m = scrape(t, s)
		return strings.Contains(m, "esim_ingest_fanout_lag_seconds_count 1")
	}, 10*time.Second, 20*time.Millisecond)
	for _, want := range []string{
		`esim_ingest_callbacks_total{code="200"} 1`,
		`esim_ingest_callbacks_total{code="401"} 1`,
		`esim_ingest_events_published_total{status="succeeded"} 1`,
		"esim_ingest_parse_failures_total 0",
		"esim_ingest_fanout_lag_seconds_count 1",
		"esim_ingest_fanout_pending_messages",
		"esim_ingest_fanout_ack_pending_messages",
		`esim_ingest_dead_letters_total{source="intake"} 0`,
	} {
		assert.Contains(t, m, want)
	}
}

func scrape(t *testing.T, s *stack) string {
	t.Helper()
	code, body := s.get(s.admin("/metrics"))
	require.Equal(t, http.StatusOK, code)
	return string(body)
}

func TestACallbackWaitsForItsAcceptedEventsToBeStored(t *testing.T) {
	// The dispatcher writes the record, then the accepted events, then marks
	// the record published: a callback's event must not land before its
	// device's accepted event, so it waits for the mark.
	s := startStack(t, nil) // grace 30s
	iccid := "89148000000840784272"
	rec := &correlation.Record{RequestID: "req-unpublished", Action: "enable", AccountName: "0000123456-00001",
		SubmittedAt: time.Now().UTC(), Devices: []correlation.Entry{{CommandID: "cmd-unpublished", Device: device.Set{ICCID: iccid}}}}
	require.NoError(t, s.store.Put(context.Background(), rec))
	s.postOK(callbackBody(cbOpts{requestID: "req-unpublished", iccid: iccid}))
	// The fan-out has looked at the record and put the callback back.
	require.Eventually(t, func() bool {
		_, body := s.get(s.admin("/metrics"))
		return strings.Contains(string(body), `esim_ingest_fanout_retries_total{reason="record_pending"}`)
	}, 10*time.Second, 20*time.Millisecond)
	require.Empty(t, s.eventsOf("req-unpublished"), "no event before the accepted events are stored")

	rec.Published = true
	require.NoError(t, s.store.Put(context.Background(), rec))
	ev := s.waitEvents("req-unpublished", 1)[0].Event
	assert.Equal(t, "cmd-unpublished", ev.CommandID)
}

// Issue 19.11: a callback whose record existed but whose accepted events
// were not stored yet was fanned out once CORRELATION_GRACE had passed,
// landing before its device's accepted event.
func TestACallbackOutlivingTheGraceStillWaitsForItsAcceptedEvents(t *testing.T) {
	const grace = time.Second
	s := startStack(t, func(c *callback.Config) { c.CorrelationGrace = grace })
	iccid := "89148000000840784273"
	rec := &correlation.Record{RequestID: "req-slow-accepted", Action: "enable", AccountName: "0000123456-00001",
		SubmittedAt: time.Now().UTC(), Devices: []correlation.Entry{{CommandID: "cmd-slow", Device: device.Set{ICCID: iccid}}}}
	require.NoError(t, s.store.Put(context.Background(), rec))
	posted := time.Now()
	s.postOK(callbackBody(cbOpts{requestID: "req-slow-accepted", iccid: iccid}))
	require.Never(t, func() bool { return len(s.eventsOf("req-slow-accepted")) > 0 }, 2*grace, 50*time.Millisecond,
		"no event before the accepted events, the grace past")
	require.Greater(t, time.Since(posted), 2*grace)

	rec.Published = true
	require.NoError(t, s.store.Put(context.Background(), rec))
	ev := s.waitEvents("req-slow-accepted", 1)[0].Event
	assert.Equal(t, "cmd-slow", ev.CommandID)
	assert.Equal(t, "enable", ev.Action, "on the action's subject, not unknown")
}
