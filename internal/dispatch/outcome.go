package dispatch

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/esim-pipeline/thingspace-esim/internal/batch"
	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/correlation"
	"github.com/esim-pipeline/thingspace-esim/internal/observability"
	"github.com/esim-pipeline/thingspace-esim/internal/status"
	"github.com/esim-pipeline/thingspace-esim/internal/statuspub"
)

// Outcomes are stored by one goroutine in call order, while the next call
// is made: ThingSpace's answer time and the store's overlap, and one
// subject's events keep the calls' order. What needs no order (a record
// first stored, a deadline, dead letters, acks) goes beside it.

// accepted stores what a call ThingSpace took needs: the requestId record
// and the deadline at once, beside the outcome goroutine; then, in call
// order, the accepted events and the record marked published; then the
// devices are settled.
func (s *session) accepted(k batch.Key, items []batch.Item, reqID string) {
	now := time.Now().UTC()
	rec := &correlation.Record{RequestID: reqID, Action: k.Action, AccountName: k.Account, SubmittedAt: now,
		Devices: make([]correlation.Entry, len(items))}
	evs := make([]status.Event, len(items))
	seqs := make([]uint64, len(items))
	for i, it := range items {
		h := it.Ref.(*held)
		rec.Devices[i] = correlation.Entry{CommandID: h.id, Device: it.Device}
		seqs[i] = h.seq
		evs[i] = status.Event{
			EventID:     status.CommandEventID(status.Accepted, h.id, k.Action, it.Device),
			CommandID:   h.id,
			RequestID:   reqID,
			Action:      k.Action,
			AccountName: k.Account,
			Device:      it.Device,
			Status:      status.Accepted,
			OccurredAt:  now,
		}
	}
	stored := make(chan error, 1)
	s.aside.Go(func() {
		err := s.d.putRecord(s.work, rec)
		if err == nil {
			err = s.d.scheduleDeadline(s.work, reqID, k.Action, k.Account, now)
		}
		stored <- err
	})
	s.outcomes <- func() {
		err := <-stored
		if err == nil {
			err = s.d.publish(s.work, evs, seqs...)
		}
		if err == nil {
			// Callbacks may be turned into events from now on: they come
			// after the accepted events on each device's subject.
			rec.Published = true
			err = s.d.putRecord(s.work, rec)
		}
		if err != nil {
			// ThingSpace has the request but its outcome is not stored: the
			// commands stay held, and go back at the session's end.
			s.d.log.Error().Err(err).Str(observability.FieldRequestID, reqID).Msg("accepted outcome not stored")
			return
		}
		s.d.m.devices.WithLabelValues(string(status.Accepted)).Add(float64(len(evs)))
		s.settle(items)
	}
}

// rejected stores ThingSpace's refusal of items.
func (s *session) rejected(k batch.Key, items []batch.Item, cause error) {
	s.outcomes <- func() { s.final(k, items, status.Rejected, reasonOf(cause)) }
}

// failed ends items failed: their call's tries ran out. Their commands are
// dead-lettered once settled.
func (s *session) failed(k batch.Key, items []batch.Item, why string, r status.Reason) {
	s.markFailed(items, why)
	s.outcomes <- func() { s.final(k, items, status.Failed, r) }
}

// exhausted ends items failed: their commands ran out of deliveries. They
// come from the book, not from a call; their failed events go beside.
func (s *session) exhausted(items []batch.Item) {
	byKey := map[batch.Key][]batch.Item{}
	for _, it := range items {
		h := it.Ref.(*held)
		byKey[h.key] = append(byKey[h.key], it)
	}
	for k, its := range byKey {
		why := its[0].Ref.(*held).failure
		s.aside.Go(func() { s.final(k, its, status.Failed, status.Reason{Code: "DELIVERIES_EXHAUSTED", Message: why}) })
	}
}

func (s *session) markFailed(items []batch.Item, why string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, it := range items {
		if h := it.Ref.(*held); h.failure == "" {
			h.failure = why
		}
	}
}

// final publishes a final event of st for every item and settles them.
func (s *session) final(k batch.Key, items []batch.Item, st status.Status, r status.Reason) {
	now := time.Now().UTC()
	evs := make([]status.Event, len(items))
	seqs := make([]uint64, len(items))
	for i, it := range items {
		h := it.Ref.(*held)
		r := r
		seqs[i] = h.seq
		evs[i] = status.Event{
			EventID:     status.CommandEventID(st, h.id, k.Action, it.Device),
			CommandID:   h.id,
			Action:      k.Action,
			AccountName: k.Account,
			Device:      it.Device,
			Status:      st,
			Final:       true,
			Reason:      &r,
			OccurredAt:  now,
		}
	}
	if err := s.d.publish(s.work, evs, seqs...); err != nil {
		s.d.log.Error().Err(err).Str(observability.FieldStatus, string(st)).Msg("events not stored; the commands go back at the end")
		return
	}
	s.d.m.devices.WithLabelValues(string(st)).Add(float64(len(evs)))
	s.settle(items)
}

