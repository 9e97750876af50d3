package main

import (
	"bufio"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// readAnswer against net/http's own answers: each leaves the connection at
// the start of the next answer.
func TestReadAnswerReadsNetHTTPAnswersBackToBack(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/fixed":
			_, _ = w.Write([]byte(`{"status":"stored"}`))
		case "/chunked":
			_, _ = w.Write([]byte("part one "))
			w.(http.Flusher).Flush()
			_, _ = w.Write([]byte("part two"))
		case "/empty":
			w.WriteHeader(http.StatusServiceUnavailable)
		case "/close":
			w.Header().Set("Connection", "close")
			w.WriteHeader(http.StatusBadRequest)
		}
	}))
	defer srv.Close()
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	require.NoError(t, err)
	defer conn.Close()
	br := bufio.NewReader(conn)
	for _, c := range []struct {
		path  string
		code  int
		close bool
	}{{"/fixed", 200, false}, {"/chunked", 200, false}, {"/empty", 503, false}, {"/fixed", 200, false}, {"/close", 400, true}} {
		req := "GET " + c.path + " HTTP/1.1\r\nHost: x\r\n\r\n"
		code, closeConn, err := roundTrip(conn, br, []byte(req))
		require.NoError(t, err, c.path)
		assert.Equal(t, c.code, code, c.path)
		assert.Equal(t, c.close, closeConn, c.path)
	}
	assert.Zero(t, br.Buffered(), "nothing left over")
}

func TestReadAnswerRefusesWhatIsNotHTTP(t *testing.T) {
	_, closeConn, err := readAnswer(bufio.NewReader(strings.NewReader("SSH-2.0-OpenSSH\r\n\r\n")))
	require.Error(t, err)
	assert.True(t, closeConn)
}
