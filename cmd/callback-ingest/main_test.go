package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/natstest"
)

// The test binary doubles as the program: with this variable set it runs
// main, so exit codes and signals are tested on a real process.
const runMainEnv = "CALLBACK_INGEST_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// asProgram runs the test binary as callback-ingest with only env set.
func asProgram(t *testing.T, ctx context.Context, env map[string]string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	cmd.Env = []string{runMainEnv + "=1", "PATH=" + os.Getenv("PATH")}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	return cmd
}

func TestBadSettingStopsWithOneLineNamingIt(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want string
	}{
		{name: "replicas_not_a_number", env: map[string]string{"STREAM_REPLICAS": "three"}, want: "STREAM_REPLICAS"},
		{name: "replicas_out_of_range", env: map[string]string{"STREAM_REPLICAS": "9"}, want: "STREAM_REPLICAS"},
		{name: "username_without_password", env: map[string]string{"CALLBACK_USERNAME": "thingspace"}, want: "CALLBACK_PASSWORD"},
		{name: "password_without_username", env: map[string]string{"CALLBACK_PASSWORD": "s3cret-value"}, want: "CALLBACK_USERNAME"},
		{name: "password_file_missing", env: map[string]string{"CALLBACK_USERNAME": "u", "CALLBACK_PASSWORD_FILE": "/nonexistent/pw"}, want: "CALLBACK_PASSWORD_FILE"},
		{name: "unknown_log_level", env: map[string]string{"LOG_LEVEL": "loud"}, want: "LOG_LEVEL"},
		{name: "listen_addr_without_port", env: map[string]string{"LISTEN_ADDR": "localhost"}, want: "LISTEN_ADDR"},
		{name: "grace_not_a_duration", env: map[string]string{"CORRELATION_GRACE": "soon"}, want: "CORRELATION_GRACE"},
		{name: "no_workers", env: map[string]string{"FANOUT_WORKERS": "-1"}, want: "FANOUT_WORKERS"},
		{name: "tls_cert_without_key", env: map[string]string{"TLS_CERT_FILE": "/etc/tls/tls.crt"}, want: "TLS_KEY_FILE"},
		{name: "tls_cert_file_missing", env: map[string]string{"TLS_CERT_FILE": "/nonexistent/tls.crt", "TLS_KEY_FILE": "/nonexistent/tls.key"}, want: "TLS_CERT_FILE"},
		{name: "nats_client_cert_without_key", env: map[string]string{"NATS_TLS_CERT": "/etc/nats/client.pem"}, want: "NATS_TLS_KEY"},
		{name: "nats_url_with_two_identities", env: map[string]string{"NATS_URL": "nats://a:s3cret-value@h1,nats://b:x@h2"}, want: "NATS_URL"},
		{name: "no_connections", env: map[string]string{"MAX_CONNECTIONS": "-1"}, want: "MAX_CONNECTIONS"},
		{name: "admin_on_the_callback_port", env: map[string]string{"LISTEN_ADDR": ":9000", "METRICS_ADDR": ":9000"}, want: "METRICS_ADDR"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			cmd := asProgram(t, context.Background(), tc.env)
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			var exit *exec.ExitError
			require.True(t, errors.As(err, &exit), "want a non-zero exit, got %v", err)
			assert.NotZero(t, exit.ExitCode())
			lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
			require.Len(t, lines, 1, "one line: %q", stderr.String())
			assert.Contains(t, lines[0], tc.want)
			assert.NotContains(t, stderr.String()+stdout.String(), "s3cret-value")
		})
	}
}

