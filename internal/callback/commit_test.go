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
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/callback"
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
