package callback

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/correlation"
	"github.com/esim-pipeline/thingspace-esim/internal/observability"
	"github.com/esim-pipeline/thingspace-esim/internal/status"
	"github.com/esim-pipeline/thingspace-esim/internal/statuspub"
)

// errRetry marks a callback whose event cannot be made yet; the message is
// handed back and redelivered after the retry delay. Every other handler
// error is permanent and sends the callback to the dead letters.
var errRetry = errors.New("retry later")

type retryError struct {
	reason string
	err    error
}

func (e *retryError) Error() string        { return e.reason + ": " + e.err.Error() }
func (e *retryError) Unwrap() []error      { return []error{errRetry, e.err} }
func retry(reason string, err error) error { return &retryError{reason: reason, err: err} }

func retryReason(err error) string {
	var re *retryError
	if errors.As(err, &re) {
		return re.reason
	}
	return ""
}

// isPermanent decides what goes to the dead letters.
func isPermanent(err error) bool { return !errors.Is(err, errRetry) }

// fanout turns one stored callback into one status event.
type fanout struct {
	js      jetstream.JetStream
	pub     *statuspub.Publisher // final events
	status  jetstream.Stream     // the status stream, for last-event reads
	records *records
	handoff *handoff // what the intake parsed, by batch id; nil: parse everything
	grace   time.Duration
	timeout time.Duration
	now     func() time.Time
	m       *metrics
	log     zerolog.Logger
}

// handle is the Watermill handler. It returns nil only after the events
// are stored (or the status stream had them already); the router then acks.
// A message this instance stored comes with what its intake parsed (the
// hand-off); any other is parsed here.
func (f *fanout) handle(msg *message.Message) error {
	id := msg.Metadata.Get(HeaderBatchID)
	var items []rawCallback
	grouped := msg.Metadata.Get(HeaderBatch) != ""
	if grouped {
		var err error
		if items, err = decodeBatch(msg.Payload, msg.Metadata.Get(HeaderBatch)); err != nil {
			return err // the whole message to the dead letters: its bytes are kept
		}
	} else {
		items = []rawCallback{{Body: msg.Payload}}
	}
	parsed := f.handoff.get(id)
	if len(parsed) != len(items) {
		parsed = nil
	}
	err := f.handleItems(msg, items, parsed, grouped)
	if err == nil || isPermanent(err) {
		f.handoff.take(id)
	}
	return err
}

// eventSizeHint is about the size of one encoded status event.
const eventSizeHint = 1024

// finals are one message's final events, stored together.
type finals struct {
	msgs     []*nats.Msg
	received []time.Time
	statuses []status.Status
	arena    []byte // the events' bodies, one after the other
}

// store stores them all; the first failure asks for a redelivery (the
// events already stored are found by their eventId next time).
func (f *fanout) store(ctx context.Context, in *finals) error {
	var failed error
	for i, a := range f.pub.Store(ctx, in.msgs) {
		switch {
		case a.Err != nil:
			if failed == nil {
				failed = retry("nats", fmt.Errorf("store event on %s: %w", in.msgs[i].Subject, a.Err))
			}
			continue
		case a.Duplicate:
			f.m.duplicates.Inc()
		default:
			f.m.events.WithLabelValues(string(in.statuses[i])).Inc()
		}
		f.m.lag.Observe(f.now().Sub(in.received[i]).Seconds())
	}
	return failed
}

