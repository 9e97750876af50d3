package dispatch

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/correlation"
	"github.com/esim-pipeline/thingspace-esim/internal/device"
	"github.com/esim-pipeline/thingspace-esim/internal/observability"
	"github.com/esim-pipeline/thingspace-esim/internal/status"
	"github.com/esim-pipeline/thingspace-esim/internal/thingspace"
)

// RequestStatuser is what the deadline watcher needs of ThingSpace.
type RequestStatuser interface {
	RequestStatus(ctx context.Context, account, requestID string) (*thingspace.RequestStatus, error)
}

// deadline is the message that makes a request's devices be reconciled when
// their final callbacks are late. It lives in a work-queue stream, so a
// restart forgets none: the watcher naks it with a delay until it is due.
type deadline struct {
	RequestID string    `json:"requestId"`
	Action    string    `json:"action"`
	Account   string    `json:"accountName"`
	Due       time.Time `json:"due"`
}

// scheduleDeadline stores the deadline of reqID.
func (d *dispatcher) scheduleDeadline(ctx context.Context, reqID, action, account string, accepted time.Time) error {
	body, _ := json.Marshal(deadline{RequestID: reqID, Action: action, Account: account, Due: accepted.Add(d.cfg.CallbackDeadline)})
	m := nats.NewMsg(broker.DeadlineSubject)
	m.Data = body
	m.Header.Set(nats.MsgIdHdr, "deadline-"+reqID)
	return d.persist(ctx, "deadline of "+reqID, func(ctx context.Context) error {
		_, err := d.js.PublishMsg(ctx, m)
		return err
	})
}

// watchDeadlines consumes due deadlines until ctx ends.
func (d *dispatcher) watchDeadlines(ctx context.Context) (jetstream.ConsumeContext, error) {
	var cons jetstream.Consumer
	err := broker.Retry(ctx, func(ctx context.Context) error {
		c, err := d.js.CreateOrUpdateConsumer(ctx, broker.DeadlineStream, jetstream.ConsumerConfig{
			Durable:       broker.DeadlineConsumer,
			Description:   "reconciles accepted devices whose final callback is late",
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       5 * time.Minute,
			MaxAckPending: 10000,
			Replicas:      d.cfg.StreamReplicas,
		})
		cons = c
		return err
	})
	if err != nil {
		return nil, err
	}
	return cons.Consume(func(msg jetstream.Msg) { d.reconcile(ctx, msg) }, jetstream.PullMaxMessages(100))
}

