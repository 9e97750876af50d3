package deploy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/callback"
	"github.com/esim-pipeline/thingspace-esim/internal/config"
	"github.com/esim-pipeline/thingspace-esim/internal/dispatch"
	"github.com/esim-pipeline/thingspace-esim/internal/esimctl"
	"github.com/esim-pipeline/thingspace-esim/internal/natstest"
	"github.com/esim-pipeline/thingspace-esim/internal/simulator"
	"github.com/esim-pipeline/thingspace-esim/internal/stack"
	"github.com/esim-pipeline/thingspace-esim/internal/status"
	"github.com/esim-pipeline/thingspace-esim/internal/testkit"
)

// natsPasswords are the users' passwords of deploy/nats/accounts.conf, as
// the servers read them from their environment: markers a log scan finds.
var natsPasswords = map[string]string{
	"NATS_DISPATCHER_PASSWORD": "MARKER-nats-dispatcher-pw-1f9c",
	"NATS_INGEST_PASSWORD":     "MARKER-nats-ingest-pw-77ab",
	"NATS_ESIMCTL_PASSWORD":    "MARKER-nats-esimctl-pw-3e02",
	"NATS_OPERATOR_PASSWORD":   "MARKER-nats-operator-pw-c4d8",
	"NATS_SYS_PASSWORD":        "MARKER-nats-sys-pw-9a61",
}

var rolePassword = map[string]string{
	"dispatcher": "NATS_DISPATCHER_PASSWORD", "callback-ingest": "NATS_INGEST_PASSWORD",
	"esimctl": "NATS_ESIMCTL_PASSWORD", "operator": "NATS_OPERATOR_PASSWORD",
}

// secureNATS is a server configured as the deployments configure theirs:
// the users and permissions of deploy/nats/accounts.conf (which includes
// permissions.conf), TLS only, client certificates required.
type secureNATS struct {
	t   *testing.T
	ns  *natstest.Server
	ca  *natstest.CA
	crt map[string]natstest.Pair
}

func startSecureNATS(t *testing.T) *secureNATS {
	t.Helper()
	for k, v := range natsPasswords {
		t.Setenv(k, v)
	}
	ca := natstest.NewCA(t)
	s := &secureNATS{t: t, ca: ca, crt: map[string]natstest.Pair{}}
	s.ns = natstest.Run(t, natstest.WithTLS(t, ca, true), natstest.WithAccounts(t, "nats/accounts.conf"))
	for role := range rolePassword {
		s.crt[role] = ca.Client(role)
	}
	return s
}

// as is the NATS setting of a program running as role: the user and its
// password in NATS_URL, the CA and the role's client certificate.
func (s *secureNATS) as(role string) config.NATS {
	host := strings.TrimPrefix(s.ns.URL(), "nats://")
	return config.NATS{
		URL:   fmt.Sprintf("nats://%s:%s@%s", role, natsPasswords[rolePassword[role]], host),
		TLSCA: s.ca.CertFile, TLSCert: s.crt[role].CertFile, TLSKey: s.crt[role].KeyFile,
	}
}

// violations collects the permission errors the server sends a connection.
type violations struct {
	mu   sync.Mutex
	errs []string
	seen chan struct{}
}

func (v *violations) handler(_ *nats.Conn, _ *nats.Subscription, err error) {
	if !errors.Is(err, nats.ErrPermissionViolation) {
		return
	}
	v.mu.Lock()
	v.errs = append(v.errs, err.Error())
	v.mu.Unlock()
	select {
	case v.seen <- struct{}{}:
	default:
	}
}

func (v *violations) has(subject string) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, e := range v.errs {
		if strings.Contains(e, `"`+subject+`"`) {
			return true
		}
	}
	return false
}

// connect opens the test's own connection as role, as the programs do.
func (s *secureNATS) connect(role string) (*nats.Conn, jetstream.JetStream, *violations) {
	s.t.Helper()
	servers, opts, err := broker.Options(s.as(role))
	require.NoError(s.t, err)
	v := &violations{seen: make(chan struct{}, 1)}
	opts = append(opts, nats.ErrorHandler(v.handler), nats.PermissionErrOnSubscribe(true))
	nc, err := nats.Connect(servers, opts...)
	require.NoError(s.t, err, role)
	s.t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(s.t, err)
	return nc, js, v
}

