package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/config"
	"github.com/esim-pipeline/thingspace-esim/internal/natstest"
	"github.com/esim-pipeline/thingspace-esim/internal/simulator"
	"github.com/esim-pipeline/thingspace-esim/internal/status"
)

func TestAMissingSettingNamesItsVariable(t *testing.T) {
	var stderr bytes.Buffer
	env := map[string]string{"THINGSPACE_CLIENT_ID": "id", "THINGSPACE_USERNAME": "u", "THINGSPACE_PASSWORD": "p"}
	err := run(context.Background(), nil, func(k string) string { return env[k] }, &bytes.Buffer{}, &stderr)
	require.EqualError(t, err, "missing required setting THINGSPACE_CLIENT_SECRET (set the environment variable or --thingspace-client-secret)")
}

func TestHelpListsEverySetting(t *testing.T) {
	var stderr bytes.Buffer
	err := run(context.Background(), []string{"--help"}, func(string) string { return "" }, &bytes.Buffer{}, &stderr)
	require.ErrorIs(t, err, config.ErrHelp)
	for _, v := range []string{"NATS_URL", "NATS_CREDS", "LOG_LEVEL", "THINGSPACE_BASE_URL", "THINGSPACE_CLIENT_ID",
		"THINGSPACE_CLIENT_SECRET", "THINGSPACE_USERNAME", "THINGSPACE_PASSWORD", "THINGSPACE_RATE", "BATCH_MAX_DEVICES",
		"BATCH_MAX_WAIT", "METRICS_ADDR", "STREAM_REPLICAS", "CALLBACK_DEADLINE", "CALLBACK_URL", "CALLBACK_USERNAME", "CALLBACK_PASSWORD"} {
		require.Contains(t, stderr.String(), "("+v+")")
	}
}

// TestSIGTERMWithWorkInFlightExitsZeroAndLosesNothing runs the built
// program, stops it with SIGTERM in the middle of its work, and lets a second
// one finish: exit 0, every command accepted, none sent twice.
func TestSIGTERMWithWorkInFlightExitsZeroAndLosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the program")
	}
	bin := filepath.Join(t.TempDir(), "dispatcher")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	require.NoError(t, err, "%s", out)

	ns := natstest.Run(t)
	_, js := ns.JetStream()
	ctx := context.Background()
	require.NoError(t, broker.Ensure(ctx, js, broker.StreamSettings{}))
	sim, err := simulator.New(simulator.Config{Faults: simulator.Faults{RatePerMinute: -1, Latency: 30 * time.Millisecond}, Logger: zerolog.Nop(), HistoryLimit: 100000})
	require.NoError(t, err)
	sim.Start()
	hs := httptest.NewServer(sim.Handler())
	t.Cleanup(func() { hs.Close(); sim.Close() })

	const n = 3000
	for i := range n {
		body := fmt.Sprintf(`{"commandId":"c%d","accountName":"0000123456-00001","smsrOid":"1.3.6.1.4.1.31746.1.500.200.101.5","devices":[{"deviceIds":[{"kind":"eid","id":"89049032%024d"},{"kind":"iccid","id":"89148%015d"}]}]}`, i, i, i)
		_, err := js.Publish(ctx, "thingspace.profile.commands.enable", []byte(body))
		require.NoError(t, err)
	}
	env := append(os.Environ(),
		"NATS_URL="+ns.URL(), "THINGSPACE_BASE_URL="+hs.URL,
		"THINGSPACE_CLIENT_ID="+simulator.DemoClientID, "THINGSPACE_CLIENT_SECRET="+simulator.DemoClientSecret,
		"THINGSPACE_USERNAME="+simulator.DemoUsername, "THINGSPACE_PASSWORD="+simulator.DemoPassword,
		"THINGSPACE_RATE=20", "BATCH_MAX_DEVICES=100", "BATCH_MAX_WAIT=100ms", "METRICS_ADDR=127.0.0.1:0")
	accepted := func() uint64 {
		s, err := js.Stream(ctx, broker.StatusStream)
		require.NoError(t, err)
		info, err := s.Info(ctx)
		require.NoError(t, err)
		return info.State.Msgs
	}
	start := func() (*exec.Cmd, *bytes.Buffer) {
		var logs bytes.Buffer
		cmd := exec.Command(bin)
		cmd.Env, cmd.Stdout, cmd.Stderr = env, &logs, &logs
		require.NoError(t, cmd.Start())
		t.Cleanup(func() { _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() })
		return cmd, &logs
	}

	first, logs := start()
	require.Eventually(t, func() bool { return accepted() >= 500 }, 60*time.Second, 10*time.Millisecond)
	require.NoError(t, first.Process.Signal(syscall.SIGTERM))
	require.NoError(t, first.Wait(), "SIGTERM is a clean exit 0:\n%s", logs)
	require.Less(t, accepted(), uint64(n), "the stop came with work in flight")
	require.Contains(t, logs.String(), "dispatcher stopped")

	second, _ := start()
	require.Eventually(t, func() bool { return accepted() == n }, 90*time.Second, 20*time.Millisecond)
	require.NoError(t, second.Process.Signal(syscall.SIGTERM))
	require.NoError(t, second.Wait())

	cons, err := js.Consumer(ctx, broker.CommandStream, broker.DispatcherConsumer)
	require.NoError(t, err)
	info, err := cons.Info(ctx)
	require.NoError(t, err)
	require.Zero(t, info.NumAckPending+int(info.NumPending), "every command acknowledged")

	sent := map[string]int{}
	for _, c := range sim.Calls() {
		if c.Action == "enable" && c.Status == 200 {
			for _, ids := range c.Devices {
				for _, id := range ids {
					if strings.EqualFold(id.Kind, "iccid") {
						sent[id.ID]++
					}
				}
			}
		}
	}
	require.Len(t, sent, n)
	for id, k := range sent {
		require.Equal(t, 1, k, "device %s sent once", id)
	}
	checkEvents(t, js, n)
}

// checkEvents reads the status stream: one accepted event per command.
func checkEvents(t *testing.T, js jetstream.JetStream, n int) {
	t.Helper()
	ctx := context.Background()
	cons, err := js.OrderedConsumer(ctx, broker.StatusStream, jetstream.OrderedConsumerConfig{})
	require.NoError(t, err)
	ids := map[string]bool{}
	for len(ids) < n {
		msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		require.NoError(t, err)
		var ev status.Event
		require.NoError(t, json.Unmarshal(msg.Data(), &ev))
		require.Equal(t, status.Accepted, ev.Status)
		require.False(t, ids[ev.CommandID], "one event per command")
		ids[ev.CommandID] = true
	}
}