// handleItems turns every callback of a stored message into its event.
// In a group-committed message, a callback that cannot be parsed goes to
// the dead letters alone; one that must wait (its record, NATS) makes the
// whole message come back, and the callbacks already done then find their
// events stored. Final events are stored together, with those of the other
// workers (package statuspub): one round trip for the message, not one per
// callback.
func (f *fanout) handleItems(msg *message.Message, items []rawCallback, parsed []*parsedCallback, grouped bool) error {
	var wait error
	in := &finals{
		msgs:     make([]*nats.Msg, 0, len(items)),
		received: make([]time.Time, 0, len(items)),
		statuses: make([]status.Status, 0, len(items)),
		arena:    make([]byte, 0, len(items)*eventSizeHint),
	}
	ctx, cancel := context.WithTimeout(msg.Context(), f.timeout)
	defer cancel()
	for i, it := range items {
		var pc *parsedCallback
		if parsed != nil {
			pc = parsed[i]
		}
		err := f.handleOne(ctx, msg, it, pc, in)
		switch {
		case err == nil:
		case isPermanent(err):
			if !grouped {
				return err // the poison queue keeps the message as it is
			}
			hdr := nats.Header{}
			hdr.Set(HeaderReceivedAt, it.ReceivedAt)
			if of := msg.Metadata.Get(broker.HeaderDeadletterReplayed); of != "" {
				hdr.Set(broker.HeaderDeadletterReplayed, of) // a replay is replayed once
			}
			dctx, dcancel := context.WithTimeout(msg.Context(), f.timeout)
			dlErr := broker.DeadLetter(dctx, f.js, broker.DeadLetterCallbacks, it.Body, broker.CallbackSubject, hdr, err.Error())
			dcancel()
			if dlErr != nil {
				return retry("nats", dlErr)
			}
			f.m.deadLetters.WithLabelValues("fanout").Inc()
		case wait == nil:
			wait = err
		}
	}
	if len(in.msgs) == 0 {
		return wait
	}
	actx, acancel := context.WithTimeout(msg.Context(), f.timeout)
	defer acancel()
	if err := f.store(actx, in); err != nil && wait == nil {
		wait = err
	}
	return wait
}

// unpublishedWaits is how many CORRELATION_GRACE spans a callback waits for
// the accepted events of a record that exists.
const unpublishedWaits = 3

// handleOne turns one stored callback into its event; pc is what the
// intake parsed of it, nil when it must be parsed here. A final event
// joins in's; any other is stored before handleOne returns.
func (f *fanout) handleOne(ctx context.Context, msg *message.Message, it rawCallback, pc *parsedCallback, in *finals) error {
	if pc == nil {
		f.m.reparsed.Inc()
		cb, err := parseCallback(it.Body)
		if err != nil {
			f.m.parseFailures.Inc()
			return fmt.Errorf("stored callback cannot be parsed: %w", err)
		}
		received, err := time.Parse(time.RFC3339Nano, it.ReceivedAt)
		if err != nil {
			received = f.receivedAt(msg)
		}
		pc = parse(cb, received)
	}
	if !pc.known {
		return fmt.Errorf("callback status %q has no event status", pc.cb.Status)
	}
	waited := f.now().Sub(pc.receivedAt)
	rec, err := f.records.Get(ctx, pc.cb.RequestID, waited >= f.grace)
	switch {
	case err == nil && !rec.Published && waited < unpublishedWaits*f.grace:
		// The dispatcher has the record and is still storing the accepted
		// events: the callback's event lands after them. A dispatcher gone
		// before it stored them sends its commands again under a new
		// requestId; this request's callbacks still become events, with its
		// record, once the wait is over.
		return retry("record_pending", fmt.Errorf("request %s: accepted events not stored yet", pc.cb.RequestID))
	case err == nil:
	case errors.Is(err, correlation.ErrNotFound):
		if waited < f.grace {
			// The dispatcher may still be writing the record.
			return retry("record_pending", err)
		}
		rec = nil
	default:
		return retry("nats", err)
	}

	ev := buildEvent(pc, rec)
	if rec == nil {
		f.m.uncorrelated.Inc()
	}
	if ev.Final {
		start := len(in.arena)
		in.arena = ev.AppendJSON(in.arena)
		in.msgs = append(in.msgs, statuspub.Message(ev.Subject(), ev.EventID, in.arena[start:len(in.arena):len(in.arena)]))
		in.received = append(in.received, pc.receivedAt)
		in.statuses = append(in.statuses, ev.Status)
		return nil
	}
	pctx, pcancel := context.WithTimeout(msg.Context(), f.timeout)
	defer pcancel()
	if err := f.publish(pctx, ev); err != nil {
		return err
	}
	f.m.lag.Observe(f.now().Sub(pc.receivedAt).Seconds())
	f.log.Debug().Str(observability.FieldEventID, ev.EventID).Str(observability.FieldRequestID, ev.RequestID).
		Str(observability.FieldCommandID, ev.CommandID).Str(observability.FieldStatus, string(ev.Status)).
		Str(observability.FieldSubject, ev.Subject()).Msg("status event stored")
	return nil
}

