package simulator_test

import (
	"encoding/base64"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/command"
	"github.com/esim-pipeline/thingspace-esim/internal/simulator"
	"github.com/esim-pipeline/thingspace-esim/internal/thingspace"
)

// These tests hold the simulator to what Verizon's generated SDK
// (github.com/sdks-io/verizon-apis-js-sdk) sends and reads, where it and the
// API pages differ from what the simulator answered before.

func TestGlobal_endpoints_answer_business_errors_with_the_HTTP_status_as_code(t *testing.T) {
	e := newSim(t, simulator.Config{Faults: simulator.Faults{RejectDevices: []string{iccid2}}})
	e.login(t)
	suspendBody := func(acct string, iccids ...string) string {
		var devs []string
		for _, id := range iccids {
			devs = append(devs, `{"deviceIds":[{"kind":"iccid","id":"`+id+`"}]}`)
		}
		return `{"accountName":"` + acct + `","devices":[` + strings.Join(devs, ",") + `]}`
	}
	deactivate := thingspace.ActionPathPrefix + "deactivate"
	suspend := thingspace.ActionPathPrefix + "profile_suspend"
	cases := []struct {
		name, path, body string
		hdr              map[string]string
		status           int
		code, inMsg      string
	}{
		{"a refused device on profile_suspend", suspend, suspendBody(account, iccid, iccid2), nil, 400, "400", iccid2},
		{"a malformed identifier on profile_suspend", suspend, suspendBody(account, "12ab"), nil, 400, "400", "12ab"},
		{"a bad account on profile_suspend", suspend, suspendBody("abc", iccid), nil, 400, "400", "Account name"},
		{"no account on deactivate", deactivate, `{"devices":[{"deviceIds":[{"kind":"eid","id":"` + eid + `"},{"kind":"iccid","id":"` + iccid + `"}]}]}`,
			nil, 400, "400", "accountName"},
		{"malformed JSON on deactivate", deactivate, `{"devices":[`, nil, 400, "400", "not valid JSON"},
		{"a wrong content type on profile_suspend", suspend, suspendBody(account, iccid), map[string]string{"Content-Type": "text/plain"},
			415, "415", "Content-Type"},
		{"an expired session keeps the session layer's dotted code", suspend, suspendBody(account, iccid),
			map[string]string{thingspace.HeaderSession: "nope"}, 400, "UnifiedWebService.REQUEST_FAILED.SessionToken.Expired", "Session"},
		{"enable keeps its dotted codes", thingspace.ActionPathPrefix + "enable", enableBody([2]string{eid, iccid2}), nil,
			400, "DeviceService.INPUT_INVALID.Device.Identifier.Invalid", iccid2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a := e.call(t, http.MethodPost, tc.path, tc.body, tc.hdr)
			assert.Equal(t, tc.status, a.status, a.raw)
			assert.Equal(t, tc.code, a.body["errorCode"], a.raw)
			assert.Contains(t, a.body["errorMessage"], tc.inMsg, a.raw)
			assert.Len(t, a.body, 2, "errorCode and errorMessage only: %s", a.raw)
		})
	}

	t.Run("a server error on profile_suspend", func(t *testing.T) {
		require.NoError(t, e.sim.SetFaults(simulator.Faults{ErrorShare: 1}))
		defer func() { require.NoError(t, e.sim.SetFaults(simulator.Faults{})) }()
		a := e.call(t, http.MethodPost, suspend, suspendBody(account, iccid), nil)
		assert.Equal(t, http.StatusInternalServerError, a.status)
		assert.Equal(t, "500", a.body["errorCode"], a.raw)
	})
	for _, c := range e.sim.Calls() {
		if c.Action == string(command.Suspend) && c.Status == http.StatusBadRequest && c.ErrorCode != "400" {
			assert.Contains(t, c.ErrorCode, "SessionToken", "the record says what was answered")
		}
	}
}

