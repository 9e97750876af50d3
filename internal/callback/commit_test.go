package callback_test

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/callback"
	"github.com/esim-pipeline/thingspace-esim/internal/device"
	"github.com/esim-pipeline/thingspace-esim/internal/natstest"
)

// TestConcurrentCallbacksAreStoredTogetherAndEachBecomesItsEvent: with one
// store worker, callbacks that arrive while a store is under way wait and
// are stored together in one message (group commit); every one of them is
// answered 200 and becomes exactly one event, and a replay reads the
// group-committed messages too.
func TestConcurrentCallbacksAreStoredTogetherAndEachBecomesItsEvent(t *testing.T) {
	ns := natstest.Run(t, natstest.WithSyncAlways())
	s := startOn(t, ns, func(c *callback.Config) {
		c.StoreWorkers = 1
		c.GroupCommit = 32
		c.CorrelationGrace = 50 * time.Millisecond
	})
	const n = 200
	var wg sync.WaitGroup
	codes := make(chan int, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, _ := s.post(callbackBody(cbOpts{requestID: "req-group", iccid: "8914800000000000" + strconv.Itoa(1000+i),
				eid: "8904903200000000000000000000" + strconv.Itoa(1000+i)}), testUser, testPass)
			codes <- code
		}()
	}
	wg.Wait()
	close(codes)
	for code := range codes {
		require.Equal(t, http.StatusOK, code)
	}
	s.waitEvents("req-group", n)
	s.settle()
	require.Len(t, s.eventsOf("req-group"), n, "one event per callback")

	_, body := s.get(s.admin("/metrics"))
	var grouped int
	for _, l := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(l, "esim_ingest_group_commit_callbacks_count ") {
			grouped, _ = strconv.Atoi(strings.TrimPrefix(l, "esim_ingest_group_commit_callbacks_count "))
		}
	}
	require.Positive(t, grouped, "some callbacks were stored together")
	require.Less(t, s.streamCount(broker.CallbackStream, broker.CallbackSubject), n, "fewer stored messages than callbacks")

	st, err := callback.Replay(context.Background(), s.js, callback.ReplayOptions{DryRun: true}, zerolog.Nop())
	require.NoError(t, err)
	require.Equal(t, n, st.Callbacks, "replay reads every callback of the grouped messages")
	require.Equal(t, n, st.Existing)
}

// metric reads one unlabelled sample from the stack's /metrics.
func (s *stack) metric(name string) int {
	s.t.Helper()
	_, body := s.get(s.admin("/metrics"))
	for _, l := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			n, err := strconv.ParseFloat(v, 64)
			require.NoError(s.t, err)
			return int(n)
		}
	}
	s.t.Fatalf("metric %s not on /metrics", name)
	return 0
}

// TestCallbacksStoredByAnotherInstanceAreParsedThere: the instance that
// stores callbacks hands what it parsed to its own fan-out; callbacks it
// stored but did not turn into events (here: their record came only after
// it stopped) are parsed again by whichever instance the consumer gives
// them to, and become their events all the same.
func TestCallbacksStoredByAnotherInstanceAreParsedThere(t *testing.T) {
	ns := natstest.Run(t)
	mutate := func(c *callback.Config) {
		c.StoreWorkers = 1
		c.GroupCommit = 16
	}
	a := startOn(t, ns, mutate)
	const n = 40
	iccid := func(i int) string { return "8914800000000000" + strconv.Itoa(2000+i) }
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			code, _ := a.post(callbackBody(cbOpts{requestID: "req-moved", iccid: iccid(i)}), testUser, testPass)
			assert.Equal(t, http.StatusOK, code)
		})
	}
	wg.Wait()
	require.Eventually(t, func() bool { return a.metric(`esim_ingest_fanout_retries_total{reason="record_pending"}`) >= 1 },
		10*time.Second, 20*time.Millisecond, "the fan-out waits for the record")
	require.Zero(t, a.metric("esim_ingest_fanout_reparsed_total"), "its own callbacks come from the hand-off")
	// Connections the client dialled for the burst but never used would
	// hold the server's shutdown for 5s (net/http waits for new ones).
	a.client.CloseIdleConnections()
	a.stop()

	putRecord(t, a, "req-moved", "enable", "cmd-moved-0", device.Set{ICCID: iccid(0)})
	b := startOn(t, ns, mutate)
	evs := b.waitEvents("req-moved", n)
	b.settle()
	require.Len(t, b.eventsOf("req-moved"), n, "one event per callback")
	for _, ev := range evs {
		if ev.Event.Device.ICCID == iccid(0) {
			assert.Equal(t, "cmd-moved-0", ev.Event.CommandID)
		}
	}
	require.Equal(t, n, b.metric("esim_ingest_fanout_reparsed_total"), "each parsed again, once")
}
