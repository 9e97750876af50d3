package simulator_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/simulator"
	"github.com/esim-pipeline/thingspace-esim/internal/testkit"
	"github.com/esim-pipeline/thingspace-esim/internal/thingspace"
)

func timeout() <-chan time.Time { return time.After(10 * time.Second) }

func TestToken_endpoint_speaks_client_credentials(t *testing.T) {
	e := newSim(t, simulator.Config{})
	grant := url.Values{"grant_type": {"client_credentials"}}

	first := e.getToken(t, simulator.DemoClientID, simulator.DemoClientSecret, grant)
	require.Equal(t, http.StatusOK, first.status, first.raw)
	assert.Equal(t, "bearer", first.body["token_type"])
	assert.InDelta(t, 3600, first.body["expires_in"], 1)
	assert.NotEmpty(t, first.body["access_token"])
	second := e.getToken(t, simulator.DemoClientID, simulator.DemoClientSecret, grant)
	assert.Equal(t, first.body["access_token"], second.body["access_token"], "same token within its lifetime")

	cases := []struct {
		name, id, secret string
		form             url.Values
		status           int
		code             string
	}{
		{"wrong_secret", simulator.DemoClientID, "nope", grant, http.StatusUnauthorized, "invalid_client"},
		{"no_client_auth", "", "", grant, http.StatusUnauthorized, "invalid_client"},
		{"missing_grant_type", simulator.DemoClientID, simulator.DemoClientSecret, url.Values{}, http.StatusBadRequest, "invalid_request"},
		{"other_grant_type", simulator.DemoClientID, simulator.DemoClientSecret, url.Values{"grant_type": {"password"}}, http.StatusBadRequest, "unsupported_grant_type"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a := e.getToken(t, tc.id, tc.secret, tc.form)
			assert.Equal(t, tc.status, a.status)
			assert.Equal(t, tc.code, a.body["error"], a.raw)
			assert.NotEmpty(t, a.body["error_description"])
		})
	}
	st := e.sim.Stats()
	assert.EqualValues(t, 2, st.TokenGrants)
	assert.EqualValues(t, 1, st.TokensIssued)
	assert.EqualValues(t, 4, st.TokenFailures)
}

func TestToken_expires_after_its_lifetime(t *testing.T) {
	clock := testkit.NewClock(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC))
	e := newSim(t, simulator.Config{Now: clock.Now, TokenLifetime: time.Hour})
	e.login(t)
	require.Equal(t, http.StatusOK, e.call(t, http.MethodGet, thingspace.CallbacksPath+account, "", nil).status)
	clock.Add(time.Hour)
	a := e.call(t, http.MethodGet, thingspace.CallbacksPath+account, "", nil)
	assert.Equal(t, http.StatusUnauthorized, a.status)
	assert.Equal(t, "900901", a.errorCode())
	old := e.token
	grant := e.getToken(t, simulator.DemoClientID, simulator.DemoClientSecret, url.Values{"grant_type": {"client_credentials"}})
	assert.NotEqual(t, old, grant.body["access_token"], "a new token after expiry")
}

