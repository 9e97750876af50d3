package thingspace_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/simulator"
	"github.com/esim-pipeline/thingspace-esim/internal/testkit"
	"github.com/esim-pipeline/thingspace-esim/internal/thingspace"
)

func TestClient_each_action_reaches_its_endpoint_with_the_exact_body(t *testing.T) {
	waiver := false
	cases := []struct {
		name string
		path string
		req  thingspace.ProfileRequest
	}{
		{"enable", "/api/m2m/v1/devices/profile/actions/enable", enableRequest()},
		{"disable", "/api/m2m/v1/devices/profile/actions/disable", enableRequest()},
		{"delete", "/api/m2m/v1/devices/profile/actions/delete", enableRequest()},
		{"deactivate", "/api/m2m/v1/devices/profile/actions/deactivate", thingspace.ProfileRequest{
			AccountName: account, ServicePlan: "plan", EtfWaiver: &waiver, ReasonCode: "FF",
			Devices: []thingspace.Device{{DeviceIDs: []thingspace.DeviceID{{Kind: "eid", ID: eid}, {Kind: "iccid", ID: iccid}, {Kind: "imei", ID: imei}}}},
		}},
		{"suspend", "/api/m2m/v1/devices/profile/actions/profile_suspend", thingspace.ProfileRequest{
			AccountName: account, ServicePlan: "plan",
			Devices: []thingspace.Device{{DeviceIDs: []thingspace.DeviceID{{Kind: "Iccid", ID: iccid}}}},
		}},
	}
	e := newEnv(t, simulator.Config{}, nil)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id, err := e.client.ProfileAction(context.Background(), tc.name, tc.req)
			require.NoError(t, err)
			require.NotEmpty(t, id)
			got := lastCall(t, e.sim, tc.path)
			assert.Equal(t, http.MethodPost, got.Method)
			assert.Equal(t, http.StatusOK, got.Status)
			assert.Equal(t, tc.name, got.Action)
			assert.Equal(t, account, got.Account)
			assert.Equal(t, id, got.RequestID)
			want, err := json.Marshal(tc.req)
			require.NoError(t, err)
			assert.JSONEq(t, string(want), string(got.Body))
			require.Len(t, got.Devices, 1)
			assert.Equal(t, tc.req.Devices[0].DeviceIDs, got.Devices[0])
		})
	}
	stats := e.sim.Stats()
	assert.EqualValues(t, 1, stats.Logins, "one session serves every call")
	assert.EqualValues(t, 1, stats.TokensIssued)
}

func TestClient_ProfileAction_refuses_an_unknown_action(t *testing.T) {
	e := newEnv(t, simulator.Config{}, nil)
	_, err := e.client.ProfileAction(context.Background(), "explode", enableRequest())
	require.ErrorContains(t, err, `unknown profile action "explode"`)
	assert.Empty(t, e.sim.Calls(), "nothing was sent")
}

func TestClient_sends_both_tokens_and_json_on_business_calls(t *testing.T) {
	var mu sync.Mutex
	var seen http.Header
	sim, err := simulator.New(simulator.Config{Seed: 1})
	require.NoError(t, err)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, thingspace.ActionPathPrefix) {
			mu.Lock()
			seen = r.Header.Clone()
			mu.Unlock()
		}
		sim.Handler().ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	c := demoClient(t, srv.URL)
	_, err = c.ProfileAction(context.Background(), "enable", enableRequest())
	require.NoError(t, err)
	mu.Lock()
	defer mu.Unlock()
	assert.True(t, strings.HasPrefix(seen.Get("Authorization"), "Bearer "))
	assert.NotEmpty(t, seen.Get("VZ-M2M-Token"))
	assert.Equal(t, "application/json", seen.Get("Content-Type"))
}

