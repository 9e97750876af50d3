package dispatch

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/natstest"
)

// Pulls limited in bytes on a pinned consumer of an R3 stream: nats.go's
// Fetch ended such pulls early (it counts the pin header the server adds
// and does not count, and a 409 that ends a request can overtake the
// messages sent before it), and what the server sent after was lost until
// its ack wait ended. The puller takes every message the server sends, and
// none twice.
func TestPullsTakeEveryMessageTheServerSendsOnACluster(t *testing.T) {
	if testing.Short() {
		t.Skip("three-node cluster")
	}
	cluster := natstest.RunCluster(t, 3)
	nc, err := nats.Connect(cluster.URL())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, broker.Ensure(ctx, js, broker.StreamSettings{Replicas: 3}))
	d := &dispatcher{cfg: Config{AckWait: 30 * time.Second, MaxHeldCommands: 1000, PinnedTTL: 6 * time.Second, StreamReplicas: 3}}
	cons, err := js.CreateOrUpdateConsumer(ctx, broker.CommandStream, d.consumerConfig())
	require.NoError(t, err)
	const n = 500
	for i := range n {
		_, err := js.Publish(ctx, "thingspace.profile.commands.enable", fmt.Appendf(nil, `{"commandId":"c%d"}`, i))
		require.NoError(t, err)
	}
	p, err := newPuller(nc, js)
	require.NoError(t, err)
	t.Cleanup(p.close)
	taken := 0
	deadline := time.After(time.Minute)
	for taken < n {
		if now := time.Now(); !p.busy(now) {
			require.NoError(t, p.ask(149, 3000, now))
		}
		select {
		case m := <-p.msgs:
			if p.read(m) == readCommand {
				taken++
				require.NoError(t, m.Ack())
			}
		case <-time.After(pull / 4):
		case <-deadline:
			t.Fatalf("took %d of %d", taken, n)
		}
	}
	require.NotEmpty(t, p.pin, "the pulls hold the pin")
	require.Eventually(t, func() bool {
		info, err := cons.Info(ctx)
		return err == nil && info.AckFloor.Stream == n && info.NumAckPending == 0
	}, 10*time.Second, 20*time.Millisecond, "every message delivered was taken and acked")
}