func TestSimulator_rejects_what_ThingSpace_rejects(t *testing.T) {
	e := newSim(t, simulator.Config{MaxDevices: 2})
	e.login(t)
	enable := thingspace.ActionPathPrefix + "enable"
	cases := []struct {
		name   string
		path   string
		body   string
		hdr    map[string]string
		status int
		code   string
		shape  string
		inMsg  string
	}{
		{"missing_api_token", enable, enableBody(), map[string]string{"Authorization": ""}, 401, "900901", "fault", ""},
		{"wrong_api_token", enable, enableBody(), map[string]string{"Authorization": "Bearer nope"}, 401, "900901", "fault", ""},
		{"missing_session", enable, enableBody(), map[string]string{thingspace.HeaderSession: ""}, 400, "UnifiedWebService.REQUEST_FAILED.SessionToken.Expired", "business", ""},
		{"wrong_session", enable, enableBody(), map[string]string{thingspace.HeaderSession: "nope"}, 400, "UnifiedWebService.REQUEST_FAILED.SessionToken.Expired", "business", ""},
		{"wrong_content_type", enable, enableBody(), map[string]string{"Content-Type": "text/plain"}, 415, "DeviceService.INPUT_INVALID.ContentType.Invalid", "business", ""},
		{"malformed_json", enable, `{"devices":[`, nil, 400, "DeviceService.INPUT_INVALID.Request.Body.Invalid", "business", ""},
		{"missing_smsr_oid", enable, `{"accountName":"` + account + `","devices":[{"deviceIds":[{"kind":"eid","id":"` + eid + `"},{"kind":"iccid","id":"` + iccid + `"}]}]}`,
			nil, 400, "DeviceService.INPUT_INVALID.SmsrOid.Invalid", "business", "smsrOid"},
		{"missing_account", enable, `{"smsrOid":"1.2","devices":[{"deviceIds":[{"kind":"eid","id":"` + eid + `"},{"kind":"iccid","id":"` + iccid + `"}]}]}`,
			nil, 400, "DeviceService.INPUT_INVALID.Device.Account.Invalid", "business", "accountName"},
		{"too_many_devices", enable, enableBody([2]string{eid, iccid}, [2]string{eid, iccid}, [2]string{eid, iccid}),
			nil, 400, "DeviceService.INPUT_INVALID.MaxRequestsExceeded", "business", "3 devices"},
		{"no_devices", enable, `{"accountName":"` + account + `","smsrOid":"1.2","devices":[]}`,
			nil, 400, "DeviceService.INPUT_INVALID.Device.Identifier.Invalid", "business", "devices"},
		{"enable_without_eid", enable, `{"accountName":"` + account + `","smsrOid":"1.2","devices":[{"deviceIds":[{"kind":"iccid","id":"` + iccid + `"}]}]}`,
			nil, 400, "DeviceService.INPUT_INVALID.Device.Identifier.Invalid", "business", "EID is required"},
		{"deactivate_without_iccid", thingspace.ActionPathPrefix + "deactivate", `{"accountName":"` + account + `","devices":[{"deviceIds":[{"kind":"eid","id":"` + eid + `"}]}]}`,
			nil, 400, "400", "business", "ICCID is required"},
		{"suspend_without_iccid", thingspace.ActionPathPrefix + "profile_suspend", `{"accountName":"` + account + `","devices":[{"deviceIds":[{"kind":"eid","id":"` + eid + `"}]}]}`,
			nil, 400, "400", "business", "ICCID is required"},
		{"unknown_kind", enable, `{"accountName":"` + account + `","smsrOid":"1.2","devices":[{"deviceIds":[{"kind":"imsi","id":"1"}]}]}`,
			nil, 400, "DeviceService.INPUT_INVALID.Device.Kind.Invalid", "business", "imsi"},
		{"malformed_identifier", enable, `{"accountName":"` + account + `","smsrOid":"1.2","devices":[{"deviceIds":[{"kind":"eid","id":"32-digit EID"},{"kind":"iccid","id":"` + iccid + `"}]}]}`,
			nil, 400, "DeviceService.INPUT_INVALID.Device.Identifier.Invalid", "business", "32-digit EID"},
		{"bad_reason_code", thingspace.ActionPathPrefix + "deactivate", `{"accountName":"` + account + `","reasonCode":"FFF","devices":[{"deviceIds":[{"kind":"eid","id":"` + eid + `"},{"kind":"iccid","id":"` + iccid + `"}]}]}`,
			nil, 400, "400", "business", "reasonCode"},
		{"unknown_action", thingspace.ActionPathPrefix + "activate", enableBody(), nil, 400, "900906", "fault", ""},
		{"unknown_path", "/api/m2m/v1/nothing/here", enableBody(), nil, 400, "900906", "fault", ""},
		{"wrong_method", "/api/m2m/v1/session/login", "", nil, 400, "900906", "fault", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			method := http.MethodPost
			if tc.name == "wrong_method" {
				method = http.MethodGet
			}
			a := e.call(t, method, tc.path, tc.body, tc.hdr)
			assert.Equal(t, tc.status, a.status, a.raw)
			assert.Equal(t, tc.code, a.errorCode(), a.raw)
			assert.Equal(t, "application/json", a.header.Get("Content-Type"))
			switch tc.shape {
			case "fault":
				f, ok := a.body["fault"].(map[string]any)
				require.True(t, ok, a.raw)
				assert.NotEmpty(t, f["message"])
				assert.NotEmpty(t, f["description"])
			case "business":
				assert.NotEmpty(t, a.body["errorMessage"], a.raw)
				assert.Contains(t, a.body["errorMessage"], tc.inMsg)
			}
		})
	}
	assert.Zero(t, e.sim.Stats().ActionAccepted)
	for _, c := range e.sim.Calls() {
		if c.Action != "" {
			assert.NotEqual(t, http.StatusOK, c.Status)
			assert.NotEmpty(t, c.ErrorCode)
		}
	}
}

func TestSimulator_accepts_kinds_in_any_case_and_answers_a_request_id(t *testing.T) {
	e := newSim(t, simulator.Config{})
	e.login(t)
	body := `{"accountName":"` + account + `","smsrOid":"` + smsrOid + `","devices":[{"deviceIds":[{"kind":"EID","id":"` + eid + `"},{"kind":"Iccid","id":"` + iccid + `"}]}]}`
	a := e.call(t, http.MethodPost, thingspace.ActionPathPrefix+"enable", body, map[string]string{"Content-Type": "application/json; charset=utf-8"})
	require.Equal(t, http.StatusOK, a.status, a.raw)
	id, _ := a.body["requestId"].(string)
	assert.Len(t, id, 36)
	calls := e.sim.Calls()
	last := calls[len(calls)-1]
	assert.Equal(t, id, last.RequestID)
	assert.JSONEq(t, body, string(last.Body))
}

