package dispatch_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/dispatch"
	"github.com/esim-pipeline/thingspace-esim/internal/simulator"
	"github.com/esim-pipeline/thingspace-esim/internal/status"
)

// TestTheWholePathFromSeedCommandsToSucceeded: simulator -> dispatcher ->
// ThingSpace stand-in -> callback-ingest -> status events. Every device of
// every seed command ends accepted, then succeeded, with its commandId.
func TestTheWholePathFromSeedCommandsToSucceeded(t *testing.T) {
	e := newEnv(t, simulator.Faults{WarningShare: 0.5})
	e.watch()
	cbURL := e.startIngest()
	e.start(e.config(func(c *dispatch.Config) { c.CallbackURL = cbURL }))
	for action, body := range seedCommands {
		e.publish(action, []byte(body), "e2e-"+action)
	}
	e.waitCount(status.Succeeded, len(seedCommands), 30*time.Second)

	byCommand := map[string][]status.Status{}
	for _, ev := range e.snapshot() {
		byCommand[ev.CommandID] = append(byCommand[ev.CommandID], ev.Status)
	}
	require.Len(t, byCommand, len(seedCommands))
	for action := range seedCommands {
		got := byCommand["e2e-"+action]
		require.Equal(t, status.Accepted, got[0], "%s: accepted first", action)
		require.Equal(t, status.Succeeded, got[len(got)-1], "%s: succeeded last", action)
		for _, st := range got[1 : len(got)-1] {
			require.Equal(t, status.Pending, st, "%s: only a warning in between", action)
		}
	}
}
