package statuspub_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/natstest"
	"github.com/esim-pipeline/thingspace-esim/internal/statuspub"
)

func event(i int) *nats.Msg {
	return statuspub.Message(fmt.Sprintf("thingspace.profile.status.enable.8914800000%010d", i), fmt.Sprintf("ev-%d", i),
		[]byte(fmt.Sprintf(`{"eventId":"ev-%d"}`, i)))
}

func stored(t *testing.T, ns *natstest.Server) uint64 {
	t.Helper()
	_, js := ns.JetStream()
	st, err := js.Stream(context.Background(), broker.StatusStream)
	require.NoError(t, err)
	info, err := st.Info(context.Background())
	require.NoError(t, err)
	return info.State.Msgs
}

func setup(t *testing.T) (*natstest.Server, *nats.Conn) {
	t.Helper()
	ns := natstest.Run(t)
	nc, js := ns.JetStream()
	require.NoError(t, broker.Ensure(context.Background(), js, broker.StreamSettings{}))
	return ns, nc
}

// Many callers at once: what waits goes in atomic batches, and every event
// is stored once.
func TestEventsOfManyCallersGoInAtomicBatchesAndAreStoredOnce(t *testing.T) {
	ns, _ := setup(t)
	_, js := ns.JetStream()
	var committed, refused atomic.Int64
	p := statuspub.New(js, statuspub.Config{BatchMax: statuspub.MaxBatch, Batches: func(r string) {
		if r == "committed" {
			committed.Add(1)
		} else {
			refused.Add(1)
		}
	}})
	t.Cleanup(p.Close)
	const callers, each = 64, 50
	var wg sync.WaitGroup
	for c := range callers {
		wg.Go(func() {
			msgs := make([]*nats.Msg, each)
			for i := range msgs {
				msgs[i] = event(c*each + i)
			}
			for i, a := range p.Store(context.Background(), msgs) {
				require.NoError(t, a.Err, "event %d", c*each+i)
				require.False(t, a.Duplicate)
			}
		})
	}
	wg.Wait()
	require.EqualValues(t, callers*each, stored(t, ns))
	require.Positive(t, committed.Load(), "some rounds were big enough for a batch")
	require.Zero(t, refused.Load())
}

// A batch holding an eventId stored before is refused whole; its events go
// one by one, the old one acknowledged as a duplicate.
func TestARefusedBatchGoesOneByOne(t *testing.T) {
	ns, _ := setup(t)
	_, js := ns.JetStream()
	var refused atomic.Int64
	p := statuspub.New(js, statuspub.Config{BatchMax: statuspub.MaxBatch, Batches: func(r string) {
		if r != "committed" {
			refused.Add(1)
		}
	}})
	t.Cleanup(p.Close)
	first := p.Store(context.Background(), []*nats.Msg{event(7)})
	require.NoError(t, first[0].Err)

	msgs := make([]*nats.Msg, 200)
	for i := range msgs {
		msgs[i] = event(i) // event 7 again among them
	}
	acks := p.Store(context.Background(), msgs)
	for i, a := range acks {
		require.NoError(t, a.Err)
		require.Equal(t, i == 7, a.Duplicate, "event %d", i)
	}
	require.EqualValues(t, 1, refused.Load())
	require.EqualValues(t, 200, stored(t, ns))
}

func TestWithoutABatchMaximumEachEventGoesAlone(t *testing.T) {
	ns, _ := setup(t)
	_, js := ns.JetStream()
	batches := 0
	p := statuspub.New(js, statuspub.Config{Batches: func(string) { batches++ }})
	t.Cleanup(p.Close)
	msgs := make([]*nats.Msg, 300)
	for i := range msgs {
		msgs[i] = event(i)
	}
	for _, a := range p.Store(context.Background(), msgs) {
		require.NoError(t, a.Err)
	}
	require.Zero(t, batches)
	require.EqualValues(t, 300, stored(t, ns))
}

func TestAStoreAfterCloseFails(t *testing.T) {
	ns, _ := setup(t)
	_, js := ns.JetStream()
	p := statuspub.New(js, statuspub.Config{BatchMax: statuspub.MaxBatch})
	p.Close()
	acks := p.Store(context.Background(), []*nats.Msg{event(1)})
	require.ErrorIs(t, acks[0].Err, statuspub.ErrClosed)
}