func TestSimulator_rejects_listed_devices_naming_them(t *testing.T) {
	e := newSim(t, simulator.Config{Faults: simulator.Faults{RejectDevices: []string{iccid2}}})
	e.login(t)
	a := e.call(t, http.MethodPost, thingspace.ActionPathPrefix+"enable", enableBody([2]string{eid, iccid}, [2]string{eid, iccid2}), nil)
	assert.Equal(t, http.StatusBadRequest, a.status)
	assert.Equal(t, "DeviceService.INPUT_INVALID.Device.Identifier.Invalid", a.errorCode())
	assert.Contains(t, a.body["errorMessage"], iccid2)
	a = e.call(t, http.MethodPost, thingspace.ActionPathPrefix+"enable", enableBody([2]string{eid, iccid}), nil)
	assert.Equal(t, http.StatusOK, a.status, "the others pass")
}

func TestSimulator_locks_the_account_after_failed_logins(t *testing.T) {
	e := newSim(t, simulator.Config{LockoutAfter: 3})
	e.login(t)
	bad := `{"username":"` + simulator.DemoUsername + `","password":"wrong"}`
	good := `{"username":"` + simulator.DemoUsername + `","password":"` + simulator.DemoPassword + `"}`
	for range 3 {
		a := e.call(t, http.MethodPost, thingspace.LoginPath, bad, nil)
		require.Equal(t, http.StatusBadRequest, a.status)
		assert.Equal(t, "UnifiedWebService.INPUT_INVALID.Credentials.Invalid", a.errorCode())
	}
	a := e.call(t, http.MethodPost, thingspace.LoginPath, good, nil)
	assert.Equal(t, http.StatusBadRequest, a.status)
	assert.Equal(t, "UnifiedWebService.REQUEST_FAILED.Account.Locked", a.errorCode(), "even the right password")
	e.sim.Unlock()
	a = e.call(t, http.MethodPost, thingspace.LoginPath, good, nil)
	assert.Equal(t, http.StatusOK, a.status)
	assert.EqualValues(t, 4, e.sim.Stats().LoginFailures)
}

func TestSimulator_failures_in_a_row_only_lock(t *testing.T) {
	e := newSim(t, simulator.Config{LockoutAfter: 2})
	e.login(t)
	bad := `{"username":"` + simulator.DemoUsername + `","password":"wrong"}`
	good := `{"username":"` + simulator.DemoUsername + `","password":"` + simulator.DemoPassword + `"}`
	require.Equal(t, 400, e.call(t, http.MethodPost, thingspace.LoginPath, bad, nil).status)
	require.Equal(t, 200, e.call(t, http.MethodPost, thingspace.LoginPath, good, nil).status)
	require.Equal(t, 400, e.call(t, http.MethodPost, thingspace.LoginPath, bad, nil).status)
	assert.Equal(t, 200, e.call(t, http.MethodPost, thingspace.LoginPath, good, nil).status, "a success resets the count")
}

func TestSimulator_sessions_slide_and_expire(t *testing.T) {
	clock := testkit.NewClock(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC))
	e := newSim(t, simulator.Config{Now: clock.Now, SessionIdle: 10 * time.Minute, TokenLifetime: 24 * time.Hour})
	e.login(t)
	list := thingspace.CallbacksPath + account
	for range 3 {
		clock.Add(9 * time.Minute)
		require.Equal(t, http.StatusOK, e.call(t, http.MethodGet, list, "", nil).status)
	}
	clock.Add(10 * time.Minute)
	a := e.call(t, http.MethodGet, list, "", nil)
	assert.Equal(t, http.StatusBadRequest, a.status)
	assert.True(t, strings.HasSuffix(a.errorCode(), "REQUEST_FAILED.SessionToken.Expired"))

	e.login(t)
	e.sim.ExpireSessions()
	assert.Equal(t, http.StatusBadRequest, e.call(t, http.MethodGet, list, "", nil).status)
	e.login(t)
	require.Equal(t, http.StatusOK, e.call(t, http.MethodPost, thingspace.LogoutPath, "", nil).status)
	assert.Equal(t, http.StatusBadRequest, e.call(t, http.MethodGet, list, "", nil).status, "logged out")
}