// receivedAt reads the intake's receipt time, else the time JetStream
// stored the message, else now.
func (f *fanout) receivedAt(msg *message.Message) time.Time {
	for _, k := range []string{HeaderReceivedAt, metaStoredAt} {
		if v := msg.Metadata.Get(k); v != "" {
			if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
				return t
			}
		}
	}
	return f.now()
}

// publish stores ev on its subject with Nats-Msg-Id = eventId and waits for
// the ack; a duplicate ack means the fact is already stored.
//
// A pending event is stored only while the request has not settled the
// device: handlers run concurrently, and a warning handled after the final
// callback of the same request must not become the device's latest state.
// The check and the store are tied by Nats-Expected-Last-Subject-Sequence.
func (f *fanout) publish(ctx context.Context, ev status.Event) error {
	body := ev.AppendJSON(make([]byte, 0, 1024))
	subject := ev.Subject()
	for attempt := 0; ; attempt++ {
		msg := &nats.Msg{Subject: subject, Data: body, Header: nats.Header{nats.MsgIdHdr: []string{ev.EventID}}}
		if !ev.Final {
			settled, seq, err := f.settled(ctx, subject, ev.RequestID)
			if err != nil {
				return retry("nats", err)
			}
			if settled {
				f.m.stale.Inc()
				return nil
			}
			msg.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(seq, 10))
		}
		ack, err := f.js.PublishMsg(ctx, msg)
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence && attempt < 10 {
			continue // another event landed on the subject meanwhile: look again
		}
		if err != nil {
			return retry("nats", fmt.Errorf("store event on %s: %w", subject, err))
		}
		if ack.Duplicate {
			f.m.duplicates.Inc()
		} else {
			f.m.events.WithLabelValues(string(ev.Status)).Inc()
		}
		return nil
	}
}

// settled reports whether the last event on subject is a final one of the
// same request, and the subject's last sequence (0 when it has none).
func (f *fanout) settled(ctx context.Context, subject, requestID string) (bool, uint64, error) {
	last, seq, _, err := broker.LastEvent(ctx, f.status, subject)
	if err != nil || last == nil {
		return false, seq, err
	}
	return last.Final && last.RequestID == requestID, seq, nil
}

// gate holds back new callbacks while the service stops and lets the
// handlers in flight finish, so the router closes with nothing half done.
type gate struct {
	mu       sync.Mutex
	closed   bool
	inflight sync.WaitGroup
}

var errDraining = errors.New("service stopping")

func (g *gate) middleware(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		g.mu.Lock()
		if g.closed {
			g.mu.Unlock()
			return nil, retry("draining", errDraining)
		}
		g.inflight.Add(1)
		g.mu.Unlock()
		defer g.inflight.Done()
		return h(msg)
	}
}

// close stops new handler runs and waits up to grace for those in flight.
func (g *gate) close(grace time.Duration) bool {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	done := make(chan struct{})
	go func() { g.inflight.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(grace):
		return false
	}
}

// observe is the metrics middleware: outcome and duration of each run.
func (f *fanout) observe(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		start := f.now()
		out, err := h(msg)
		f.m.handleSeconds.Observe(f.now().Sub(start).Seconds())
		switch {
		case err == nil:
			f.m.handled.WithLabelValues("ok").Inc()
		case isPermanent(err):
			f.m.handled.WithLabelValues("error").Inc()
			f.log.Warn().Err(err).Str("message_uuid", msg.UUID).Msg("callback dead-lettered")
		default:
			f.m.handled.WithLabelValues("retry").Inc()
			f.m.retries.WithLabelValues(retryReason(err)).Inc()
		}
		return out, err
	}
}
