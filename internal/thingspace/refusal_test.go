package thingspace_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/command"
	"github.com/esim-pipeline/thingspace-esim/internal/simulator"
	"github.com/esim-pipeline/thingspace-esim/internal/thingspace"
)

func business(status int, code, msg string) *thingspace.APIError {
	return &thingspace.APIError{HTTPStatus: status, Shape: thingspace.ShapeBusiness, Code: code, Message: msg}
}

func TestRefusalScope_tells_device_account_and_request_refusals_apart_in_both_code_forms(t *testing.T) {
	cases := []struct {
		name string
		err  error
		want thingspace.Scope
	}{
		// Dotted codes say it by their parts.
		{"dotted identifier invalid", business(400, "DeviceService.INPUT_INVALID.Device.Identifier.Invalid", "Device identifier 8914 is invalid for this account."), thingspace.ScopeDevice},
		{"dotted kind invalid", business(400, "DeviceService.INPUT_INVALID.Device.Kind.Invalid", "kind imsi"), thingspace.ScopeDevice},
		{"dotted device not found", business(400, "DeviceService.REQUEST_FAILED.DeviceNotFound", ""), thingspace.ScopeDevice},
		{"dotted account invalid, although its code names Device", business(400, "DeviceService.INPUT_INVALID.Device.Account.Invalid", "Account name is invalid."), thingspace.ScopeAccount},
		{"dotted account not found", business(400, "DeviceService.REQUEST_FAILED.AccountNotFound", ""), thingspace.ScopeAccount},
		{"dotted too many devices", business(400, "DeviceService.INPUT_INVALID.MaxRequestsExceeded", "The request names 10001 devices; at most 10000 are allowed."), thingspace.ScopeRequest},
		{"dotted bad field", business(400, "DeviceService.INPUT_INVALID.ReasonCode.Invalid", "reasonCode must be 2 characters."), thingspace.ScopeRequest},
		{"dotted without a service prefix", business(400, "INPUT_INVALID.Device.Identifier.Invalid", ""), thingspace.ScopeDevice},
		// Numeric codes (Global eSIM endpoints) leave it to the message.
		{"numeric, a device named", business(400, "400", "Device 3: iccid \"8914\" is not a valid identifier."), thingspace.ScopeDevice},
		{"numeric, an identifier invalid for this account", business(400, "400", "Device identifier 89148000000840784267 is invalid for this account."), thingspace.ScopeDevice},
		{"numeric, an ICCID required", business(400, "400", "Device 1: ICCID is required for suspend."), thingspace.ScopeDevice},
		{"numeric, the account name invalid", business(400, "400", `Account name "abc" is invalid.`), thingspace.ScopeAccount},
		{"numeric, the account missing", business(400, "400", "accountName is required."), thingspace.ScopeAccount},
		{"numeric, the account unknown", business(404, "404", "Account 0000123456-00001 not found"), thingspace.ScopeAccount},
		{"numeric, too many devices", business(400, "400", "The request names 10001 devices; at most 10000 are allowed."), thingspace.ScopeRequest},
		{"numeric, a bad field", business(400, "400", "reasonCode must be 2 characters."), thingspace.ScopeRequest},
		{"numeric, a bad body", business(400, "400", "The request body is not valid JSON for this request: malformed at byte 12"), thingspace.ScopeRequest},
		{"numeric, nothing said", business(400, "400", ""), thingspace.ScopeUnknown},
		{"numeric, only the status text", business(400, "400", "Bad Request"), thingspace.ScopeUnknown},
		{"no body shape at all", &thingspace.APIError{HTTPStatus: 400, Shape: thingspace.ShapeNone, Message: "Bad Request"}, thingspace.ScopeUnknown},
		{"gateway unknown path", &thingspace.APIError{HTTPStatus: 400, Shape: thingspace.ShapeGateway, Code: "900906", Message: "No matching resource"}, thingspace.ScopeRequest},
		{"wrapped", fmt.Errorf("call: %w", business(400, "400", "Account name \"abc\" is invalid.")), thingspace.ScopeAccount},
		// Not refusals at all.
		{"numeric server error", business(500, "500", "Device 3 failed"), thingspace.ScopeNone},
		{"rate limited", &thingspace.APIError{HTTPStatus: 429, Shape: thingspace.ShapeGateway, Code: "900800"}, thingspace.ScopeNone},
		{"dotted session expired", business(400, "UnifiedWebService.REQUEST_FAILED.SessionToken.Expired", "Session token is expired or invalid"), thingspace.ScopeNone},
		{"numeric session expired", business(400, "400", "Session token is expired or invalid; log in again."), thingspace.ScopeNone},
		{"numeric invalid session", business(400, "400", "Invalid session token"), thingspace.ScopeNone},
		{"token invalid", &thingspace.APIError{HTTPStatus: 401, Shape: thingspace.ShapeGateway, Code: "900901"}, thingspace.ScopeNone},
		{"not an API error", io.EOF, thingspace.ScopeNone},
		{"nil", nil, thingspace.ScopeNone},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := thingspace.RefusalScope(tc.err)
			assert.Equal(t, tc.want, got, "got %s", got)
			device := tc.want == thingspace.ScopeDevice || tc.want == thingspace.ScopeUnknown
			assert.Equal(t, device, thingspace.IsDeviceRefusal(tc.err), "IsDeviceRefusal")
		})
	}
}

