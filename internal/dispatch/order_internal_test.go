package dispatch

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/batch"
	"github.com/esim-pipeline/thingspace-esim/internal/device"
)

// The fence's bookkeeping, step by step: a later command of a device whose
// command was handed back waits, goes back behind it when it is sent again,
// and goes anyway once the fence is too old.
func TestFencedDevicesWaitForTheCommandHandedBack(t *testing.T) {
	b, err := batch.New(batch.Config{Default: 10, MaxWait: time.Hour})
	require.NoError(t, err)
	s := &Service{cfg: Config{AckWait: 10 * time.Second}, log: zerolog.Nop(), m: newMetrics(prometheus.NewRegistry()),
		batcher: b, fences: map[string]fence{}, wake: make(chan struct{}, 1)}
	enable := batch.Key{Action: "enable", Account: "A"}
	disable := batch.Key{Action: "disable", Account: "A"}
	devA := device.Set{}.With(device.ICCID, "89148000000000000001")
	devB := device.Set{}.With(device.ICCID, "89148000000000000002")
	first, later, other := &pending{seq: 1}, &pending{seq: 2}, &pending{seq: 3}
	take := func() *batch.Batch {
		t.Helper()
		s.mu.Lock()
		defer s.mu.Unlock()
		g := s.batcher.Take(true)
		require.NotNil(t, g)
		s.takeLocked(g)
		return g
	}
	devices := func(g *batch.Batch) []device.Set { return g.Devices }

	// The call of the first command (device A) failed: handed back.
	s.fenceGroup(group{devices: []device.Set{devA}, items: map[string][]batch.Item{devA.Key(): {{Device: devA, Ref: first}}}})
	s.batcher.Add(disable, batch.Item{Device: devA, Ref: later})
	s.batcher.Add(disable, batch.Item{Device: devB, Ref: other})
	require.Equal(t, []device.Set{devB}, devices(take()), "device A waits for its first command")
	require.Len(t, s.parked, 1)

	// The first command is back and leaves: A's later command follows it.
	s.batcher.Add(enable, batch.Item{Device: devA, Ref: first})
	require.Equal(t, []device.Set{devA}, devices(take()))
	require.Empty(t, s.parked)
	g := take()
	require.Equal(t, disable, g.Key)
	require.Equal(t, []batch.Item{{Device: devA, Ref: later}}, g.Items)

	// A fence whose command never comes back lets the later ones go after fenceTTL.
	s.fenceLocked(devA.Key(), 1, time.Now())
	s.batcher.Add(disable, batch.Item{Device: devA, Ref: later})
	require.Empty(t, take().Devices)
	s.expireFences(time.Now().Add(s.fenceTTL() - time.Second))
	require.Len(t, s.parked, 1, "not yet")
	s.expireFences(time.Now().Add(s.fenceTTL()))
	require.Empty(t, s.parked)
	require.Equal(t, []device.Set{devA}, devices(take()))
	require.Len(t, s.wake, 1, "the send loop is woken")
}
