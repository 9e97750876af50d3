package callback_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/callback"
	"github.com/esim-pipeline/thingspace-esim/internal/command"
	"github.com/esim-pipeline/thingspace-esim/internal/device"
	"github.com/esim-pipeline/thingspace-esim/internal/dispatch"
	"github.com/esim-pipeline/thingspace-esim/internal/pipelinetest"
	"github.com/esim-pipeline/thingspace-esim/internal/status"
)

// With STATUS_BATCH_MAX the fan-out's final events go through the shared
// status publisher, batched across its workers: every callback still
// becomes exactly one event, on its device's subject.
func TestBatchedFinalEventsAreEachStoredOnce(t *testing.T) {
	s := pipelinetest.Start(t,
		pipelinetest.WithIngest(func(c *callback.Config) { c.StatusBatchMax = 1000 }),
		pipelinetest.WithDispatcher(func(c *dispatch.Config) { c.StatusBatchMax = 1000 }))
	const n = 1000
	devs := make([]device.Set, n)
	keys := make([]string, n)
	for i := range devs {
		devs[i] = device.Set{EID: fmt.Sprintf("8904903200%022d", i), ICCID: fmt.Sprintf("8914800000%010d", i)}
		keys[i] = devs[i].ICCID
	}
	body, err := command.Encode(command.Enable, "batched", pipelinetest.Account, command.Options{SmsrOid: pipelinetest.SmsrOid}, devs)
	require.NoError(t, err)
	s.Publish(command.Enable, string(body))
	evs := s.Until(status.SubjectPrefix+".enable.>", pipelinetest.FinalOf(keys...), 60*time.Second)
	finals := map[string]int{}
	for _, e := range evs {
		if e.Final {
			finals[e.Subject]++
			require.Equal(t, status.Succeeded, e.Status)
			require.Equal(t, "batched", e.CommandID)
		}
	}
	require.Len(t, finals, n)
	for subj, c := range finals {
		require.Equal(t, 1, c, "%s", subj)
	}
	st, err := s.JS.Stream(context.Background(), broker.StatusStream)
	require.NoError(t, err)
	info, err := st.Info(context.Background())
	require.NoError(t, err)
	require.EqualValues(t, 2*n, info.State.Msgs, "accepted and succeeded, once each")
}
