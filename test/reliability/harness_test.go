package reliability_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/command"
	"github.com/esim-pipeline/thingspace-esim/internal/device"
	"github.com/esim-pipeline/thingspace-esim/internal/pipelinetest"
	"github.com/esim-pipeline/thingspace-esim/internal/simulator"
	"github.com/esim-pipeline/thingspace-esim/internal/stack"
	"github.com/esim-pipeline/thingspace-esim/internal/status"
)

// bins are the programs TestMain builds once: the pinned nats-server of
// go.mod and the two services, from this checkout.
var bins *pipelinetest.Binaries

func TestMain(m *testing.M) {
	if os.Getenv("RELIABILITY") == "" {
		fmt.Println("reliability: skipped; `make test-chaos` runs these tests (RELIABILITY=1)")
		os.Exit(0)
	}
	b, err := pipelinetest.BuildBinaries()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if os.Getenv("RELIABILITY_KEEP_LOGS") != "" {
		b.LogCopies = filepath.Join(os.TempDir(), "reliability-")
	}
	bins = b
	code := m.Run()
	_ = b.Remove()
	os.Exit(code)
}

// Credentials the simulator accepts and the dispatcher presents.
const (
	clientID     = "reliability-client"
	clientSecret = "reliability-client-secret"
	tsUser       = "reliability-user"
	tsPassword   = "reliability-password"
	cbUser       = "reliability-callback-user"
	cbPassword   = "reliability-callback-password"
	account      = "0000123456-00001"
	smsrOid      = "1.3.6.1.4.1.31746.1.500.200.101.5"
)

// connect opens the test's own connection, reconnecting forever.
func connect(t testing.TB, url string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond),
		nats.RetryOnFailedConnect(true), nats.Name("reliability-test"))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	return nc, js
}

// startSim runs the simulator in this process on 127.0.0.1:0.
func startSim(t testing.TB, cfg simulator.Config) *stack.Simulator {
	t.Helper()
	return startSimWith(t, cfg, nil)
}

// startSimWith is startSim with the simulator's handler wrapped.
func startSimWith(t testing.TB, cfg simulator.Config, wrap func(http.Handler) http.Handler) *stack.Simulator {
	t.Helper()
	if cfg.ClientSecret == "" {
		cfg.ClientID, cfg.ClientSecret, cfg.Username, cfg.Password = clientID, clientSecret, tsUser, tsPassword
	}
	if cfg.HistoryLimit == 0 {
		cfg.HistoryLimit = 200000
	}
	if cfg.CallbackTimeout == 0 {
		cfg.CallbackTimeout = 5 * time.Second
	}
	if cfg.Seed == 0 {
		cfg.Seed = 42
	}
	cfg.Logger = zerolog.Nop()
	s, err := stack.StartSimulator(cfg, "127.0.0.1:0", wrap)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Stop() })
	return s
}

// newIngest describes a callback-ingest process on natsURL; extra overrides
// settings.
func newIngest(t testing.TB, natsURL string, extra map[string]string) *pipelinetest.Service {
	t.Helper()
	env := map[string]string{
		"NATS_URL":          natsURL,
		"LOG_LEVEL":         "info",
		"CALLBACK_USERNAME": cbUser,
		"CALLBACK_PASSWORD": cbPassword,
		"CORRELATION_GRACE": "10s",
		"STORE_TIMEOUT":     "2s",
		"SHUTDOWN_GRACE":    "5s",
	}
	maps.Copy(env, extra)
	return bins.NewIngest(t, env)
}

// newDispatcher describes a dispatcher process on natsURL calling the
// simulator at simURL (and registering callbackURL, when not empty); extra
// overrides settings.
func newDispatcher(t testing.TB, natsURL, simURL, callbackURL string, extra map[string]string) *pipelinetest.Service {
	t.Helper()
	env := map[string]string{
		"NATS_URL":                 natsURL,
		"LOG_LEVEL":                "info",
		"THINGSPACE_BASE_URL":      simURL,
		"THINGSPACE_CLIENT_ID":     clientID,
		"THINGSPACE_CLIENT_SECRET": clientSecret,
		"THINGSPACE_USERNAME":      tsUser,
		"THINGSPACE_PASSWORD":      tsPassword,
		"THINGSPACE_TIMEOUT":       "5s",
		"THINGSPACE_RATE":          "20",
		"BATCH_MAX_DEVICES":        "200",
		"BATCH_MAX_WAIT":           "200ms",
		"ACK_WAIT":                 "3s",
		"PINNED_TTL":               "4s",
	}
	if callbackURL != "" {
		env["CALLBACK_URL"] = callbackURL
		env["CALLBACK_USERNAME"] = cbUser
		env["CALLBACK_PASSWORD"] = cbPassword
	}
	maps.Copy(env, extra)
	return bins.NewDispatcher(t, env)
}

