package reliability_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
)

// counts are the message counts of the streams an ingest writes.
type counts struct{ callbacks, status, deadLetters uint64 }

func streamCounts(t *testing.T, js jetstream.JetStream) counts {
	t.Helper()
	return counts{
		callbacks:   streamMsgs(t, js, broker.CallbackStream),
		status:      streamMsgs(t, js, broker.StatusStream),
		deadLetters: streamMsgs(t, js, broker.DeadLetterStream),
	}
}

// zeros is an endless reader of spaces (valid JSON white space).
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = ' '
	}
	return len(p), nil
}

// TestHostileRequests sends the ingest requests no ThingSpace would send:
// each gets its status, the process survives, and nothing is stored (an
// authenticated sender's unparseable body is kept as one dead letter, as
// the contract says; nothing else is).
func TestHostileRequests(t *testing.T) {
	ns := bins.StartNATS(t)
	_, js := connect(t, ns.URL())
	ensureStreams(t, js, 1)
	ing := newIngest(t, ns.URL(), nil)
	ing.Start()
	url := ing.CallbackURL()
	client := &http.Client{Timeout: 30 * time.Second}

	valid := `{"requestId":"hostile-1","status":"Success","deviceIds":[{"kind":"iccid","id":"89148000000000000001"}]}`
	nested := strings.Repeat("[", 100000) + strings.Repeat("]", 100000)
	cases := []struct {
		name      string
		method    string
		ctype     string
		body      func() io.Reader
		auth      bool
		header    http.Header
		want      int
		deadLetts uint64 // dead letters expected
	}{
		{name: "get_is_not_allowed", method: http.MethodGet, want: http.StatusMethodNotAllowed},
		{name: "put_is_not_allowed", method: http.MethodPut, auth: true, body: str(valid), want: http.StatusMethodNotAllowed},
		{name: "delete_is_not_allowed", method: http.MethodDelete, auth: true, want: http.StatusMethodNotAllowed},
		{name: "no_credentials", body: str(valid), want: http.StatusUnauthorized},
		{name: "wrong_password", body: str(valid), header: basic(cbUser, "guess"), want: http.StatusUnauthorized},
		{name: "wrong_body_credentials", body: str(`{"username":"` + cbUser + `","password":"guess","requestId":"r","status":"Success","deviceIds":[{"kind":"iccid","id":"89148000000000000001"}]}`), want: http.StatusUnauthorized},
		{name: "text_plain_without_credentials", ctype: "text/plain", body: str(valid), want: http.StatusUnauthorized},
		{name: "form_body_authenticated", ctype: "application/x-www-form-urlencoded", auth: true, body: str("requestId=r&status=Success"), want: http.StatusBadRequest, deadLetts: 1},
		{name: "empty_body_without_credentials", body: str(""), want: http.StatusUnauthorized},
		{name: "empty_body_authenticated", auth: true, body: str(""), want: http.StatusBadRequest, deadLetts: 1},
		{name: "nested_arrays_100000_without_credentials", body: str(nested), want: http.StatusUnauthorized},
		{name: "nested_arrays_100000_authenticated", auth: true, body: str(nested), want: http.StatusBadRequest, deadLetts: 1},
		{name: "nested_objects_authenticated", auth: true, body: str(strings.Repeat(`{"a":`, 50000) + "1" + strings.Repeat("}", 50000)), want: http.StatusBadRequest, deadLetts: 1},
		{name: "invalid_utf8_without_credentials", body: str("\xff\xfe\xfd{\"requestId\":\x80}"), want: http.StatusUnauthorized},
		{name: "invalid_utf8_authenticated", auth: true, body: str("\xff\xfe\xfd{\"requestId\":\x80}"), want: http.StatusBadRequest, deadLetts: 1},
		{name: "two_mib_body_without_credentials", body: func() io.Reader { return bytes.NewReader(bytes.Repeat([]byte(" "), 2<<20)) }, want: http.StatusRequestEntityTooLarge},
		{name: "two_mib_body_authenticated", auth: true, body: func() io.Reader { return bytes.NewReader(bytes.Repeat([]byte(" "), 2<<20)) }, want: http.StatusRequestEntityTooLarge},
		{name: "chunked_body_over_one_mib", auth: true, body: func() io.Reader { return io.LimitReader(zeros{}, 3<<19) }, want: http.StatusRequestEntityTooLarge},
		{name: "huge_headers", auth: true, body: str(valid), header: http.Header{"X-Junk": {strings.Repeat("j", 100<<10)}}, want: http.StatusRequestHeaderFieldsTooLarge},
		{name: "many_headers", auth: true, body: str(valid), header: manyHeaders(8000), want: http.StatusRequestHeaderFieldsTooLarge},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := streamCounts(t, js)
			method := tc.method
			if method == "" {
				method = http.MethodPost
			}
			var body io.Reader
			if tc.body != nil {
				body = tc.body()
			}
			req, err := http.NewRequest(method, url, body)
			require.NoError(t, err)
			ctype := tc.ctype
			if ctype == "" {
				ctype = "application/json"
			}
			req.Header.Set("Content-Type", ctype)
			for k, v := range tc.header {
				req.Header[k] = v
			}
			if tc.auth {
				req.SetBasicAuth(cbUser, cbPassword)
			}
			resp, err := client.Do(req)
			require.NoError(t, err)
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
			_ = resp.Body.Close()
			require.Equal(t, tc.want, resp.StatusCode)
			after := streamCounts(t, js)
			require.Equal(t, before.callbacks, after.callbacks, "callbacks stored")
			require.Equal(t, before.status, after.status, "events stored")
			require.Equal(t, before.deadLetters+tc.deadLetts, after.deadLetters, "dead letters stored")
			require.False(t, ing.Exited(), "the ingest died")
			ing.WaitHTTP("http://"+ing.ListenAddr+"/healthz", 5*time.Second)
		})
	}

	// Slow senders hold a connection only until the server's timeouts cut
	// them: headers within ReadHeaderTimeout (5s), the whole request within
	// ReadTimeout (15s). Both run at once to keep the test short.
	t.Run("slowloris", func(t *testing.T) {
		before := streamCounts(t, js)
		var wg sync.WaitGroup
		results := make([]slowResult, 2)
		for i, req := range []struct {
			head    string
			trickle string
		}{
			{head: "POST /callbacks HTTP/1.1\r\nHost: 127.0.0.1\r\n", trickle: strings.Repeat("X-Slow: y\r\n", 100)},
			{head: fmt.Sprintf("POST /callbacks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nAuthorization: Basic %s\r\nContent-Length: %d\r\n\r\n",
				basicToken(cbUser, cbPassword), len(valid)), trickle: valid},
		} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				results[i] = slowSend(ing.ListenAddr, req.head, req.trickle, 500*time.Millisecond, 40*time.Second)
			}()
		}
		wg.Wait()
		for i, limit := range []time.Duration{5 * time.Second, 15 * time.Second} {
			r := results[i]
			require.False(t, r.completed, "slow request %d was sent in full: the server never cut it", i)
			require.NotContains(t, r.status, "200", "slow request %d", i)
			require.GreaterOrEqual(t, r.after, limit-time.Second, "slow request %d cut early", i)
			require.Less(t, r.after, limit+5*time.Second, "slow request %d held the connection too long", i)
			t.Logf("FIGURE slowloris %d cut after %s (answer %q)", i, r.after.Round(100*time.Millisecond), r.status)
		}
		after := streamCounts(t, js)
		require.Equal(t, before, after, "nothing stored from slow senders")
		require.False(t, ing.Exited(), "the ingest died")
	})

	// After all of it the ingest still takes a real callback.
	c := &http.Client{Timeout: 10 * time.Second}
	require.Equal(t, http.StatusOK, postCallback(c, url, []byte(valid)))
}