func TestSimulator_rate_limit_answers_429_with_retry_after(t *testing.T) {
	e := newSim(t, simulator.Config{Faults: simulator.Faults{RatePerMinute: 2}})
	e.login(t)
	path := thingspace.ActionPathPrefix + "enable"
	require.Equal(t, http.StatusOK, e.call(t, http.MethodPost, path, enableBody(), nil).status)
	require.Equal(t, http.StatusOK, e.call(t, http.MethodPost, path, enableBody(), nil).status)
	a := e.call(t, http.MethodPost, path, enableBody(), nil)
	require.Equal(t, http.StatusTooManyRequests, a.status)
	secs, err := strconv.Atoi(a.header.Get("Retry-After"))
	require.NoError(t, err)
	assert.InDelta(t, 30, secs, 1, "one token comes back every 30s at 2 a minute")

	other := strings.Replace(enableBody(), account, "0000999999-00001", 1)
	assert.Equal(t, http.StatusOK, e.call(t, http.MethodPost, path, other, nil).status, "per account")

	require.NoError(t, e.sim.SetFaults(simulator.Faults{RatePerMinute: -1}))
	for range 5 {
		require.Equal(t, http.StatusOK, e.call(t, http.MethodPost, path, enableBody(), nil).status)
	}
}

func TestSimulator_dropped_connection_gives_no_answer(t *testing.T) {
	e := newSim(t, simulator.Config{})
	e.login(t)
	require.NoError(t, e.sim.SetFaults(simulator.Faults{DropShare: 1}))
	req, err := http.NewRequest(http.MethodPost, e.url+thingspace.ActionPathPrefix+"enable", strings.NewReader(enableBody()))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+e.token)
	req.Header.Set(thingspace.HeaderSession, e.session)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if resp != nil {
		resp.Body.Close()
	}
	require.Error(t, err)
	require.Eventually(t, func() bool { // recorded once the handler returns
		calls := e.sim.Calls()
		last := calls[len(calls)-1]
		return last.Dropped && last.Status == 0 && last.Action == "enable"
	}, 5*time.Second, time.Millisecond)
	assert.Zero(t, e.sim.Stats().ActionAccepted)
}

func TestSimulator_error_share_answers_500(t *testing.T) {
	e := newSim(t, simulator.Config{Faults: simulator.Faults{ErrorShare: 1}})
	e.login(t) // logins are never faulted
	a := e.call(t, http.MethodPost, thingspace.ActionPathPrefix+"enable", enableBody(), nil)
	assert.Equal(t, http.StatusInternalServerError, a.status)
	assert.Equal(t, "DeviceService.REQUEST_FAILED.UnexpectedError", a.errorCode())
}

func TestCallbacks_arrive_shaped_like_ThingSpace_with_credentials(t *testing.T) {
	cases := []struct {
		action, path, body string
		status, profile    string
		state, kindStyle   string
	}{
		{"enable", "enable", enableBody(), "Success", "enable", "Active", "eid"},
		{"disable", "disable", enableBody(), "Success", "disable", "Active", "eid"},
		{"delete", "delete", enableBody(), "Success", "delete", "Active", "eid"},
		{"deactivate", "deactivate", `{"accountName":"` + account + `","servicePlan":"plan-x","devices":[{"deviceIds":[{"kind":"eid","id":"` + eid + `"},{"kind":"iccid","id":"` + iccid + `"},{"kind":"imei","id":"356938035643809"}]}]}`,
			"SUCCESS", "ENABLE", "DEACTIVE", "Eid"},
		{"suspend", "profile_suspend", `{"accountName":"` + account + `","devices":[{"deviceIds":[{"kind":"iccid","id":"` + iccid + `"}]}]}`,
			"SUCCESS", "ENABLE", "SUSPENDED", "Iccid"},
	}
	for _, tc := range cases {
		t.Run(tc.action, func(t *testing.T) {
			e := newSim(t, simulator.Config{})
			e.login(t)
			l := newListener(t, nil)
			e.register(t, l, "cb-user", "cb-pass")
			a := e.call(t, http.MethodPost, thingspace.ActionPathPrefix+tc.path, tc.body, nil)
			require.Equal(t, http.StatusOK, a.status, a.raw)
			r := l.next(t)

			assert.True(t, r.basic, "HTTP Basic auth with the registered credentials")
			assert.Equal(t, "cb-user", r.user)
			assert.Equal(t, "cb-pass", r.pass)
			cb := r.cb
			assert.Equal(t, "cb-user", cb.Username, "credentials echoed in the body")
			assert.Equal(t, "cb-pass", cb.Password)
			assert.Equal(t, a.body["requestId"], cb.RequestID)
			assert.Equal(t, tc.status, cb.Status)
			assert.Equal(t, 1, cb.CallbackCount)
			assert.Equal(t, 4, cb.MaxCallbackThreshold)
			ids := cb.Identifiers()
			assert.Equal(t, iccid, ids["iccid"])
			assert.Len(t, ids["imei"], 15)
			assert.Len(t, ids["mdn"], 10)
			if tc.action != "suspend" {
				assert.Equal(t, eid, ids["eid"])
			}
			if tc.action == "deactivate" {
				assert.Equal(t, "356938035643809", ids["imei"], "a known IMEI is kept")
			}
			p := cb.Profile()
			require.NotNil(t, p)
			assert.Equal(t, tc.profile, p.ProfileStatus)
			assert.Equal(t, tc.state, p.State)
			assert.Contains(t, string(r.raw), `"kind":"`+tc.kindStyle+`"`, "kinds written as the page writes them")
			switch tc.action {
			case "enable", "disable", "delete":
				assert.Equal(t, smsrOid, p.SmsrOid)
				require.NotNil(t, p.DeviceCredential)
				assert.Equal(t, ids["mdn"]+"@vzw4g.com", p.DeviceCredential.Username)
				assert.Equal(t, "EXECUTED_SUCCESS", p.EuiccStatus)
				assert.NotEmpty(t, p.IPAddress)
			case "deactivate":
				assert.Equal(t, "plan-x", p.ServicePlan)
				assert.Equal(t, "LOCAL", p.ProfileRole)
			}
			require.Eventually(t, func() bool { return e.sim.Stats().CallbacksAnswered == 1 }, 5*time.Second, time.Millisecond)
			d := e.sim.Deliveries()
			require.Len(t, d, 1)
			assert.True(t, d[0].Answered)
			assert.True(t, d[0].Final)
			assert.Equal(t, iccid, d[0].Device)
		})
	}
}

