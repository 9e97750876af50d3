package dispatch

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
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
	d := &dispatcher{js: js, log: zerolog.Nop(), pub: newPublisher(js, Config{}, newMetrics(prometheus.NewRegistry()))}
	defer d.pub.Close()

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

// Many events go in one atomic batch; a batch holding an event already
// stored (a redelivery's) is refused whole, and its events then go one by
// one: each fact is stored once either way.
func TestManyEventsGoInAtomicBatchesAndAReplayedOneFallsBackToSinglePublishes(t *testing.T) {
	ns := natstest.Run(t)
	nc := ns.Connect()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, broker.Ensure(ctx, js, broker.StreamSettings{}))
	cfg := Config{StatusBatchMax: 1000}
	d := &dispatcher{cfg: cfg, js: js, log: zerolog.Nop(), m: newMetrics(prometheus.NewRegistry())}
	d.pub = newPublisher(js, cfg, d.m)
	defer d.pub.Close()
	events := func(from, to int) []status.Event {
		var evs []status.Event
		for i := from; i < to; i++ {
			evs = append(evs, status.Event{
				EventID: fmt.Sprintf("event-%d", i), CommandID: fmt.Sprintf("cmd-%d", i), RequestID: "req-1",
				Action: "enable", AccountName: "0000123456-00001", Status: status.Accepted, OccurredAt: time.Now().UTC(),
				Device: device.Set{}.With(device.ICCID, fmt.Sprintf("891480000000000%05d", i)),
			})
		}
		return evs
	}
	require.NoError(t, d.publish(ctx, events(0, 300)))
	require.NoError(t, d.publish(ctx, events(200, 450))) // 100 stored already
	st, err := js.Stream(ctx, broker.StatusStream)
	require.NoError(t, err)
	info, err := st.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(450), info.State.Msgs, "each event stored once")
	first, err := st.GetMsg(ctx, 1)
	require.NoError(t, err)
	require.NotEmpty(t, first.Header.Get("Nats-Batch-Id"), "the first 300 went in one batch")
	last, err := st.GetMsg(ctx, 450)
	require.NoError(t, err)
	require.Empty(t, last.Header.Get("Nats-Batch-Id"), "the second batch was refused; its events went one by one")
	require.Equal(t, 1.0, testutil.ToFloat64(d.m.eventBatches.WithLabelValues("committed")))
	require.Equal(t, 1.0, testutil.ToFloat64(d.m.eventBatches.WithLabelValues("refused_10201")))
}