func TestClient_recovers_from_expiry_with_exactly_one_login(t *testing.T) {
	cases := []struct {
		name         string
		expire       func(*simulator.Server)
		newTokens    int64
		tokenRefusal bool
	}{
		{"expired_api_token", (*simulator.Server).ExpireTokens, 1, true},
		{"expired_session", (*simulator.Server).ExpireSessions, 0, false},
		{"both_expired", func(s *simulator.Server) { s.ExpireTokens(); s.ExpireSessions() }, 1, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, simulator.Config{}, nil)
			ctx := context.Background()
			_, err := e.client.ProfileAction(ctx, "enable", enableRequest())
			require.NoError(t, err)
			before := e.sim.Stats()
			require.EqualValues(t, 1, before.Logins)

			tc.expire(e.sim)
			_, err = e.client.ProfileAction(ctx, "enable", enableRequest())
			require.NoError(t, err)

			after := e.sim.Stats()
			assert.EqualValues(t, 1, after.Logins-before.Logins, "exactly one re-login")
			assert.EqualValues(t, tc.newTokens, after.TokensIssued-before.TokensIssued)
			assert.Zero(t, after.LoginFailures)
			// The refused call and its single retry.
			calls := e.sim.Calls()
			var statuses []int
			for _, c := range calls {
				if c.Action == "enable" {
					statuses = append(statuses, c.Status)
				}
			}
			wantRefusal := http.StatusBadRequest
			if tc.tokenRefusal {
				wantRefusal = http.StatusUnauthorized
			}
			assert.Equal(t, []int{200, wantRefusal, 200}, statuses)
		})
	}
}

func TestClient_recovers_when_the_session_idles_out_on_the_simulator_clock(t *testing.T) {
	clock := testkit.NewClock(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC))
	e := newEnv(t, simulator.Config{Now: clock.Now, SessionIdle: 20 * time.Minute}, nil)
	ctx := context.Background()
	_, err := e.client.ProfileAction(ctx, "enable", enableRequest())
	require.NoError(t, err)
	clock.Add(19 * time.Minute) // still alive: use slides the expiry
	_, err = e.client.ProfileAction(ctx, "enable", enableRequest())
	require.NoError(t, err)
	clock.Add(19 * time.Minute)
	_, err = e.client.ProfileAction(ctx, "enable", enableRequest())
	require.NoError(t, err)
	assert.EqualValues(t, 1, e.sim.Stats().Logins, "a used session does not expire")
	clock.Add(21 * time.Minute)
	_, err = e.client.ProfileAction(ctx, "enable", enableRequest())
	require.NoError(t, err)
	assert.EqualValues(t, 2, e.sim.Stats().Logins, "an idle session is replaced by one login")
}

func TestClient_concurrent_calls_after_expiry_share_one_login(t *testing.T) {
	for _, expireTokens := range []bool{false, true} {
		name := "session"
		if expireTokens {
			name = "api_token_and_session"
		}
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, simulator.Config{Faults: simulator.Faults{RatePerMinute: -1}}, nil)
			ctx := context.Background()
			_, err := e.client.ProfileAction(ctx, "enable", enableRequest())
			require.NoError(t, err)
			before := e.sim.Stats()
			e.sim.ExpireSessions()
			if expireTokens {
				e.sim.ExpireTokens()
			}
			const n = 50
			var wg sync.WaitGroup
			start := make(chan struct{})
			errs := make(chan error, n)
			for range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					_, err := e.client.ProfileAction(ctx, "enable", enableRequest())
					errs <- err
				}()
			}
			close(start)
			wg.Wait()
			close(errs)
			for err := range errs {
				require.NoError(t, err)
			}
			after := e.sim.Stats()
			assert.EqualValues(t, 1, after.Logins-before.Logins, "one login for all %d callers", n)
			assert.EqualValues(t, n, after.ActionAccepted-before.ActionAccepted)
			if expireTokens {
				assert.EqualValues(t, 1, after.TokensIssued-before.TokensIssued)
			}
		})
	}
}