// ---- commands ----

// iccid and eid make distinct valid-format identifiers for device i of a
// test run (prefix tells runs apart within one stream).
func iccid(prefix, i int) string { return fmt.Sprintf("8914800%03d%010d", prefix, i) }
func eid(prefix, i int) string   { return fmt.Sprintf("8904903200000000000%03d%010d", prefix, i) }

// enableCommand is a one-device enable command.
func enableCommand(id, acct string, prefix, i int) []byte {
	b, err := command.Encode(command.Enable, id, acct, command.Options{SmsrOid: smsrOid},
		[]device.Set{{EID: eid(prefix, i), ICCID: iccid(prefix, i)}})
	if err != nil {
		panic(err)
	}
	return b
}

// publishCommands publishes n one-device enable commands and waits until
// JetStream acknowledged every one; it returns their ICCIDs.
func publishCommands(t testing.TB, js jetstream.JetStream, prefix, n int) []string {
	t.Helper()
	return publishFor(t, js, account, prefix, n)
}

// publishFor is publishCommands for the account acct.
func publishFor(t testing.TB, js jetstream.JetStream, acct string, prefix, n int) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ids := make([]string, n)
	for start := 0; start < n; start += 500 {
		end := min(n, start+500)
		futures := make([]jetstream.PubAckFuture, 0, end-start)
		for i := start; i < end; i++ {
			ids[i] = iccid(prefix, i)
			id := fmt.Sprintf("cmd-%03d-%d", prefix, i)
			m := nats.NewMsg("thingspace.profile.commands.enable")
			m.Data = enableCommand(id, acct, prefix, i)
			m.Header.Set(nats.MsgIdHdr, id)
			f, err := js.PublishMsgAsync(m)
			require.NoError(t, err)
			futures = append(futures, f)
		}
		for _, f := range futures {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				require.NoError(t, err, "command not stored")
			case <-ctx.Done():
				t.Fatal("commands not acknowledged in time")
			}
		}
	}
	return ids
}

// ensureStreams creates the pipeline's streams as the services would, so a
// test can publish before they start.
func ensureStreams(t testing.TB, js jetstream.JetStream, replicas int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	require.NoError(t, broker.Ensure(ctx, js, broker.StreamSettings{Replicas: replicas}))
}

// ---- events ----

// tally counts every status event of the stream, read in order by a live
// ordered consumer (which resumes by itself after a NATS restart).
type tally struct {
	mu       sync.Mutex
	total    int
	final    map[string]bool           // iccid -> a final event seen
	statuses map[string]map[string]int // iccid -> status -> events
	facts    map[string]int            // requestId|iccid|status -> events (callback facts)
	accepted map[string]int            // iccid -> accepted events
	events   []status.Event
	keep     bool
}

func watchEvents(t testing.TB, js jetstream.JetStream, keep bool) *tally {
	t.Helper()
	tl := &tally{final: map[string]bool{}, statuses: map[string]map[string]int{}, facts: map[string]int{},
		accepted: map[string]int{}, keep: keep}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var cons jetstream.Consumer
	require.Eventually(t, func() bool {
		c, err := js.OrderedConsumer(ctx, broker.StatusStream, jetstream.OrderedConsumerConfig{})
		cons = c
		return err == nil
	}, time.Minute, 100*time.Millisecond, "status stream never appeared")
	cc, err := cons.Consume(func(m jetstream.Msg) {
		var ev status.Event
		if err := json.Unmarshal(m.Data(), &ev); err != nil {
			t.Errorf("undecodable event on %s: %v", m.Subject(), err)
			return
		}
		tl.add(ev)
	})
	require.NoError(t, err)
	t.Cleanup(cc.Stop)
	return tl
}

func (tl *tally) add(ev status.Event) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	tl.total++
	dev := ev.Device.Key()
	if tl.statuses[dev] == nil {
		tl.statuses[dev] = map[string]int{}
	}
	tl.statuses[dev][string(ev.Status)]++
	if ev.Final {
		tl.final[dev] = true
	}
	switch ev.Status {
	case status.Accepted:
		tl.accepted[dev]++
	case status.Succeeded, status.Failed, status.Pending:
		tl.facts[ev.RequestID+"|"+dev+"|"+string(ev.Status)]++
	}
	if tl.keep {
		tl.events = append(tl.events, ev)
	}
}

