package reliability_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/command"
	"github.com/esim-pipeline/thingspace-esim/internal/device"
	"github.com/esim-pipeline/thingspace-esim/internal/simulator"
	"github.com/esim-pipeline/thingspace-esim/internal/status"
)

// bins are the programs TestMain builds once: the pinned nats-server of
// go.mod and the two services, from this checkout.
var bins struct{ nats, dispatcher, ingest string }

func TestMain(m *testing.M) {
	if os.Getenv("RELIABILITY") == "" {
		fmt.Println("reliability: skipped; `make test-chaos` runs these tests (RELIABILITY=1)")
		os.Exit(0)
	}
	dir, err := os.MkdirTemp("", "reliability-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bins.nats = filepath.Join(dir, "nats-server")
	bins.dispatcher = filepath.Join(dir, "dispatcher")
	bins.ingest = filepath.Join(dir, "callback-ingest")
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i, b := range []struct{ out, pkg string }{
		{bins.nats, "github.com/nats-io/nats-server/v2"},
		{bins.dispatcher, "github.com/esim-pipeline/thingspace-esim/cmd/dispatcher"},
		{bins.ingest, "github.com/esim-pipeline/thingspace-esim/cmd/callback-ingest"},
	} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := exec.Command("go", "build", "-o", b.out, b.pkg).CombinedOutput()
			if err != nil {
				errs[i] = fmt.Errorf("go build %s: %w\n%s", b.pkg, err, out)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		fmt.Fprintln(os.Stderr, err)
		_ = os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
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

// freePort picks a loopback port nobody listens on now.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func addr(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }

// ---- processes ----

// proc is one program run by a test, its stdout and stderr in a log file.
type proc struct {
	t    testing.TB
	name string
	bin  string
	args []string
	env  []string
	log  string // file every run appends to

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	runs int
}

// newProc describes a program; start runs it. The log file is kept in the
// test's temp dir, and its tail is printed when the test fails.
func newProc(t testing.TB, name, bin string, args, env []string) *proc {
	t.Helper()
	p := &proc{t: t, name: name, bin: bin, args: args, env: env, log: filepath.Join(t.TempDir(), name+".log")}
	t.Cleanup(func() {
		p.stop(10 * time.Second)
		if t.Failed() {
			p.dumpTail(40)
		}
		if os.Getenv("RELIABILITY_KEEP_LOGS") != "" {
			_ = os.WriteFile(filepath.Join(os.TempDir(), "reliability-"+name+".log"), []byte(p.logText()), 0o644)
		}
	})
	return p
}

// start runs the program (again); it must not be running.
func (p *proc) start() {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	require.Nil(p.t, p.cmd, "%s is already running", p.name)
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	require.NoError(p.t, err)
	cmd := exec.Command(p.bin, p.args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}, p.env...)
	cmd.Stdout, cmd.Stderr = f, f
	require.NoError(p.t, cmd.Start(), p.name)
	p.runs++
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		_ = f.Close()
		close(done)
	}()
	p.cmd, p.done = cmd, done
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill() {
	p.t.Helper()
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.cmd = nil
	p.mu.Unlock()
	require.NotNil(p.t, cmd, "%s is not running", p.name)
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-done
}

// stop sends SIGTERM and waits up to grace, then kills.
func (p *proc) stop(grace time.Duration) {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(grace):
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-done
	}
}

// exited reports whether a started run has ended by itself.
func (p *proc) exited() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done == nil {
		return false
	}
	select {
	case <-p.done:
		return p.cmd != nil
	default:
		return false
	}
}

func (p *proc) logText() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

// dumpTail prints the log's warn and error lines (the last n of them) and
// its last n lines: a stop's many info lines would hide why it failed.
func (p *proc) dumpTail(n int) {
	lines := strings.Split(strings.TrimRight(p.logText(), "\n"), "\n")
	var bad []string
	for _, l := range lines {
		if strings.Contains(l, `"level":"warn"`) || strings.Contains(l, `"level":"error"`) {
			bad = append(bad, l)
		}
	}
	last := func(ls []string) string { return strings.Join(ls[max(0, len(ls)-n):], "\n") }
	p.t.Logf("---- warnings and errors of %s (%d, the last %d) ----\n%s", p.name, len(bad), min(n, len(bad)), last(bad))
	p.t.Logf("---- last lines of %s (%s) ----\n%s", p.name, p.log, last(lines))
}

