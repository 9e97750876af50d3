package broker

import (
	"context"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Headers of a dead letter.
const (
	HeaderDeadletterReason  = "Deadletter-Reason"
	HeaderDeadletterSubject = "Deadletter-Subject"
)

// DeadLetter stores body, as it came, on subject with the reason (one line)
// and the subject it came from, and waits for the store's ack. The original
// headers are kept too, except Nats-Msg-Id (a dead letter is never a
// duplicate of anything).
func DeadLetter(ctx context.Context, js jetstream.JetStream, subject string, body []byte, from string, orig nats.Header, reason string) error {
	msg := nats.NewMsg(subject)
	msg.Data = body
	for k, vs := range orig {
		if k == nats.MsgIdHdr || strings.HasPrefix(k, "Nats-") {
			continue
		}
		for _, v := range vs {
			msg.Header.Add(k, v)
		}
	}
	msg.Header.Set(HeaderDeadletterReason, oneLine(reason))
	msg.Header.Set(HeaderDeadletterSubject, from)
	_, err := js.PublishMsg(ctx, msg)
	return err
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 1024 {
		s = s[:1024]
	}
	return s
}