func TestClient_failed_login_is_not_retried_and_says_why(t *testing.T) {
	e := newEnv(t, simulator.Config{}, func(c *thingspace.Config) { c.Password = "wrong-password-123" })
	ctx := context.Background()
	_, err := e.client.ProfileAction(ctx, "enable", enableRequest())
	require.Error(t, err)
	assert.ErrorIs(t, err, thingspace.ErrLoginFailed)
	assert.True(t, thingspace.IsAuth(err))
	assert.False(t, thingspace.Retryable(err), "a wrong password does not heal by retrying")
	assert.False(t, thingspace.IsPermanent(err), "the devices are not at fault")
	wait, ok := thingspace.RetryAfter(err)
	assert.True(t, ok)
	assert.InDelta(t, time.Minute.Seconds(), wait.Seconds(), 1)
	assert.Contains(t, err.Error(), "session login")
	assert.Contains(t, err.Error(), "Credentials.Invalid")
	assert.NotContains(t, err.Error(), "wrong-password-123")

	// Further calls during the back-off are refused without a login.
	for range 3 {
		_, err = e.client.ProfileAction(ctx, "enable", enableRequest())
		require.ErrorIs(t, err, thingspace.ErrLoginFailed)
		assert.Contains(t, err.Error(), "refused after a failed login")
	}
	st := e.sim.Stats()
	assert.EqualValues(t, 1, st.LoginFailures, "exactly one login attempt reached ThingSpace")
	assert.Zero(t, st.ActionCalls)
	assert.NotContains(t, e.logs.String(), "wrong-password-123")
}

func TestClient_logs_in_again_after_the_back_off(t *testing.T) {
	e := newEnv(t, simulator.Config{}, func(c *thingspace.Config) {
		c.Password = "wrong"
		c.LoginBackoff = 20 * time.Millisecond
	})
	_, err := e.client.ProfileAction(context.Background(), "enable", enableRequest())
	require.ErrorIs(t, err, thingspace.ErrLoginFailed)
	require.Eventually(t, func() bool {
		_, err := e.client.ProfileAction(context.Background(), "enable", enableRequest())
		return err != nil && !strings.Contains(err.Error(), "refused after")
	}, 5*time.Second, 5*time.Millisecond)
	assert.EqualValues(t, 2, e.sim.Stats().LoginFailures)
}

func TestClient_wrong_client_secret_is_a_login_failure_without_the_secret(t *testing.T) {
	e := newEnv(t, simulator.Config{}, func(c *thingspace.Config) { c.ClientSecret = "s3cr3t-value" })
	_, err := e.client.ProfileAction(context.Background(), "enable", enableRequest())
	require.ErrorIs(t, err, thingspace.ErrLoginFailed)
	var ae *thingspace.APIError
	require.ErrorAs(t, err, &ae)
	assert.Equal(t, thingspace.ShapeOAuth, ae.Shape)
	assert.Equal(t, "invalid_client", ae.Code)
	assert.Equal(t, http.StatusUnauthorized, ae.HTTPStatus)
	assert.NotContains(t, err.Error(), "s3cr3t-value")
	assert.EqualValues(t, 1, e.sim.Stats().TokenFailures)
	assert.Zero(t, e.sim.Stats().Logins)
}

func TestClient_rate_limited_call_is_classified(t *testing.T) {
	e := newEnv(t, simulator.Config{Faults: simulator.Faults{RatePerMinute: 1}}, nil)
	ctx := context.Background()
	_, err := e.client.ProfileAction(ctx, "enable", enableRequest())
	require.NoError(t, err)
	_, err = e.client.ProfileAction(ctx, "enable", enableRequest())
	require.Error(t, err)
	assert.ErrorIs(t, err, thingspace.ErrRateLimited)
	assert.True(t, thingspace.Retryable(err))
	assert.False(t, thingspace.IsPermanent(err))
	wait, ok := thingspace.RetryAfter(err)
	require.True(t, ok)
	assert.GreaterOrEqual(t, wait, time.Second)
	assert.LessOrEqual(t, wait, time.Minute)
	var ae *thingspace.APIError
	require.ErrorAs(t, err, &ae)
	assert.Equal(t, http.StatusTooManyRequests, ae.HTTPStatus)
}

