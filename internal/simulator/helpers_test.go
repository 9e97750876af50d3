package simulator_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/simulator"
	"github.com/esim-pipeline/thingspace-esim/internal/thingspace"
)

const (
	account = "0000123456-00001"
	smsrOid = "1.3.6.1.4.1.31746.1.500.200.101.5"
	eid     = "666456789123456789123456784008"
	iccid   = "89148000000840784259"
	iccid2  = "89148000000840784267"
)

type simEnv struct {
	sim            *simulator.Server
	url            string
	token, session string
}

func newSim(t testing.TB, cfg simulator.Config) *simEnv {
	t.Helper()
	if cfg.Seed == 0 {
		cfg.Seed = 7
	}
	sim, err := simulator.New(cfg)
	require.NoError(t, err)
	sim.Start()
	srv := httptest.NewServer(sim.Handler())
	t.Cleanup(srv.Close)
	t.Cleanup(sim.Close)
	return &simEnv{sim: sim, url: srv.URL}
}

// answer is an HTTP answer with its JSON body decoded.
type answer struct {
	status int
	header http.Header
	raw    string
	body   map[string]any
}

func (a answer) errorCode() string {
	if c, ok := a.body["errorCode"].(string); ok {
		return c
	}
	if f, ok := a.body["fault"].(map[string]any); ok {
		c, _ := f["code"].(string)
		return c
	}
	e, _ := a.body["error"].(string)
	return e
}

func (e *simEnv) send(t testing.TB, req *http.Request) answer {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	a := answer{status: resp.StatusCode, header: resp.Header, raw: string(b)}
	_ = json.Unmarshal(b, &a.body)
	return a
}

func (e *simEnv) getToken(t testing.TB, id, secret string, form url.Values) answer {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, e.url+thingspace.TokenPath, strings.NewReader(form.Encode()))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if id != "" {
		req.SetBasicAuth(id, secret)
	}
	return e.send(t, req)
}

// login gets a token and a session with the demo credentials.
func (e *simEnv) login(t testing.TB) {
	t.Helper()
	a := e.getToken(t, simulator.DemoClientID, simulator.DemoClientSecret, url.Values{"grant_type": {"client_credentials"}})
	require.Equal(t, http.StatusOK, a.status, a.raw)
	e.token = a.body["access_token"].(string)
	a = e.call(t, http.MethodPost, thingspace.LoginPath,
		`{"username":"`+simulator.DemoUsername+`","password":"`+simulator.DemoPassword+`"}`, nil)
	require.Equal(t, http.StatusOK, a.status, a.raw)
	e.session = a.body["sessionToken"].(string)
}

// call sends a business call with the env's tokens; hdr overrides headers
// (an empty value removes one).
func (e *simEnv) call(t testing.TB, method, path, body string, hdr map[string]string) answer {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, e.url+path, rd)
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	if e.token != "" {
		req.Header.Set("Authorization", "Bearer "+e.token)
	}
	if e.session != "" {
		req.Header.Set(thingspace.HeaderSession, e.session)
	}
	for k, v := range hdr {
		if v == "" {
			req.Header.Del(k)
		} else {
			req.Header.Set(k, v)
		}
	}
	return e.send(t, req)
}

func (e *simEnv) register(t testing.TB, l *listener, user, pass string) {
	t.Helper()
	b, err := json.Marshal(thingspace.CallbackRegistration{Name: thingspace.ServiceDeviceProfile, URL: l.srv.URL,
		Username: user, Password: pass})
	require.NoError(t, err)
	a := e.call(t, http.MethodPost, thingspace.CallbacksPath+account, string(b), nil)
	require.Equal(t, http.StatusOK, a.status, a.raw)
}

func enableBody(devices ...[2]string) string {
	req := thingspace.ProfileRequest{AccountName: account, SmsrOid: smsrOid}
	if len(devices) == 0 {
		devices = [][2]string{{eid, iccid}}
	}
	for _, d := range devices {
		req.Devices = append(req.Devices, thingspace.Device{DeviceIDs: []thingspace.DeviceID{
			{Kind: "eid", ID: d[0]}, {Kind: "iccid", ID: d[1]}}})
	}
	b, _ := json.Marshal(req)
	return string(b)
}

// received is one callback as a listener saw it.
type received struct {
	raw            []byte
	cb             *thingspace.Callback
	parseErr       error
	user, pass     string
	basic          bool
	answeredStatus int
}

// listener is a callback receiver; respond picks the status of the n-th
// (1-based) callback, 200 when nil.
type listener struct {
	srv     *httptest.Server
	got     chan received
	n       atomic.Int64
	respond func(n int64) int
}

func newListener(t testing.TB, respond func(n int64) int) *listener {
	t.Helper()
	l := &listener{got: make(chan received, 1000), respond: respond}
	l.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		rc := received{raw: b}
		rc.cb, rc.parseErr = thingspace.ParseCallback(b)
		rc.user, rc.pass, rc.basic = r.BasicAuth()
		n := l.n.Add(1)
		rc.answeredStatus = http.StatusOK
		if l.respond != nil {
			rc.answeredStatus = l.respond(n)
		}
		w.WriteHeader(rc.answeredStatus)
		l.got <- rc
	}))
	t.Cleanup(l.srv.Close)
	return l
}

// next waits for the next callback.
func (l *listener) next(t testing.TB) received {
	t.Helper()
	select {
	case r := <-l.got:
		require.NoError(t, r.parseErr, string(r.raw))
		return r
	case <-timeout():
		t.Fatal("no callback arrived")
		return received{}
	}
}
