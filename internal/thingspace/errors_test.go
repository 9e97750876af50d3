package thingspace_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/thingspace"
)

func TestAPIError_Is_matches_codes_without_the_service_prefix(t *testing.T) {
	cases := []struct {
		name   string
		err    *thingspace.APIError
		target error
		want   bool
	}{
		{"session_expired_with_prefix", &thingspace.APIError{HTTPStatus: 400, Shape: thingspace.ShapeBusiness,
			Code: "DeviceService.REQUEST_FAILED.SessionToken.Expired"}, thingspace.ErrSessionExpired, true},
		{"session_expired_other_service", &thingspace.APIError{HTTPStatus: 400, Shape: thingspace.ShapeBusiness,
			Code: "UnifiedWebService.REQUEST_FAILED.SessionToken.Expired"}, thingspace.ErrSessionExpired, true},
		{"session_expired_without_prefix", &thingspace.APIError{HTTPStatus: 400, Shape: thingspace.ShapeBusiness,
			Code: "REQUEST_FAILED.SessionToken.Expired"}, thingspace.ErrSessionExpired, true},
		{"other_business_code_is_not_session", &thingspace.APIError{HTTPStatus: 400, Shape: thingspace.ShapeBusiness,
			Code: "DeviceService.REQUEST_FAILED.DeviceNotFound"}, thingspace.ErrSessionExpired, false},
		{"gateway_900901", &thingspace.APIError{HTTPStatus: 401, Shape: thingspace.ShapeGateway, Code: "900901"}, thingspace.ErrTokenInvalid, true},
		{"gateway_900902", &thingspace.APIError{HTTPStatus: 401, Shape: thingspace.ShapeGateway, Code: "900902"}, thingspace.ErrTokenInvalid, true},
		{"gateway_900906_is_not_token", &thingspace.APIError{HTTPStatus: 400, Shape: thingspace.ShapeGateway, Code: "900906"}, thingspace.ErrTokenInvalid, false},
		{"http_429", &thingspace.APIError{HTTPStatus: 429}, thingspace.ErrRateLimited, true},
		{"http_503_is_not_429", &thingspace.APIError{HTTPStatus: 503}, thingspace.ErrRateLimited, false},
		{"code_target", &thingspace.APIError{Code: "DeviceService.INPUT_INVALID.MaxRequestsExceeded"},
			&thingspace.APIError{Code: thingspace.CodeMaxRequestsExceeded}, true},
		{"prefixed_code_target", &thingspace.APIError{Code: "DeviceService.INPUT_INVALID.MaxRequestsExceeded"},
			&thingspace.APIError{Code: "OtherService.INPUT_INVALID.MaxRequestsExceeded"}, true},
		{"status_target", &thingspace.APIError{HTTPStatus: 404}, &thingspace.APIError{HTTPStatus: 404}, true},
		{"status_and_code_target_mismatch", &thingspace.APIError{HTTPStatus: 400, Code: "X.INPUT_INVALID.A"},
			&thingspace.APIError{HTTPStatus: 404, Code: "INPUT_INVALID.A"}, false},
		{"empty_target_matches_nothing", &thingspace.APIError{HTTPStatus: 400}, &thingspace.APIError{}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			wrapped := fmt.Errorf("context: %w", tc.err)
			assert.Equal(t, tc.want, errors.Is(wrapped, tc.target))
		})
	}
}

func TestAPIError_Error_prints_code_and_message_only(t *testing.T) {
	e := &thingspace.APIError{HTTPStatus: 400, Code: "DeviceService.INPUT_INVALID.X", Message: "bad",
		Method: "POST", Path: "/p", RetryAfter: 2 * time.Second}
	assert.Equal(t, "thingspace: POST /p: HTTP 400 DeviceService.INPUT_INVALID.X: bad (retry after 2s)", e.Error())
}