// TestTheShippedPermissionsCarryTheWholePathOverMutualTLS runs the
// dispatcher and callback-ingest in-process against a server configured
// with deploy/nats/accounts.conf and mutual TLS, each program as its own
// user with its password in NATS_URL, ThingSpace's callbacks over HTTPS:
// commands become accepted and succeeded events; then each role is held to
// its permissions by the server itself, and no NATS password appears in any
// log line.
func TestTheShippedPermissionsCarryTheWholePathOverMutualTLS(t *testing.T) {
	s := startSecureNATS(t)
	ingestCert := s.ca.Server("callback-ingest-https")
	logs := &testkit.SyncBuffer{}
	log := zerolog.New(logs).Level(zerolog.DebugLevel)
	sim, err := stack.StartSimulator(simulator.Config{
		Faults: simulator.Faults{RatePerMinute: -1, CallbackDelay: 20 * time.Millisecond, WarningShare: 0.3}, Seed: 11,
		Logger:     zerolog.Nop(),
		HTTPClient: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: s.ca.ClientTLS(nil)}},
	}, "127.0.0.1:0", nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = sim.Stop() })
	ingest, err := stack.StartIngest(callback.Config{
		NATS: s.as("callback-ingest"), ListenAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0",
		TLSCertFile: ingestCert.CertFile, TLSKeyFile: ingestCert.KeyFile,
		Username: "cb-user", Password: config.NewSecret("cb-pass"), RetryDelay: 50 * time.Millisecond,
		CorrelationGrace: 5 * time.Second, StoreTimeout: 3 * time.Second, ShutdownGrace: 5 * time.Second,
	}, log.With().Str("program", "callback-ingest").Logger())
	require.NoError(t, err, "its log:\n%s", logs)
	t.Cleanup(func() { _ = ingest.Stop() })
	disp, err := stack.StartDispatcher(dispatch.Config{
		NATS: s.as("dispatcher"), BaseURL: sim.URL,
		ClientID: simulator.DemoClientID, ClientSecret: config.NewSecret(simulator.DemoClientSecret),
		Username: simulator.DemoUsername, Password: config.NewSecret(simulator.DemoPassword),
		Rate: 50, RateShared: true, BatchMaxWait: 20 * time.Millisecond, MetricsAddr: "127.0.0.1:0",
		CallbackURL: "https://" + ingest.Callback + "/callbacks", CallbackUsername: "cb-user", CallbackPassword: config.NewSecret("cb-pass"),
	}, log.With().Str("program", "dispatcher").Logger())
	require.NoError(t, err, "the log:\n%s", logs)
	t.Cleanup(func() { _ = disp.Stop() })
	ctx := context.Background()

	// A producer (the esimctl role) publishes; the operator follows.
	_, producer, _ := s.connect("esimctl")
	_, operator, _ := s.connect("operator")
	const n = 20
	var devs []string
	for i := range n {
		devs = append(devs, fmt.Sprintf(`{"deviceIds":[{"kind":"eid","id":"890490320000000000000000000%05d"},{"kind":"iccid","id":"891480000000000%05d"}]}`, i, i))
	}
	cmd := `{"commandId":"secure-1","accountName":"0000123456-00001","smsrOid":"1.3.6.1.4.1.31746.1.500.200.101.5","devices":[` + strings.Join(devs, ",") + `]}`
	_, err = producer.Publish(ctx, "thingspace.profile.commands.enable", []byte(cmd))
	require.NoError(t, err, "esimctl may publish a command")

	final := map[string]bool{}
	statuses := map[string]bool{}
	require.Eventually(t, func() bool {
		cons, err := operator.OrderedConsumer(ctx, broker.StatusStream, jetstream.OrderedConsumerConfig{})
		if err != nil {
			return false
		}
		batch, err := cons.Fetch(500, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return false
		}
		for m := range batch.Messages() {
			var ev status.Event
			require.NoError(t, json.Unmarshal(m.Data(), &ev))
			statuses[string(ev.Status)] = true
			if ev.Final && ev.CommandID == "secure-1" {
				final[ev.Device.ICCID] = true
			}
		}
		return len(final) == n
	}, 60*time.Second, 200*time.Millisecond, "every device final, read by the operator")
	require.True(t, statuses["accepted"] && statuses["succeeded"], "accepted and succeeded events: %v", statuses)

	t.Run("esimctl_submits_and_follows_a_run_as_its_user", func(t *testing.T) {
		csv := filepath.Join(t.TempDir(), "devices.csv")
		require.NoError(t, os.WriteFile(csv, []byte("iccid,eid\n89148000000000099001,89049032000000000000000000099001\n89148000000000099002,89049032000000000000000000099002\n"), 0o600))
		n := s.as("esimctl")
		env := map[string]string{"NATS_URL": n.URL, "NATS_TLS_CA": n.TLSCA, "NATS_TLS_CERT": n.TLSCert, "NATS_TLS_KEY": n.TLSKey, "HOME": t.TempDir()}
		var out, errOut bytes.Buffer
		code := esimctl.Run(ctx, []string{"submit", "--action", "enable", "--account", "0000123456-00001",
			"--smsr-oid", "1.3.6.1.4.1.31746.1.500.200.101.5", "--out", filepath.Join(t.TempDir(), "results.csv"), csv},
			mapEnv(env), &out, &errOut)
		require.Equal(t, esimctl.ExitOK, code, "esimctl submit: %s", errOut.String())
		out.Reset()
		code = esimctl.Run(ctx, []string{"status", "89148000000000099001"}, mapEnv(env), &out, &errOut)
		require.Equal(t, esimctl.ExitOK, code, "esimctl status: %s", errOut.String())
		require.Contains(t, out.String(), "succeeded")
		// By EID, through the index the ingest keeps as its user.
		require.Eventually(t, func() bool {
			out.Reset()
			code = esimctl.Run(ctx, []string{"status", "89049032000000000000000000099002"}, mapEnv(env), &out, &errOut)
			return code == esimctl.ExitOK && strings.Contains(out.String(), "89148000000000099002")
		}, 20*time.Second, 50*time.Millisecond, "esimctl status EID: %s", errOut.String())
		logs.Write(errOut.Bytes()) // scanned for passwords below
	})

	t.Run("esimctl_lists_and_replays_dead_letters_the_operator_reads_them", func(t *testing.T) {
		_, err := producer.Publish(ctx, "thingspace.profile.commands.enable", []byte(`{"commandId":"secure-broken"`))
		require.NoError(t, err)
		require.Eventually(t, func() bool { return msgs(t, operator, broker.DeadLetterStream) > 0 }, 20*time.Second, 20*time.Millisecond)
		n := s.as("esimctl")
		env := map[string]string{"NATS_URL": n.URL, "NATS_TLS_CA": n.TLSCA, "NATS_TLS_CERT": n.TLSCert, "NATS_TLS_KEY": n.TLSKey, "HOME": t.TempDir()}
		var out, errOut bytes.Buffer
		code := esimctl.Run(ctx, []string{"deadletters", "list"}, mapEnv(env), &out, &errOut)
		require.Equal(t, esimctl.ExitOK, code, "esimctl deadletters list: %s", errOut.String())
		require.Contains(t, out.String(), "undecodable command")
		code = esimctl.Run(ctx, []string{"deadletters", "replay", "--reason", "undecodable"}, mapEnv(env), &out, &errOut)
		require.Equal(t, esimctl.ExitOK, code, "esimctl deadletters replay: %s", errOut.String())
		require.Contains(t, errOut.String(), "replayed 1 of 1 dead letters")

		o := s.as("operator")
		oenv := map[string]string{"NATS_URL": o.URL, "NATS_TLS_CA": o.TLSCA, "NATS_TLS_CERT": o.TLSCert, "NATS_TLS_KEY": o.TLSKey, "HOME": t.TempDir()}
		out.Reset()
		code = esimctl.Run(ctx, []string{"deadletters", "show", "1"}, mapEnv(oenv), &out, &errOut)
		require.Equal(t, esimctl.ExitOK, code, "esimctl deadletters show as the operator: %s", errOut.String())
		require.Contains(t, out.String(), "replay:  replayed ")
		logs.Write(errOut.Bytes())
	})

	t.Run("the_operator_looks_a_device_up_by_EID", func(t *testing.T) {
		_, js, _ := s.connect("operator")
		found, err := broker.LookupDevice(short(t), js, "89049032000000000000000000000007")
		require.NoError(t, err)
		require.NotNil(t, found, "the index names the profile of the EID")
		require.Contains(t, string(found.Latest.Data), "89148000000000000007")
	})

	t.Run("a_replay_runs_as_the_ingest_user", func(t *testing.T) {
		_, js, _ := s.connect("callback-ingest")
		st, err := callback.Replay(ctx, js, callback.ReplayOptions{DryRun: true}, zerolog.Nop())
		require.NoError(t, err)
		require.Positive(t, st.Existing, "the replay read the stored callbacks and the status history")
	})

	t.Run("the_ingest_cannot_publish_a_command", func(t *testing.T) {
		nc, js, v := s.connect("callback-ingest")
		before := msgs(t, js, broker.CommandStream)
		require.NoError(t, nc.Publish("thingspace.profile.commands.enable", []byte(cmd)))
		require.NoError(t, nc.Flush())
		require.Eventually(t, func() bool { return v.has("thingspace.profile.commands.enable") }, 5*time.Second, 10*time.Millisecond)
		_, err := js.Publish(short(t), "thingspace.profile.commands.disable", []byte(cmd))
		require.Error(t, err, "a JetStream publish of a command by the ingest")
		require.Equal(t, before, msgs(t, js, broker.CommandStream), "no command was stored")
		_, err = js.CreateOrUpdateConsumer(short(t), broker.CommandStream, jetstream.ConsumerConfig{Durable: "ingest-peek"})
		require.Error(t, err, "the ingest made a consumer on the commands")
		require.NoError(t, nc.Publish("$KV."+broker.RequestBucket+".req-forged", []byte(`{}`)))
		require.NoError(t, nc.Flush())
		require.Eventually(t, func() bool { return v.has("$KV." + broker.RequestBucket + ".req-forged") }, 5*time.Second, 10*time.Millisecond,
			"the ingest writes its EID index and no other bucket")
	})

	t.Run("the_dispatcher_cannot_read_raw_callbacks", func(t *testing.T) {
		nc, js, v := s.connect("dispatcher")
		sub, err := nc.SubscribeSync(broker.CallbackSubject)
		require.NoError(t, err)
		_, err = sub.NextMsg(5 * time.Second)
		require.ErrorIs(t, err, nats.ErrPermissionViolation, "a core subscription to raw callbacks")
		_, err = js.OrderedConsumer(short(t), broker.CallbackStream, jetstream.OrderedConsumerConfig{})
		require.Error(t, err, "an ordered consumer on the raw callbacks")
		st, err := js.Stream(short(t), broker.CallbackStream) // info is allowed: broker.Ensure needs it
		require.NoError(t, err)
		_, err = st.GetMsg(short(t), 1)
		require.Error(t, err, "a message get on the raw callbacks")
		_, err = st.GetLastMsgForSubject(short(t), broker.CallbackSubject)
		require.Error(t, err, "a direct get on the raw callbacks")
		// Nor the ingest's replies, where its pull deliveries arrive.
		sub, err = nc.SubscribeSync("_INBOX.callback-ingest.>")
		require.NoError(t, err)
		_, err = sub.NextMsg(5 * time.Second)
		require.ErrorIs(t, err, nats.ErrPermissionViolation, "the ingest's inbox")
		require.True(t, v.has(broker.CallbackSubject))
	})

	t.Run("the_operator_reads_and_never_writes", func(t *testing.T) {
		nc, js, v := s.connect("operator")
		require.NoError(t, nc.Publish("thingspace.profile.commands.enable", []byte(cmd)))
		require.NoError(t, nc.Publish("thingspace.profile.status.enable.89148000000000000001", []byte(`{}`)))
		require.NoError(t, nc.Flush())
		require.Eventually(t, func() bool {
			return v.has("thingspace.profile.commands.enable") && v.has("thingspace.profile.status.enable.89148000000000000001")
		}, 5*time.Second, 10*time.Millisecond)
		st, err := js.Stream(short(t), broker.StatusStream)
		require.NoError(t, err, "stream info")
		_, err = st.GetLastMsgForSubject(short(t), "thingspace.profile.status.enable.89148000000000000001")
		require.NoError(t, err, "a device's latest event")
		require.Error(t, js.DeleteStream(short(t), broker.StatusStream), "the operator deleted a stream")
	})

	t.Run("the_esimctl_user_cannot_forge_events", func(t *testing.T) {
		nc, _, v := s.connect("esimctl")
		require.NoError(t, nc.Publish("thingspace.profile.status.enable.89148000000000000001", []byte(`{}`)))
		require.NoError(t, nc.Flush())
		require.Eventually(t, func() bool { return v.has("thingspace.profile.status.enable.89148000000000000001") },
			5*time.Second, 10*time.Millisecond)
	})

	require.NoError(t, disp.Stop())
	require.NoError(t, ingest.Stop())
	require.NotContains(t, logs.String(), "Permissions Violation", "a program was refused what the code needs")
	for k, pw := range natsPasswords {
		require.NotContains(t, logs.String(), pw, "the password of %s in a log line", k)
	}
	require.Contains(t, logs.String(), "nats connected")
}

// short is a context for one request that the server may refuse: a
// refused request is never answered, so it ends by its deadline.
func short(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	t.Cleanup(cancel)
	return ctx
}

func msgs(t *testing.T, js jetstream.JetStream, stream string) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, stream)
	require.NoError(t, err)
	info, err := st.Info(ctx)
	require.NoError(t, err)
	return info.State.Msgs
}
