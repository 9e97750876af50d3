package dispatch

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/device"
	"github.com/esim-pipeline/thingspace-esim/internal/natstest"
	"github.com/esim-pipeline/thingspace-esim/internal/status"
)

// When every async slot is taken and acks come slower than nats.go's
// default stall wait (200 ms, as under sync_interval: always with a deep
// queue), a publish waits for its slot: each event goes out once, in order,
// instead of failing and going out again after the others.
func TestPublishWaitsForASlotWhenAcksAreSlow(t *testing.T) {
	ns := natstest.Run(t)
	// A stand-in for the status stream that acknowledges each event 300 ms
	// after it came.
	slow := ns.RunSlowStream(broker.StatusStream, broker.StatusSubjects, 300*time.Millisecond)

	nc := ns.Connect()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(1), jetstream.WithPublishAsyncTimeout(publishTimeout))
	require.NoError(t, err)
	d := &dispatcher{js: js, log: zerolog.Nop()}

	var evs []status.Event
	var want []string
	for i := range 3 {
		ev := status.Event{
			EventID:     fmt.Sprintf("event-%d", i),
			CommandID:   fmt.Sprintf("cmd-%d", i),
			RequestID:   "req-1",
			Action:      "enable",
			AccountName: "0000123456-00001",
			Device:      device.Set{}.With(device.ICCID, fmt.Sprintf("8914800000000000000%d", i)),
			Status:      status.Accepted,
			OccurredAt:  time.Now().UTC(),
		}
		evs, want = append(evs, ev), append(want, ev.EventID)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, d.publish(ctx, evs))

	seen := slow.Seen(func(m *nats.Msg) string { return m.Header.Get(nats.MsgIdHdr) })
	require.Equal(t, want, seen, "each event published once, in order")
}
