package callback_test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/callback"
	"github.com/esim-pipeline/thingspace-esim/internal/natstest"
)

// startTLSStack runs the ingest with the callback listener on HTTPS, its
// certificate the pair served, and a client that trusts the CA.
func startTLSStack(t *testing.T, ca *natstest.CA, served natstest.Pair) *stack {
	t.Helper()
	s := startStack(t, func(c *callback.Config) {
		c.TLSCertFile, c.TLSKeyFile = served.CertFile, served.KeyFile
		c.CorrelationGrace = 100 * time.Millisecond
	})
	s.scheme = "https"
	s.client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: ca.ClientTLS(nil)}}
	return s
}

// servedSerial opens a new TLS connection to addr and returns the serial
// number of the certificate it is shown (0 when the handshake fails).
func servedSerial(ca *natstest.CA, addr string) *big.Int {
	conn, err := tls.Dial("tcp", addr, ca.ClientTLS(nil))
	if err != nil {
		return big.NewInt(0)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber
}

func TestCallbacksOverHTTPSAreStoredAndPlainHTTPIsRefused(t *testing.T) {
	ca := natstest.NewCA(t)
	s := startTLSStack(t, ca, ca.Server("ingest"))

	s.postOK(callbackBody(cbOpts{requestID: "req-https", iccid: "89148000000840784301"}))
	s.waitEvents("req-https", 1)

	t.Run("plain_http_on_the_https_port_gets_no_2xx", func(t *testing.T) {
		plain := &http.Client{Timeout: 5 * time.Second}
		req, err := http.NewRequest(http.MethodPost, "http://"+s.addrs.Callback+"/callbacks",
			bytes.NewReader(callbackBody(cbOpts{requestID: "req-plain", iccid: "89148000000840784302"})))
		require.NoError(t, err)
		req.SetBasicAuth(testUser, testPass)
		resp, err := plain.Do(req)
		if err == nil {
			_ = resp.Body.Close()
			assert.GreaterOrEqual(t, resp.StatusCode, 300, "a plain-HTTP request on the HTTPS port was answered %d", resp.StatusCode)
		}
	})

	t.Run("tls_1_1_is_refused", func(t *testing.T) {
		cfg := ca.ClientTLS(nil)
		cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
		conn, err := tls.Dial("tcp", s.addrs.Callback, cfg)
		if err == nil {
			conn.Close()
		}
		require.Error(t, err, "a TLS 1.1 handshake succeeded")
	})

	t.Run("the_admin_listener_stays_plain_http", func(t *testing.T) {
		code, _ := s.get(s.admin("/healthz"))
		require.Equal(t, http.StatusOK, code)
	})

	s.settle()
	for _, e := range s.events() {
		require.NotEqual(t, "req-plain", e.Event.RequestID, "the plain-HTTP callback was stored")
	}
}

// TestARotatedCertificateReachesNewConnectionsWithoutDroppingACallback
// rewrites the served pair in place under steady callback traffic, as
// cert-manager or certbot do: first the key (a new key beside the old
// certificate does not load), then half of the certificate, then all of
// it. Until the pair loads, new connections get the old certificate; once
// it does, they get the new one within 10 s; every callback sent meanwhile
// is answered 200 and becomes its event.
func TestARotatedCertificateReachesNewConnectionsWithoutDroppingACallback(t *testing.T) {
	ca := natstest.NewCA(t)
	first := ca.Server("ingest")
	s := startTLSStack(t, ca, first)
	second := ca.Issue("ingest")
	require.Equal(t, first.Serial, servedSerial(ca, s.addrs.Callback))

	// Traffic: two senders on keep-alive connections, two on a new
	// connection per callback (those see the new certificate).
	stop := make(chan struct{})
	var (
		mu      sync.Mutex
		sent    []string
		refused []string
		wg      sync.WaitGroup
	)
	for w := range 4 {
		tr := &http.Transport{TLSClientConfig: ca.ClientTLS(nil), DisableKeepAlives: w%2 == 1}
		client := &http.Client{Timeout: 10 * time.Second, Transport: tr}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				id := fmt.Sprintf("req-rot-%d-%d", w, i)
				body := callbackBody(cbOpts{requestID: id, iccid: fmt.Sprintf("891480000%d%010d", w, i)})
				req, _ := http.NewRequest(http.MethodPost, s.url("/callbacks"), bytes.NewReader(body))
				req.SetBasicAuth(testUser, testPass)
				resp, err := client.Do(req)
				mu.Lock()
				switch {
				case err != nil:
					refused = append(refused, id+": "+err.Error())
				case resp.StatusCode != http.StatusOK:
					refused = append(refused, fmt.Sprintf("%s: %d", id, resp.StatusCode))
				default:
					sent = append(sent, id)
				}
				mu.Unlock()
				if resp != nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					_ = resp.Body.Close()
				}
			}
		}()
	}
	sentSoFar := func() int { mu.Lock(); defer mu.Unlock(); return len(sent) }
	require.Eventually(t, func() bool { return sentSoFar() >= 20 }, 10*time.Second, 10*time.Millisecond)

	errorsLoaded := func() int { return s.metric(`esim_ingest_tls_reloads_total{result="error"}`) }
	rewrite := func(path string, b []byte) {
		// In place: the same inode, truncated and written, as a renewal
		// that does not rename would.
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
		require.NoError(t, err)
		_, err = f.Write(b)
		require.NoError(t, err)
		require.NoError(t, f.Close())
	}

	rewrite(first.KeyFile, second.KeyPEM)
	require.Eventually(t, func() bool { return errorsLoaded() >= 1 }, 10*time.Second, 50*time.Millisecond,
		"the new key beside the old certificate was never tried")
	require.Equal(t, first.Serial, servedSerial(ca, s.addrs.Callback), "a pair that does not load replaced the good one")

	rewrite(first.CertFile, second.CertPEM[:len(second.CertPEM)/2])
	require.Eventually(t, func() bool { return errorsLoaded() >= 2 }, 10*time.Second, 50*time.Millisecond,
		"the half-written certificate was never tried")
	require.Equal(t, first.Serial, servedSerial(ca, s.addrs.Callback), "a half-written certificate replaced the good one")

	rewritten := time.Now()
	rewrite(first.CertFile, second.CertPEM)
	require.Eventually(t, func() bool { return servedSerial(ca, s.addrs.Callback).Cmp(second.Serial) == 0 },
		10*time.Second, 100*time.Millisecond, "new connections never got the rewritten certificate")
	t.Logf("rewritten certificate served %s after the rewrite", time.Since(rewritten).Round(10*time.Millisecond))
	before := sentSoFar()
	require.Eventually(t, func() bool { return sentSoFar() >= before+20 }, 10*time.Second, 10*time.Millisecond,
		"callbacks go on after the rotation")
	close(stop)
	wg.Wait()

	require.Empty(t, refused, "callbacks not answered 200 during the rotation")
	require.Equal(t, 1, s.metric(`esim_ingest_tls_reloads_total{result="ok"}`))
	s.settle()
	got := map[string]int{}
	for _, e := range s.events() {
		got[e.Event.RequestID]++
	}
	for _, id := range sent {
		require.Equal(t, 1, got[id], "callback %s answered 200 has %d events", id, got[id])
	}
	t.Logf("%d callbacks answered 200 across the rotation, each one event", len(sent))
	assert.NotContains(t, s.logs.String(), string(second.KeyPEM[30:60]), "key material in the logs")
}

