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

// A request filled to exactly max_bytes ends without a word from the
// server: the puller counts bytes as the server does, so it knows the
// request is over at its last message rather than at its expiry.
func TestAPullFilledToExactlyItsBytesIsOverAtItsLastMessage(t *testing.T) {
	ns := natstest.Run(t)
	nc, js := ns.JetStream()
	ctx := context.Background()
	require.NoError(t, broker.Ensure(ctx, js, broker.StreamSettings{}))
	d := &dispatcher{cfg: Config{AckWait: 30 * time.Second, MaxHeldCommands: 1000, PinnedTTL: 6 * time.Second}}
	_, err := js.CreateOrUpdateConsumer(ctx, broker.CommandStream, d.consumerConfig())
	require.NoError(t, err)
	for i := range 40 {
		m := nats.NewMsg("thingspace.profile.commands.enable")
		m.Data = fmt.Appendf(nil, `{"commandId":"c%02d"}`, i) // all of one size
		if i%2 == 0 {
			m.Header.Set(nats.MsgIdHdr, fmt.Sprintf("id-%02d", i)) // half with headers of their own
		}
		_, err := js.PublishMsg(ctx, m)
		require.NoError(t, err)
	}
	p, err := newPuller(nc, js)
	require.NoError(t, err)
	t.Cleanup(p.close)
	take := func(want int) []*nats.Msg {
		var got []*nats.Msg
		for len(got) < want {
			select {
			case m := <-p.msgs:
				if p.read(m) == readCommand {
					got = append(got, m)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("took %d of %d", len(got), want)
			}
		}
		return got
	}
	// Sequence numbers (in each message's ack reply) of two digits from here.
	require.NoError(t, p.ask(10, 0, time.Now()))
	take(10)
	require.NoError(t, p.ask(2, 0, time.Now()))
	first := take(2)
	require.False(t, p.busy(time.Now()))
	size := serverSize(first[0]) + serverSize(first[1]) // one with headers, one without
	require.NoError(t, p.ask(100, 4*size, time.Now()))
	take(7)
	require.True(t, p.busy(time.Now()), "one message's bytes are left (the client's own count, larger, would say none)")
	take(1)
	require.False(t, p.busy(time.Now()), "the request's bytes are spent: it is over without waiting for its expiry")
}