func TestRetryable(t *testing.T) {
	cases := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"http_429", &thingspace.APIError{HTTPStatus: 429}, true},
		{"http_500", &thingspace.APIError{HTTPStatus: 500}, true},
		{"http_503_wrapped", fmt.Errorf("x: %w", &thingspace.APIError{HTTPStatus: 503}), true},
		{"http_400", &thingspace.APIError{HTTPStatus: 400}, false},
		{"http_401", &thingspace.APIError{HTTPStatus: 401}, false},
		{"per_call_timeout", fmt.Errorf("x: %w", thingspace.ErrTimeout), true},
		{"caller_cancelled", fmt.Errorf("x: %w", context.Canceled), false},
		{"caller_deadline", fmt.Errorf("x: %w", context.DeadlineExceeded), false},
		{"connection_reset", fmt.Errorf("x: %w", syscall.ECONNRESET), true},
		{"connection_refused", &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, true},
		{"eof", fmt.Errorf("x: %w", io.EOF), true},
		{"unexpected_eof", io.ErrUnexpectedEOF, true},
		{"plain_error", errors.New("boom"), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { assert.Equal(t, tc.want, thingspace.Retryable(tc.err)) })
	}
}

func TestIsPermanent_and_IsAuth(t *testing.T) {
	cases := []struct {
		name            string
		err             error
		permanent, auth bool
	}{
		{"business_400", &thingspace.APIError{HTTPStatus: 400, Shape: thingspace.ShapeBusiness, Code: "D.INPUT_INVALID.Device.Kind.Invalid"}, true, false},
		{"unsupported_media_415", &thingspace.APIError{HTTPStatus: 415}, true, false},
		{"session_expired_400", &thingspace.APIError{HTTPStatus: 400, Shape: thingspace.ShapeBusiness, Code: "D.REQUEST_FAILED.SessionToken.Expired"}, false, true},
		{"token_401", &thingspace.APIError{HTTPStatus: 401, Shape: thingspace.ShapeGateway, Code: "900901"}, false, true},
		{"forbidden_403", &thingspace.APIError{HTTPStatus: 403}, false, true},
		{"rate_limited_429", &thingspace.APIError{HTTPStatus: 429}, false, false},
		{"server_500", &thingspace.APIError{HTTPStatus: 500}, false, false},
		{"login_failed", fmt.Errorf("x: %w", thingspace.ErrLoginFailed), false, true},
		{"network", io.EOF, false, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.permanent, thingspace.IsPermanent(tc.err), "IsPermanent")
			assert.Equal(t, tc.auth, thingspace.IsAuth(tc.err), "IsAuth")
		})
	}
}

// retryAfterServer answers every call with 503 and the given Retry-After,
// after a normal login, so the header is read the way the client reads it.
func TestRetryAfter_reads_seconds_and_http_dates(t *testing.T) {
	date := time.Now().Add(90 * time.Second).UTC().Format(http.TimeFormat)
	cases := []struct {
		name     string
		header   string
		min, max time.Duration
		ok       bool
	}{
		{"seconds", "7", 7 * time.Second, 7 * time.Second, true},
		{"http_date", date, 80 * time.Second, 91 * time.Second, true},
		{"date_in_the_past", "Mon, 02 Jan 2006 15:04:05 GMT", 0, 0, false},
		{"absent", "", 0, 0, false},
		{"garbage", "soon", 0, 0, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				switch r.URL.Path {
				case thingspace.TokenPath:
					w.Header().Set("Content-Type", "application/json")
					_, _ = io.WriteString(w, `{"access_token":"t","token_type":"bearer","expires_in":3600}`)
				case thingspace.LoginPath:
					_, _ = io.WriteString(w, `{"sessionToken":"s"}`)
				default:
					if tc.header != "" {
						w.Header().Set("Retry-After", tc.header)
					}
					w.WriteHeader(http.StatusServiceUnavailable)
					_, _ = io.WriteString(w, `<html>busy</html>`)
				}
			}))
			defer srv.Close()
			c, err := thingspace.New(thingspace.Config{BaseURL: srv.URL, ClientID: "c", ClientSecret: "s", Username: "u", Password: "p"})
			require.NoError(t, err)
			_, err = c.ProfileAction(context.Background(), "enable", enableRequest())
			require.Error(t, err)
			var ae *thingspace.APIError
			require.ErrorAs(t, err, &ae)
			assert.Equal(t, thingspace.ShapeNone, ae.Shape)
			assert.Equal(t, "Service Unavailable", ae.Message)
			assert.True(t, thingspace.Retryable(err))
			d, ok := thingspace.RetryAfter(err)
			if tc.name == "date_in_the_past" {
				// A past date means "now": present but zero, reported as absent.
				assert.False(t, ok)
				return
			}
			assert.Equal(t, tc.ok, ok)
			assert.GreaterOrEqual(t, d, tc.min)
			assert.LessOrEqual(t, d, tc.max)
		})
	}
}