func str(s string) func() io.Reader { return func() io.Reader { return strings.NewReader(s) } }

func basic(user, pass string) http.Header {
	return http.Header{"Authorization": {"Basic " + basicToken(user, pass)}}
}

func basicToken(user, pass string) string {
	r, _ := http.NewRequest(http.MethodGet, "http://127.0.0.1/", nil)
	r.SetBasicAuth(user, pass)
	return strings.TrimPrefix(r.Header.Get("Authorization"), "Basic ")
}

func manyHeaders(n int) http.Header {
	h := http.Header{}
	for i := range n {
		h.Set(fmt.Sprintf("X-H%d", i), "v")
	}
	return h
}

type slowResult struct {
	completed bool          // the whole request went out
	status    string        // the status line answered, if any
	after     time.Duration // when the server cut or answered
}

// slowSend writes head, then trickle one byte per every, and reports when
// the server answered or closed the connection.
func slowSend(address, head, trickle string, every, limit time.Duration) slowResult {
	start := time.Now()
	conn, err := net.Dial("tcp", address)
	if err != nil {
		return slowResult{status: "dial: " + err.Error()}
	}
	defer conn.Close()
	_ = conn.SetDeadline(start.Add(limit))
	if _, err := io.WriteString(conn, head); err != nil {
		return slowResult{status: "write: " + err.Error(), after: time.Since(start)}
	}
	answered := make(chan string, 1)
	go func() {
		line, err := bufio.NewReader(conn).ReadString('\n')
		if err != nil && line == "" {
			line = "closed: " + err.Error()
		}
		answered <- strings.TrimSpace(line)
	}()
	tick := time.NewTicker(every)
	defer tick.Stop()
	for i := 0; i < len(trickle); i++ {
		select {
		case st := <-answered:
			return slowResult{status: st, after: time.Since(start)}
		case <-tick.C:
		}
		if _, err := conn.Write([]byte{trickle[i]}); err != nil {
			return slowResult{status: "write: " + err.Error(), after: time.Since(start)}
		}
	}
	st := <-answered
	return slowResult{completed: true, status: st, after: time.Since(start)}
}