func TestToken_accepts_client_credentials_sent_raw_or_form_encoded(t *testing.T) {
	const id, secret = "client+id", "s3cr+t/with=odd%2Bchars"
	e := newSim(t, simulator.Config{ClientID: id, ClientSecret: secret})
	basic := func(user, pass string) string {
		return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
	}
	grant := url.Values{"grant_type": {"client_credentials"}}
	cases := []struct {
		name, auth string
		status     int
	}{
		{"raw, as Verizon's SDK sends them", basic(id, secret), http.StatusOK},
		{"form-encoded first, as RFC 6749 2.3.1 and golang.org/x/oauth2 do", basic(url.QueryEscape(id), url.QueryEscape(secret)), http.StatusOK},
		{"raw id, encoded secret", basic(id, url.QueryEscape(secret)), http.StatusOK},
		{"a plus read as a space is not the secret", basic(id, strings.ReplaceAll(secret, "+", " ")), http.StatusUnauthorized},
		{"a wrong secret", basic(id, "s3cr t/with=odd%2Bchars!"), http.StatusUnauthorized},
		{"a wrong id", basic("client id", secret), http.StatusUnauthorized},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(http.MethodPost, e.url+thingspace.TokenPath, strings.NewReader(grant.Encode()))
			require.NoError(t, err)
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.Header.Set("Authorization", tc.auth)
			a := e.send(t, req)
			assert.Equal(t, tc.status, a.status, a.raw)
		})
	}
	t.Run("in the form body, as they are", func(t *testing.T) {
		form := url.Values{"grant_type": {"client_credentials"}, "client_id": {id}, "client_secret": {secret}}
		a := e.getToken(t, "", "", form)
		assert.Equal(t, http.StatusOK, a.status, a.raw)
	})
}

func TestLogout_answers_the_session_token_it_ended(t *testing.T) {
	e := newSim(t, simulator.Config{})
	e.login(t)
	ended := e.session
	a := e.call(t, http.MethodPost, thingspace.LogoutPath, "", nil)
	require.Equal(t, http.StatusOK, a.status, a.raw)
	assert.Equal(t, map[string]any{"sessionToken": ended}, a.body, "the SDK's LogOutRequest: the token, to confirm it was invalidated")
	a = e.call(t, http.MethodPost, thingspace.ActionPathPrefix+"enable", enableBody(), nil)
	assert.Equal(t, "UnifiedWebService.REQUEST_FAILED.SessionToken.Expired", a.errorCode(), "the session is over")
}

func TestStatus_is_served_on_the_v1_path_the_SDK_calls(t *testing.T) {
	e := newSim(t, simulator.Config{Faults: simulator.Faults{CallbackDelay: time.Hour}})
	e.login(t)
	a := e.call(t, http.MethodPost, thingspace.ActionPathPrefix+"enable", enableBody([2]string{eid, iccid}, [2]string{eid, iccid2}), nil)
	require.Equal(t, http.StatusOK, a.status, a.raw)
	id := a.body["requestId"].(string)
	v1 := "/api/m2m/v1/accounts/" + account + "/requests/" + id + "/status"
	v2 := "/api/m2m/v2/accounts/" + account + "/requests/" + id + "/status"

	got := e.call(t, http.MethodGet, v1, "", nil)
	require.Equal(t, http.StatusOK, got.status, got.raw)
	assert.Equal(t, map[string]any{"requestId": id, "status": "Pending"}, got.body, "AsynchronousRequestResult: requestId and status only")
	assert.Contains(t, e.call(t, http.MethodGet, v2, "", nil).body, "subRequests", "v2 goes on answering per device")

	for _, bad := range []string{
		"/api/m2m/v1/accounts/" + account + "/requests/nope/status",
		"/api/m2m/v1/accounts/0000999999-00001/requests/" + id + "/status",
	} {
		ans := e.call(t, http.MethodGet, bad, "", nil)
		assert.Equal(t, http.StatusBadRequest, ans.status)
		assert.Equal(t, "DeviceService.REQUEST_FAILED.RequestId.NotFound", ans.errorCode())
	}
	ans := e.call(t, http.MethodGet, v1, "", map[string]string{thingspace.HeaderSession: "nope"})
	assert.Equal(t, "UnifiedWebService.REQUEST_FAILED.SessionToken.Expired", ans.errorCode(), "it needs both tokens like the others")
}

func TestStatus_v1_reports_success_and_failure_once_settled(t *testing.T) {
	for _, tc := range []struct {
		name   string
		faults simulator.Faults
		want   string
	}{
		{"every device succeeded", simulator.Faults{}, "Success"},
		{"some device failed", simulator.Faults{FailShare: 1}, "Failure"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newSim(t, simulator.Config{Faults: tc.faults})
			l := newListener(t, nil)
			e.login(t)
			e.register(t, l, "", "")
			a := e.call(t, http.MethodPost, thingspace.ActionPathPrefix+"enable", enableBody(), nil)
			require.Equal(t, http.StatusOK, a.status, a.raw)
			l.next(t) // the device's final callback: it is settled
			got := e.call(t, http.MethodGet, "/api/m2m/v1/accounts/"+account+"/requests/"+a.body["requestId"].(string)+"/status", "", nil)
			assert.Equal(t, tc.want, got.body["status"], got.raw)
		})
	}
}