func TestNumeric_codes_are_classified_like_dotted_ones(t *testing.T) {
	cases := []struct {
		name                       string
		err                        *thingspace.APIError
		retryable, permanent, auth bool
		sessionExpired, numeric    bool
	}{
		{"400", business(400, "400", "Device 3 is invalid"), false, true, false, false, true},
		{"404", business(404, "404", "not found"), false, true, false, false, true},
		{"429", business(429, "429", "Too many requests"), true, false, false, false, true},
		{"500", business(500, "500", "Internal error"), true, false, false, false, true},
		{"503 that mentions a session", business(503, "503", "session store invalid"), true, false, false, false, true},
		{"400 session expired", business(400, "400", "The session has expired"), false, false, true, true, true},
		{"401", business(401, "401", "Unauthorized"), false, false, true, false, true},
		{"dotted is not numeric", business(400, "DeviceService.INPUT_INVALID.Device.Identifier.Invalid", ""), false, true, false, false, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.retryable, thingspace.Retryable(tc.err), "Retryable")
			assert.Equal(t, tc.permanent, thingspace.IsPermanent(tc.err), "IsPermanent")
			assert.Equal(t, tc.auth, thingspace.IsAuth(tc.err), "IsAuth")
			assert.Equal(t, tc.sessionExpired, errors.Is(tc.err, thingspace.ErrSessionExpired), "ErrSessionExpired")
			assert.Equal(t, tc.numeric, tc.err.Numeric(), "Numeric")
		})
	}
}

func suspendRequest(acct string, iccids ...string) thingspace.ProfileRequest {
	req := thingspace.ProfileRequest{AccountName: acct}
	for _, id := range iccids {
		req.Devices = append(req.Devices, thingspace.Device{DeviceIDs: []thingspace.DeviceID{{Kind: "iccid", ID: id}}})
	}
	return req
}

