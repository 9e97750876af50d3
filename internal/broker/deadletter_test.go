package broker_test

import (
	"context"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/natstest"
)

func TestAReplayGoesBackWhereTheDeadLetterCameFromAndOnlyThere(t *testing.T) {
	tests := []struct {
		name, from string
		replayed   string // the dead letter's Deadletter-Replayed
		refused    string // in the error; "" when replayable
	}{
		{name: "a command", from: "thingspace.profile.commands.enable"},
		{name: "a callback", from: broker.CallbackSubject},
		{name: "a replayed message dead-lettered again", from: "thingspace.profile.commands.enable", replayed: "17", refused: "dead letter 17 replayed and dead-lettered again"},
		{name: "no origin", from: "", refused: "no Deadletter-Subject"},
		{name: "a status subject", from: "thingspace.profile.status.enable.89148000000000000001", refused: "neither a command subject"},
		{name: "a wildcard", from: "thingspace.profile.commands.*", refused: "neither a command subject"},
		{name: "a deeper command subject", from: "thingspace.profile.commands.enable.x", refused: "neither a command subject"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := nats.Header{}
			h.Set(broker.HeaderDeadletterReason, "undecodable command")
			h.Set(broker.HeaderDeadletterSubject, tt.from)
			h.Set("Trace-Id", "t-9")
			if tt.replayed != "" {
				h.Set(broker.HeaderDeadletterReplayed, tt.replayed)
			}
			msg, err := broker.ReplayMsg(42, h, []byte(`{"x":1}`))
			if tt.refused != "" {
				require.ErrorIs(t, err, broker.ErrNotReplayable)
				require.ErrorContains(t, err, tt.refused)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.from, msg.Subject)
			require.Equal(t, `{"x":1}`, string(msg.Data))
			require.Equal(t, "42", msg.Header.Get(broker.HeaderDeadletterReplayed))
			require.Equal(t, "deadletter-42", msg.Header.Get(nats.MsgIdHdr))
			require.Equal(t, "t-9", msg.Header.Get("Trace-Id"), "the original headers go along")
			require.Empty(t, msg.Header.Get(broker.HeaderDeadletterReason))
		})
	}
}

// The rule both services follow: the dead letter of a replayed message
// keeps the mark, and replay refuses it.
func TestTheDeadLetterOfAReplayIsMarkedSoThatReplayRefusesIt(t *testing.T) {
	ns := natstest.Run(t)
	_, js := ns.JetStream()
	ctx := context.Background()
	require.NoError(t, broker.Ensure(ctx, js, broker.StreamSettings{}))
	first := nats.Header{}
	first.Set(broker.HeaderDeadletterSubject, "thingspace.profile.commands.enable")
	replay, err := broker.ReplayMsg(7, first, []byte("{broken"))
	require.NoError(t, err)

	require.NoError(t, broker.DeadLetter(ctx, js, broker.DeadLetterCommands, replay.Data, replay.Subject, replay.Header, "still undecodable"))
	st, err := js.Stream(ctx, broker.DeadLetterStream)
	require.NoError(t, err)
	again, err := st.GetLastMsgForSubject(ctx, broker.DeadLetterCommands)
	require.NoError(t, err)
	require.Equal(t, "7", again.Header.Get(broker.HeaderDeadletterReplayed))
	require.Empty(t, again.Header.Get(nats.MsgIdHdr), "a dead letter is no duplicate of anything")
	require.Equal(t, "still undecodable", again.Header.Get(broker.HeaderDeadletterReason))
	require.ErrorIs(t, broker.Replayable(again.Header), broker.ErrNotReplayable)
}
