package callback_test

import (
	"context"
	"strconv"
	"testing"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/callback"
	"github.com/esim-pipeline/thingspace-esim/internal/natstest"
)

// TestReplayRebuildsEventsOnceWhateverTheirAge: callbacks stored while no
// fan-out ran (as after a parser bug) become events on replay, and a second
// replay publishes nothing, although it runs outside of any duplicate window
// (it checks eventIds on the subjects, not Nats-Msg-Id).
func TestReplayRebuildsEventsOnceWhateverTheirAge(t *testing.T) {
	ns := natstest.Run(t)
	_, js := ns.JetStream()
	ctx := context.Background()
	require.NoError(t, broker.Ensure(ctx, js, broker.StreamSettings{}))
	const n = 20
	for i := range n {
		body := callbackBody(cbOpts{requestID: "req-replay", iccid: "8914800000000000" + strconv.Itoa(1000+i), eid: "8904903200000000000000000000" + strconv.Itoa(1000+i)})
		_, err := js.Publish(ctx, broker.CallbackSubject, body)
		require.NoError(t, err)
	}
	_, err := js.Publish(ctx, broker.CallbackSubject, []byte("{not a callback"))
	require.NoError(t, err)

	dry, err := callback.Replay(ctx, js, callback.ReplayOptions{DryRun: true}, zerolog.Nop())
	require.NoError(t, err)
	require.Equal(t, callback.ReplayStats{Callbacks: n + 1, Published: n, Unparseable: 1}, dry)
	statusCount := func() uint64 {
		s, err := js.Stream(ctx, broker.StatusStream)
		require.NoError(t, err)
		info, err := s.Info(ctx)
		require.NoError(t, err)
		return info.State.Msgs
	}
	require.Zero(t, statusCount(), "a dry run publishes nothing")

	first, err := callback.Replay(ctx, js, callback.ReplayOptions{}, zerolog.Nop())
	require.NoError(t, err)
	require.Equal(t, n, first.Published)
	require.Equal(t, uint64(n), statusCount())

	// Existing counts events found by eventId on their subjects, before any
	// publish: the second replay does not lean on the duplicate window,
	// which a replay a day later would be outside of.
	again, err := callback.Replay(ctx, js, callback.ReplayOptions{FromSeq: 1}, zerolog.Nop())
	require.NoError(t, err)
	require.Equal(t, 0, again.Published)
	require.Equal(t, n, again.Existing)
	require.Equal(t, uint64(n), statusCount(), "no duplicates")
}