func TestCallbacks_one_per_device_with_the_same_request_id(t *testing.T) {
	e := newSim(t, simulator.Config{})
	e.login(t)
	l := newListener(t, nil)
	e.register(t, l, "", "")
	a := e.call(t, http.MethodPost, thingspace.ActionPathPrefix+"enable", enableBody([2]string{eid, iccid}, [2]string{eid, iccid2}), nil)
	require.Equal(t, http.StatusOK, a.status)
	seen := map[string]bool{}
	for range 2 {
		r := l.next(t)
		assert.False(t, r.basic, "no Basic auth without registered credentials")
		assert.Equal(t, a.body["requestId"], r.cb.RequestID)
		seen[r.cb.Identifiers()["iccid"]] = true
	}
	assert.Equal(t, map[string]bool{iccid: true, iccid2: true}, seen)
}

func TestCallbacks_warning_then_final(t *testing.T) {
	e := newSim(t, simulator.Config{Faults: simulator.Faults{WarningShare: 1, CallbackDelay: 5 * time.Millisecond}})
	e.login(t)
	l := newListener(t, nil)
	e.register(t, l, "u", "p")
	a := e.call(t, http.MethodPost, thingspace.ActionPathPrefix+"enable", enableBody(), nil)
	require.Equal(t, http.StatusOK, a.status)
	id := a.body["requestId"].(string)

	first := l.next(t)
	assert.True(t, first.cb.IsWarning(), first.cb.Status)
	assert.Equal(t, "warning", first.cb.Status)
	st := e.call(t, http.MethodGet, "/api/m2m/v2/accounts/"+account+"/requests/"+id+"/status", "", nil)
	require.Equal(t, http.StatusOK, st.status, st.raw)
	assert.Equal(t, "Pending", st.body["status"], "unsettled while only the warning went out")

	final := l.next(t)
	assert.True(t, final.cb.IsSuccess(), final.cb.Status)
	assert.Equal(t, first.cb.RequestID, final.cb.RequestID)
	assert.Equal(t, 1, final.cb.CallbackCount)
}

func TestCallbacks_failed_devices_get_a_fault_response(t *testing.T) {
	e := newSim(t, simulator.Config{Faults: simulator.Faults{FailShare: 1}})
	e.login(t)
	l := newListener(t, nil)
	e.register(t, l, "u", "p")
	a := e.call(t, http.MethodPost, thingspace.ActionPathPrefix+"disable", enableBody(), nil)
	require.Equal(t, http.StatusOK, a.status)
	r := l.next(t)
	assert.True(t, r.cb.IsFailed())
	require.NotNil(t, r.cb.FaultResponse)
	assert.NotEmpty(t, r.cb.FaultResponse.FaultCode)
	assert.NotEmpty(t, r.cb.FaultResponse.FaultString)
	assert.Equal(t, iccid, r.cb.Identifiers()["iccid"])

	var st thingspace.RequestStatus
	ans := e.call(t, http.MethodGet, "/api/m2m/v2/accounts/"+account+"/requests/"+a.body["requestId"].(string)+"/status", "", nil)
	require.NoError(t, json.Unmarshal([]byte(ans.raw), &st))
	assert.Equal(t, "Failed", st.Status)
	require.Len(t, st.SubRequests, 1)
	assert.Equal(t, "Failed", st.SubRequests[0].Status)
}

