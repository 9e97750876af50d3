package callback

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/observability"
	"github.com/esim-pipeline/thingspace-esim/internal/status"
)

// Headers of a raw callback in the callback stream.
const (
	// HeaderReceivedAt is when the callback reached the intake, RFC 3339
	// with nanoseconds, UTC: the event's occurredAt and the start of the
	// correlation grace.
	HeaderReceivedAt = "Callback-Received-At"
	// HeaderCorrelationID carries the requestId as Watermill's correlation id.
	HeaderCorrelationID = "correlation_id"
)

// MaxBody is the largest callback body accepted: 1 MiB.
const MaxBody = 1 << 20

// CallbackPath is where ThingSpace posts callbacks.
const CallbackPath = "/callbacks"

// intake answers POST /callbacks: authenticate, parse, store the raw bytes,
// answer. Nothing is stored for a request it refuses, and 200 is only sent
// after JetStream acknowledged the store.
type intake struct {
	js      func() jetstream.JetStream // nil until NATS is ready
	ready   func() error
	auth    *credentials
	timeout time.Duration
	now     func() time.Time
	m       *metrics
	log     zerolog.Logger
	bufs    sync.Pool
	commit  *committer
}

// credentials compares what a callback carries with the configured pair in
// constant time (hashes first, so lengths leak nothing either).
type credentials struct {
	user, pass [32]byte
}

func newCredentials(user, pass string) *credentials {
	return &credentials{user: sha256.Sum256([]byte(user)), pass: sha256.Sum256([]byte(pass))}
}

func (c *credentials) match(user, pass string) bool {
	u := sha256.Sum256([]byte(user))
	p := sha256.Sum256([]byte(pass))
	// Both comparisons always run.
	return subtle.ConstantTimeCompare(u[:], c.user[:])&subtle.ConstantTimeCompare(p[:], c.pass[:]) == 1
}

// answer refuses a callback: code and why, as JSON. A stored callback's
// 200 is written by ServeHTTP itself.
func (in *intake) answer(w http.ResponseWriter, code int, msg string) {
	in.m.answered(code)
	body := map[string]string{"status": http.StatusText(code)}
	if msg != "" {
		body["error"] = msg
	}
	observability.WriteJSON(w, code, body)
}

func (in *intake) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := in.now()
	if r.ContentLength > MaxBody {
		in.answer(w, http.StatusRequestEntityTooLarge, "body over 1 MiB")
		return
	}
	bp, _ := in.bufs.Get().(*[]byte)
	if bp == nil {
		b := make([]byte, 0, 4096)
		bp = &b
	}
	defer func() {
		if cap(*bp) <= 64<<10 { // keep only buffers of usual callbacks
			*bp = (*bp)[:0]
			in.bufs.Put(bp)
		}
	}()
	body, err := readBody(w, r, *bp)
	*bp = body
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			in.answer(w, http.StatusRequestEntityTooLarge, "body over 1 MiB")
			return
		}
		in.answer(w, http.StatusBadRequest, "cannot read body")
		return
	}

	// Credentials first, from the Basic header or a scan of the body's top
	// level: an unauthenticated request is answered without a parse.
	if in.auth != nil && !in.authenticated(r, body) {
		w.Header().Set("WWW-Authenticate", `Basic realm="callbacks"`)
		in.answer(w, http.StatusUnauthorized, "missing or wrong credentials")
		return
	}
	js := in.js()
	if js == nil || in.ready() != nil {
		in.answer(w, http.StatusServiceUnavailable, "not ready to store callbacks")
		return
	}
	cb, perr := parseCallback(body)
	// Checked, the credentials go: neither the stream nor a dead letter
	// keeps them. The body shrinks in place.
	body = stripCredentials(body)
	*bp = body
	if perr != nil {
		ctx, cancel := context.WithTimeout(r.Context(), in.timeout)
		defer cancel()
		in.m.parseFailures.Inc()
		in.log.Warn().Str(observability.FieldReason, perr.Error()).Int("bytes", len(body)).Msg("unparseable callback, dead-lettered")
		hdr := nats.Header{}
		hdr.Set(HeaderReceivedAt, start.UTC().Format(time.RFC3339Nano))
		if err := broker.DeadLetter(ctx, js, broker.DeadLetterCallbacks, body, broker.CallbackSubject, hdr, perr.Error()); err != nil {
			in.log.Warn().Err(err).Msg("cannot store dead letter")
			in.answer(w, http.StatusServiceUnavailable, "cannot store the callback now")
			return
		}
		in.m.deadLetters.WithLabelValues("intake").Inc()
		in.answer(w, http.StatusBadRequest, perr.Error())
		return
	}

	pc := parse(cb, start)
	p := in.commit.get()
	p.body, p.parsed = body, pc
	p.msgID = status.ID("callback", string(pc.status), cb.RequestID, pc.said.String())
	if err := in.commit.store(r.Context(), p); err != nil {
		if r.Context().Err() != nil {
			// The store may still be under way with the body: the buffer
			// is not given back.
			*bp = nil
		}
		in.log.Warn().Err(err).Str(observability.FieldRequestID, cb.RequestID).Msg("cannot store callback")
		in.answer(w, http.StatusServiceUnavailable, "cannot store the callback now")
		return
	}
	in.m.storeSeconds.Observe(in.now().Sub(start).Seconds())
	in.log.Debug().Str(observability.FieldRequestID, cb.RequestID).Str(observability.FieldStatus, string(pc.status)).Msg("callback stored")
	in.m.answered(http.StatusOK)
	h := w.Header()
	h["Content-Type"] = contentJSON
	h["Content-Length"] = storedLength
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(storedBody)
}

// The answer to a stored callback, as observability.WriteJSON would write
// it, made once.
var (
	storedBody   = []byte(`{"status":"stored"}` + "\n")
	storedLength = []string{strconv.Itoa(len(storedBody))}
	contentJSON  = []string{"application/json"}
)

// readBody reads at most MaxBody bytes into buf.
func readBody(w http.ResponseWriter, r *http.Request, buf []byte) ([]byte, error) {
	rd := http.MaxBytesReader(w, r.Body, MaxBody)
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := rd.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// authenticated accepts HTTP Basic credentials, else the body's top-level
// username/password (ThingSpace echoes the registered ones), found by a
// scan that builds nothing: whatever the body, a refusal costs one pass
// over at most MaxBody bytes.
func (in *intake) authenticated(r *http.Request, body []byte) bool {
	if u, p, ok := r.BasicAuth(); ok && in.auth.match(u, p) {
		return true
	}
	u, p, ok := bodyCredentials(body)
	return ok && in.auth.match(u, p)
}
