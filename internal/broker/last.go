package broker

import (
	"context"
	"encoding/json"
	"errors"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/esim-pipeline/thingspace-esim/internal/status"
)

// LastEvent is the newest status event stored on subject: the latest of one
// action of one device. found is false when the subject holds none; seq is
// its stream sequence, also when its body cannot be read as an event (then
// ev is nil).
func LastEvent(ctx context.Context, st jetstream.Stream, subject string) (ev *status.Event, seq uint64, found bool, err error) {
	m, err := st.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, 0, false, nil
	}
	if err != nil {
		return nil, 0, false, err
	}
	var e status.Event
	if json.Unmarshal(m.Data, &e) != nil {
		return nil, m.Sequence, true, nil
	}
	return &e, m.Sequence, true, nil
}