func TestCallbacks_are_resent_until_answered(t *testing.T) {
	e := newSim(t, simulator.Config{ResendInterval: 5 * time.Millisecond})
	e.login(t)
	l := newListener(t, func(n int64) int {
		if n < 3 {
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	})
	e.register(t, l, "u", "p")
	require.Equal(t, http.StatusOK, e.call(t, http.MethodPost, thingspace.ActionPathPrefix+"enable", enableBody(), nil).status)
	var counts []int
	for range 3 {
		r := l.next(t)
		counts = append(counts, r.cb.CallbackCount)
		assert.Equal(t, 4, r.cb.MaxCallbackThreshold)
	}
	assert.Equal(t, []int{1, 2, 3}, counts)
	require.Eventually(t, func() bool { return e.sim.Stats().CallbacksPending == 0 }, 5*time.Second, time.Millisecond)
	st := e.sim.Stats()
	assert.EqualValues(t, 3, st.CallbacksSent)
	assert.EqualValues(t, 1, st.CallbacksAnswered)
	assert.EqualValues(t, 2, st.CallbacksUnanswered)
	assert.Zero(t, st.CallbacksAbandoned)
	select {
	case r := <-l.got:
		t.Fatalf("a fourth callback after a 2xx: %d", r.cb.CallbackCount)
	default:
	}
}

// Resends fall due microseconds apart (each is scheduled when its attempt
// failed): the scheduler must not take a due time that passed between two
// looks for "nothing scheduled" and sleep until the next push, which after
// the last answered resend never comes.
func TestCallbacks_resent_in_a_burst_all_go_out(t *testing.T) {
	const n = 400
	e := newSim(t, simulator.Config{ResendInterval: 20 * time.Millisecond})
	e.login(t)
	l := newListener(t, func(k int64) int {
		if k <= n {
			return http.StatusServiceUnavailable // every first attempt
		}
		return http.StatusOK
	})
	l.got = make(chan received, 2*n)
	e.register(t, l, "u", "p")
	devices := make([][2]string, n)
	for i := range devices {
		devices[i] = [2]string{fmt.Sprintf("890490320000000000000000%08d", i), fmt.Sprintf("891480000000%08d", i)}
	}
	require.Equal(t, http.StatusOK, e.call(t, http.MethodPost, thingspace.ActionPathPrefix+"enable", enableBody(devices...), nil).status)
	require.Eventually(t, func() bool { return e.sim.Stats().CallbacksAnswered == n }, 10*time.Second, time.Millisecond,
		"stats at the end: %+v", e.sim.Stats())
	assert.Zero(t, e.sim.Stats().CallbacksPending)
}

func TestCallbacks_give_up_after_four_attempts(t *testing.T) {
	e := newSim(t, simulator.Config{ResendInterval: 2 * time.Millisecond})
	e.login(t)
	l := newListener(t, func(int64) int { return http.StatusInternalServerError })
	e.register(t, l, "u", "p")
	require.Equal(t, http.StatusOK, e.call(t, http.MethodPost, thingspace.ActionPathPrefix+"enable", enableBody(), nil).status)
	require.Eventually(t, func() bool { return e.sim.Stats().CallbacksAbandoned == 1 }, 5*time.Second, time.Millisecond)
	st := e.sim.Stats()
	assert.EqualValues(t, 4, st.CallbacksSent)
	assert.Zero(t, st.CallbacksPending)
	var counts []int
	for _, d := range e.sim.Deliveries() {
		counts = append(counts, d.CallbackCount)
		assert.Equal(t, http.StatusInternalServerError, d.HTTPStatus)
	}
	assert.Equal(t, []int{1, 2, 3, 4}, counts)
}

func TestCallbacks_lost_and_stuck_devices_for_reconciliation(t *testing.T) {
	cases := []struct {
		name       string
		faults     simulator.Faults
		wantStatus string
	}{
		{"final_dropped_but_settled", simulator.Faults{DropFinalShare: 1}, "Success"},
		{"stuck_forever", simulator.Faults{StuckShare: 1}, "Pending"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newSim(t, simulator.Config{Faults: tc.faults})
			e.login(t)
			l := newListener(t, nil)
			e.register(t, l, "u", "p")
			a := e.call(t, http.MethodPost, thingspace.ActionPathPrefix+"enable", enableBody(), nil)
			require.Equal(t, http.StatusOK, a.status)
			id := a.body["requestId"].(string)
			if tc.wantStatus == "Success" {
				require.Eventually(t, func() bool { return e.sim.Stats().CallbacksWithheld == 1 }, 5*time.Second, time.Millisecond)
				d := e.sim.Deliveries()
				require.Len(t, d, 1)
				assert.True(t, d[0].Withheld)
			} else {
				assert.Zero(t, e.sim.Stats().CallbacksPending, "nothing scheduled for a stuck device")
			}
			ans := e.call(t, http.MethodGet, "/api/m2m/v2/accounts/"+account+"/requests/"+id+"/status", "", nil)
			require.Equal(t, http.StatusOK, ans.status)
			var st thingspace.RequestStatus
			require.NoError(t, json.Unmarshal([]byte(ans.raw), &st))
			assert.Equal(t, tc.wantStatus, st.Status)
			require.Len(t, st.SubRequests, 1)
			assert.Equal(t, tc.wantStatus, st.SubRequests[0].Status)
			assert.Zero(t, e.sim.Stats().CallbacksSent)
			select {
			case r := <-l.got:
				t.Fatalf("unexpected callback %s", r.raw)
			default:
			}
		})
	}
}