func TestClient_business_error_is_decoded(t *testing.T) {
	bad := "89148000000840784260"
	e := newEnv(t, simulator.Config{Faults: simulator.Faults{RejectDevices: []string{bad}}}, nil)
	_, err := e.client.ProfileAction(context.Background(), "enable", enableRequest(eid, iccid, eid, bad))
	require.Error(t, err)
	var ae *thingspace.APIError
	require.ErrorAs(t, err, &ae)
	assert.Equal(t, http.StatusBadRequest, ae.HTTPStatus)
	assert.Equal(t, thingspace.ShapeBusiness, ae.Shape)
	assert.Equal(t, "DeviceService.INPUT_INVALID.Device.Identifier.Invalid", ae.Code)
	assert.Equal(t, thingspace.CodeIdentifierInvalid, ae.ShortCode())
	assert.Contains(t, ae.Message, bad)
	assert.ErrorIs(t, err, &thingspace.APIError{Code: thingspace.CodeIdentifierInvalid})
	assert.NotErrorIs(t, err, &thingspace.APIError{Code: thingspace.CodeKindInvalid})
	assert.NotErrorIs(t, err, thingspace.ErrSessionExpired)
	assert.True(t, thingspace.IsPermanent(err))
	assert.False(t, thingspace.Retryable(err))
	assert.False(t, thingspace.IsAuth(err))
}

func TestClient_server_errors_and_lost_connections_are_retryable(t *testing.T) {
	cases := []struct {
		name   string
		faults simulator.Faults
		check  func(t *testing.T, err error)
	}{
		{"http_500", simulator.Faults{ErrorShare: 1}, func(t *testing.T, err error) {
			var ae *thingspace.APIError
			require.ErrorAs(t, err, &ae)
			assert.Equal(t, http.StatusInternalServerError, ae.HTTPStatus)
			assert.ErrorIs(t, err, &thingspace.APIError{Code: thingspace.CodeUnexpectedError})
		}},
		{"dropped_connection", simulator.Faults{DropShare: 1}, func(t *testing.T, err error) {
			var ae *thingspace.APIError
			assert.False(t, errors.As(err, &ae), "no answer, no APIError")
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, simulator.Config{}, nil)
			_, err := e.client.ProfileAction(context.Background(), "enable", enableRequest()) // log in cleanly
			require.NoError(t, err)
			require.NoError(t, e.sim.SetFaults(tc.faults))
			_, err = e.client.ProfileAction(context.Background(), "enable", enableRequest())
			require.Error(t, err)
			assert.True(t, thingspace.Retryable(err), "%v", err)
			assert.False(t, thingspace.IsPermanent(err))
			tc.check(t, err)
		})
	}
}

func TestClient_per_call_timeout_is_retryable_but_caller_cancellation_is_not(t *testing.T) {
	e := newEnv(t, simulator.Config{}, func(c *thingspace.Config) { c.Timeout = 100 * time.Millisecond })
	_, err := e.client.ProfileAction(context.Background(), "enable", enableRequest())
	require.NoError(t, err)
	require.NoError(t, e.sim.SetFaults(simulator.Faults{Latency: 2 * time.Second}))

	_, err = e.client.ProfileAction(context.Background(), "enable", enableRequest())
	require.Error(t, err)
	assert.ErrorIs(t, err, thingspace.ErrTimeout)
	assert.True(t, thingspace.Retryable(err))

	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := e.client.ProfileAction(ctx, "enable", enableRequest())
		errc <- err
	}()
	cancel()
	err = <-errc
	require.Error(t, err)
	assert.ErrorIs(t, err, context.Canceled)
	assert.False(t, thingspace.Retryable(err))

	dctx, dcancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer dcancel()
	_, err = e.client.ProfileAction(dctx, "enable", enableRequest())
	require.Error(t, err)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.NotErrorIs(t, err, thingspace.ErrTimeout)
	assert.False(t, thingspace.Retryable(err), "the caller's own deadline is not ours to retry")
}

