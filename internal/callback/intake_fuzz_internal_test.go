package callback

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/config"
	"github.com/esim-pipeline/thingspace-esim/internal/natstest"
)

const (
	fuzzUser = "fuzz-user"
	fuzzPass = "fuzz-pass"
)

// FuzzIntake posts arbitrary bodies to a running ingest's POST /callbacks
// (embedded NATS, the real listener), with Basic credentials or without.
// Whatever the body: the answer is 200, 400, 401 or 413 and never a
// crash; what a 200 or a 400 stored (the raw callback, or its dead
// letter) holds no credential member; and the service's NATS connections
// are the ones it started with.
func FuzzIntake(f *testing.F) {
	seeds, _ := filepath.Glob(filepath.Join("testdata", "seed_*.json"))
	for _, s := range seeds {
		b, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, true)
		f.Add(bytes.Replace(b, []byte(`"username":""`), []byte(`"username":"`+fuzzUser+`"`), 1), false)
	}
	f.Add([]byte(`{"username":"`+fuzzUser+`","password":"`+fuzzPass+`","requestId":"r-1","status":"Success","deviceIds":[{"kind":"iccid","id":"89148000000840784259"}]}`), false)
	f.Add([]byte(`{"username":"`+fuzzUser+`","password":"`+fuzzPass+`","requestId":"`+strings.Repeat(".*>", 30)+`","status":"Success","deviceIds":[{"kind":"iccid","id":"8914"}]}`), false)
	f.Add([]byte(`{"requestId":"r-2","status":"warning","deviceIds":[{"kind":"eid","id":"89049032000000000000000000000001"}],"deviceResponse":[{"deviceProfileResponse":{"deviceCredential":{"password":"x"}}}],}`), true)
	f.Add([]byte(strings.Repeat("[", 5000)), true)
	f.Add([]byte("\x00\xff{"), false)

	ns := natstest.Run(f)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	ready := make(chan Addrs, 1)
	go func() {
		done <- Run(ctx, Config{
			NATS: config.NATS{URL: ns.URL()}, ListenAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0",
			Username: fuzzUser, Password: config.NewSecret(fuzzPass), Workers: 2, StoreTimeout: 5 * time.Second,
			CorrelationGrace: time.Millisecond, ShutdownGrace: 5 * time.Second,
		}, zerolog.Nop(), OnReady(func(a Addrs) { ready <- a }))
	}()
	var addrs Addrs
	select {
	case addrs = <-ready:
	case err := <-done:
		f.Fatalf("ingest stopped at start: %v", err)
	case <-time.After(30 * time.Second):
		f.Fatal("ingest not ready")
	}
	f.Cleanup(func() { cancel(); <-done })
	_, js := ns.JetStream()
	raw, err := js.Stream(ctx, broker.CallbackStream)
	if err != nil {
		f.Fatal(err)
	}
	dead, err := js.Stream(ctx, broker.DeadLetterStream)
	if err != nil {
		f.Fatal(err)
	}
	conns := serviceConns(f, ns)
	client := &http.Client{Timeout: 30 * time.Second}
	last := func(st jetstream.Stream, subject string) uint64 {
		m, err := st.GetLastMsgForSubject(ctx, subject)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return 0
		}
		if err != nil {
			f.Fatalf("last message on %s: %v", subject, err)
		}
		return m.Sequence
	}

	f.Fuzz(func(t *testing.T, body []byte, basic bool) {
		deadBefore := last(dead, broker.DeadLetterCallbacks)
		req, err := http.NewRequest(http.MethodPost, "http://"+addrs.Callback+CallbackPath, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if basic {
			req.SetBasicAuth(fuzzUser, fuzzPass)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("no answer: %v", err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		var stored *jetstream.RawStreamMsg
		switch resp.StatusCode {
		case http.StatusOK:
			// A resend of a stored fact is answered 200 and stored once.
			stored, err = raw.GetLastMsgForSubject(ctx, broker.CallbackSubject)
			if err != nil {
				t.Fatalf("answered 200 and nothing is stored (%v)", err)
			}
		case http.StatusBadRequest:
			if m, err := dead.GetLastMsgForSubject(ctx, broker.DeadLetterCallbacks); err == nil && m.Sequence != deadBefore {
				stored = m
			} else if len(body) > 0 && len(body) <= MaxBody {
				t.Fatalf("answered 400 and no dead letter is stored (%v)", err)
			}
		case http.StatusUnauthorized, http.StatusRequestEntityTooLarge:
		default:
			t.Fatalf("answered %d to %q", resp.StatusCode, body)
		}
		if stored != nil && hasCredentials(stored.Data) {
			t.Fatalf("a stored message holds credentials: %q (sent %q)", stored.Data, body)
		}
		if now := serviceConns(t, ns); !slices.Equal(now, conns) {
			t.Fatalf("the service's NATS connections changed from %v to %v", conns, now)
		}
	})
}

// serviceConns lists the client ids of the service's NATS connections.
func serviceConns(t testing.TB, ns *natstest.Server) []uint64 {
	cz, err := ns.Inner().Connz(&server.ConnzOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var ids []uint64
	for _, c := range cz.Conns {
		if strings.HasPrefix(c.Name, ConnectionName) {
			ids = append(ids, c.Cid)
		}
	}
	slices.Sort(ids)
	return ids
}