func TestStatus_endpoint_refuses_unknown_requests_and_other_accounts(t *testing.T) {
	e := newSim(t, simulator.Config{})
	e.login(t)
	a := e.call(t, http.MethodPost, thingspace.ActionPathPrefix+"enable", enableBody(), nil)
	require.Equal(t, http.StatusOK, a.status)
	id := a.body["requestId"].(string)
	for _, path := range []string{
		"/api/m2m/v2/accounts/" + account + "/requests/nope/status",
		"/api/m2m/v2/accounts/0000999999-00001/requests/" + id + "/status",
	} {
		ans := e.call(t, http.MethodGet, path, "", nil)
		assert.Equal(t, http.StatusBadRequest, ans.status)
		assert.Equal(t, "DeviceService.REQUEST_FAILED.RequestId.NotFound", ans.errorCode())
	}
}

func TestCallbacks_without_a_listener_are_counted_undeliverable(t *testing.T) {
	e := newSim(t, simulator.Config{})
	e.login(t)
	require.Equal(t, http.StatusOK, e.call(t, http.MethodPost, thingspace.ActionPathPrefix+"enable", enableBody(), nil).status)
	require.Eventually(t, func() bool { return e.sim.Stats().CallbacksUndeliverable == 1 }, 5*time.Second, time.Millisecond)
}

func TestRegistration_validates_and_lists(t *testing.T) {
	e := newSim(t, simulator.Config{})
	e.login(t)
	path := thingspace.CallbacksPath + account
	for _, tc := range []struct{ body, code string }{
		{`{"url":"http://x:9001/cb"}`, "CallbackService.INPUT_INVALID.Callback.Name.Invalid"},
		{`{"name":"DeviceProfileService"}`, "CallbackService.INPUT_INVALID.Callback.Url.Invalid"},
		{`{"name":"DeviceProfileService","url":"not a url"}`, "CallbackService.INPUT_INVALID.Callback.Url.Invalid"},
	} {
		a := e.call(t, http.MethodPost, path, tc.body, nil)
		assert.Equal(t, http.StatusBadRequest, a.status)
		assert.Equal(t, tc.code, a.errorCode())
	}
	a := e.call(t, http.MethodPost, path, `{"name":"DeviceProfileService","url":"http://x:9001/cb","username":"u","password":"p"}`, nil)
	require.Equal(t, http.StatusOK, a.status)
	assert.Equal(t, map[string]any{"accountName": account, "serviceName": "DeviceProfileService"}, a.body)
	list := e.call(t, http.MethodGet, path, "", nil)
	assert.JSONEq(t, `[{"accountName":"`+account+`","serviceName":"DeviceProfileService","name":"DeviceProfileService",`+
		`"url":"http://x:9001/cb","username":"u","password":"p"}]`, list.raw,
		"what the SDK's ConnectivityManagementCallback reads (serviceName, the credentials given), and name as before")
	require.Equal(t, http.StatusOK, e.call(t, http.MethodPost, path, `{"name":"OtherService","url":"http://x:9001/other"}`, nil).status)
	list = e.call(t, http.MethodGet, path, "", nil)
	assert.JSONEq(t, `[{"accountName":"`+account+`","serviceName":"DeviceProfileService","name":"DeviceProfileService",`+
		`"url":"http://x:9001/cb","username":"u","password":"p"},`+
		`{"accountName":"`+account+`","serviceName":"OtherService","name":"OtherService","url":"http://x:9001/other","username":"","password":""}]`,
		list.raw, "empty strings where no credentials were registered, as the SDK model says")
	assert.Equal(t, http.StatusBadRequest, e.call(t, http.MethodGet, thingspace.CallbacksPath+"abc", "", nil).status)
}