// TestTheCallbackListenerCapsItsConnections: past MAX_CONNECTIONS a new
// connection waits to be accepted until one closes.
func TestTheCallbackListenerCapsItsConnections(t *testing.T) {
	s := startStack(t, func(c *callback.Config) { c.MaxConnections = 2 })
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", s.addrs.Callback)
		require.NoError(t, err)
		held = append(held, c)
		// The request line is read: the connection holds its slot.
		_, err = io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
		require.NoError(t, err)
		line, err := bufio.NewReader(c).ReadString('\n')
		require.NoError(t, err)
		require.Contains(t, line, "200")
	}
	third, err := net.Dial("tcp", s.addrs.Callback)
	require.NoError(t, err) // the kernel's backlog takes it
	defer third.Close()
	_, err = io.WriteString(third, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	require.NoError(t, err)
	answered := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(third).ReadString('\n')
		answered <- line
	}()
	select {
	case line := <-answered:
		t.Fatalf("a third connection was served while two held the cap: %q", line)
	case <-time.After(300 * time.Millisecond): // a bounded wait for something that must not happen
	}
	require.NoError(t, held[0].Close())
	select {
	case line := <-answered:
		require.True(t, strings.Contains(line, "200"), line)
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting connection was not served after a slot freed")
	}
	for _, c := range held[1:] {
		_ = c.Close()
	}
}