func TestClient_against_the_simulator_tells_refusals_apart_on_Global_and_other_endpoints(t *testing.T) {
	const bad = "89148000000840784260"
	e := newEnv(t, simulator.Config{Faults: simulator.Faults{RejectDevices: []string{bad}}}, nil)
	ctx := context.Background()
	deactivate := func(acct, reason string) thingspace.ProfileRequest {
		return thingspace.ProfileRequest{AccountName: acct, ReasonCode: reason, Devices: []thingspace.Device{{DeviceIDs: []thingspace.DeviceID{
			{Kind: "eid", ID: eid}, {Kind: "iccid", ID: iccid}}}}}
	}
	cases := []struct {
		name, action string
		req          thingspace.ProfileRequest
		numeric      bool
		want         thingspace.Scope
	}{
		{"a refused device on suspend", string(command.Suspend), suspendRequest(account, iccid, bad), true, thingspace.ScopeDevice},
		{"a bad account on suspend", string(command.Suspend), suspendRequest("abc", iccid), true, thingspace.ScopeAccount},
		{"no account on deactivate", string(command.Deactivate), deactivate("", ""), true, thingspace.ScopeAccount},
		{"a bad reason code on deactivate", string(command.Deactivate), deactivate(account, "FFF"), true, thingspace.ScopeRequest},
		{"a refused device on enable", string(command.Enable), enableRequest(eid, iccid, eid, bad), false, thingspace.ScopeDevice},
		{"a bad account on enable", string(command.Enable), func() thingspace.ProfileRequest {
			r := enableRequest()
			r.AccountName = "abc"
			return r
		}(), false, thingspace.ScopeAccount},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.client.ProfileAction(ctx, tc.action, tc.req)
			require.Error(t, err)
			var ae *thingspace.APIError
			require.ErrorAs(t, err, &ae)
			assert.Equal(t, http.StatusBadRequest, ae.HTTPStatus)
			assert.Equal(t, thingspace.ShapeBusiness, ae.Shape)
			assert.Equal(t, tc.numeric, ae.Numeric(), "code %q", ae.Code)
			if tc.numeric {
				assert.Equal(t, "400", ae.Code)
			}
			assert.True(t, thingspace.IsPermanent(err))
			assert.False(t, thingspace.Retryable(err))
			assert.Equal(t, tc.want, thingspace.RefusalScope(err), "%s", err)
			if tc.want == thingspace.ScopeDevice {
				assert.Contains(t, ae.Message, bad, "the message names the device, for the caller to set it apart")
			}
		})
	}
	t.Run("a server error on suspend is retryable", func(t *testing.T) {
		require.NoError(t, e.sim.SetFaults(simulator.Faults{ErrorShare: 1}))
		defer func() { require.NoError(t, e.sim.SetFaults(simulator.Faults{})) }()
		_, err := e.client.ProfileAction(ctx, "suspend", suspendRequest(account, iccid))
		var ae *thingspace.APIError
		require.ErrorAs(t, err, &ae)
		assert.Equal(t, "500", ae.Code)
		assert.True(t, thingspace.Retryable(err))
		assert.Equal(t, thingspace.ScopeNone, thingspace.RefusalScope(err))
	})
	t.Run("an expired session on suspend is renewed", func(t *testing.T) {
		e.sim.ExpireSessions()
		logins := e.sim.Stats().Logins
		_, err := e.client.ProfileAction(ctx, "suspend", suspendRequest(account, iccid))
		require.NoError(t, err)
		assert.Equal(t, logins+1, e.sim.Stats().Logins)
	})
}

// TestClient_renews_a_session_refused_with_a_numeric_code covers the reading
// of the Global pages in which even an expired session is answered
// {"errorCode":"400"}: the message says it, and the client logs in again.
func TestClient_renews_a_session_refused_with_a_numeric_code(t *testing.T) {
	sim, err := simulator.New(simulator.Config{Seed: 1})
	require.NoError(t, err)
	sim.Start()
	t.Cleanup(sim.Close)
	var refused atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/profile_suspend") && refused.CompareAndSwap(false, true) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			_ = json.NewEncoder(w).Encode(map[string]string{"errorCode": "400", "errorMessage": "Session token is expired or invalid"})
			return
		}
		sim.Handler().ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	c := demoClient(t, srv.URL)
	id, err := c.ProfileAction(context.Background(), "suspend", suspendRequest(account, iccid))
	require.NoError(t, err)
	assert.NotEmpty(t, id)
	assert.True(t, refused.Load())
	assert.EqualValues(t, 2, sim.Stats().Logins, "one login, then one more after the refusal")
}

func TestClient_secret_with_a_plus_gets_a_token(t *testing.T) {
	const secret = "a+b/c=d%e"
	e := newEnv(t, simulator.Config{ClientSecret: secret}, func(c *thingspace.Config) { c.ClientSecret = secret })
	_, err := e.client.ProfileAction(context.Background(), "enable", enableRequest())
	require.NoError(t, err)
	assert.EqualValues(t, 1, e.sim.Stats().TokenGrants)
}

func TestCallbackService_reads_serviceName_or_name(t *testing.T) {
	for _, tc := range []struct{ name, body string }{
		{"serviceName, as the SDK reads it", `{"accountName":"a","serviceName":"DeviceProfileService","url":"http://x","username":"u","password":"p"}`},
		{"name, the older reading", `{"accountName":"a","name":"DeviceProfileService","url":"http://x","username":"u"}`},
		{"both", `{"accountName":"a","serviceName":"DeviceProfileService","name":"Other","url":"http://x","username":"u"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got thingspace.CallbackService
			require.NoError(t, json.Unmarshal([]byte(tc.body), &got))
			assert.Equal(t, thingspace.CallbackService{AccountName: "a", Name: "DeviceProfileService", URL: "http://x", Username: "u"}, got)
			b, err := json.Marshal(got)
			require.NoError(t, err)
			assert.NotContains(t, string(b), `"p"`, "the password is not kept")
		})
	}
}