func TestAdmin_endpoints(t *testing.T) {
	e := newSim(t, simulator.Config{})
	e.login(t)
	require.Equal(t, http.StatusOK, e.call(t, http.MethodPost, thingspace.ActionPathPrefix+"enable", enableBody(), nil).status)

	calls := e.call(t, http.MethodGet, "/sim/calls", "", nil)
	require.Equal(t, http.StatusOK, calls.status)
	var list []simulator.Call
	require.NoError(t, json.Unmarshal([]byte(calls.raw), &list))
	require.Len(t, list, 3, "token, login, enable")
	assert.Equal(t, thingspace.TokenPath, list[0].Path)
	assert.Equal(t, "enable", list[2].Action)
	assert.NotEmpty(t, list[2].RequestID)

	f := e.call(t, http.MethodPut, "/sim/faults", `{"errorShare":1,"latency":"1ms"}`, nil)
	require.Equal(t, http.StatusOK, f.status, f.raw)
	got := e.sim.Faults()
	assert.Equal(t, 1.0, got.ErrorShare)
	assert.Equal(t, time.Millisecond, got.Latency)
	assert.Equal(t, simulator.DefaultRatePerMinute, got.RatePerMinute, "untouched knobs keep their value")
	assert.Equal(t, http.StatusInternalServerError, e.call(t, http.MethodPost, thingspace.ActionPathPrefix+"enable", enableBody(), nil).status)
	bad := e.call(t, http.MethodPut, "/sim/faults", `{"errorShare":2}`, nil)
	assert.Equal(t, http.StatusBadRequest, bad.status)
	require.Equal(t, http.StatusOK, e.call(t, http.MethodPut, "/sim/faults", `{"errorShare":0}`, nil).status)

	require.Equal(t, http.StatusOK, e.call(t, http.MethodPost, "/sim/expire-sessions", "", nil).status)
	assert.Equal(t, http.StatusBadRequest, e.call(t, http.MethodPost, thingspace.ActionPathPrefix+"enable", enableBody(), nil).status)
	require.Equal(t, http.StatusOK, e.call(t, http.MethodPost, "/sim/expire-tokens", "", nil).status)
	assert.Equal(t, http.StatusUnauthorized, e.call(t, http.MethodPost, thingspace.ActionPathPrefix+"enable", enableBody(), nil).status)

	stats := e.call(t, http.MethodGet, "/sim/stats", "", nil)
	assert.EqualValues(t, 1, stats.body["logins"])
	require.Equal(t, http.StatusOK, e.call(t, http.MethodPost, "/sim/reset", "", nil).status)
	assert.Empty(t, e.sim.Calls())
}

func TestNew_validates_config(t *testing.T) {
	_, err := simulator.New(simulator.Config{Faults: simulator.Faults{FailShare: 1.5}})
	require.ErrorContains(t, err, "FailShare")
	_, err = simulator.New(simulator.Config{MaxDevices: -1})
	require.ErrorContains(t, err, "MaxDevices")
	s, err := simulator.New(simulator.Config{})
	require.NoError(t, err)
	s.Close() // without Start
}

func TestHistory_keeps_the_latest_calls(t *testing.T) {
	e := newSim(t, simulator.Config{HistoryLimit: 3})
	for range 5 {
		e.call(t, http.MethodGet, "/api/unknown", "", nil)
	}
	e.call(t, http.MethodGet, "/api/last", "", nil)
	calls := e.sim.Calls()
	require.Len(t, calls, 3)
	assert.Equal(t, "/api/last", calls[2].Path)
}

func TestStatus_records_are_forgotten_after_the_retention(t *testing.T) {
	clock := testkit.NewClock(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC))
	e := newSim(t, simulator.Config{Now: clock.Now, RequestRetention: time.Hour, TokenLifetime: 48 * time.Hour, SessionIdle: 48 * time.Hour})
	e.login(t)
	a := e.call(t, http.MethodPost, thingspace.ActionPathPrefix+"enable", enableBody(), nil)
	require.Equal(t, http.StatusOK, a.status)
	old := "/api/m2m/v2/accounts/" + account + "/requests/" + a.body["requestId"].(string) + "/status"
	clock.Add(30 * time.Minute)
	require.Equal(t, http.StatusOK, e.call(t, http.MethodPost, thingspace.ActionPathPrefix+"enable", enableBody(), nil).status)
	assert.Equal(t, http.StatusOK, e.call(t, http.MethodGet, old, "", nil).status, "kept within the retention")
	clock.Add(31 * time.Minute)
	require.Equal(t, http.StatusOK, e.call(t, http.MethodPost, thingspace.ActionPathPrefix+"enable", enableBody(), nil).status)
	assert.Equal(t, http.StatusBadRequest, e.call(t, http.MethodGet, old, "", nil).status, "forgotten after it")
}
