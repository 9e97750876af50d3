package callback_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/callback"
	"github.com/esim-pipeline/thingspace-esim/internal/config"
	"github.com/esim-pipeline/thingspace-esim/internal/correlation"
	"github.com/esim-pipeline/thingspace-esim/internal/natstest"
	"github.com/esim-pipeline/thingspace-esim/internal/pipelinetest"
	"github.com/esim-pipeline/thingspace-esim/internal/status"
	"github.com/esim-pipeline/thingspace-esim/internal/testkit"
)

// Credentials the test service checks; distinctive, so a scan of the
// events for them cannot match anything else.
const (
	testUser = "cb-user-7Qm2"
	testPass = "cb-pass-Zk94xW"
)

// stack is callback-ingest running in-process against an embedded NATS.
type stack struct {
	t      testing.TB
	ns     *natstest.Server
	nc     *nats.Conn
	js     jetstream.JetStream
	addrs  callback.Addrs
	store  *correlation.Store
	ingest interface{ Stop() error }
	logs   *testkit.SyncBuffer
	client *http.Client
	scheme string // of the callback listener: http, or https with TLS
}

// startStack runs the service with test settings changed by mutate.
func startStack(t testing.TB, mutate func(*callback.Config)) *stack {
	t.Helper()
	return startOn(t, natstest.Run(t), mutate)
}

// startOn runs the service on ns, through pipelinetest's stack: NATS with
// the pipeline's streams and the ingest, no simulator, no dispatcher.
func startOn(t testing.TB, ns *natstest.Server, mutate func(*callback.Config)) *stack {
	t.Helper()
	logs := &testkit.SyncBuffer{}
	p := pipelinetest.Start(t, pipelinetest.NATSOnly(), pipelinetest.OnNATS(ns), pipelinetest.WithLog(logs))
	in := p.StartIngest(func(c *callback.Config) {
		c.Username, c.Password = testUser, config.NewSecret(testPass)
		c.Workers, c.StoreTimeout = 4, 2*time.Second
		if mutate != nil {
			mutate(c)
		}
	})
	s := &stack{t: t, ns: ns, nc: p.NC, js: p.JS, addrs: in.Addrs, ingest: in, logs: logs,
		client: &http.Client{Timeout: 10 * time.Second}, scheme: "http"}
	st, err := correlation.Open(context.Background(), s.js)
	require.NoError(t, err)
	s.store = st
	return s
}

// stop ends the service and requires a clean stop; idempotent.
func (s *stack) stop() {
	s.t.Helper()
	require.NoError(s.t, s.ingest.Stop(), "Run must return nil after a graceful stop")
}

func (s *stack) url(path string) string   { return s.scheme + "://" + s.addrs.Callback + path }
func (s *stack) admin(path string) string { return "http://" + s.addrs.Admin + path }