func TestClient_request_status_follows_the_devices(t *testing.T) {
	got := make(chan *thingspace.Callback, 10)
	listener := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var buf strings.Builder
		_, _ = io.Copy(&buf, r.Body)
		cb, err := thingspace.ParseCallback([]byte(buf.String()))
		if err == nil {
			got <- cb
		}
	}))
	t.Cleanup(listener.Close)
	e := newEnv(t, simulator.Config{Faults: simulator.Faults{FailShare: 0}}, nil)
	ctx := context.Background()
	require.NoError(t, e.client.RegisterCallback(ctx, account, thingspace.CallbackRegistration{
		Name: thingspace.ServiceDeviceProfile, URL: listener.URL}))
	id, err := e.client.ProfileAction(ctx, "enable", enableRequest())
	require.NoError(t, err)
	select {
	case cb := <-got:
		assert.Equal(t, id, cb.RequestID)
	case <-time.After(5 * time.Second):
		t.Fatal("no callback")
	}
	st, err := e.client.RequestStatus(ctx, account, id)
	require.NoError(t, err)
	assert.Equal(t, id, st.RequestID)
	assert.Equal(t, "Success", st.Status)
	require.Len(t, st.SubRequests, 1)
	assert.Equal(t, "Success", st.SubRequests[0].Status)
	assert.Equal(t, map[string]string{"eid": eid, "iccid": iccid}, st.SubRequests[0].Identifiers())

	_, err = e.client.RequestStatus(ctx, account, "no-such-request")
	require.Error(t, err)
	assert.True(t, thingspace.IsPermanent(err))
}

func TestClient_callback_listeners_register_list_and_remove(t *testing.T) {
	e := newEnv(t, simulator.Config{}, nil)
	ctx := context.Background()
	reg := thingspace.CallbackRegistration{Name: thingspace.ServiceDeviceProfile,
		URL: "https://listener.example:9001/callbacks", Username: "u", Password: "listener-secret"}
	require.NoError(t, e.client.RegisterCallback(ctx, account, reg))
	list, err := e.client.ListCallbacks(ctx, account)
	require.NoError(t, err)
	assert.Equal(t, []thingspace.CallbackService{{AccountName: account, Name: reg.Name, URL: reg.URL, Username: "u"}}, list,
		"the name read from serviceName, the password the answer carries dropped")
	assert.Equal(t, []thingspace.CallbackRegistration{reg}, e.sim.Listeners(account), "credentials kept for delivery")

	require.NoError(t, e.client.RemoveCallback(ctx, account, reg.Name))
	list, err = e.client.ListCallbacks(ctx, account)
	require.NoError(t, err)
	assert.Empty(t, list)
	err = e.client.RemoveCallback(ctx, account, reg.Name)
	require.Error(t, err)
	assert.True(t, thingspace.IsPermanent(err))

	require.Error(t, e.client.RegisterCallback(ctx, account, thingspace.CallbackRegistration{Name: "x"}))
}

func TestClient_logs_each_call_without_secrets(t *testing.T) {
	e := newEnv(t, simulator.Config{}, nil)
	_, err := e.client.ProfileAction(context.Background(), "enable", enableRequest())
	require.NoError(t, err)
	logs := e.logs.String()
	assert.Contains(t, logs, `"path":"/api/m2m/v1/devices/profile/actions/enable"`)
	assert.Contains(t, logs, `"status":200`)
	assert.Contains(t, logs, `"duration"`)
	for _, secret := range []string{simulator.DemoClientSecret, simulator.DemoPassword, "Bearer"} {
		assert.NotContains(t, logs, secret)
	}
}