// waitHTTP polls url until it answers 200, failing if the process exits.
func waitHTTP(t testing.TB, p *proc, url string, within time.Duration) {
	t.Helper()
	c := &http.Client{Timeout: time.Second}
	require.Eventually(t, func() bool {
		if p != nil && p.exited() {
			return true // reported below
		}
		resp, err := c.Get(url)
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, within, 50*time.Millisecond, "%s never answered 200", url)
	if p != nil {
		require.False(t, p.exited(), "%s exited while starting", p.name)
	}
}

// ---- nats-server ----

// natsProc is the real nats-server as a process, on a fixed port and store
// so that a restart finds its data.
type natsProc struct {
	*proc
	port, mon int
}

func startNATS(t testing.TB) *natsProc {
	t.Helper()
	n := &natsProc{port: freePort(t), mon: freePort(t)}
	n.proc = newProc(t, "nats-server", bins.nats, []string{
		"-a", "127.0.0.1", "-p", strconv.Itoa(n.port), "-m", strconv.Itoa(n.mon),
		"-js", "-sd", t.TempDir(), "-n", "reliability",
	}, nil)
	n.start()
	return n
}

func (n *natsProc) start() {
	n.t.Helper()
	n.proc.start()
	waitHTTP(n.t, n.proc, "http://"+addr(n.mon)+"/healthz?js-enabled-only=true", 30*time.Second)
}

func (n *natsProc) url() string { return "nats://" + addr(n.port) }

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

// ---- simulator ----

type sim struct {
	*simulator.Server
	url string
}

// startSim runs the simulator in this process on 127.0.0.1:0.
func startSim(t testing.TB, cfg simulator.Config) *sim {
	t.Helper()
	return startSimWith(t, cfg, nil)
}

// startSimWith is startSim with the simulator's handler wrapped.
func startSimWith(t testing.TB, cfg simulator.Config, wrap func(http.Handler) http.Handler) *sim {
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
	s, err := simulator.New(cfg)
	require.NoError(t, err)
	s.Start()
	h := s.Handler()
	if wrap != nil {
		h = wrap(h)
	}
	hs := httptest.NewServer(h)
	t.Cleanup(func() { hs.Close(); s.Close() })
	return &sim{Server: s, url: hs.URL}
}

// ---- services ----

type service struct {
	*proc
	listen, admin int // ports (listen: the ingest's callback port)
}

func (s *service) start() {
	s.t.Helper()
	s.proc.start()
	waitHTTP(s.t, s.proc, "http://"+addr(s.admin)+"/readyz", 60*time.Second)
}

func mergeEnv(base map[string]string, extra map[string]string) []string {
	out := make([]string, 0, len(base)+len(extra))
	for k, v := range base {
		if e, ok := extra[k]; ok {
			v = e
		}
		out = append(out, k+"="+v)
	}
	for k, v := range extra {
		if _, ok := base[k]; !ok {
			out = append(out, k+"="+v)
		}
	}
	return out
}

// newIngest describes a callback-ingest process; extra overrides settings.
func newIngest(t testing.TB, natsURL string, extra map[string]string) *service {
	t.Helper()
	s := &service{listen: freePort(t), admin: freePort(t)}
	env := mergeEnv(map[string]string{
		"NATS_URL":          natsURL,
		"LOG_LEVEL":         "info",
		"LISTEN_ADDR":       addr(s.listen),
		"METRICS_ADDR":      addr(s.admin),
		"CALLBACK_USERNAME": cbUser,
		"CALLBACK_PASSWORD": cbPassword,
		"CORRELATION_GRACE": "10s",
		"STORE_TIMEOUT":     "2s",
		"SHUTDOWN_GRACE":    "5s",
	}, extra)
	s.proc = newProc(t, "callback-ingest", bins.ingest, nil, env)
	return s
}

func (s *service) callbackURL() string { return "http://" + addr(s.listen) + "/callbacks" }

// newDispatcher describes a dispatcher process; extra overrides settings.
func newDispatcher(t testing.TB, natsURL, simURL, callbackURL string, extra map[string]string) *service {
	t.Helper()
	s := &service{admin: freePort(t)}
	base := map[string]string{
		"NATS_URL":                 natsURL,
		"LOG_LEVEL":                "info",
		"METRICS_ADDR":             addr(s.admin),
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
		base["CALLBACK_URL"] = callbackURL
		base["CALLBACK_USERNAME"] = cbUser
		base["CALLBACK_PASSWORD"] = cbPassword
	}
	s.proc = newProc(t, "dispatcher", bins.dispatcher, nil, mergeEnv(base, extra))
	return s
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
