package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/config"
	"github.com/esim-pipeline/thingspace-esim/internal/testkit"
)

func TestHelp_documents_every_knob(t *testing.T) {
	var stdout, stderr bytes.Buffer
	err := serve(context.Background(), []string{"--help"}, func(string) string { return "" }, &stdout, &stderr, nil)
	require.True(t, config.IsHelp(err), "%v", err)
	help := stderr.String()
	for _, knob := range []string{
		"LISTEN_ADDR", "127.0.0.1:8090", "LOG_LEVEL",
		"THINGSPACE_CLIENT_ID", "THINGSPACE_CLIENT_SECRET", "THINGSPACE_USERNAME", "THINGSPACE_PASSWORD",
		"demo-client-id", "demo-client-secret", "demo-user", "demo-password",
		"SIM_TOKEN_LIFETIME", "SIM_SESSION_IDLE", "SIM_LOCKOUT_AFTER", "SIM_CALLBACK_DELAY",
		"SIM_WARNING_SHARE", "SIM_FAIL_SHARE", "SIM_DROP_FINAL_SHARE", "SIM_STUCK_SHARE",
		"SIM_RESEND_INTERVAL", "SIM_MAX_CALLBACK_THRESHOLD", "SIM_CALLBACK_TIMEOUT", "SIM_RATE_PER_MINUTE",
		"SIM_ERROR_SHARE", "SIM_LATENCY", "SIM_DROP_SHARE", "SIM_MAX_DEVICES", "SIM_REJECT_DEVICES",
		"SIM_DELIVERY_WORKERS", "SIM_HISTORY_LIMIT", "SIM_REQUEST_RETENTION", "SIM_SEED", "SIM_SHUTDOWN_GRACE",
		"--rate-per-minute", "--delivery-workers",
	} {
		assert.Contains(t, help, knob)
	}
}

func TestRun_refuses_a_bad_setting_naming_it(t *testing.T) {
	env := map[string]string{"SIM_FAIL_SHARE": "1.5"}
	var out bytes.Buffer
	err := serve(context.Background(), nil, func(k string) string { return env[k] }, &out, &out, nil)
	require.ErrorContains(t, err, "FailShare")
	err = serve(context.Background(), nil, func(k string) string {
		return map[string]string{"SIM_LATENCY": "soon"}[k]
	}, &out, &out, nil)
	require.ErrorContains(t, err, "SIM_LATENCY")
}

func TestRun_serves_the_token_endpoint_with_the_dispatcher_credentials_and_stops(t *testing.T) {
	env := map[string]string{
		"LISTEN_ADDR":              "127.0.0.1:0",
		"THINGSPACE_CLIENT_ID":     "my-client",
		"THINGSPACE_CLIENT_SECRET": "my-secret",
		"THINGSPACE_USERNAME":      "me",
		"THINGSPACE_PASSWORD":      "my-password",
		"SIM_CALLBACK_DELAY":       "10ms",
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addrc := make(chan string, 1)
	errc := make(chan error, 1)
	logs := &testkit.SyncBuffer{}
	go func() {
		errc <- serve(ctx, nil, func(k string) string { return env[k] }, logs, logs, func(a string) { addrc <- a })
	}()
	var addr string
	select {
	case addr = <-addrc:
	case err := <-errc:
		t.Fatalf("run stopped: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("not listening")
	}

	token := func(id, secret string) *http.Response {
		req, err := http.NewRequest(http.MethodPost, "http://"+addr+"/api/ts/v1/oauth2/token",
			strings.NewReader(url.Values{"grant_type": {"client_credentials"}}.Encode()))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.SetBasicAuth(id, secret)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		return resp
	}
	resp := token("my-client", "my-secret")
	var body map[string]any
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.NotEmpty(t, body["access_token"])
	resp = token("demo-client-id", "demo-client-secret")
	resp.Body.Close()
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, "only the configured credentials")

	cancel()
	select {
	case err := <-errc:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("did not stop")
	}
	out := logs.String()
	assert.Contains(t, out, `"message":"thingspace simulator listening"`)
	assert.Contains(t, out, `"SIM_CALLBACK_DELAY":"10ms"`)
	assert.NotContains(t, out, "my-secret")
	assert.NotContains(t, out, "my-password")
}

func TestReadme_lists_every_knob(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	require.NoError(t, err)
	readme := string(b)
	start := strings.Index(readme, "<!-- thingspace-sim-knobs:start -->")
	end := strings.Index(readme, "<!-- thingspace-sim-knobs:end -->")
	require.True(t, start >= 0 && end > start, "README has the simulator's knob table")
	var rows []string
	for _, l := range strings.Split(readme[start:end], "\n") {
		if strings.HasPrefix(l, "| `--") {
			rows = append(rows, l)
		}
	}
	var s settings
	set := config.NewSet("thingspace-sim", io.Discard)
	declare(set, &s)
	names := set.Names()
	require.Len(t, rows, len(names), "one row per setting")
	for _, name := range names {
		found := false
		for _, r := range rows {
			found = found || strings.Contains(r, "`"+name+"`")
		}
		assert.True(t, found, "README's table lists %s", name)
	}
}