// post sends body to POST /callbacks, with Basic credentials unless user is
// empty, and returns the answer's code and body.
func (s *stack) post(body []byte, user, pass string) (int, string) {
	s.t.Helper()
	req, err := http.NewRequest(http.MethodPost, s.url("/callbacks"), bytes.NewReader(body))
	require.NoError(s.t, err)
	req.Header.Set("Content-Type", "application/json")
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	resp, err := s.client.Do(req)
	require.NoError(s.t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// postOK posts with the right Basic credentials and requires 200.
func (s *stack) postOK(body []byte) {
	s.t.Helper()
	code, answer := s.post(body, testUser, testPass)
	require.Equal(s.t, http.StatusOK, code, answer)
}

// get answers GET url's code and body.
func (s *stack) get(url string) (int, []byte) {
	s.t.Helper()
	resp, err := s.client.Get(url)
	require.NoError(s.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(s.t, err)
	return resp.StatusCode, b
}

// storedEvent is one message of the status stream.
type storedEvent struct {
	Subject string
	MsgID   string
	Raw     []byte
	Event   status.Event
}

// messages reads every message of stream on subject filter, oldest first.
func (s *stack) messages(stream, filter string) []jetstream.RawStreamMsg {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := s.js.Stream(ctx, stream)
	require.NoError(s.t, err)
	info, err := st.Info(ctx)
	require.NoError(s.t, err)
	var out []jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		require.NoError(s.t, err)
		if filter == "" || subjectMatches(filter, m.Subject) {
			out = append(out, *m)
		}
	}
	return out
}

func subjectMatches(filter, subject string) bool {
	f, p := strings.Split(filter, "."), strings.Split(subject, ".")
	for i, tok := range f {
		if tok == ">" {
			return len(p) > i
		}
		if i >= len(p) || (tok != "*" && tok != p[i]) {
			return false
		}
	}
	return len(f) == len(p)
}

// events reads every status event stored.
func (s *stack) events() []storedEvent {
	s.t.Helper()
	var out []storedEvent
	for _, m := range s.messages(broker.StatusStream, status.SubjectWildcard) {
		var ev status.Event
		require.NoError(s.t, json.Unmarshal(m.Data, &ev), string(m.Data))
		out = append(out, storedEvent{Subject: m.Subject, MsgID: m.Header.Get(nats.MsgIdHdr), Raw: m.Data, Event: ev})
	}
	return out
}

// eventsOf reads the events of one requestId.
func (s *stack) eventsOf(requestID string) []storedEvent {
	var out []storedEvent
	for _, e := range s.events() {
		if e.Event.RequestID == requestID {
			out = append(out, e)
		}
	}
	return out
}

// waitEvents waits until requestID has n events and returns them.
func (s *stack) waitEvents(requestID string, n int) []storedEvent {
	s.t.Helper()
	var got []storedEvent
	require.Eventually(s.t, func() bool {
		got = s.eventsOf(requestID)
		return len(got) >= n
	}, 20*time.Second, 20*time.Millisecond, "want %d events of request %s", n, requestID)
	return got
}

// settle waits until the fan-out consumer has handled and acked everything
// stored: the barrier after which no more events can appear.
func (s *stack) settle() {
	s.t.Helper()
	require.Eventually(s.t, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		c, err := s.js.Consumer(ctx, broker.CallbackStream, broker.CallbackFanoutConsumer)
		if err != nil {
			return false
		}
		info, err := c.Info(ctx)
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	}, 20*time.Second, 20*time.Millisecond, "fan-out consumer never caught up")
}

// streamCount is the number of messages on subject in stream.
func (s *stack) streamCount(stream, subject string) int {
	s.t.Helper()
	return len(s.messages(stream, subject))
}

// seed reads a callback example copied from shared/seeds.
func seed(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "seed_"+name+".json"))
	require.NoError(t, err)
	return b
}

// callbackBody builds a callback like the enable page's example.
type cbOpts struct {
	requestID, status, iccid, eid string
	count                         int
	fault                         bool
	user, pass                    string
}

func callbackBody(o cbOpts) []byte {
	if o.status == "" {
		o.status = "Success"
	}
	if o.count == 0 {
		o.count = 1
	}
	if o.eid == "" {
		o.eid = "666456789123456789123456784008"
	}
	body := map[string]any{
		"requestId": o.requestID,
		"deviceIds": []map[string]string{{"id": o.eid, "kind": "EID"}},
		"status":    o.status, "callbackCount": o.count, "maxCallbackThreshold": 4,
	}
	if o.user != "" {
		body["username"], body["password"] = o.user, o.pass
	}
	if o.fault {
		body["faultResponse"] = map[string]string{"faultcode": "SMSR.DEVICE.UNREACHABLE", "faultstring": "device did not answer"}
		body["deviceIds"] = []map[string]string{{"id": o.eid, "kind": "eid"}, {"id": o.iccid, "kind": "Iccid"}}
	} else {
		body["deviceResponse"] = map[string]any{"deviceProfileResponse": map[string]any{
			"deviceIdentifierCollection": []map[string]string{{"id": o.iccid, "kind": "ICCID"}, {"id": o.eid, "kind": "eid"}},
			"state":                      "Active", "profileStatus": "enable",
			"deviceCredential": map[string]string{"username": "2022326360@vzw4g.com", "password": "dev-secret-99"},
		}}
	}
	b, _ := json.Marshal(body)
	return b
}