func (d *dispatcher) reconcile(ctx context.Context, msg jetstream.Msg) {
	var dl deadline
	if err := json.Unmarshal(msg.Data(), &dl); err != nil {
		d.log.Error().Err(err).Msg("undecodable deadline dropped")
		_ = msg.Term()
		return
	}
	if wait := time.Until(dl.Due); wait > 0 {
		_ = msg.NakWithDelay(wait)
		return
	}
	log := d.log.With().Str(observability.FieldRequestID, dl.RequestID).Logger()
	rec, err := d.store.Get(ctx, dl.RequestID)
	if errors.Is(err, correlation.ErrNotFound) {
		log.Warn().Msg("deadline of a request with no record dropped")
		_ = msg.Ack()
		return
	}
	if err != nil {
		_ = msg.NakWithDelay(5 * time.Second)
		return
	}
	open, err := d.unsettled(ctx, rec)
	if err != nil {
		log.Warn().Err(err).Msg("cannot read device states; deadline tried again")
		_ = msg.NakWithDelay(5 * time.Second)
		return
	}
	if len(open) == 0 {
		_ = msg.Ack()
		return
	}
	_ = msg.InProgress()
	outcome := map[string]status.Status{}
	if rs, ok := d.ts.(RequestStatuser); ok {
		if err := d.limiter.Wait(ctx, d.scope(dl.Account)); err != nil {
			_ = msg.Nak()
			return
		}
		ans, err := rs.RequestStatus(ctx, dl.Account, dl.RequestID)
		d.m.calls.WithLabelValues("request_status", statusCode(err)).Inc()
		switch {
		case err != nil && ctx.Err() != nil:
			// Stopping is not ThingSpace's answer: the deadline comes again.
			_ = msg.Nak()
			return
		case err != nil && (thingspace.Retryable(err) || thingspace.IsAuth(err)):
			log.Warn().Err(err).Msg("request status not read; tried again")
			_ = msg.NakWithDelay(30 * time.Second)
			return
		case err != nil:
			log.Warn().Err(err).Msg("request status refused; open devices time out")
		default:
			for _, sr := range ans.SubRequests {
				st := settledBy(sr.Status)
				if st == "" {
					continue
				}
				var set device.Set
				for k, v := range sr.Identifiers() {
					if kind, err := device.ParseKind(k); err == nil {
						set = set.With(kind, v)
					}
				}
				if e, ok := rec.Find(set); ok {
					outcome[e.Device.Key()] = st
				}
			}
		}
	}
	now := time.Now().UTC()
	evs := make([]status.Event, 0, len(open))
	for _, e := range open {
		st, ok := outcome[e.Device.Key()]
		if !ok {
			st = status.TimedOut
		}
		ev := status.Event{
			EventID:     status.RequestEventID(st, dl.RequestID, e.Device),
			CommandID:   e.CommandID,
			RequestID:   dl.RequestID,
			Action:      rec.Action,
			AccountName: rec.AccountName,
			Device:      e.Device,
			Status:      st,
			Final:       true,
			OccurredAt:  now,
		}
		switch st {
		case status.TimedOut:
			ev.Reason = &status.Reason{Code: "CALLBACK_DEADLINE", Message: "no final callback within " + d.cfg.CallbackDeadline.String() + " and the request status does not settle it"}
		case status.Failed:
			ev.Reason = &status.Reason{Code: "REQUEST_STATUS_FAILED", Message: "ThingSpace's request status reports the device failed"}
		}
		evs = append(evs, ev)
	}
	if err := d.publish(ctx, evs); err != nil {
		_ = msg.NakWithDelay(5 * time.Second)
		return
	}
	for _, ev := range evs {
		d.m.devices.WithLabelValues(string(ev.Status)).Inc()
	}
	log.Info().Int(observability.FieldDevices, len(evs)).Msg("late devices reconciled")
	_ = msg.Ack()
}

// settledBy maps a request-status answer to a final status, "" while open.
func settledBy(s string) status.Status {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "success", "succeeded", "completed", "complete":
		return status.Succeeded
	case "failed", "failure", "error":
		return status.Failed
	}
	return ""
}

// unsettled lists the record's devices whose latest event is not final for
// this request. A device whose latest event belongs to a later request has
// moved on and is left alone; so is one whose final callback found no
// record when it came and went to the unknown action's subject.
func (d *dispatcher) unsettled(ctx context.Context, rec *correlation.Record) ([]correlation.Entry, error) {
	stream, err := d.js.Stream(ctx, broker.StatusStream)
	if err != nil {
		return nil, err
	}
	var open []correlation.Entry
	seen := map[string]bool{}
	for _, e := range rec.Devices {
		k := e.Device.Key()
		if seen[k] {
			continue
		}
		seen[k] = true
		last, _, _, err := broker.LastEvent(ctx, stream, status.Subject(rec.Action, e.Device))
		if err != nil {
			return nil, err
		}
		if last != nil && (last.RequestID != rec.RequestID || last.Final) {
			continue
		}
		lost, _, _, err := broker.LastEvent(ctx, stream, status.Subject(status.UnknownAction, e.Device))
		if err != nil {
			return nil, err
		}
		if lost != nil && lost.RequestID == rec.RequestID && lost.Final {
			continue
		}
		open = append(open, e)
	}
	return open, nil
}
