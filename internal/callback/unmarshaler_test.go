package callback_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/callback"
	"github.com/esim-pipeline/thingspace-esim/internal/natstest"
)

func TestUnmarshalerKeepsMsgIDAndEveryHeader(t *testing.T) {
	ns := natstest.Run(t)
	_, js := ns.JetStream()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, broker.Ensure(ctx, js, broker.StreamSettings{}))

	tests := []struct {
		name   string
		header nats.Header
		wantID string
	}{
		{
			name:   "msg_id_becomes_the_uuid_and_multi_valued_headers_survive",
			header: nats.Header{nats.MsgIdHdr: {"fact-1"}, "Trace": {"a", "b"}, "Single": {"x"}},
			wantID: "fact-1",
		},
		{
			name:   "without_msg_id_the_stream_sequence_names_it",
			header: nats.Header{"Single": {"y"}},
			wantID: broker.CallbackStream + ":2",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			msg := &nats.Msg{Subject: broker.CallbackSubject, Data: []byte(`{"requestId":"r"}`), Header: tc.header}
			_, err := js.PublishMsg(ctx, msg)
			require.NoError(t, err)
			c, err := js.OrderedConsumer(ctx, broker.CallbackStream, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverLastPolicy})
			require.NoError(t, err)
			jm, err := c.Next(jetstream.FetchMaxWait(5 * time.Second))
			require.NoError(t, err)

			wm, err := callback.Unmarshaler{}.Unmarshal(jm)
			require.NoError(t, err)
			require.NotNil(t, wm)
			assert.Equal(t, tc.wantID, wm.UUID)
			assert.Equal(t, msg.Data, []byte(wm.Payload))
			for k, vs := range tc.header {
				want := vs[0]
				if len(vs) > 1 {
					want = vs[0] + ", " + vs[1]
				}
				assert.Equal(t, want, wm.Metadata.Get(k), "header %s", k)
			}
		})
	}
}
