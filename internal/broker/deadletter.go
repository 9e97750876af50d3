package broker

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Headers of a dead letter.
const (
	HeaderDeadletterReason  = "Deadletter-Reason"
	HeaderDeadletterSubject = "Deadletter-Subject"
	// HeaderDeadletterReplayed is on a message republished from a dead
	// letter (esimctl deadletters replay): the dead letter's sequence in
	// THINGSPACE_DEADLETTER. DeadLetter keeps it, so the dead letter of a
	// replayed message says so, and [Replayable] refuses it: a message is
	// replayed once, never in a loop.
	HeaderDeadletterReplayed = "Deadletter-Replayed"
)

// DeadLetter stores body, as it came, on subject with the reason (one line)
// and the subject it came from, and waits for the store's ack. The original
// headers are kept too, except Nats-Msg-Id (a dead letter is never a
// duplicate of anything) and the Deadletter- headers of an earlier dead
// letter, but for Deadletter-Replayed: a replayed message that fails again
// is stored again (nothing dead-lettered is lost), marked as a replay.
func DeadLetter(ctx context.Context, js jetstream.JetStream, subject string, body []byte, from string, orig nats.Header, reason string) error {
	msg := nats.NewMsg(subject)
	msg.Data = body
	for k, vs := range orig {
		if k == nats.MsgIdHdr || strings.HasPrefix(k, "Nats-") ||
			(strings.HasPrefix(k, "Deadletter-") && k != HeaderDeadletterReplayed) {
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

// ErrNotReplayable reports a dead letter that replay must leave alone.
var ErrNotReplayable = errors.New("not replayable")

// Replayable says whether the dead letter with headers h may be replayed:
// not when it is the dead letter of a message that was itself a replay
// (that would loop), nor when it does not say where it came from, or came
// from a subject that is no input of the pipeline.
func Replayable(h nats.Header) error {
	if of := h.Get(HeaderDeadletterReplayed); of != "" {
		return fmt.Errorf("%w: it is dead letter %s replayed and dead-lettered again; fix what its reason says, then publish it by hand", ErrNotReplayable, of)
	}
	from := h.Get(HeaderDeadletterSubject)
	switch {
	case from == "":
		return fmt.Errorf("%w: it has no %s header", ErrNotReplayable, HeaderDeadletterSubject)
	case from == CallbackSubject:
	case strings.HasPrefix(from, strings.TrimSuffix(CommandSubjects, ">")) && !strings.ContainsAny(from, "*> \t") &&
		strings.Count(from, ".") == strings.Count(CommandSubjects, "."):
	default:
		return fmt.Errorf("%w: it came from %q, which is neither a command subject nor %s", ErrNotReplayable, from, CallbackSubject)
	}
	return nil
}

// ReplayMsgID is the Nats-Msg-Id of the replay of dead letter seq: a replay
// published twice within the target stream's duplicate window is stored
// once.
func ReplayMsgID(seq uint64) string { return "deadletter-" + strconv.FormatUint(seq, 10) }

// ReplayMsg is the message that replays the dead letter stored at seq with
// headers h and body: the original bytes, to the subject it came from, with
// its original headers, Deadletter-Replayed = seq, and Nats-Msg-Id =
// [ReplayMsgID] (for a command without a commandId in its body that is
// also its command id). It fails as [Replayable] does.
func ReplayMsg(seq uint64, h nats.Header, body []byte) (*nats.Msg, error) {
	if err := Replayable(h); err != nil {
		return nil, err
	}
	msg := nats.NewMsg(h.Get(HeaderDeadletterSubject))
	msg.Data = body
	for k, vs := range h {
		if strings.HasPrefix(k, "Nats-") || strings.HasPrefix(k, "Deadletter-") {
			continue
		}
		for _, v := range vs {
			msg.Header.Add(k, v)
		}
	}
	msg.Header.Set(HeaderDeadletterReplayed, strconv.FormatUint(seq, 10))
	msg.Header.Set(nats.MsgIdHdr, ReplayMsgID(seq))
	return msg, nil
}