func TestClient_Logout_ends_the_session(t *testing.T) {
	e := newEnv(t, simulator.Config{}, nil)
	ctx := context.Background()
	_, err := e.client.ProfileAction(ctx, "enable", enableRequest())
	require.NoError(t, err)
	require.NoError(t, e.client.Logout(ctx))
	assert.EqualValues(t, 1, e.sim.Stats().Logouts)
	_, err = e.client.ProfileAction(ctx, "enable", enableRequest())
	require.NoError(t, err)
	assert.EqualValues(t, 2, e.sim.Stats().Logins)
}

func TestNew_validates_its_config(t *testing.T) {
	cases := []struct {
		name string
		cfg  thingspace.Config
		want string
	}{
		{"missing_client_id", thingspace.Config{ClientSecret: "s", Username: "u", Password: "p"}, "ClientID is required"},
		{"missing_password", thingspace.Config{ClientID: "c", ClientSecret: "s", Username: "u"}, "Password is required"},
		{"bad_base_url", thingspace.Config{BaseURL: "ftp://x", ClientID: "c", ClientSecret: "s", Username: "u", Password: "p"}, "BaseURL"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := thingspace.New(tc.cfg)
			require.ErrorContains(t, err, tc.want)
		})
	}
	_, err := thingspace.New(thingspace.Config{ClientID: "c", ClientSecret: "s", Username: "u", Password: "p"})
	require.NoError(t, err, "defaults fill the rest")
}

func TestClient_concurrent_callers_after_a_bad_credential_cause_one_attempt(t *testing.T) {
	cases := []struct {
		name  string
		tweak func(*thingspace.Config)
		count func(simulator.Stats) int64
	}{
		{"wrong_password", func(c *thingspace.Config) { c.Password = "wrong" }, func(s simulator.Stats) int64 { return s.LoginFailures }},
		{"wrong_client_secret", func(c *thingspace.Config) { c.ClientSecret = "wrong" }, func(s simulator.Stats) int64 { return s.TokenFailures }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, simulator.Config{}, tc.tweak)
			const n = 20
			var wg sync.WaitGroup
			errs := make(chan error, n)
			for range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, err := e.client.ProfileAction(context.Background(), "enable", enableRequest())
					errs <- err
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				require.ErrorIs(t, err, thingspace.ErrLoginFailed)
			}
			assert.EqualValues(t, 1, tc.count(e.sim.Stats()), "one attempt reached ThingSpace")
		})
	}
}

func TestClient_failing_token_refresh_is_not_repeated_by_concurrent_callers(t *testing.T) {
	// A 1s lifetime is within oauth2's expiry margin: every call refreshes.
	sim, err := simulator.New(simulator.Config{Seed: 1, TokenLifetime: time.Second, Faults: simulator.Faults{RatePerMinute: -1}})
	require.NoError(t, err)
	var broken atomic.Bool
	var tokenCalls atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == thingspace.TokenPath && broken.Load() {
			tokenCalls.Add(1)
			http.Error(w, `{"error":"temporarily_unavailable"}`, http.StatusServiceUnavailable)
			return
		}
		sim.Handler().ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	c := demoClient(t, srv.URL)
	_, err = c.ProfileAction(context.Background(), "enable", enableRequest())
	require.NoError(t, err)

	broken.Store(true)
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := c.ProfileAction(context.Background(), "enable", enableRequest())
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.ErrorIs(t, err, thingspace.ErrLoginFailed)
		assert.True(t, thingspace.Retryable(err), "a 503 from the token endpoint is transient: %v", err)
	}
	assert.EqualValues(t, 1, tokenCalls.Load(), "one failed refresh, then refusals")
}