// missingFinal lists the devices of ids without a final event.
func (tl *tally) missingFinal(ids []string) []string {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	var out []string
	for _, id := range ids {
		if !tl.final[id] {
			out = append(out, id)
		}
	}
	return out
}

func (tl *tally) countAccepted() int {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	return len(tl.accepted)
}

// waitFinal waits until every device of ids has a final event.
func waitFinal(t testing.TB, tl *tally, ids []string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if len(tl.missingFinal(ids)) == 0 {
			return
		}
		time.Sleep(100 * time.Millisecond) // polling interval
	}
	missing := tl.missingFinal(ids)
	t.Fatalf("%d of %d devices have no final event after %s (first: %v)", len(missing), len(ids), within,
		missing[:min(5, len(missing))])
}

// duplicateFacts lists callback facts (requestId, device, status) that
// became more than one event.
func (tl *tally) duplicateFacts() []string {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	var out []string
	for k, n := range tl.facts {
		if n > 1 {
			out = append(out, fmt.Sprintf("%s x%d", k, n))
		}
	}
	return out
}

func (tl *tally) hasFact(requestID, dev, st string) bool {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	return tl.facts[requestID+"|"+dev+"|"+st] > 0
}

// ---- simulator records ----

// submissions counts, per device, the action calls ThingSpace accepted
// that named it (from the simulator's record of calls of ≤1000 devices).
func submissions(calls []simulator.Call) map[string]int {
	out := map[string]int{}
	for _, c := range calls {
		if c.Action == "" || c.RequestID == "" || c.Status != http.StatusOK {
			continue
		}
		for _, ids := range c.Devices {
			for _, id := range ids {
				if strings.EqualFold(id.Kind, "iccid") {
					out[id.ID]++
				}
			}
		}
	}
	return out
}

// eventStatus maps a simulator delivery's callback status to the event's.
func eventStatus(cbStatus string) string {
	switch strings.ToLower(cbStatus) {
	case "success":
		return string(status.Succeeded)
	case "failed":
		return string(status.Failed)
	case "warning":
		return string(status.Pending)
	}
	return "?" + cbStatus
}

// streamMsgs is the message count of a stream.
func streamMsgs(t testing.TB, js jetstream.JetStream, name string) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, name)
	require.NoError(t, err, name)
	info, err := st.Info(ctx)
	require.NoError(t, err, name)
	return info.State.Msgs
}

// postJSON posts body to url with the callback credentials; it returns the
// status, or 0 when no answer came.
func postCallback(c *http.Client, url string, body []byte) int {
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0
	}
	req.Header.Set("Content-Type", "application/json")
	req.SetBasicAuth(cbUser, cbPassword)
	resp, err := c.Do(req)
	if err != nil {
		return 0
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode
}

// scanLines calls f for each line of text.
func scanLines(text string, f func(n int, line string)) {
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	n := 0
	for sc.Scan() {
		n++
		f(n, sc.Text())
	}
}

// metricSum scrapes a Prometheus endpoint and sums the samples of name
// whose labels contain every one of labels (`code="error"`).
func metricSum(t testing.TB, url, name string, labels ...string) float64 {
	t.Helper()
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	total := 0.0
	scanLines(string(b), func(_ int, line string) {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			return
		}
		for _, l := range labels {
			if !strings.Contains(line, l) {
				return
			}
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		require.NoError(t, err, line)
		total += v
	})
	return total
}

// rawMsg is one stored message: subject, headers and body.
type rawMsg struct {
	subject string
	header  nats.Header
	data    []byte
}

// readStream reads every message of a stream with an ordered consumer.
func readStream(t testing.TB, js jetstream.JetStream, name string) []rawMsg {
	t.Helper()
	want := streamMsgs(t, js, name)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cons, err := js.OrderedConsumer(ctx, name, jetstream.OrderedConsumerConfig{})
	require.NoError(t, err)
	var out []rawMsg
	for uint64(len(out)) < want {
		batch, err := cons.Fetch(1000, jetstream.FetchMaxWait(5*time.Second))
		require.NoError(t, err)
		got := 0
		for m := range batch.Messages() {
			out = append(out, rawMsg{subject: m.Subject(), header: m.Headers(), data: m.Data()})
			got++
		}
		require.NoError(t, batch.Error())
		require.Positive(t, got, "%s: read %d of %d messages", name, len(out), want)
	}
	return out
}