// acknowledge ends a command settled here: acked, or, when a device ended
// failed, dead-lettered and terminated. An ack that cannot leave (NATS
// reconnecting) is sent again, and confirmed, once the connection is back.
func (d *dispatcher) acknowledge(ctx context.Context, h *held, aside *sync.WaitGroup) {
	if h.failure != "" {
		aside.Go(func() {
			err := d.persist(ctx, "dead letter of "+h.id, func(ctx context.Context) error {
				return d.deadLetter(ctx, h.msg, h.failure)
			})
			if err != nil {
				return // not stored: the command goes back with the session's end
			}
			_ = h.msg.Term()
			d.m.commands.WithLabelValues("deadlettered").Inc()
		})
		return
	}
	d.m.commands.WithLabelValues("acked").Inc()
	if err := h.msg.Ack(); err == nil {
		return
	}
	aside.Go(func() {
		err := d.persist(ctx, "ack of "+h.id, func(ctx context.Context) error {
			err := h.msg.AckSync(nats.Context(ctx))
			if errors.Is(err, nats.ErrMsgAlreadyAckd) {
				return nil
			}
			return err
		})
		if err != nil {
			d.log.Warn().Str(observability.FieldCommandID, h.id).Msg("ack not confirmed; the command will be redelivered and its devices skipped")
		}
	})
}

// putRecord stores rec, trying again while NATS is away, until ctx ends.
func (d *dispatcher) putRecord(ctx context.Context, rec *correlation.Record) error {
	return d.persist(ctx, "requestId record "+rec.RequestID, func(ctx context.Context) error { return d.store.Put(ctx, rec) })
}

// persist runs one store operation (10-second attempts) until it succeeds
// or ctx ends, backing off up to 2 s: NATS away for a while must not lose
// an outcome ThingSpace already has.
func (d *dispatcher) persist(ctx context.Context, what string, op func(context.Context) error) error {
	wait := 100 * time.Millisecond
	for {
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := op(actx)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return err
		}
		d.log.Warn().Err(err).Str("what", what).Msg("not stored yet; trying again")
		pause(ctx, wait)
		wait = min(2*wait, 2*time.Second)
	}
}

// publishTimeout bounds one event publish: its wait for a free slot among
// the async publishes in flight, and then for its ack.
const publishTimeout = 10 * time.Second

// newPublisher is the dispatcher's status publisher: atomic batches of up
// to STATUS_BATCH_MAX, counted by result.
func newPublisher(js jetstream.JetStream, cfg Config, m *metrics) *statuspub.Publisher {
	return statuspub.New(js, statuspub.Config{BatchMax: cfg.StatusBatchMax, Timeout: publishTimeout,
		Batches: func(result string) { m.eventBatches.WithLabelValues(result).Inc() }})
}

// publish stores events on their status subjects, each with its eventId as
// Nats-Msg-Id and, where seqs gives one, the stream sequence of the
// command it settles; it returns once every one is acknowledged. The
// status publisher puts many in atomic batches (package statuspub). Failed
// publishes are tried again until ctx ends: an event that is not stored
// must not let its command be acknowledged.
func (d *dispatcher) publish(ctx context.Context, evs []status.Event, seqs ...uint64) error {
	todo := make([]*nats.Msg, len(evs))
	for i, ev := range evs {
		m := statuspub.Message(ev.Subject(), ev.EventID, ev.AppendJSON(make([]byte, 0, 512)))
		m.Header.Set(jetstream.ExpectedStreamHeader, broker.StatusStream)
		if i < len(seqs) && seqs[i] > 0 {
			m.Header.Set(seqHeader, strconv.FormatUint(seqs[i], 10))
		}
		todo[i] = m
	}
	wait := 100 * time.Millisecond
	for {
		var failed []*nats.Msg
		for i, a := range d.pub.Store(ctx, todo) {
			if a.Err != nil {
				d.log.Debug().Err(a.Err).Str(observability.FieldEventID, todo[i].Header.Get(nats.MsgIdHdr)).Msg("event publish")
				failed = append(failed, todo[i])
			}
		}
		if len(failed) == 0 {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		todo = failed
		pause(ctx, wait)
		wait = min(2*wait, 2*time.Second)
	}
}

func (d *dispatcher) deadLetter(ctx context.Context, msg *nats.Msg, reason string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	d.m.deadLetters.Inc()
	return broker.DeadLetter(ctx, d.js, broker.DeadLetterCommands, msg.Data, msg.Subject, msg.Header, reason)
}
