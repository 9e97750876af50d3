package callback

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmjs "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/jetstream"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
)

// Metadata keys the unmarshaler adds next to the message's NATS headers.
const (
	metaStreamSeq   = "_stream_seq"
	metaDelivered   = "_num_delivered"
	metaStoredAt    = "_stored_at"
	metaNatsSubject = "_subject"
)

// Unmarshaler turns a JetStream message into a Watermill message keeping
// every header: Nats-Msg-Id becomes the message UUID and stays in the
// metadata, a header with several values keeps them joined with ", ". It
// never returns nil: a message whose metadata cannot be read still carries
// its payload (watermill-nats dereferences what it gets).
type Unmarshaler struct{}

// Unmarshal implements the watermill-nats jetstream Unmarshaler.
func (Unmarshaler) Unmarshal(msg jetstream.Msg) (*message.Message, error) {
	hdr := msg.Headers()
	md := make(message.Metadata, len(hdr)+4)
	for k, vs := range hdr {
		switch len(vs) {
		case 0:
			md[k] = ""
		case 1:
			md[k] = vs[0]
		default:
			md[k] = strings.Join(vs, ", ")
		}
	}
	md[metaNatsSubject] = msg.Subject()
	id := hdr.Get(nats.MsgIdHdr)
	if meta, err := msg.Metadata(); err == nil {
		md[metaStreamSeq] = strconv.FormatUint(meta.Sequence.Stream, 10)
		md[metaDelivered] = strconv.FormatUint(meta.NumDelivered, 10)
		md[metaStoredAt] = meta.Timestamp.UTC().Format(time.RFC3339Nano)
		if id == "" {
			id = meta.Stream + ":" + strconv.FormatUint(meta.Sequence.Stream, 10)
		}
	}
	if id == "" {
		id = watermill.NewShortUUID()
	}
	wm := message.NewMessage(id, msg.Data())
	wm.Metadata = md
	return wm, nil
}

// deadLetters is the PoisonQueue's publisher: each message is stored with
// broker.DeadLetter (raw payload, Deadletter-Reason, Deadletter-Subject),
// its original headers kept. It never closes the connection.
type deadLetters struct {
	js      jetstream.JetStream
	timeout time.Duration
	onStore func()
}

func (d deadLetters) Publish(topic string, msgs ...*message.Message) error {
	for _, m := range msgs {
		hdr := nats.Header{}
		for k, v := range m.Metadata {
			switch k {
			case middleware.ReasonForPoisonedKey, middleware.PoisonedTopicKey, middleware.PoisonedHandlerKey,
				middleware.PoisonedSubscriberKey, metaStreamSeq, metaDelivered, metaStoredAt, metaNatsSubject:
				continue
			}
			hdr.Set(k, v)
		}
		from := m.Metadata.Get(metaNatsSubject)
		if from == "" {
			from = broker.CallbackSubject
		}
		ctx, cancel := context.WithTimeout(context.Background(), d.timeout)
		err := broker.DeadLetter(ctx, d.js, topic, m.Payload, from, hdr, m.Metadata.Get(middleware.ReasonForPoisonedKey))
		cancel()
		if err != nil {
			return err
		}
		if d.onStore != nil {
			d.onStore()
		}
	}
	return nil
}

func (deadLetters) Close() error { return nil }

// quietLogger keeps Watermill's per-message lines out of Info: the
// subscriber's "got msg" becomes Debug, and a handler error that only asks
// for redelivery (a record not written yet) is Debug, not Error. With
// infoToDebug off, only the second applies (the router's lifecycle lines).
type quietLogger struct {
	watermill.LoggerAdapter
	infoToDebug bool
}

func (q quietLogger) Info(msg string, f watermill.LogFields) {
	if q.infoToDebug {
		q.LoggerAdapter.Debug(msg, f)
		return
	}
	q.LoggerAdapter.Info(msg, f)
}

func (q quietLogger) Error(msg string, err error, f watermill.LogFields) {
	if errors.Is(err, errRetry) {
		q.LoggerAdapter.Debug(msg+": "+err.Error(), f)
		return
	}
	q.LoggerAdapter.Error(msg, err, f)
}

func (q quietLogger) With(f watermill.LogFields) watermill.LoggerAdapter {
	return quietLogger{LoggerAdapter: q.LoggerAdapter.With(f), infoToDebug: q.infoToDebug}
}

// existingConsumer makes every Subscribe of the watermill subscriber bind
// the one durable consumer the service created (each Subscribe is one more
// concurrent pull loop on it); nothing is created or deleted from a topic.
func existingConsumer(c jetstream.Consumer) wmjs.ResourceInitializer {
	return func(context.Context, jetstream.JetStream, string) (jetstream.Consumer, func(context.Context, watermill.LoggerAdapter), error) {
		return c, nil, nil
	}
}

// backoff is the redelivery delay of a handed-back callback: the retry
// delay times the deliveries so far, at most five times it. Callbacks
// waiting for their record (10,000 may share one) come back ever less often
// instead of every retry delay.
type backoff struct{ step time.Duration }

func (b backoff) WaitTime(delivered uint64) time.Duration {
	n := min(max(delivered, 1), 5)
	return b.step * time.Duration(n)
}