func TestHelpListsEverySetting(t *testing.T) {
	var out bytes.Buffer
	err := run(context.Background(), []string{"--help"}, func(string) string { return "" }, &out)
	require.Error(t, err)
	for _, v := range []string{"NATS_URL", "NATS_CREDS", "LOG_LEVEL", "LISTEN_ADDR", "CALLBACK_USERNAME", "CALLBACK_PASSWORD",
		"METRICS_ADDR", "STREAM_REPLICAS", "CORRELATION_GRACE", "FANOUT_WORKERS", "FANOUT_RETRY_DELAY",
		"FANOUT_MAX_ACK_PENDING", "RECORD_CACHE", "STORE_TIMEOUT", "SHUTDOWN_GRACE",
		"TLS_CERT_FILE", "TLS_KEY_FILE", "MAX_CONNECTIONS", "NATS_TLS_CA", "NATS_TLS_CERT", "NATS_TLS_KEY"} {
		assert.Contains(t, out.String(), "("+v+")")
	}
	assert.Contains(t, out.String(), ":8080")
	assert.Contains(t, out.String(), ":9091")

	cmd := asProgram(t, context.Background(), nil, "--help")
	cmd.Stdout = &bytes.Buffer{}
	assert.NoError(t, cmd.Run(), "--help exits 0")

	out.Reset()
	require.Error(t, run(context.Background(), []string{"replay", "--help"}, func(string) string { return "" }, &out))
	for _, v := range []string{"NATS_URL", "NATS_CREDS", "NATS_TLS_CA", "NATS_TLS_CERT", "NATS_TLS_KEY", "REPLAY_SINCE"} {
		assert.Contains(t, out.String(), "("+v+")", "replay --help")
	}
}

func TestSIGTERMStopsGracefullyWithExitZero(t *testing.T) {
	ns := natstest.Run(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := asProgram(t, ctx, map[string]string{
		"NATS_URL": ns.URL(), "LISTEN_ADDR": "127.0.0.1:0", "METRICS_ADDR": "127.0.0.1:0",
		"CALLBACK_USERNAME": "thingspace", "CALLBACK_PASSWORD": "s3cret-value",
	})
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())

	var logged strings.Builder
	ready := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			logged.WriteString(sc.Text() + "\n")
			if strings.Contains(sc.Text(), `"message":"ready"`) {
				close(ready)
			}
		}
	}()
	select {
	case <-ready:
	case <-done:
		t.Fatalf("program ended before ready: %s", stderr.String())
	case <-ctx.Done():
		t.Fatal("program not ready within a minute")
	}
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	<-done
	require.NoError(t, cmd.Wait(), "SIGTERM is a clean stop: exit 0; stderr: %s", stderr.String())
	assert.Contains(t, logged.String(), `"CALLBACK_PASSWORD":"[redacted]"`, "config logged at start, secret masked")
	assert.NotContains(t, logged.String(), "s3cret-value")
	assert.Contains(t, logged.String(), `"message":"stopped"`)
}

// TestANATSURLPasswordIsNeverLogged runs the program against a server with
// the deployments' users and mutual TLS, its password in NATS_URL: it
// connects and gets ready, and the password is in no line it writes; the
// start-up config line shows the URL without it.
func TestANATSURLPasswordIsNeverLogged(t *testing.T) {
	const pw = "MARKER-url-password-5e1d"
	for _, k := range []string{"NATS_DISPATCHER_PASSWORD", "NATS_ESIMCTL_PASSWORD", "NATS_OPERATOR_PASSWORD", "NATS_SYS_PASSWORD"} {
		t.Setenv(k, "unused-"+k)
	}
	t.Setenv("NATS_INGEST_PASSWORD", pw)
	ca := natstest.NewCA(t)
	ns := natstest.Run(t, natstest.WithTLS(t, ca, true), natstest.WithAccounts(t, "../../deploy/nats/accounts.conf"))
	client := ca.Client("callback-ingest")
	host := strings.TrimPrefix(ns.URL(), "nats://")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := asProgram(t, ctx, map[string]string{
		"NATS_URL":    "nats://callback-ingest:" + pw + "@" + host,
		"NATS_TLS_CA": ca.CertFile, "NATS_TLS_CERT": client.CertFile, "NATS_TLS_KEY": client.KeyFile,
		"LISTEN_ADDR": "127.0.0.1:0", "METRICS_ADDR": "127.0.0.1:0", "LOG_LEVEL": "debug",
	})
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	var logged strings.Builder
	ready := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			logged.WriteString(sc.Text() + "\n")
			if strings.Contains(sc.Text(), `"message":"ready"`) {
				close(ready)
			}
		}
	}()
	select {
	case <-ready:
	case <-done:
		t.Fatalf("program ended before ready: %s", stderr.String())
	case <-ctx.Done():
		t.Fatal("program not ready within a minute")
	}
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	<-done
	require.NoError(t, cmd.Wait(), "stderr: %s", stderr.String())
	out := logged.String() + stderr.String()
	assert.NotContains(t, out, pw)
	assert.Contains(t, out, `"NATS_URL":"nats://callback-ingest:[redacted]@`+host+`"`)
	assert.Contains(t, out, `"message":"nats connected"`)
}
