package reliability_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/pipelinetest"
	"github.com/esim-pipeline/thingspace-esim/internal/simulator"
)

// Marker values for every secret of the pipeline.
const (
	markClientSecret = "MARKER-client-secret-51c0e7"
	markTSPassword   = "MARKER-ts-password-8e2a19"
	markCBPassword   = "MARKER-cb-password-3d7744"
	markDevUser      = "MARKER-devcred-user-6b1f"
	markDevPassword  = "MARKER-devcred-pass-c93a"
)

// credRewriter rewrites each callback the simulator sends so that its
// deviceCredential carries marker values.
type credRewriter struct{ next http.RoundTripper }

func (c credRewriter) RoundTrip(r *http.Request) (*http.Response, error) {
	body, err := io.ReadAll(r.Body)
	_ = r.Body.Close()
	if err != nil {
		return nil, err
	}
	var cb map[string]any
	if json.Unmarshal(body, &cb) == nil {
		if dr, ok := cb["deviceResponse"].(map[string]any); ok {
			if p, ok := dr["deviceProfileResponse"].(map[string]any); ok {
				if _, ok := p["deviceCredential"]; ok {
					p["deviceCredential"] = map[string]string{"username": markDevUser + "@example.net", "password": markDevPassword}
				}
			}
		}
		if b, err := json.Marshal(cb); err == nil {
			body = b
		}
	}
	r2 := r.Clone(r.Context())
	r2.Body = io.NopCloser(bytes.NewReader(body))
	r2.ContentLength = int64(len(body))
	return c.next.RoundTrip(r2)
}

// tokenCatcher remembers every API and session token the simulator hands
// out, so the scan can look for them too.
type tokenCatcher struct {
	mu     sync.Mutex
	tokens []string
}

func (tc *tokenCatcher) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.Path, "/oauth2/token") && !strings.Contains(r.URL.Path, "/session/login") {
			h.ServeHTTP(w, r)
			return
		}
		rec := &teeWriter{ResponseWriter: w}
		h.ServeHTTP(rec, r)
		var out struct {
			AccessToken  string `json:"access_token"`
			SessionToken string `json:"sessionToken"`
		}
		if json.Unmarshal(rec.buf.Bytes(), &out) == nil {
			tc.mu.Lock()
			for _, tok := range []string{out.AccessToken, out.SessionToken} {
				if tok != "" {
					tc.tokens = append(tc.tokens, tok)
				}
			}
			tc.mu.Unlock()
		}
	})
}

func (tc *tokenCatcher) list() []string {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	return append([]string(nil), tc.tokens...)
}

type teeWriter struct {
	http.ResponseWriter
	buf bytes.Buffer
}

func (w *teeWriter) Write(b []byte) (int, error) {
	w.buf.Write(b)
	return w.ResponseWriter.Write(b)
}

