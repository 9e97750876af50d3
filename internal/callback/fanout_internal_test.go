package callback

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/correlation"
	"github.com/esim-pipeline/thingspace-esim/internal/device"
	"github.com/esim-pipeline/thingspace-esim/internal/natstest"
	"github.com/esim-pipeline/thingspace-esim/internal/statuspub"
)

type recordMap map[string]*correlation.Record

func (m recordMap) Get(_ context.Context, id string) (*correlation.Record, error) {
	if r, ok := m[id]; ok {
		return r, nil
	}
	return nil, correlation.ErrNotFound
}

// When every async slot is taken and the status stream acks slower than
// nats.go's default stall wait (200 ms, as under sync_interval: always with
// a deep queue), the fan-out's publish waits for its slot: a stored
// message's events go out once each, in order, and the message is done,
// not handed back for a redelivery.
func TestFanoutWaitsForASlotWhenAcksAreSlow(t *testing.T) {
	ns := natstest.Run(t)
	// A stand-in for the status stream that acknowledges each event 300 ms
	// after it came.
	slow := ns.RunSlowStream(broker.StatusStream, broker.StatusSubjects, 300*time.Millisecond)

	js, err := jetstream.New(ns.Connect(), jetstream.WithPublishAsyncMaxPending(1), jetstream.WithPublishAsyncTimeout(5*time.Second))
	require.NoError(t, err)
	rec := &correlation.Record{RequestID: "req-slow", Action: "enable", AccountName: "0000123456-00001", Published: true}
	var items []rawCallback
	var want []string
	received := time.Now().UTC()
	for i := range 3 {
		iccid := fmt.Sprintf("8914800000000000000%d", i)
		rec.Devices = append(rec.Devices, correlation.Entry{CommandID: fmt.Sprintf("cmd-%d", i), Device: device.Set{}.With(device.ICCID, iccid)})
		body := fmt.Sprintf(`{"requestId":"req-slow","status":"Success","callbackCount":1,"maxCallbackThreshold":4,
			"deviceIds":[{"id":%q,"kind":"ICCID"}],
			"deviceResponse":{"deviceProfileResponse":{"deviceIdentifierCollection":[{"id":%q,"kind":"ICCID"}],"state":"Active","profileStatus":"enable"}}}`, iccid, iccid)
		items = append(items, rawCallback{Body: []byte(body), ReceivedAt: formatReceived(received)})
		want = append(want, "thingspace.profile.status.enable."+iccid)
	}
	pub := statuspub.New(js, statuspub.Config{Timeout: 5 * time.Second})
	defer pub.Close()
	f := &fanout{js: js, pub: pub, records: newRecords(recordMap{rec.RequestID: rec}, 16, time.Minute), grace: time.Minute,
		timeout: 5 * time.Second, now: time.Now, m: newMetrics(prometheus.NewRegistry()), log: zerolog.Nop()}

	msg := message.NewMessage("stored-1", nil)
	require.NoError(t, f.handleItems(msg, items, nil, true), "the message is done, not handed back")
	seen := slow.Seen(func(m *nats.Msg) string { return m.Subject })
	require.Equal(t, want, seen, "each event published once, in order")
}