// TestNoSecretInLogsOrEvents runs the whole pipeline as processes at
// LOG_LEVEL=debug with marker values for every secret, through warnings,
// failures, 5xx answers, expired sessions and dead letters, then scans every
// log line, every event and every dead letter's headers: zero hits.
func TestNoSecretInLogsOrEvents(t *testing.T) {
	const n = 600
	ns := bins.StartNATS(t)
	_, js := connect(t, ns.URL())
	ensureStreams(t, js, 1)
	tokens := &tokenCatcher{}
	hc := &http.Client{Transport: credRewriter{next: http.DefaultTransport.(*http.Transport).Clone()}}
	s := startSimWith(t, simulator.Config{
		ClientID: clientID, ClientSecret: markClientSecret, Username: tsUser, Password: markTSPassword,
		HTTPClient: hc, ResendInterval: 500 * time.Millisecond,
		Faults: simulator.Faults{RatePerMinute: -1, WarningShare: 0.2, FailShare: 0.1, ErrorShare: 0.1,
			CallbackDelay: 50 * time.Millisecond},
	}, tokens.wrap)
	secrets := map[string]string{
		"LOG_LEVEL":                "debug",
		"THINGSPACE_CLIENT_SECRET": markClientSecret,
		"THINGSPACE_PASSWORD":      markTSPassword,
		"CALLBACK_PASSWORD":        markCBPassword,
		"BATCH_MAX_DEVICES":        "100",
	}
	ing := newIngest(t, ns.URL(), secrets)
	ing.Start()
	d := newDispatcher(t, ns.URL(), s.URL, ing.CallbackURL(), secrets)
	d.Start()
	events := watchEvents(t, js, false)
	ids := publishCommands(t, js, 5, n)

	// Expired sessions and tokens mid-run: the re-authentication paths log too.
	for i := 0; i < 3; i++ {
		require.Eventually(t, func() bool { return events.countAccepted() >= (i+1)*n/4 }, time.Minute, 20*time.Millisecond)
		s.ExpireSessions()
		s.ExpireTokens()
	}
	// Dead letters: an undecodable command, and authenticated callbacks that
	// do not parse, carrying the credentials in the body.
	_, err := js.Publish(t.Context(), "thingspace.profile.commands.enable", []byte(`{"accountName":`))
	require.NoError(t, err)
	c := &http.Client{Timeout: 10 * time.Second}
	for _, body := range []string{
		`{"username":"` + cbUser + `","password":"` + markCBPassword + `","requestId":{"id":1}}`,
		`{"username":"` + cbUser + `","password":"` + markCBPassword + `","requestId":"r-1","status":"Bogus","deviceIds":[{"kind":"iccid","id":"89148000000000000001"}]}`,
		`{"username":"` + cbUser + `","password":"` + markCBPassword + `","requestId":"r-2","status":"Success"}`,
	} {
		req, err := http.NewRequest(http.MethodPost, ing.CallbackURL(), strings.NewReader(body))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/json")
		resp, err := c.Do(req)
		require.NoError(t, err)
		_ = resp.Body.Close()
		require.Equal(t, http.StatusBadRequest, resp.StatusCode, body)
	}

	waitFinal(t, events, ids, 3*time.Minute)
	require.Eventually(t, func() bool { return s.Stats().CallbacksPending == 0 }, time.Minute, 50*time.Millisecond)
	require.Eventually(t, func() bool { return streamMsgs(t, js, broker.DeadLetterStream) >= 4 }, 30*time.Second,
		50*time.Millisecond, "the dead letters were not stored")
	// Every secret actually went where it is used.
	require.Positive(t, s.Stats().Logins)
	require.Positive(t, s.Stats().CallbacksAnswered)
	toks := tokens.list()
	require.NotEmpty(t, toks)

	markers := append([]string{markClientSecret, markTSPassword, markCBPassword, markDevUser, markDevPassword,
		"vzw4g.com", "deviceCredential"}, toks...)
	hits := 0
	scanned := 0
	scan := func(where, text string) {
		for _, m := range markers {
			if strings.Contains(text, m) {
				hits++
				if hits <= 10 {
					t.Errorf("secret %q in %s: %.300s", m, where, text)
				}
			}
		}
	}
	// The services flush their logs on a clean stop.
	d.Stop(30 * time.Second)
	ing.Stop(30 * time.Second)
	for _, p := range []*pipelinetest.Process{d.Process, ing.Process} {
		scanLines(p.Log(), func(n int, line string) {
			scanned++
			scan(p.Name+" log line "+strconv.Itoa(n), line)
		})
	}
	logLines := scanned
	evs := readStream(t, js, broker.StatusStream)
	for _, m := range evs {
		scan("event on "+m.subject, string(m.data))
		scan("event headers on "+m.subject, headerText(m.header))
	}
	dls := readStream(t, js, broker.DeadLetterStream)
	for _, m := range dls {
		scan("dead letter headers on "+m.subject, headerText(m.header))
	}
	// Every stream, bodies and headers: raw callbacks (their credentials
	// were cut before the store), dead letters, commands, deadlines, the
	// buckets' streams.
	streamsScanned, stored := 0, 0
	lister := js.StreamNames(t.Context())
	var names []string
	for name := range lister.Name() {
		names = append(names, name)
	}
	require.NoError(t, lister.Err())
	for _, name := range names {
		streamsScanned++
		for _, m := range storedMessages(t, js, name) {
			stored++
			scan("message of "+name+" on "+m.subject, string(m.data))
			scan("headers of a message of "+name+" on "+m.subject, headerText(m.header))
		}
	}
	require.GreaterOrEqual(t, streamsScanned, 6, "every stream of the pipeline was read")
	require.Positive(t, streamMsgs(t, js, broker.CallbackStream), "raw callbacks were stored (and scanned)")
	require.Zero(t, hits, "secrets found")
	require.Greater(t, logLines, n, "the debug logs were written")
	t.Logf("FIGURE secrets: %d log lines (LOG_LEVEL=debug), %d events, %d dead letters, %d stored messages of %d streams "+
		"scanned for %d markers (client secret, M2M password, callback password, device credentials, %d API/session tokens): 0 hits",
		logLines, len(evs), len(dls), stored, streamsScanned, len(markers), len(toks))
}

func headerText(h nats.Header) string {
	var b strings.Builder
	for k, vs := range h {
		for _, v := range vs {
			b.WriteString(k + ": " + v + "\n")
		}
	}
	return b.String()
}

// storedMessages reads every message a stream holds by sequence, whatever
// its retention (a work queue cannot have a second consumer).
func storedMessages(t *testing.T, js jetstream.JetStream, name string) []rawMsg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st, err := js.Stream(ctx, name)
	require.NoError(t, err, name)
	info, err := st.Info(ctx)
	require.NoError(t, err, name)
	var out []rawMsg
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		require.NoError(t, err, "%s sequence %d", name, seq)
		out = append(out, rawMsg{subject: m.Subject, header: m.Header, data: m.Data})
	}
	return out
}
